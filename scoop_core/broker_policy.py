"""The broker's policy: who runs what, who waits for what, without I/O.

Rules of this module (after h11's ``_state.py``):

- States are named sentinels; the legal transitions are the tables
  ``FUTURE_TRANSITIONS`` and ``WORKER_TRANSITIONS``; nothing else changes a
  state. An event that is illegal in the current state raises
  :class:`~scoop_core.errors.ProtocolError` and leaves the state unchanged.
- Nothing here does I/O. :class:`BrokerPolicy` takes decoded messages and
  queues the messages to send in an outbox; :class:`WorkerBook` tracks the
  futures a worker holds. The broker and worker loops only move bytes in and
  out, so tests drive these classes directly.
- Every future has exactly one holder at a time: the broker's queue or one
  worker. A hand-over is recorded when it happens, and an outcome is only
  accepted from the worker that holds the future, so a future is never
  returned twice (a late answer from a worker that lost it is dropped).
- Finished futures leave no trace: their records are deleted as soon as the
  outcome is forwarded, so the broker's memory follows what is in flight,
  not what has run.
- A worker that dies charges a loss to every future it held: the broker
  cannot tell which one killed it, nor which had already run (a worker
  sends results in batches). A future with a loss is a *suspect*, and a
  suspect only runs where it is the one future that can be charged: on a
  worker that holds no other future of anyone else, and that is given none
  while it holds the suspect. So an innocent future is charged at most
  once, and a future that kills every worker it runs on is charged alone
  until it fails at ``max_losses``. (A worker's own futures may join it:
  if it dies they die with it, unread, and charge nobody; and they are
  what a future running there may be waiting for.)
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from scoop_core import messages as m
from scoop_core.errors import ProtocolError
from scoop_core.interfaces import Frame
from scoop_core.states import (
    ASSIGNED,
    BUSY,
    CONNECTING,
    FUTURE_TRANSITIONS,
    GONE,
    IDLE,
    PENDING,
    QUEUED,
    WORKER_TRANSITIONS,
    Event,
    State,
    transition,
)

log = logging.getLogger("scoop.broker")


@dataclass(eq=False)
class FutureRecord:
    """The broker's record of one future in flight."""

    fid: int
    owner: bytes
    parent: int
    depth: int
    frames: tuple[Frame, ...]
    state: State = PENDING
    holder: bytes | None = None
    losses: int = 0
    max_losses: int = 0  # 0: the book's
    lost_on: list[str] = field(default_factory=list)  # names of the workers it died with

    def fire(self, event: Event) -> None:
        self.state = transition(FUTURE_TRANSITIONS, self.state, event)


@dataclass(eq=False)
class PeerRecord:
    """The broker's record of one connected peer (root, worker or client)."""

    peer: bytes
    index: int
    role: str
    name: str
    slots: int
    state: State = CONNECTING
    credit: int = 0
    holding: dict[int, None] = field(default_factory=dict)  # in the order handed over
    spare: int = 0  # unstarted futures of its own it reported
    stealing: bool = False  # a Steal was sent and not answered yet
    suspects: int = 0  # how many of the futures it holds have been lost before

    @property
    def is_worker(self) -> bool:
        return self.slots > 0

    def fire(self, event: Event) -> None:
        self.state = transition(WORKER_TRANSITIONS, self.state, event)


Outbox = list[tuple[bytes, m.Message]]

# A worker's queue of its own futures is cleared of dispatched ones when it
# grows past this, or past twice what was left at the last clearing.
_OWN_CAP = 64


def lost_reason(fid: int, losses: int, workers: list[str]) -> str:
    """Why a future that was lost too often is not run again."""
    return (
        f"future {fid:#x} was lost with its worker {losses} times "
        f"(workers: {', '.join(workers)}); it is not run again. Raise "
        "max_losses in the configuration if that many losses are expected"
    )


class BrokerPolicy:
    """Who runs what, who waits for what: the broker without its I/O.

    Feed it messages with :meth:`handle` (and departures with :meth:`leave`),
    call :meth:`dispatch`, then send what :meth:`take_outbox` returns.
    Dispatch order: deepest future first (a nested future's children before
    new top-level work, which keeps a recursive tree from spreading out in
    breadth), first come first served at equal depth.
    """

    def __init__(
        self,
        *,
        max_losses: int = 3,
        expected_workers: int = 0,
        max_message_size: int | None = None,
    ) -> None:
        self.peers: dict[bytes, PeerRecord] = {}
        # Messages that carry many futures are cut to fit this (see take_outbox).
        self.max_message_size = max_message_size
        # Programs (roots, clients) are welcomed once this many workers have
        # joined, so a run starts with every worker it was launched with.
        self.expected_workers = expected_workers
        self.parked: list[bytes] = []
        self.joined: set[str] = set()  # names of every peer that ever joined
        self.futures: dict[int, FutureRecord] = {}
        self.constants: dict[str, tuple[Frame, ...]] = {}
        self.max_losses = max_losses
        self._queue: list[tuple[int, int, int]] = []
        self._seq = 0
        self._next_index = 1
        self._outbox: Outbox = []
        self._started: dict[bytes, list[int]] = {}
        self._results: dict[bytes, list[m.Outcome]] = {}
        # Cancels forwarded to a worker and not answered yet: fid -> owner.
        self._cancelling: dict[int, bytes] = {}
        # Futures asked back from a busy worker for an idle one.
        self._recalling: set[int] = set()
        # Bytes of each worker's batch of this dispatch (sum of item_size).
        self._batch_bytes: dict[bytes, int] = {}
        # Each worker's own queued futures (it gave them up for others to
        # steal), also in _queue: a worker that holds a suspect may still
        # take these, which its running futures may be waiting for.
        self._own: dict[bytes, list[tuple[int, int, int]]] = {}
        self._own_cap: dict[bytes, int] = {}

    # -- inputs -----------------------------------------------------------

    def handle(self, peer: bytes, msg: m.Message) -> None:
        """Apply one message from ``peer``. Raises ProtocolError if it is
        illegal (unknown peer, foreign future); nothing is changed then."""
        if isinstance(msg, m.Hello):
            self._hello(peer, msg)
            return
        rec = self.peers.get(peer)
        if rec is None or rec.state is GONE:
            raise ProtocolError(f"message {type(msg).__name__} from unknown peer {peer!r}")
        if isinstance(msg, m.Submit):
            self._submit(rec, msg.tasks)
        elif isinstance(msg, m.Ready):
            self._ready(rec, msg.count)
        elif isinstance(msg, m.Spare):
            rec.spare = max(0, msg.count)
            rec.stealing = False
        elif isinstance(msg, m.Started):
            self._start(rec, msg.fids)
        elif isinstance(msg, m.Results):
            self._start(rec, msg.started)
            self._finish(rec, msg.outcomes)
        elif isinstance(msg, m.Cancel):
            self._cancel(rec, msg.fid)
        elif isinstance(msg, m.CancelReply):
            self._cancel_reply(rec, msg.fid, msg.cancelled)
        elif isinstance(msg, m.SetConst):
            self._set_const(rec, msg.name, msg.frames)
        elif isinstance(msg, m.Bye):
            self.leave(peer)
        elif isinstance(msg, m.Heartbeat):
            pass
        else:
            raise ProtocolError(f"a peer may not send {type(msg).__name__}")

    def _hello(self, peer: bytes, msg: m.Hello) -> None:
        if peer in self.peers and self.peers[peer].state is not GONE:
            raise ProtocolError(f"peer {peer!r} said hello twice")
        rec = PeerRecord(peer, self._next_index, msg.role, msg.name, max(0, msg.slots))
        self._next_index += 1
        rec.fire(Event.WELCOME)
        self.peers[peer] = rec
        self.joined.add(msg.name)
        if rec.is_worker:
            self._own[peer] = []
            self._own_cap[peer] = _OWN_CAP
        log.debug("peer %s (%s, %d slots) joined", msg.name, msg.role, rec.slots)
        if not rec.is_worker and len(self.workers) < self.expected_workers:
            self.parked.append(peer)
            return
        self._welcome(rec)
        if rec.is_worker and self.parked and len(self.workers) >= self.expected_workers:
            self.release_parked()

    def _welcome(self, rec: PeerRecord) -> None:
        consts = tuple(m.Constant(k, v) for k, v in self.constants.items())
        self._outbox.append((rec.peer, m.Welcome(rec.index, consts)))

    def release_parked(self) -> None:
        """Welcome the programs waiting for workers (all joined, or waited enough)."""
        for peer in self.parked:
            rec = self.peers.get(peer)
            if rec is not None:
                self._welcome(rec)
        self.parked = []

    def _submit(self, rec: PeerRecord, tasks: tuple[m.Task, ...]) -> None:
        # Check the whole batch first: a refused batch changes nothing.
        seen: set[int] = set()
        for t in tasks:
            if t.fid >> 32 != rec.index:
                raise ProtocolError(f"{rec.name} submitted future {t.fid:#x} it does not own")
            if t.fid in self.futures or t.fid in seen:
                raise ProtocolError(f"{rec.name} submitted future {t.fid:#x} twice")
            seen.add(t.fid)
        for t in tasks:
            fut = FutureRecord(
                t.fid, rec.peer, t.parent, t.depth, t.frames, max_losses=t.max_losses
            )
            fut.fire(Event.SUBMIT)
            self.futures[t.fid] = fut
            self._push(fut)

    def _push(self, fut: FutureRecord) -> None:
        self._seq += 1
        entry = (-fut.depth, self._seq, fut.fid)
        heapq.heappush(self._queue, entry)
        own = self._own.get(fut.owner)
        if own is not None:
            heapq.heappush(own, entry)
            if len(own) > self._own_cap[fut.owner]:
                # Entries of futures dispatched from _queue: drop them.
                own[:] = [e for e in own if self._is_queued(e[2])]
                heapq.heapify(own)
                self._own_cap[fut.owner] = max(_OWN_CAP, 2 * len(own))

    def _is_queued(self, fid: int) -> bool:
        fut = self.futures.get(fid)
        return fut is not None and fut.state is QUEUED

    def _ready(self, rec: PeerRecord, count: int) -> None:
        if not rec.is_worker or count < 0:
            raise ProtocolError(f"{rec.name} asked for {count} futures but runs none")
        rec.credit += count

    def _held(self, rec: PeerRecord, fid: int) -> FutureRecord | None:
        fut = self.futures.get(fid)
        if fut is None or fut.holder != rec.peer:
            # A late word about a future this worker no longer holds (it was
            # cancelled, or re-run after the worker was thought lost).
            log.debug("dropping news of future %#x from %s, which does not hold it", fid, rec.name)
            return None
        return fut

    def _start(self, rec: PeerRecord, fids: Iterable[int]) -> None:
        for fid in fids:
            fut = self._held(rec, fid)
            if fut is not None:
                fut.fire(Event.START)
                self._started.setdefault(fut.owner, []).append(fid)

    def _finish(self, rec: PeerRecord, outcomes: Iterable[m.Outcome]) -> None:
        for out in outcomes:
            fut = self._held(rec, out.fid)
            if fut is None:
                continue
            if out.status == m.CANCELLED:
                fut.fire(Event.CANCEL)
            else:
                fut.fire(Event.FINISH if out.status == m.OK else Event.RAISE)
            self._release(rec, fut)
            self._results.setdefault(fut.owner, []).append(out)

    def _release(self, holder: PeerRecord, fut: FutureRecord) -> None:
        self._unhold(holder, fut)
        self._recalling.discard(fut.fid)
        del self.futures[fut.fid]

    def _unhold(self, holder: PeerRecord, fut: FutureRecord) -> None:
        if fut.fid in holder.holding:
            del holder.holding[fut.fid]
            if fut.losses:
                holder.suspects -= 1
        if not holder.holding and holder.state is BUSY:
            holder.fire(Event.FREE)

    def _cancel(self, rec: PeerRecord, fid: int) -> None:
        fut = self.futures.get(fid)
        if fut is None or fut.owner != rec.peer:
            self._outbox.append((rec.peer, m.CancelReply(fid, False)))
            return
        if fut.state is QUEUED:
            fut.fire(Event.CANCEL)
            del self.futures[fid]  # its heap entry is skipped when popped
            self._outbox.append((rec.peer, m.CancelReply(fid, True)))
        elif fut.state is ASSIGNED and fut.holder is not None:
            # Only the worker knows whether it has started it: ask.
            self._cancelling[fid] = rec.peer
            self._outbox.append((fut.holder, m.Cancel(fid)))
        else:
            self._outbox.append((rec.peer, m.CancelReply(fid, False)))

    def _cancel_reply(self, rec: PeerRecord, fid: int, cancelled: bool) -> None:
        owner = self._cancelling.pop(fid, None)
        self._recalling.discard(fid)
        fut = self._held(rec, fid)
        if fut is None:
            # It finished (or was lost) before the worker read the cancel:
            # the owner still waits for an answer.
            if owner is not None:
                self._outbox.append((owner, m.CancelReply(fid, False)))
            return
        if owner is None:
            # A recall: the worker handed it back unstarted; queue it again.
            if cancelled:
                self._unhold(rec, fut)
                fut.holder = None
                fut.fire(Event.RECALL)
                self._push(fut)
            return
        if cancelled:
            fut.fire(Event.CANCEL)
            self._release(rec, fut)
        self._outbox.append((owner, m.CancelReply(fid, cancelled)))

    def _set_const(self, rec: PeerRecord, name: str, frames: tuple[Frame, ...]) -> None:
        if name in self.constants:
            error = (
                f"shared constant {name!r} is already defined; a constant is defined once per run"
            )
            self._outbox.append((rec.peer, m.ConstReply(name, error)))
            return
        self.constants[name] = frames
        self._outbox.append((rec.peer, m.ConstReply(name, "")))
        for peer, other in self.peers.items():
            if peer != rec.peer and other.state is not GONE:
                self._outbox.append((peer, m.Const(name, frames)))

    def leave(self, peer: bytes) -> list[int]:
        """``peer`` is gone (said Bye, or stopped answering). The futures it
        held are charged a loss each and queued again (suspects from now on,
        see :meth:`dispatch`), or failed at ``max_losses``; futures it owned
        lose their reader and are cancelled, and charge nobody.
        Returns the ids of the futures that were queued again."""
        rec = self.peers.get(peer)
        if rec is None or rec.state is GONE:
            return []
        rec.fire(Event.LEAVE)
        rec.credit = 0
        rec.suspects = 0
        self._own.pop(peer, None)
        self._own_cap.pop(peer, None)
        requeued = []
        for fid in sorted(rec.holding):
            fut = self.futures[fid]
            fut.fire(Event.LOSE)
            fut.holder = None
            self._recalling.discard(fid)
            owner = self._cancelling.pop(fid, None)
            if fut.owner == peer:
                # Its own: nobody is left to read it, and it charges nobody.
                fut.fire(Event.CANCEL)
                del self.futures[fid]
                continue
            fut.losses += 1
            fut.lost_on.append(rec.name)
            if owner is not None:
                # Its owner asked to cancel it: do so rather than run it again.
                fut.fire(Event.CANCEL)
                del self.futures[fid]
                self._outbox.append((owner, m.CancelReply(fid, True)))
            elif fut.losses >= (fut.max_losses or self.max_losses):
                reason = lost_reason(fid, fut.losses, fut.lost_on)
                log.warning("%s", reason)
                self._fail(fut, reason)
            else:
                fut.fire(Event.REQUEUE)
                self._push(fut)
                requeued.append(fid)
        rec.holding.clear()
        # Its own futures now have nobody to read them: cancel those not
        # started (asking their holders); running ones finish, unread.
        orphans = [f for f in self.futures.values() if f.owner == peer]
        for fut in orphans:
            if fut.state is QUEUED:
                fut.fire(Event.CANCEL)
                del self.futures[fut.fid]
            elif fut.state is ASSIGNED and fut.holder is not None:
                self._cancelling[fut.fid] = peer
                self._outbox.append((fut.holder, m.Cancel(fut.fid)))
        del self.peers[peer]
        self._started.pop(peer, None)
        self._results.pop(peer, None)
        if requeued:
            log.warning(
                "%s left holding %d future(s); queued again: %s",
                rec.name,
                len(requeued),
                ", ".join(f"{f:#x}" for f in requeued),
            )
        return requeued

    def _fail(self, fut: FutureRecord, reason: str) -> None:
        fut.fire(Event.FAIL)
        del self.futures[fut.fid]
        self._results.setdefault(fut.owner, []).append(
            m.Outcome(fut.fid, m.LOST, 0.0, (reason.encode(),))
        )

    def fail_queued(self, reason: str) -> int:
        """Fail every queued future (no worker is left to run them); how many."""
        queued = [f for f in self.futures.values() if f.state is QUEUED]
        for fut in queued:
            self._fail(fut, f"future {fut.fid:#x} cannot run: {reason}")
        return len(queued)

    def _too_big(self, item: m.Task | m.Outcome, size: int) -> str:
        """Why ``item``, whose frames hold ``size`` bytes, cannot travel in
        any message ("" if it can)."""
        limit = self.max_message_size
        if limit is None:
            return ""
        payload_limit = m.payload_limit(limit)
        if payload_limit is None or size <= payload_limit:
            return ""
        what = "call" if isinstance(item, m.Task) else "result"
        return (
            f"the broker cannot pass on the {what} of future {item.fid:#x}: it is "
            + m.too_big_for_one_message(size, limit)
        )

    # -- outputs ----------------------------------------------------------

    def dispatch(self) -> None:
        """Hand queued futures to workers that asked for them, the least
        loaded first; if workers sit idle while others hold futures they have
        not started, ask those back (work stealing).

        A suspect (a future lost before) goes to a worker that holds no
        future of anyone else; if there is none, the least loaded worker is
        kept for it (given nothing new but its own futures) until it is.
        A worker that holds a suspect, or is kept for one, takes only its
        own futures. First-time futures pay one test for all this."""
        takers = [p for p in self.peers.values() if p.credit > 0 and p.state in (IDLE, BUSY)]
        if not takers:
            return
        # Workers that take only their own futures this time.
        closed = [p for p in takers if p.suspects]
        if closed:
            takers = [p for p in takers if not p.suspects]
        batches: dict[bytes, list[m.Task]] = {}
        self._batch_bytes = {}
        held_back: list[tuple[int, int, int]] = []
        queue, futures = self._queue, self.futures
        while queue and takers:
            for rec in sorted(takers, key=lambda p: (len(p.holding), -p.credit)):
                fut = None
                while queue:
                    entry = heapq.heappop(queue)
                    fut = futures.get(entry[2])
                    if fut is not None and fut.state is QUEUED:
                        break
                    fut = None
                if fut is None:
                    break
                if fut.losses:
                    # Rare: every pass that meets a suspect ends here, and
                    # the next pass sorts the takers that are left again.
                    self._place_suspect(fut, entry, takers, closed, held_back, batches)
                    break
                self._assign(rec, fut, takers, batches)
        for entry in held_back:
            heapq.heappush(queue, entry)
        for rec in closed:
            self._take_own(rec, batches)
        for peer, tasks in batches.items():
            log.debug("handed %d future(s) to %s", len(tasks), self.peers[peer].name)
            total = self._batch_bytes[peer]
            for batch in m.split_by_size(tasks, self.max_message_size, total=total):
                self._outbox.append((peer, m.Tasks(tuple(batch))))
        hungry = sum(p.credit for p in takers)
        if hungry and not queue:
            self._steal(hungry)
        idle = sum(p.credit for p in takers if not p.holding)
        if idle > len(self._recalling):
            self._recall(idle - len(self._recalling))

    def _assign(
        self,
        rec: PeerRecord,
        fut: FutureRecord,
        takers: list[PeerRecord],
        batches: dict[bytes, list[m.Task]],
    ) -> None:
        """Hand ``fut`` to ``rec`` (in this dispatch's ``batches``), or fail
        it if it cannot travel; ``rec`` leaves ``takers`` once its credit is used."""
        task = m.Task(fut.fid, fut.parent, fut.depth, fut.frames, fut.max_losses)
        size = m.frames_nbytes(task.frames)
        limit = m.payload_limit(self.max_message_size)
        if limit is not None and size > limit:
            # Its owner's settings let it through, ours cannot send it on.
            too_big = self._too_big(task, size)
            log.error("%s", too_big)
            self._fail(fut, too_big)
            return
        fut.fire(Event.ASSIGN)
        fut.holder = rec.peer
        rec.holding[fut.fid] = None
        if fut.losses:
            rec.suspects += 1
        rec.fire(Event.ASSIGN)
        rec.credit -= 1
        if rec.credit == 0 and rec in takers:
            takers.remove(rec)
        batches.setdefault(rec.peer, []).append(task)
        sizes = self._batch_bytes
        sizes[rec.peer] = sizes.get(rec.peer, 0) + m.ITEM_ALLOWANCE + size  # its item_size

    def _holds_only_own(self, rec: PeerRecord) -> bool:
        futures, peer = self.futures, rec.peer
        return all(futures[fid].owner == peer for fid in rec.holding)

    def _place_suspect(
        self,
        fut: FutureRecord,
        entry: tuple[int, int, int],
        takers: list[PeerRecord],
        closed: list[PeerRecord],
        held_back: list[tuple[int, int, int]],
        batches: dict[bytes, list[m.Task]],
    ) -> None:
        """Hand the suspect ``fut`` to a taker that holds no future of anyone
        else (the least loaded), or to its owner; else hold it back and keep
        the least loaded taker for it. Whoever takes it is closed from now on."""
        free = [p for p in takers if self._holds_only_own(p)]
        owner = self.peers.get(fut.owner)
        rec: PeerRecord | None = None
        if free:
            rec = min(free, key=lambda p: (len(p.holding), p.index))
        elif owner is not None and owner.credit > 0 and (owner in takers or owner in closed):
            rec = owner  # if it dies, so does the suspect's reader: nobody is charged
        if rec is None:
            held_back.append(entry)
            if takers:
                # Given nothing new, it will hold nothing before long.
                kept = min(takers, key=lambda p: (len(p.holding), p.index))
                takers.remove(kept)
                closed.append(kept)
                log.debug("keeping %s for suspect future %#x", kept.name, fut.fid)
            return
        log.info(
            "future %#x, lost %d time(s) before, goes to %s as a suspect",
            fut.fid,
            fut.losses,
            rec.name,
        )
        self._assign(rec, fut, takers, batches)
        if rec in takers:
            takers.remove(rec)
            closed.append(rec)

    def _take_own(self, rec: PeerRecord, batches: dict[bytes, list[m.Task]]) -> None:
        """Hand a closed worker the queued futures it owns, while it has credit."""
        own = self._own.get(rec.peer)
        while own and rec.credit > 0:
            fut = self.futures.get(heapq.heappop(own)[2])
            if fut is not None and fut.state is QUEUED:
                self._assign(rec, fut, [], batches)

    def _steal(self, hungry: int) -> None:
        """Ask workers with spare futures of their own to hand half of them
        over for the workers that asked for work."""
        victims = [p for p in self.workers if p.spare >= 2 and not p.stealing]
        for victim in sorted(victims, key=lambda p: -p.spare):
            if hungry <= 0:
                return
            count = min(victim.spare // 2, hungry)
            log.info(
                "asking %s to hand over %d of its %d spare futures",
                victim.name,
                count,
                victim.spare,
            )
            victim.stealing = True
            hungry -= count
            self._outbox.append((victim.peer, m.Steal(count)))

    def _recall(self, count: int) -> None:
        """Ask busy workers to hand back up to ``count`` futures they hold but
        have not started (the newest first: the last a worker would start)."""
        for holder in sorted(self.workers, key=lambda p: -len(p.holding)):
            if len(holder.holding) < 2:
                return
            # The oldest future a worker holds is the one it is running.
            for fid in list(holder.holding)[:0:-1]:
                if count <= 0:
                    return
                fut = self.futures[fid]
                if (
                    fut.state is ASSIGNED
                    and fid not in self._recalling
                    and fid not in self._cancelling
                ):
                    log.info(
                        "asking %s to hand back future %#x for an idle worker", holder.name, fid
                    )
                    self._recalling.add(fid)
                    self._outbox.append((holder.peer, m.Cancel(fid)))
                    count -= 1

    def take_outbox(self) -> Outbox:
        """Messages to send, in order; coalesced per owner where possible,
        in messages that each fit ``max_message_size``."""
        out = self._outbox
        limit = self.max_message_size
        id_size = m.item_size(0)
        for owner, fids in self._started.items():
            for ids in m.split_by_size(fids, limit, total=id_size * len(fids)):
                out.append((owner, m.Started(ids)))
        for owner, outcomes in self._results.items():
            total: int | None = None
            if limit is not None:
                outcomes, total = self._sendable(outcomes)
            for batch in m.split_by_size(outcomes, limit, total=total):
                out.append((owner, m.Results(tuple(batch))))
        self._outbox = []
        self._started = {}
        self._results = {}
        return out

    def _sendable(self, outcomes: list[m.Outcome]) -> tuple[list[m.Outcome], int]:
        """``outcomes``, each one too big for any message replaced by its
        future's failure saying so (a worker whose limit is not ours let it
        through); and the sum of their :func:`~m.item_size`."""
        sendable, total = [], 0
        limit = m.payload_limit(self.max_message_size)
        for out in outcomes:
            size = m.frames_nbytes(out.frames)
            if limit is not None and size > limit:
                too_big = self._too_big(out, size)
                log.error("%s", too_big)
                out = m.Outcome(out.fid, m.LOST, out.elapsed, (too_big.encode(),))
                size = m.frames_nbytes(out.frames)
            sendable.append(out)
            total += m.ITEM_ALLOWANCE + size
        return sendable, total

    def broadcast(self, msg: m.Message) -> None:
        for peer, rec in self.peers.items():
            if rec.state is not GONE:
                self._outbox.append((peer, msg))

    @property
    def workers(self) -> list[PeerRecord]:
        return [p for p in self.peers.values() if p.is_worker and p.state is not GONE]

    @property
    def queued(self) -> int:
        return sum(1 for f in self.futures.values() if f.state is QUEUED)
