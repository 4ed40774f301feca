"""The broker's policy: who runs what, who waits for what, without I/O.

One policy decides where every future goes, whatever the transport. It is
driven from outside, in the manner of h11's connection object: messages
and store events in (:meth:`BrokerPolicy.handle`, :meth:`~BrokerPolicy.tick`
and the store-side inputs below), decisions out (:meth:`~BrokerPolicy.take_outbox`,
messages to peers, and :meth:`~BrokerPolicy.take_store_ops`). Two drivers feed it:

- the ZeroMQ broker thread (:mod:`scoop_core.broker`): one policy for the
  whole run, every peer local to it, the queue in its memory;
- on a store-backed transport (:mod:`scoop_core.store_driver`), every peer's
  endpoint holds a policy of its own (``shared_queue=True``) whose one local
  peer is that process's runtime. The queue is the store's: a future its
  runtime submits is *enqueued* there; entries the store hands this peer
  *arrive* here and are dispatched to the runtime by the same rules; what
  concerns a future owned elsewhere travels to its owner's policy as mail.
  The owner's policy is the only one that queues a future (again): a
  holder hands futures back to it (:class:`~scoop_core.messages.Returned`),
  and decides nothing about them.

Rules:

- Every state change goes through the transition tables of
  :mod:`scoop_core.states` (``fire``); an illegal event raises
  :class:`~scoop_core.errors.ProtocolError` and changes nothing.
- Every future has exactly one holder at a time: the queue or one worker.
  A hand-over is recorded when it happens, and an outcome is only accepted
  from the worker that holds the future (on a store, where the owner does
  not learn who took it, from the first peer that answers), so a future is
  never returned twice.
- Finished futures leave no trace: their records are deleted as soon as the
  outcome is forwarded, so memory follows what is in flight.
- A worker that dies charges a loss to every future it held: nobody can
  tell which one killed it, nor which had already run (a worker sends
  results in batches). A future with a loss is a *suspect*, and a suspect
  only runs where it is the one future that can be charged: on a worker
  that holds no other future of anyone else, and that is given none while
  it holds the suspect (its unstarted futures are asked back). So an
  innocent future is charged at most once, and a future that kills every
  worker it runs on is charged alone until it fails at ``max_losses``.
  (A worker's own futures may join it: if it dies they die with it,
  unread, and charge nobody; and they are what a future running there may
  be waiting for.)
- A peer that says goodbye hands back what it holds without a loss: only a
  death is charged. The futures a departed peer owned have nobody to read
  them: those not started are cancelled, wherever they are.
- With no worker for ``heartbeat_timeout``, queued futures fail rather than
  wait for ever; unless the workers come from a scheduler's queue
  (``wait_for_workers``): then they wait, and the launcher, which knows
  whether a job is left to bring any, ends the run.
- A shared constant is defined once per run: the first definition wins and
  every peer learns it; a second one is refused, naming the constant.
"""

from __future__ import annotations

import heapq
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypedDict

from scoop_core import messages as m
from scoop_core.activity import Activity, boot_id
from scoop_core.errors import ConstantError, ProtocolError
from scoop_core.interfaces import Frame
from scoop_core.states import (
    ASSIGNED,
    BUSY,
    CANCELLED,
    CONNECTING,
    FUTURE_TRANSITIONS,
    GONE,
    IDLE,
    PENDING,
    QUEUED,
    RUNNING,
    WAITING,
    WORKER_TRANSITIONS,
    Event,
    State,
    transition,
)

log = logging.getLogger("scoop.broker")


@dataclass(eq=False)
class FutureRecord:
    """A policy's record of one future in flight.

    ``owner`` and ``holder`` are peer ids: local peers of this policy, or
    (on a store) the names of peers elsewhere. On a store, ``away`` means
    the future is in the store's queue or held by a worker this policy does
    not know; ``entry`` is its entry there and ``attempt`` how many times it
    was queued before."""

    fid: int
    owner: bytes
    parent: int
    depth: int
    frames: tuple[Frame, ...]
    state: State = PENDING
    holder: bytes | None = None
    losses: int = 0
    max_losses: int = 0  # 0: the policy's
    lost_on: list[str] = field(default_factory=list)  # names of the workers it died with
    away: bool = False
    entry: bytes = b""
    attempt: int = 0

    def fire(self, event: Event) -> None:
        self.state = transition(FUTURE_TRANSITIONS, self.state, event)

    @property
    def task(self) -> m.Task:
        return m.Task(self.fid, self.parent, self.depth, self.frames, self.max_losses)


@dataclass(eq=False)
class PeerRecord:
    """A policy's record of one local peer (root, worker or client)."""

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
    heard: float = 0.0  # when it last spoke (tick's clock)
    # A program in the broker's own process (an embedding program's pool):
    # alive while the broker is, however long its thread was kept from
    # speaking on a loaded machine.
    in_process: bool = False
    hello_clock: int = 0  # the run's clock when its hello came (for its clock offset)

    @property
    def is_worker(self) -> bool:
        return self.slots > 0

    def fire(self, event: Event) -> None:
        self.state = transition(WORKER_TRANSITIONS, self.state, event)


# -- what a store-backed driver does for the policy -------------------------------


@dataclass(frozen=True)
class Enqueue:
    """Put this future (its owner is local) in the store's queue, as attempt
    ``fut.attempt``; then tell :meth:`BrokerPolicy.enqueued` its entry id."""

    fut: FutureRecord


@dataclass(frozen=True)
class Ack:
    """The store's entry ``entry`` is done with: remove it, in the same
    commit as the mail of this turn (a result is delivered if and only if
    its entry is gone)."""

    entry: bytes


@dataclass(frozen=True)
class Withdraw:
    """Take future ``fid`` (entry ``entry``) out of the store's queue if
    nobody holds it; then tell :meth:`BrokerPolicy.withdrawn` what happened."""

    fid: int
    entry: bytes


@dataclass(frozen=True)
class DefineConst:
    """Define the shared constant ``name`` in the store if it is not
    defined; then tell :meth:`BrokerPolicy.const_defined` whether it was."""

    name: str
    frames: tuple[Frame, ...]
    asker: bytes


@dataclass(frozen=True)
class Broadcast:
    """Mail ``msg`` to every peer of the run but this one."""

    msg: m.Message


StoreOp = Enqueue | Ack | Withdraw | DefineConst | Broadcast

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


@dataclass(frozen=True)
class Arrival:
    """A future the store handed to this peer: what its signed entry says."""

    task: m.Task
    owner: bytes
    entry: bytes
    attempt: int = 0
    losses: int = 0
    lost_on: tuple[str, ...] = ()


class PolicyOptions(TypedDict, total=False):
    """The run's settings a :class:`BrokerPolicy` takes, as its drivers pass
    them on; their defaults are :class:`BrokerPolicy`'s."""

    max_losses: int
    expected_workers: int
    max_message_size: int | None
    heartbeat_interval: float
    heartbeat_timeout: float
    join_timeout: float
    wait_for_workers: bool


class BrokerPolicy:
    """Who runs what, who waits for what: the broker without its I/O.

    Feed it messages with :meth:`handle` (from local peers) and
    :meth:`handle_mail` (on a store, from peers elsewhere), the clock with
    :meth:`tick`, then call :meth:`dispatch` and send what
    :meth:`take_outbox` returns; on a store, also carry out
    :meth:`take_store_ops` and report back through :meth:`enqueued`,
    :meth:`arrived`, :meth:`withdrawn` and :meth:`const_defined`.

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
        heartbeat_interval: float = 5.0,
        heartbeat_timeout: float = 30.0,
        join_timeout: float = 10.0,
        wait_for_workers: bool = False,
        shared_queue: bool = False,
        now: float = 0.0,
    ) -> None:
        self.peers: dict[bytes, PeerRecord] = {}
        # Messages that carry many futures are cut to fit this (see take_outbox).
        self.max_message_size = max_message_size
        # Programs (roots, clients) are welcomed once this many workers have
        # joined (or join_timeout passed), so a run starts with every worker
        # it was launched with.
        self.expected_workers = expected_workers
        self.join_timeout = join_timeout
        # Queued futures wait for workers however long (workers that a
        # scheduler's queue will start some time: whoever launched them
        # knows when none is left to come), instead of failing after
        # heartbeat_timeout with none.
        self.wait_for_workers = wait_for_workers
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        # On a store, the queue is the store's and peers elsewhere are names.
        self.shared_queue = shared_queue
        self.remote_workers = 0  # on a store: live workers elsewhere (its driver counts them)
        self.next_index = 1  # the index the next peer gets (on a store: the store's)
        self.parked: list[bytes] = []
        self.joined: set[str] = set()  # names of every peer that ever joined
        self.futures: dict[int, FutureRecord] = {}
        self.constants: dict[str, tuple[Frame, ...]] = {}
        self.max_losses = max_losses
        self.now = now
        self._join_deadline = now + join_timeout
        self._last_beat = now
        self._workers_seen = now
        self._lost_peers: list[bytes] = []
        self._queue: list[tuple[int, int, int]] = []
        self._seq = 0
        self._outbox: Outbox = []
        self._ops: list[StoreOp] = []
        self._started: dict[bytes, list[int]] = {}
        self._results: dict[bytes, list[m.Outcome]] = {}
        # Cancels forwarded to a holder and not answered yet: fid -> owner.
        self._cancelling: dict[int, bytes] = {}
        # Futures asked back from a busy worker (for an idle one, or a suspect).
        self._recalling: set[int] = set()
        # Futures asked out of the store's queue: fid -> why (cancel, or the
        # reason it fails).
        self._withdrawing: dict[int, str] = {}
        # Suspects waiting here for a worker of this policy to be free: since when.
        self._held_back: dict[int, float] = {}
        # Bytes of each worker's batch of this dispatch (sum of item_size).
        self._batch_bytes: dict[bytes, int] = {}
        # Each worker's own queued futures (it gave them up for others to
        # steal), also in _queue: a worker that holds a suspect may still
        # take these, which its running futures may be waiting for.
        self._own: dict[bytes, list[tuple[int, int, int]]] = {}
        self._own_cap: dict[bytes, int] = {}
        # What a run's reports tell of this policy: the futures lost with
        # each worker (the driver sets the process's activity).
        self.activity: Activity | None = None
        # The run's reference clock, for the welcome (the driver of a store
        # sets the store server's).
        self.clock: Callable[[], int] = time.time_ns
        self.boot = boot_id()  # whose clock that is: a peer that shares it has no offset

    # -- messages from local peers -------------------------------------------

    def handle(self, peer: bytes, msg: m.Message) -> None:
        """Apply one message from the local peer ``peer``. Raises
        ProtocolError if it is illegal (unknown peer, foreign future);
        nothing is changed then."""
        if isinstance(msg, m.Hello):
            self._hello(peer, msg)
            return
        rec = self.peers.get(peer)
        if rec is None or rec.state is GONE:
            raise ProtocolError(f"message {type(msg).__name__} from unknown peer {peer!r}")
        rec.heard = self.now
        if self._about_futures(peer, msg):
            pass
        elif isinstance(msg, m.Submit):
            self._submit(rec, msg.tasks)
        elif isinstance(msg, m.Ready):
            self._ready(rec, msg.count)
        elif isinstance(msg, m.Spare):
            rec.spare = max(0, msg.count)
            rec.stealing = False
        elif isinstance(msg, m.RecallReply):
            self._recall_reply(rec, msg.fid, msg.recalled)
        elif isinstance(msg, m.SetConst):
            self._set_const(peer, msg.name, msg.frames)
        elif isinstance(msg, m.Bye):
            self.leave(peer, lost=False)
        elif isinstance(msg, (m.Heartbeat, m.Report)):
            pass  # heard from (a report is read by whoever drives this policy)
        else:
            raise ProtocolError(f"a peer may not send {type(msg).__name__}")

    def handle_mail(self, sender: bytes, msg: m.Message) -> None:
        """On a store: apply one message from ``sender``, a peer elsewhere
        (its driver checked who signed it). ProtocolError if a peer may not
        send it."""
        if self._about_futures(sender, msg):
            pass
        elif isinstance(msg, m.Returned):
            self._returned(sender, msg)
        elif isinstance(msg, m.Departed):
            self.owner_gone(msg.name.encode())
        elif isinstance(msg, m.Const | m.Shutdown | m.Heartbeat):
            for peer, rec in self.peers.items():
                if rec.state is not GONE:
                    self._outbox.append((peer, msg))
        else:
            raise ProtocolError(f"a peer may not mail {type(msg).__name__}")

    def _about_futures(self, peer: bytes, msg: m.Message) -> bool:
        """Apply ``msg`` if it is news of futures (a start, outcomes, a cancel
        or its answer), which come alike from a local peer and, on a store,
        from a peer elsewhere; False if it is not."""
        if isinstance(msg, m.Started):
            self._start(peer, msg.fids)
        elif isinstance(msg, m.Results):
            if any(out.status != m.LOST for out in msg.outcomes):
                # A worker ran them: one lives, though a count of the workers
                # may miss it (on a store, one that came and went between two
                # counts, as a worker that retires after max_tasks_per_child).
                self._workers_seen = self.now
            self._finish(peer, msg.outcomes)
        elif isinstance(msg, m.Cancel):
            self._cancel(peer, msg.fid)
        elif isinstance(msg, m.CancelReply):
            self._cancel_reply(peer, msg.fid, msg.cancelled)
        else:
            return False
        return True

    def _hello(self, peer: bytes, msg: m.Hello) -> None:
        if peer in self.peers and self.peers[peer].state is not GONE:
            raise ProtocolError(f"peer {peer!r} said hello twice")
        rec = PeerRecord(peer, self.next_index, msg.role, msg.name, max(0, msg.slots))
        rec.heard = self.now
        rec.hello_clock = self.clock()
        rec.in_process = msg.role != m.WORKER and msg.pid == os.getpid()
        self.next_index += 1
        rec.fire(Event.WELCOME)
        self.peers[peer] = rec
        self.joined.add(msg.name)
        if rec.is_worker:
            self._own[peer] = []
            self._own_cap[peer] = _OWN_CAP
        log.debug("peer %s (%s, %d slots) joined", msg.name, msg.role, rec.slots)
        if not rec.is_worker and not self._enough_workers():
            self.parked.append(peer)
            return
        self._welcome(rec)
        if rec.is_worker and self.parked and self._enough_workers():
            self.release_parked()

    def _enough_workers(self) -> bool:
        return len(self.workers) + self.remote_workers >= self.expected_workers

    def _welcome(self, rec: PeerRecord) -> None:
        consts = tuple(m.Constant(k, v) for k, v in self.constants.items())
        held = self.clock() - rec.hello_clock
        welcome = m.Welcome(rec.index, consts, clock=rec.hello_clock, held=held, boot=self.boot)
        self._outbox.append((rec.peer, welcome))

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
            if self.shared_queue:
                fut.away = True
                self._ops.append(Enqueue(fut))
            else:
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
        return fut is not None and fut.state is QUEUED and not fut.away

    def _queue_again(self, fut: FutureRecord, lost_on: str = "") -> None:
        """``fut`` (QUEUED) runs again, somewhere: in this policy's queue;
        on a store, in the store's queue as its next attempt if its owner is
        local, else back to its owner (who queues it again)."""
        if not self.shared_queue:
            self._push(fut)
            return
        self._held_back.pop(fut.fid, None)
        if fut.entry and not fut.away:
            self._ops.append(Ack(fut.entry))
        if fut.owner in self.peers:
            fut.attempt += 1
            fut.away = True
            fut.entry = b""
            self._ops.append(Enqueue(fut))
            return
        del self.futures[fut.fid]
        self._outbox.append((fut.owner, m.Returned([fut.fid], [fut.attempt], lost_on)))

    def _ready(self, rec: PeerRecord, count: int) -> None:
        if not rec.is_worker or count < 0:
            raise ProtocolError(f"{rec.name} asked for {count} futures but runs none")
        rec.credit += count

    def _held(self, peer: bytes, fid: int) -> FutureRecord | None:
        """The future ``fid`` if ``peer`` holds it. On a store, the owner
        does not learn who took its future: the first peer elsewhere that
        speaks of it is taken as its holder."""
        fut = self.futures.get(fid)
        if fut is not None and fut.holder is None and fut.away and peer not in self.peers:
            self._taken_elsewhere(fut, peer)
        if fut is None or fut.holder != peer:
            # A late word about a future this peer no longer holds (it was
            # cancelled, or re-run after its worker was thought lost).
            log.debug("dropping news of future %#x from %r, which does not hold it", fid, peer)
            return None
        return fut

    def _taken_elsewhere(self, fut: FutureRecord, holder: bytes) -> None:
        """On a store: the owner learns that ``holder`` took ``fut`` (its
        first word about it, or the store's answer to a withdrawal)."""
        if fut.state is QUEUED:
            fut.fire(Event.ASSIGN)
        fut.holder = holder

    def _start(self, peer: bytes, fids: Iterable[int]) -> None:
        for fid in fids:
            fut = self._held(peer, fid)
            if fut is not None and fut.state is ASSIGNED:
                fut.fire(Event.START)
                self._started.setdefault(fut.owner, []).append(fid)

    def _finish(self, peer: bytes, outcomes: Iterable[m.Outcome]) -> None:
        for out in outcomes:
            fut = self._held(peer, out.fid)
            if fut is None:
                continue
            if out.status == m.CANCELLED:
                fut.fire(Event.CANCEL)
            else:
                fut.fire(Event.FINISH if out.status == m.OK else Event.RAISE)
            self._release(fut)
            self._results.setdefault(fut.owner, []).append(out)

    def _release(self, fut: FutureRecord) -> None:
        """``fut`` is finished: forget it (on a store, its entry goes if we held it)."""
        holder = self.peers.get(fut.holder) if fut.holder is not None else None
        if holder is not None:
            self._unhold(holder, fut)
        self._recalling.discard(fut.fid)
        self._held_back.pop(fut.fid, None)
        asker = self._cancelling.pop(fut.fid, None)
        if asker is not None:
            # Its outcome crossed the cancel: the answer is what happened,
            # whether or not the holder ever answers.
            self._outbox.append((asker, m.CancelReply(fut.fid, fut.state is CANCELLED)))
        if fut.entry and not fut.away:
            self._ops.append(Ack(fut.entry))
        del self.futures[fut.fid]

    def _unhold(self, holder: PeerRecord, fut: FutureRecord) -> None:
        if fut.fid in holder.holding:
            del holder.holding[fut.fid]
            if fut.losses:
                holder.suspects -= 1
        if not holder.holding and holder.state is BUSY:
            holder.fire(Event.FREE)

    # -- cancelling ----------------------------------------------------------------

    def _cancel(self, asker: bytes, fid: int) -> None:
        fut = self.futures.get(fid)
        if fut is None or fut.owner != asker:
            self._outbox.append((asker, m.CancelReply(fid, False)))
            return
        if fut.state is QUEUED and fut.away:
            # In the store's queue: take it out, if nobody has taken it.
            self._withdraw(fut, "cancel")
        elif fut.state is QUEUED:
            fut.fire(Event.CANCEL)
            self._release(fut)  # its heap entry is skipped when popped
            self._outbox.append((asker, m.CancelReply(fid, True)))
        elif fut.state is ASSIGNED and fut.holder is not None:
            # Only the worker knows whether it has started it: ask.
            self._cancelling[fid] = asker
            self._outbox.append((fut.holder, m.Cancel(fid)))
        else:
            self._outbox.append((asker, m.CancelReply(fid, False)))

    def _withdraw(self, fut: FutureRecord, why: str) -> None:
        if fut.fid in self._withdrawing:
            return
        self._withdrawing[fut.fid] = why
        if fut.entry:
            self._ops.append(Withdraw(fut.fid, fut.entry))
        # else: not in the store yet; enqueued() withdraws it once it is.

    def _cancel_reply(self, holder: bytes, fid: int, cancelled: bool) -> None:
        owner = self._cancelling.pop(fid, None)
        fut = self._held(holder, fid)
        if fut is None:
            # It finished (or was lost) before the worker read the cancel:
            # the owner still waits for an answer.
            if owner is not None:
                self._outbox.append((owner, m.CancelReply(fid, False)))
            return
        if cancelled:
            fut.fire(Event.CANCEL)
            self._release(fut)
        if owner is not None:
            self._outbox.append((owner, m.CancelReply(fid, cancelled)))

    def _recall_reply(self, rec: PeerRecord, fid: int, recalled: bool) -> None:
        self._recalling.discard(fid)
        fut = self._held(rec.peer, fid)
        if fut is None:
            return
        if not recalled:
            if fut.state is ASSIGNED:  # it had started: say so, and ask no more
                self._start(rec.peer, [fid])
            return
        self._unhold(rec, fut)
        fut.holder = None
        asker = self._cancelling.pop(fid, None)
        if asker is not None:
            # Its owner asked to cancel it meanwhile: it never runs.
            fut.fire(Event.CANCEL)
            self._release(fut)
            self._outbox.append((asker, m.CancelReply(fid, True)))
            return
        # Handed back unstarted: queue it again, without a loss.
        fut.fire(Event.RECALL)
        self._queue_again(fut)

    # -- constants --------------------------------------------------------------------

    def _set_const(self, asker: bytes, name: str, frames: tuple[Frame, ...]) -> None:
        if self.shared_queue:
            self._ops.append(DefineConst(name, frames, asker))
        else:
            self.const_defined(name, frames, asker, name not in self.constants)

    def const_defined(self, name: str, frames: tuple[Frame, ...], asker: bytes, ok: bool) -> None:
        """The constant ``name`` was defined now (``ok``), or was already."""
        if not ok:
            self._outbox.append((asker, m.ConstReply(name, ConstantError.defined_twice(name))))
            return
        self.constants[name] = frames
        self._outbox.append((asker, m.ConstReply(name, "")))
        for peer, other in self.peers.items():
            if peer != asker and other.state is not GONE:
                self._outbox.append((peer, m.Const(name, frames)))
        if self.shared_queue:
            self._ops.append(Broadcast(m.Const(name, frames)))

    # -- losses and departures -----------------------------------------------------

    def leave(self, peer: bytes, *, lost: bool = True) -> list[int]:
        """The local peer ``peer`` is gone: it died or stopped answering
        (``lost``), or said goodbye. The futures it held run again, each
        charged a loss if it died (a suspect from then on, see
        :meth:`dispatch`) or failed at ``max_losses``; the futures it owned
        lose their reader: those not started are cancelled, and charge
        nobody. Returns the ids of the futures queued again."""
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
            if fut.owner == peer:
                # Its own: nobody is left to read it, and it charges nobody.
                fut.fire(Event.LOSE)
                fut.fire(Event.CANCEL)
                self._release(fut)
                continue
            if self._lose(fut, rec.name, charge=lost):
                requeued.append(fid)
        rec.holding.clear()
        self._orphan(peer)
        del self.peers[peer]
        self._started.pop(peer, None)
        self._results.pop(peer, None)
        if requeued:
            # A peer that said goodbye (asked to leave, or Ctrl-C at a
            # terminal) charges nothing: worth a word, not a warning.
            log.log(
                logging.WARNING if lost else logging.INFO,
                "%s %s holding %d future(s); queued again: %s",
                rec.name,
                "was lost" if lost else "left",
                len(requeued),
                ", ".join(f"{f:#x}" for f in requeued),
            )
        return requeued

    def owner_gone(self, owner: bytes) -> None:
        """On a store: the peer ``owner``, elsewhere, has left the run; the
        futures of its that are here and not started are cancelled, as for
        a local peer that leaves."""
        if owner not in self.peers:
            self._orphan(owner)

    def _orphan(self, owner: bytes) -> None:
        """Cancel the unstarted futures of ``owner``, which has left (asking
        their holders); running ones finish, unread."""
        for fut in [f for f in self.futures.values() if f.owner == owner]:
            if fut.state is QUEUED and fut.away:
                self._withdraw(fut, "cancel")
            elif fut.state is QUEUED:
                fut.fire(Event.CANCEL)
                self._release(fut)
            elif fut.state is ASSIGNED and fut.holder is not None:
                self._cancelling[fut.fid] = owner
                self._outbox.append((fut.holder, m.Cancel(fut.fid)))

    def _lose(self, fut: FutureRecord, worker: str, *, charge: bool = True) -> bool:
        """``fut``'s holder went away (``worker`` names it): queue it again,
        with a loss if ``charge``, or fail or cancel it. True if queued again."""
        fid = fut.fid
        holder = self.peers.get(fut.holder) if fut.holder is not None else None
        if holder is not None:
            self._unhold(holder, fut)
        if fut.state is QUEUED:
            fut.fire(Event.ASSIGN)  # on a store, its owner learns it was taken only now
        fut.fire(Event.LOSE)
        fut.holder = None
        self._recalling.discard(fid)
        asker = self._cancelling.pop(fid, None)
        if charge:
            fut.losses += 1
            fut.lost_on.append(worker)
            if self.activity is not None:
                self.activity.lost_with(worker, fid, fut.losses)
        if asker is not None:
            # Its owner asked to cancel it: do so rather than run it again.
            fut.fire(Event.CANCEL)
            self._release(fut)
            self._outbox.append((asker, m.CancelReply(fid, True)))
            return False
        if fut.losses >= (fut.max_losses or self.max_losses):
            reason = lost_reason(fid, fut.losses, fut.lost_on)
            log.warning("%s", reason)
            self._fail(fut, reason)
            return False
        fut.fire(Event.REQUEUE)
        self._queue_again(fut, worker if charge else "")
        return True

    def _returned(self, sender: bytes, msg: m.Returned) -> None:
        """On a store: futures this policy owns came back from the store
        (see :class:`~scoop_core.messages.Returned`)."""
        if len(msg.fids) != len(msg.attempts):
            raise ProtocolError("malformed Returned message: ids and attempts differ")
        requeued = []
        for fid, attempt in zip(msg.fids, msg.attempts, strict=True):
            fut = self.futures.get(fid)
            if fut is None or fut.owner not in self.peers or fut.attempt != attempt:
                continue  # finished meanwhile, or word of an older attempt
            if fut.state not in (QUEUED, ASSIGNED, RUNNING, WAITING) or not fut.away:
                continue
            if self._lose(
                fut, msg.lost_on or sender.decode(errors="replace"), charge=bool(msg.lost_on)
            ):
                requeued.append(fid)
        if requeued and msg.lost_on:
            log.warning(
                "%s was lost holding %d future(s) of ours; queued again: %s",
                msg.lost_on,
                len(requeued),
                ", ".join(f"{f:#x}" for f in requeued),
            )

    def _fail(self, fut: FutureRecord, reason: str) -> None:
        fut.fire(Event.FAIL)
        self._release(fut)
        self._results.setdefault(fut.owner, []).append(
            m.Outcome(fut.fid, m.LOST, 0.0, (reason.encode(),))
        )

    def fail_queued(self, reason: str) -> int:
        """Fail every queued future (no worker is left to run them); how many
        (on a store, those in its queue fail once they are taken out of it)."""
        failed = 0
        for fut in [f for f in self.futures.values() if f.state is QUEUED]:
            if fut.away:
                self._withdraw(fut, reason)
            else:
                self._fail(fut, f"future {fut.fid:#x} cannot run: {reason}")
                failed += 1
        return failed

    # -- what a store-backed driver reports -------------------------------------------

    def enqueued(self, fid: int, entry: bytes) -> None:
        """The store's entry for future ``fid`` (an :class:`Enqueue` done)."""
        fut = self.futures.get(fid)
        if fut is None or not fut.away or fut.entry:
            return
        fut.entry = entry
        if fid in self._withdrawing:
            self._ops.append(Withdraw(fid, entry))

    def arrived(self, arrivals: Iterable[Arrival]) -> None:
        """Futures the store handed this peer (its local workers asked for them)."""
        for a in arrivals:
            fut = self.futures.get(a.task.fid)
            if fut is not None:
                # One of our own, back from the store's queue.
                if not fut.away or fut.state is not QUEUED:
                    self._ops.append(Ack(a.entry))  # an entry it no longer needs
                    continue
                fut.away = False
                fut.entry = a.entry
                fut.attempt = a.attempt
            else:
                t = a.task
                fut = FutureRecord(
                    t.fid, a.owner, t.parent, t.depth, t.frames, max_losses=t.max_losses
                )
                fut.fire(Event.SUBMIT)
                fut.entry, fut.attempt = a.entry, a.attempt
                fut.losses, fut.lost_on = a.losses, list(a.lost_on)
                self.futures[t.fid] = fut
            self._push(fut)

    def withdrawn(self, fid: int, holder: str | None) -> None:
        """What became of a :class:`Withdraw`: ``None``: taken out of the
        store's queue; a name: that peer holds it; ``""``: it is no longer
        there (done, or queued again under another entry)."""
        why = self._withdrawing.pop(fid, None)
        fut = self.futures.get(fid)
        if why is None or fut is None or not fut.away or fut.state is not QUEUED:
            return
        owner = fut.owner
        if holder is None:
            fut.entry = b""
            if why == "cancel":
                fut.fire(Event.CANCEL)
                self._release(fut)
                if self.peers.get(owner) is not None:
                    self._outbox.append((owner, m.CancelReply(fid, True)))
            else:
                self._fail(fut, f"future {fid:#x} cannot run: {why}")
            return
        if holder:
            self._taken_elsewhere(fut, holder.encode())
            if why == "cancel":
                # Only the worker knows whether it has started it: ask.
                self._cancelling[fid] = owner
                self._outbox.append((fut.holder or b"", m.Cancel(fid)))
                return
        if why == "cancel" and self.peers.get(owner) is not None:
            # Out of the queue already: its entry went in the same commit as
            # the word of it that is in our mailbox now (its outcome, or its
            # hand-back), and that word answers the cancel.
            self._cancelling[fid] = owner

    def wants(self) -> int:
        """How many futures this policy's workers would take now: on a
        store, how many entries to take (none while a suspect waits here
        for a worker to be free, or a worker holds one)."""
        if self._held_back:
            return 0
        credit = sum(
            p.credit
            for p in self.peers.values()
            if p.credit > 0 and p.state in (IDLE, BUSY) and not p.suspects
        )
        return max(0, credit - sum(1 for e in self._queue if self._is_queued(e[2])))

    def could_give(self) -> bool:
        """Whether a hungry worker elsewhere could have something of ours:
        spare futures of a local worker's own, or futures it holds and has
        not started behind one that has run long enough to say it started
        (short futures are done before a hand-over would pay off)."""
        return any(self._givers())

    def _givers(self) -> list[PeerRecord]:
        futures = self.futures
        return [
            p
            for p in self.workers
            if not p.suspects
            and (
                (p.spare >= 2 and not p.stealing)
                or (
                    any(futures[f].state in (RUNNING, WAITING) for f in p.holding)
                    and self._unstarted(p)
                )
            )
        ]

    def someone_hungry(self) -> None:
        """On a store: a worker elsewhere has nothing to do. Ask our workers
        for half their spare futures, or else back the newest half of the
        futures they hold and have not started (they would run them last)."""
        givers = self._givers()
        self._steal(1 << 30)
        for holder in givers:
            if holder.spare < 2:
                unstarted = self._unstarted(holder)
                self._recall_from(holder, max(1, len(unstarted) // 2))

    # -- the clock ------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Time passed: heartbeats to local peers every ``heartbeat_interval``;
        local peers silent past ``heartbeat_timeout`` are lost (their futures
        run again elsewhere); programs waiting for workers are welcomed after
        ``join_timeout``; with no worker left for ``heartbeat_timeout``, queued
        futures fail instead of waiting for ever; on a store, a suspect that
        waited that long for a worker here to be free goes back to the queue."""
        self.now = now
        if self.parked and (self._enough_workers() or now > self._join_deadline):
            if not self._enough_workers():
                log.warning(
                    "%d of %d workers joined within %g s; starting with those",
                    len(self.workers) + self.remote_workers,
                    self.expected_workers,
                    self.join_timeout,
                )
            self.release_parked()
        if now - self._last_beat >= self.heartbeat_interval:
            self._last_beat = now
            self.broadcast(m.Heartbeat(0))
        if not self.shared_queue:
            # (On a store, the one local peer is this process's own runtime.)
            for peer, rec in list(self.peers.items()):
                silent = now - rec.heard
                if silent > self.heartbeat_timeout and not rec.in_process:
                    log.warning(
                        "%s has been silent for %.0f s (heartbeat_timeout); counting it as lost",
                        rec.name,
                        silent,
                    )
                    self.leave(peer)
                    self._lost_peers.append(peer)
        if self.workers or self.remote_workers:
            self._workers_seen = now
        elif not self.wait_for_workers and now - self._workers_seen > self.heartbeat_timeout:
            failed = self.fail_queued(
                f"no worker has been connected for {now - self._workers_seen:.0f} s"
            )
            if failed:
                log.error("no worker left: %d queued future(s) failed", failed)
        for fid, since in list(self._held_back.items()):
            fut = self.futures.get(fid)
            if fut is None or not self._is_queued(fid):
                self._held_back.pop(fid, None)
            elif self.shared_queue and now - since > self.heartbeat_timeout:
                log.info("future %#x goes back to the queue: no worker here was free for it", fid)
                self._queue_again(fut)

    def take_lost(self) -> list[bytes]:
        """The local peers :meth:`tick` counted as lost since the last call."""
        lost, self._lost_peers = self._lost_peers, []
        return lost

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
                    if fut is not None and fut.state is QUEUED and not fut.away:
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
        if self.shared_queue and len(queue) > len(held_back):
            # On a store, what no worker here takes now goes back to the
            # store's queue, for workers elsewhere (a suspect that came with
            # them closed ours).
            kept = {e[2] for e in held_back}
            for entry in queue:
                fut = futures.get(entry[2])
                if fut is not None and entry[2] not in kept and self._is_queued(entry[2]):
                    self._queue_again(fut)
            self._queue = queue = held_back[:]
            heapq.heapify(queue)
        for rec in closed:
            self._take_own(rec, batches)
        for peer, tasks in batches.items():
            log.debug("handed %d future(s) to %s", len(tasks), self.peers[peer].name)
            total = self._batch_bytes[peer]
            for batch in m.split_by_size(tasks, self.max_message_size, total=total):
                self._outbox.append((peer, m.Tasks(tuple(batch))))
        if self.shared_queue:
            return  # hunger elsewhere is the store's to tell (someone_hungry)
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
        task = fut.task
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
            self._held_back.setdefault(fut.fid, self.now)
            if takers:
                # Given nothing new, and asked back what it has not started,
                # it will hold nothing before long.
                kept = min(takers, key=lambda p: (len(p.holding), p.index))
                takers.remove(kept)
                closed.append(kept)
                log.debug("keeping %s for suspect future %#x", kept.name, fut.fid)
                self._recall_from(kept, len(kept.holding))
            return
        self._held_back.pop(fut.fid, None)
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

    def _unstarted(self, holder: PeerRecord) -> list[int]:
        """Futures ``holder`` holds and has surely not started, newest first
        (the oldest it holds is the one it runs), not already asked back."""
        futures, asked = self.futures, self._recalling
        return [
            fid
            for fid in list(holder.holding)[:0:-1]
            if futures[fid].state is ASSIGNED and fid not in asked and fid not in self._cancelling
        ]

    def _recall(self, count: int) -> None:
        """Ask busy workers to hand back up to ``count`` futures they hold but
        have not started (the newest first: the last a worker would start)."""
        for holder in sorted(self.workers, key=lambda p: -len(p.holding)):
            if count <= 0 or len(holder.holding) < 2:
                return
            count -= self._recall_from(holder, count)

    def _recall_from(self, holder: PeerRecord, count: int) -> int:
        """Ask ``holder`` back up to ``count`` unstarted futures; how many were asked."""
        fids = self._unstarted(holder)[:count]
        for fid in fids:
            log.info("asking %s to hand back future %#x", holder.name, fid)
            self._recalling.add(fid)
            self._outbox.append((holder.peer, m.Recall(fid)))
        return len(fids)

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

    def take_store_ops(self) -> list[StoreOp]:
        """On a store: what to do there, in order, in one commit with the
        mail of :meth:`take_outbox` where the operation allows."""
        ops, self._ops = self._ops, []
        return ops

    def broadcast(self, msg: m.Message) -> None:
        for peer, rec in self.peers.items():
            if rec.state is not GONE:
                self._outbox.append((peer, msg))

    @property
    def workers(self) -> list[PeerRecord]:
        return [p for p in self.peers.values() if p.is_worker and p.state is not GONE]

    @property
    def queued(self) -> int:
        """Futures in this policy's queue (not the store's)."""
        return sum(1 for f in self.futures.values() if f.state is QUEUED and not f.away)
