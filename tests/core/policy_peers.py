"""The fake peers' side of a broker policy story, for ``test_broker_policy.py``
(one broker) and ``test_broker_policy_store.py`` (a policy a peer, over a store).

A story's runner says how a message reaches the policies (``send``) and what
a peer's runtime got since the last look (``take``); :class:`FakePeers`
makes futures with ids in each peer's range and reads back what came of them.
"""

from __future__ import annotations

from collections.abc import Iterable

from scoop_core import messages as m


class FakePeers:
    """Futures submitted, handed out and answered by peers known by ``bytes`` ids."""

    index: dict[bytes, int]  # each peer's index, from its Welcome
    seq: dict[bytes, int]  # the last future number each owner used

    def send(self, peer: bytes, msg: m.Message) -> None:
        raise NotImplementedError

    def take(self, peer: bytes) -> list[m.Message]:
        raise NotImplementedError

    def join(self, peer: bytes, slots: int = 0) -> m.Welcome:
        """``peer`` says hello, as a worker with ``slots`` or else as a root, and is welcomed."""
        role = m.WORKER if slots else m.ROOT
        self.send(peer, m.Hello(role, peer.decode(), 1000, "localhost", slots))
        (welcome,) = self.take(peer)
        assert isinstance(welcome, m.Welcome)
        self.index[peer] = welcome.index
        return welcome

    def task(self, owner: bytes, depth: int = 0, parent: int = 0) -> m.Task:
        """A new future of ``owner``, with an id in ``owner``'s range."""
        self.seq[owner] += 1
        fid = self.index[owner] << 32 | self.seq[owner]
        return m.Task(fid, parent, depth, (b"call-%d" % fid,))

    def submit(self, owner: bytes, count: int = 1, depth: int = 0) -> list[int]:
        tasks = tuple(self.task(owner, depth) for _ in range(count))
        self.send(owner, m.Submit(tasks))
        return [t.fid for t in tasks]

    def tasks_for(self, peer: bytes) -> list[int]:
        """Ids of the futures handed to ``peer`` since the last look."""
        msgs = self.take(peer)
        assert all(isinstance(msg, m.Tasks) for msg in msgs), msgs
        return [t.fid for msg in msgs if isinstance(msg, m.Tasks) for t in msg.tasks]

    def answer(self, peer: bytes, fids: Iterable[int], status: int = m.OK) -> None:
        self.send(peer, m.Results(tuple(m.Outcome(f, status, 0.0, (b"v",)) for f in fids)))
