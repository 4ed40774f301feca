"""One process's connection to a run: the futures it owns and the constants it sees.

Every process that submits futures holds one :class:`Runtime`: the root
program and embedding programs hold a :class:`RootRuntime` (a background
thread owns the transport endpoint and delivers results, so the program's
threads may block on futures and ``asyncio`` callbacks fire), workers hold
the greenlet-driven runtime of :mod:`scoop_core.worker`. Both share the
bookkeeping here: future ids, submit batches, cancel and constant round
trips, and turning outcomes back into results or exceptions.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import InvalidStateError
from typing import Any

from scoop_core import activity, exit_guard
from scoop_core import future as future_module
from scoop_core import messages as m
from scoop_core.call_costs import CallCosts
from scoop_core.calls import Call, Chunk, ChunkResult, RemoteException, from_wire, to_wire
from scoop_core.errors import (
    ConstantError,
    ConstantNotFound,
    LaunchError,
    NotLaunchedError,
    ProtocolError,
    SerializationError,
    WorkerLostError,
)
from scoop_core.future import Event, Future, new_event
from scoop_core.interfaces import Endpoint, Frame, Serializer

log = logging.getLogger("scoop.runtime")

MISSING: Any = object()

INITIALIZER = "__scoop_initializer__"
"""The run constant holding an Executor's ``(initializer, initargs)``: each
worker (joined ones and replacements included) runs it before its first
future. A constant, not an environment variable: it reaches every worker
through the run, and workers that join a Redis run later too."""

INITIALIZER_FAILED = "__scoop_initializer_failed__:"
"""The prefix of the constant a worker whose initializer raised sets (its
name follows) to the exception's text, for the Executor's error."""

LAUNCH_HINT = (
    "launch the program with `python -m scoop yourprogram.py` (or `scoop run yourprogram.py`), "
    "or start a run inside it with `with scoop_core.run() as run:` (in a notebook: "
    "`run = scoop_core.run()`)"
)


def short_repr(obj: Any, limit: int = 80) -> str:
    try:
        text = repr(obj)
    except Exception:
        text = f"<{type(obj).__qualname__} object>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _part(chunk: Chunk, start: int, stop: int) -> Chunk:
    """Items ``start:stop`` of ``chunk``, as a chunk of their own."""
    return dataclasses.replace(chunk, items=chunk.items[start:stop])


def items_of(fut: Future) -> int:
    """How many futures ``fut`` is to the program: a map chunk's items, else one."""
    call = fut.call
    return 1 if call is None else call[1]


ALONE_LOSSES = 2
"""How often each item of a lost chunk, run alone, may be lost with its
worker: the first loss may be shared with the item at fault (they can meet
on one worker again); after it each runs alone, so a second one is its own."""


class ChunkCut(SerializationError):
    """The results of a chunk of a map did not fit one message: the worker
    sent back the first ``done`` values, and the owner runs the other items
    again as a new chunk (it keeps the chunks of a map it has in flight)."""

    def __init__(self, message: str, done: int) -> None:
        super().__init__(message)
        self.done = done

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (str(self), self.done)


def describe_unpicklable(
    payload: Call | Chunk, serializer: Serializer, exc: Exception
) -> SerializationError:
    """A SerializationError that names the piece of ``payload`` that cannot be sent."""
    fn = payload.fn
    fname = getattr(fn, "__qualname__", None) or short_repr(fn)
    parts: list[tuple[str, Any]] = [(f"the function {fname}", fn)]
    if isinstance(payload, Call):
        parts += [(f"argument {i + 1} of {fname}()", a) for i, a in enumerate(payload.args)]
        parts += [(f"keyword argument {k}= of {fname}()", v) for k, v in payload.kwargs.items()]
    else:
        for n, item in enumerate(payload.items):
            parts += [
                (f"item {n} (argument {i + 1}) of the map over {fname}", a)
                for i, a in enumerate(payload.args(item))
            ]
        if payload.reducer is not None:
            parts.append(("the reduction function", payload.reducer))
    for what, obj in parts:
        try:
            serializer.dumps(obj)
        except Exception as inner:
            return SerializationError(
                f"cannot send {what} to a worker: {short_repr(obj)} cannot be pickled "
                f"({type(inner).__name__}: {inner}). Pass something picklable, for example "
                "plain data, or a top-level function instead of a local one"
            )
    return SerializationError(
        f"cannot send the call to {fname} to a worker: {type(exc).__name__}: {exc}"
    )


class Runtime:
    """The bookkeeping a process needs to own futures, without the I/O loop."""

    role = m.CLIENT

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        key: bytes,
        serializer: Serializer,
        name: str,
        workers: int = 1,
        max_message_size: int | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.key = key
        # Signs what we send (with our name and a sequence number) and checks
        # that what we receive comes from the broker and is no replay.
        self.codec = m.Codec(key, name.encode(), max_size=max_message_size)
        self.serializer = serializer
        self.name = name
        self.workers = max(1, workers)  # a hint for chunk sizes
        self.index = 0
        self.closed = False
        self._seq = 0
        self._seq_lock = threading.Lock()
        self._owned: dict[int, Future] = {}
        # Chunks of maps in flight, to run again the items whose results
        # did not fit the chunk's message (see ChunkCut).
        self._chunks: dict[int, tuple[Chunk, int]] = {}  # and its max_losses
        self._replies: dict[tuple[str, Any], Future] = {}
        # How long each function's calls take on workers, from their outcomes.
        self.costs = CallCosts()
        self.constants: dict[str, Any] = {}
        self._const_events: list[Event] = []
        self.shutdown_reason = ""
        # One bound method for every future, not a new one each.
        self._canceller = self.cancel
        # What this process did, for the run's reports (and its trace).
        self.activity = activity.here = activity.Activity(name, self.role)
        self.activity.run_size(self.workers + 1)

    def owned(self) -> list[Future]:
        """The futures this process submitted that have no outcome yet."""
        return list(self._owned.values())

    # -- to be provided by the process kind ---------------------------------

    @property
    def slots(self) -> int:
        return 0

    def _send(self, msg: m.Message) -> None:
        raise NotImplementedError

    def current_parent(self) -> tuple[int, int]:
        """(future id, depth) of the future the caller runs in; (0, -1) outside one."""
        return 0, -1

    def in_io_thread(self) -> bool:
        return False

    # -- handshake ------------------------------------------------------------

    def handshake(self, timeout: float) -> None:
        """Say hello and wait for the broker's welcome (before any I/O loop runs)."""
        hello = m.Hello(self.role, self.name, os.getpid(), socket.gethostname(), self.slots)
        said = time.time_ns()
        self.endpoint.send(self.codec.encode(hello))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LaunchError(
                    f"{self.name}: no answer from the broker within {timeout:g} s; "
                    "is it running, and is this the right address?"
                )
            frames = self.endpoint.recv(left)
            if frames is None:
                continue
            try:
                msg = self.codec.decode(frames, m.BROKER_IDENTITY)
            except m.VersionMismatch as exc:
                raise LaunchError(
                    f"{self.name}: the broker speaks another protocol: {exc}"
                ) from None
            if isinstance(msg, m.Welcome):
                self.activity.clock_offset = activity.offset_from(msg, said, time.time_ns())
                self._on_welcome(msg)
                return
            if isinstance(msg, m.Refused):
                raise LaunchError(f"{self.name}: the broker refused us: {msg.reason}")
            self.handle(msg)

    def _on_welcome(self, msg: m.Welcome) -> None:
        self.index = msg.index
        for const in msg.constants:
            self._store_const(const.name, const.frames)

    # -- submitting -------------------------------------------------------------

    def _next_fid(self) -> int:
        with self._seq_lock:
            self._seq += 1
            return (self.index << 32) | self._seq

    def dumps_payload(self, payload: Call | Chunk) -> list[Frame]:
        try:
            return self.serializer.dumps(to_wire(payload))
        except Exception as exc:
            raise describe_unpicklable(payload, self.serializer, exc) from exc

    def submit(self, payloads: Sequence[Call | Chunk], *, max_losses: int = 0) -> list[Future]:
        """Send the payloads as new futures in one message; return their futures."""
        if self.closed:
            raise NotLaunchedError(f"the pool is shut down ({self.shutdown_reason or 'closed'})")
        parent, depth = self.current_parent()
        tasks, futures, sent, split = [], [], [], []
        limit = m.payload_limit(self.codec.max_size)
        for payload in payloads:
            frames = self.dumps_payload(payload)
            nbytes = m.frames_nbytes(frames)
            if limit is not None and nbytes > limit:
                if isinstance(payload, Chunk) and not payload.fold and len(payload.items) > 1:
                    # Items that fit one by one but not as one chunk: in halves.
                    fut = Future(self._next_fid())
                    fut.nbytes = nbytes
                    split.append((fut, payload))
                    futures.append(fut)
                    continue
                # Raises: over the limit that check_size applies too.
                self.codec.check_size(
                    frames, f"the call to {getattr(payload.fn, '__qualname__', payload.fn)}"
                )
            fut = Future(self._next_fid(), self._canceller)
            fut.nbytes = nbytes
            tasks.append(m.Task(fut.fid, parent, depth + 1, tuple(frames), max_losses))
            futures.append(fut)
            sent.append((fut, payload))
        count = 0
        for fut, payload in sent:
            self._owned[fut.fid] = fut
            items = len(payload.items) if isinstance(payload, Chunk) else 1
            fut.call = payload.fn, items
            count += items
            if isinstance(payload, Chunk) and not payload.fold:
                self._chunks[fut.fid] = (payload, max_losses)
        act = self.activity
        act.submitted += count
        if act.events is not None:
            self._trace_submits([fut.fid for fut, _ in sent])
        self._send_tasks(tasks)
        for fut, chunk in split:
            half = len(chunk.items) // 2
            halves = [_part(chunk, 0, half), _part(chunk, half, len(chunk.items))]
            self._join(fut, [], self.submit(halves, max_losses=max_losses))
        return futures

    def _send_tasks(self, tasks: list[m.Task]) -> None:
        self._send(m.Submit(tuple(tasks)))

    def _trace_submits(self, fids: Iterable[int]) -> None:
        """Trace the submits of ``fids`` from where the caller runs."""
        act = self.activity
        assert act.events is not None
        now, lane = time.perf_counter(), self.submit_lane()
        events = act.events
        for fid in fids:
            events.extend((activity.SUBMIT, now, fid, lane))

    def submit_lane(self) -> int:
        """The trace lane of the code that calls :meth:`submit`."""
        return self.activity.thread_lane()

    def cancel(self, fid: int) -> bool:
        """Ask the broker to cancel future ``fid``; True if it will never run."""
        if fid not in self._owned or self.closed:
            return False
        if self.in_io_thread():
            # Called from a done-callback: the answer would arrive in this
            # very thread, so ask without waiting; the future is marked
            # cancelled when the broker agrees.
            self.cancel_nowait([fid])
            return False
        reply = self._expect(("cancel", fid))
        self._send(m.Cancel(fid))
        return bool(reply.result())

    def cancel_nowait(self, fids: Iterable[int]) -> None:
        """Ask for cancellation without waiting for the answers (used when a
        ``map`` is abandoned)."""
        if not self.closed:
            for fid in fids:
                if fid in self._owned:
                    self._send(m.Cancel(fid))

    def _expect(self, key: tuple[str, Any]) -> Future:
        reply = Future()
        self._replies[key] = reply
        return reply

    # -- constants ------------------------------------------------------------

    def set_const(self, name: str, value: Any) -> None:
        if name in self.constants:
            raise ConstantError(ConstantError.defined_twice(name))
        try:
            frames = self.serializer.dumps(value)
        except Exception as exc:
            raise SerializationError(
                f"cannot share constant {name!r}: {short_repr(value)} cannot be pickled ({type(exc).__name__}: {exc})"
            ) from exc
        self.codec.check_size(frames, f"shared constant {name!r}")
        reply = self._expect(("const", name))
        self._send(m.SetConst(name, tuple(frames)))
        error = reply.result()
        if error:
            raise ConstantError(error)
        self.constants[name] = value

    def get_const(self, name: str, timeout: float | None, default: Any = MISSING) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        while name not in self.constants:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                if default is not MISSING:
                    return default
                known = ", ".join(sorted(self.constants)) or "none"
                raise ConstantNotFound(
                    f"no shared constant named {name!r} (defined: {known}); define it with "
                    f"shared.setConst({name}=...) before the futures that read it"
                )
            event = new_event()
            self._const_events.append(event)
            try:
                if name not in self.constants:
                    event.wait(left)
            finally:
                self._const_events.remove(event)
        return self.constants[name]

    def _store_const(self, name: str, frames: Sequence[Frame]) -> None:
        try:
            self.constants[name] = self.serializer.loads(frames)
        except Exception:
            log.exception("shared constant %r could not be read here", name)
            return
        for event in list(self._const_events):
            event.set()

    # -- incoming -----------------------------------------------------------

    def handle(self, msg: m.Message) -> None:
        """Apply one message from the broker."""
        if isinstance(msg, m.Results):
            self._on_results(msg.outcomes)
        elif isinstance(msg, m.Started):
            for fid in msg.fids:
                fut = self._owned.get(fid)
                if fut is not None and fut._state == "PENDING":
                    fut.set_running_or_notify_cancel()
        elif isinstance(msg, m.CancelReply):
            if msg.cancelled:
                fut = self._forget(msg.fid)
                if fut is not None:
                    self.activity.cancelled += items_of(fut)
                    fut.mark_cancelled()
            reply = self._replies.pop(("cancel", msg.fid), None)
            if reply is not None:
                reply.set_result(msg.cancelled)
        elif isinstance(msg, m.ConstReply):
            reply = self._replies.pop(("const", msg.name), None)
            if reply is not None:
                reply.set_result(msg.error)
        elif isinstance(msg, m.Const):
            self._store_const(msg.name, msg.frames)
        elif isinstance(msg, m.Shutdown):
            self._on_shutdown(msg.reason)
        elif isinstance(msg, m.Refused):
            log.error("the broker refused a message from %s: %s", self.name, msg.reason)
        elif isinstance(msg, m.Heartbeat):
            pass
        else:
            raise ProtocolError(f"{self.name} cannot handle {type(msg).__name__}")

    def _on_results(self, outcomes: Iterable[m.Outcome]) -> None:
        act = self.activity
        for out in outcomes:
            chunk = self._chunks.get(out.fid)
            fut = self._forget(out.fid)
            if fut is None:
                continue
            fut.elapsed = out.elapsed
            self._learn(fut, out.status)
            if out.status == m.CANCELLED:
                act.cancelled += items_of(fut)
                fut.mark_cancelled()
                continue
            if out.status == m.LOST:
                reason = bytes(memoryview(out.frames[0])).decode() if out.frames else ""
                lost = WorkerLostError(reason or f"future {out.fid:#x} was lost with its worker")
                if chunk is not None and len(chunk[0].items) > 1 and not chunk[0].fold:
                    self._run_alone(fut, chunk[0], lost)
                else:
                    act.failed += items_of(fut)
                    fut.set_exception(lost)
                continue
            if out.status != m.OK:
                act.failed += items_of(fut)
            try:
                value = self.serializer.loads(out.frames)
            except Exception as exc:
                if out.status == m.OK:
                    act.failed += items_of(fut)
                fut.set_exception(
                    SerializationError(
                        f"the result of future {out.fid:#x} arrived but cannot be read here: "
                        f"{type(exc).__name__}: {exc}"
                    )
                )
                continue
            if out.status == m.OK:
                if (
                    chunk is not None
                    and isinstance(value, ChunkResult)
                    and value.error is not None
                    and isinstance(value.error.exc, ChunkCut)
                ):
                    self._run_rest(fut, chunk, value)
                else:
                    if isinstance(value, ChunkResult) and value.error is not None:
                        act.failed += 1  # the item that raised; those after it did not run
                    fut.set_result(value)
            elif isinstance(value, RemoteException):
                fut.set_exception(value.rebuild())
            else:
                fut.set_exception(ProtocolError(f"future {out.fid:#x} failed with {value!r}"))

    def _learn(self, fut: Future, status: int) -> None:
        """Remember how long the call of ``fut`` took, or that it was lost."""
        if fut.call is None:
            return
        fn, items = fut.call
        if status == m.OK:
            self.costs.learn(fn, fut.elapsed / items)
        elif status == m.LOST:
            self.costs.keep_on_workers(fn)

    def _forget(self, fid: int) -> Future | None:
        """Stop tracking future ``fid`` (it ended); the future, if it was ours."""
        self._chunks.pop(fid, None)
        fut = self._owned.pop(fid, None)
        if fut is not None:
            self.activity.ended += items_of(fut)
        return fut

    def _run_rest(self, fut: Future, chunk: tuple[Chunk, int], got: ChunkResult) -> None:
        """A chunk came back cut (ChunkCut): run the items it did not bring
        back as a new chunk, then finish ``fut`` with all the values."""
        payload, max_losses = chunk
        rest = _part(payload, len(got.values), len(payload.items))
        log.info(
            "%s: the results of a chunk of %d items did not fit one message; "
            "running the last %d again",
            self.name,
            len(payload.items),
            len(rest.items),
        )
        try:
            follow = self.submit([rest], max_losses=max_losses)
        except Exception as exc:
            fut.set_exception(exc)
            return
        self._join(fut, got.values, follow)

    def _run_alone(self, fut: Future, chunk: Chunk, lost: WorkerLostError) -> None:
        """A chunk of a map was lost with its workers ``max_losses`` times: one
        of its items kills them, and the others only shared its fate. Run each
        item alone, so that only the one at fault fails (at its place in the
        map); the others' values come back as if the chunk had not been lost."""
        log.warning(
            "%s: a chunk of %d items of a map was lost with its workers; "
            "running each item alone so that only the one at fault fails",
            self.name,
            len(chunk.items),
        )
        alone = [_part(chunk, i, i + 1) for i in range(len(chunk.items))]
        try:
            parts = self.submit(alone, max_losses=ALONE_LOSSES)
        except Exception:
            fut.set_exception(lost)
            return
        self._join(fut, [], parts, lost_in_place=True)

    def _join(
        self, fut: Future, head: list[Any], parts: list[Future], *, lost_in_place: bool = False
    ) -> None:
        """Once every one of ``parts`` (futures of consecutive pieces of one
        chunk) is done, finish ``fut`` as that chunk: ``head``, then their
        values in order, up to the first error. With ``lost_in_place``, a
        part lost with its workers ends the values there, as an item that
        raised would, instead of failing the whole chunk."""
        left = [len(parts)]
        lock = threading.Lock()

        def one_done(_: Any) -> None:
            with lock:
                left[0] -= 1
                if left[0]:
                    return
            values = list(head)
            for part in parts:
                if part.cancelled():
                    fut.mark_cancelled()
                    return
                error = part.exception()
                if lost_in_place and isinstance(error, WorkerLostError):
                    fut.set_result(ChunkResult(values, RemoteException(error, f"{error}\n")))
                    return
                if error is not None:
                    fut.set_exception(error)
                    return
                got: ChunkResult = part.result()
                fut.elapsed += part.elapsed
                values.extend(got.values)
                if got.error is not None:
                    fut.set_result(ChunkResult(values, got.error))
                    return
            fut.set_result(ChunkResult(values, None))

        for part in parts:
            part.add_done_callback(one_done)

    def _on_shutdown(self, reason: str) -> None:
        self.shutdown_reason = reason
        self.closed = True
        error = NotLaunchedError(f"the pool shut down before this future finished ({reason})")
        self.fail_owned(error)
        for reply in self._replies.values():
            if not reply.done():
                reply.set_exception(error)
        self._replies.clear()

    def fail_owned(self, error: BaseException) -> None:
        """Every future of ours not done yet fails with ``error``, now, and
        is forgotten: an outcome that comes later for it is dropped."""
        owned = list(self._owned.values())
        self._owned.clear()
        self._chunks.clear()
        for fut in owned:
            # Its outcome may arrive meanwhile, in the I/O thread: that one stands.
            with contextlib.suppress(InvalidStateError):
                fut.set_exception(error)


class ThreadedRuntime(Runtime):
    """A runtime whose endpoint is owned by one background I/O thread.

    Other threads queue encoded messages and wake it; it sends them and hands
    every incoming message to :meth:`on_io_message`, in the I/O thread. So a
    process stays reachable (cancels answered, results delivered) while its
    main thread runs user code."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        heartbeat_interval: float = 5.0,
        heartbeat_timeout: float = 30.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(endpoint, **kwargs)
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.activity.max_quiet = heartbeat_interval
        self._last_sent = self._last_heard = time.monotonic()
        # Messages, and new futures as bare tasks: the I/O thread sends
        # consecutive tasks as one Submit, so a loop of submit() calls costs a
        # few messages, not one each. One queue keeps the order, and encoding
        # in one thread keeps the sequence numbers in order.
        self._outbox: collections.deque[m.Message | m.Task] = collections.deque()
        self._thread: threading.Thread | None = None
        self._stop = False

    def start(self, timeout: float = 30.0) -> None:
        self.handshake(timeout)
        self._last_heard = self._last_sent = time.monotonic()
        self._thread = threading.Thread(
            target=self._loop, name=f"scoop-{self.name}-io", daemon=True
        )
        self._thread.start()

    def _send(self, msg: m.Message) -> None:
        self._outbox.append(msg)
        self.endpoint.wakeup()

    def in_io_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def _send_tasks(self, tasks: list[m.Task]) -> None:
        self._outbox.extend(tasks)
        self.endpoint.wakeup()

    def _send_pending(self) -> None:
        """In the I/O thread: send what is queued, in order."""
        outbox, endpoint = self._outbox, self.endpoint
        if not outbox:
            return
        batch: list[m.Task] = []
        encoded: list[list[Frame]] = []  # sent together: one round trip where that matters
        while outbox:
            item = outbox.popleft()
            if isinstance(item, m.Task):
                batch.append(item)
                continue
            if batch:
                self._encode_submit(self.not_taken(batch), encoded)
                batch = []
            self._encode(item, encoded)
        if batch:
            self._encode_submit(self.not_taken(batch), encoded)
        if encoded:
            endpoint.send_many(encoded)
        self._last_sent = time.monotonic()

    def not_taken(self, tasks: list[m.Task]) -> list[m.Task]:
        """In the I/O thread, about to send ``tasks``: those still to send
        (a root may have taken some back to run them itself)."""
        return tasks

    def _encode(self, msg: m.Message, encoded: list[list[Frame]]) -> bool:
        """Append the frames of ``msg`` to ``encoded``. A message that cannot
        be encoded is reported (:meth:`unsendable`), never raised: the I/O
        thread outlives it."""
        try:
            encoded.append(self.codec.encode(msg))
        except Exception as exc:
            self.unsendable(msg, exc, encoded)
            return False
        return True

    def unsendable(self, msg: m.Message, exc: Exception, encoded: list[list[Frame]]) -> None:
        """In the I/O thread: ``msg`` could not be encoded (``exc``). Append
        what can be sent instead to ``encoded``; the base class logs it."""
        log.error("%s could not send a %s message: %s", self.name, type(msg).__name__, exc)

    def _encode_submit(self, tasks: list[m.Task], encoded: list[list[Frame]]) -> None:
        """New futures in Submit messages that each fit max_message_size; a
        future that fits no message fails with SerializationError."""
        if not tasks:
            return
        for batch in m.split_by_size(tasks, self.codec.max_size):
            if len(batch) > 1 and self._encode_tasks(batch, encoded):
                continue
            for task in batch:  # alone, or the size estimate was off: one each
                self._encode_tasks([task], encoded)

    def _encode_tasks(self, tasks: list[m.Task], encoded: list[list[Frame]]) -> bool:
        """Append one Submit of ``tasks`` to ``encoded``; if it cannot be
        encoded, False, and a lone task's future fails saying why."""
        try:
            encoded.append(self.codec.encode(m.Submit(tuple(tasks))))
        except Exception as exc:
            if len(tasks) == 1:
                fid = tasks[0].fid
                log.error("%s could not send future %#x: %s", self.name, fid, exc)
                fut = self._forget(fid)
                if fut is not None:
                    self.activity.failed += items_of(fut)
                if fut is not None and not fut.done():
                    fut.set_exception(
                        SerializationError(f"cannot send future {fid:#x} to the broker: {exc}")
                    )
            return False
        return True

    def _keep_alive(self) -> float:
        """Heartbeats: say we live when we have been quiet; notice when the
        broker has been. Returns how long until this needs looking at again."""
        now = time.monotonic()
        if now - self._last_heard > self.heartbeat_timeout:
            self.on_broker_lost(now - self._last_heard)
            return self.heartbeat_interval
        if now - self._last_sent >= self.heartbeat_interval:
            self._send(m.Heartbeat(0))
            self._last_sent = now
        return max(
            0.0, min(self._last_sent + self.heartbeat_interval - now, self.heartbeat_interval)
        )

    def _report(self, *, final: bool = False) -> float:
        """Send this process's report when it is due (see
        :mod:`scoop_core.activity`); returns how long until the next one."""
        act = self.activity
        now = time.perf_counter()
        left = act.report_due(now)
        if left > 0 and not final:
            return left
        report = act.take_report(now, final=final)
        if report is not None:
            self._send(m.Report(*report))
        return act.report_due(now)

    def on_broker_lost(self, silent: float) -> None:
        """The broker has not been heard of for ``silent`` seconds."""
        if not self.closed:
            log.error("%s: no word from the broker for %.0f s; giving up on it", self.name, silent)
            self._on_shutdown(f"no word from the broker for {silent:.0f} s")

    def on_io_message(self, msg: m.Message) -> None:
        raise NotImplementedError

    def io_tick(self) -> float:
        """Called in the I/O thread after each wait; returns the next wait's timeout."""
        return 1.0

    def _loop(self) -> None:
        endpoint = self.endpoint
        timeout = 1.0
        try:
            while True:
                self._send_pending()
                if self._stop:
                    return
                # Sending may have held new tasks back (a root's cheap ones,
                # submitted by a done-callback in this thread): wake up when
                # they are due, not at the end of a wait computed before.
                timeout = min(timeout, self.io_tick())
                frames = endpoint.recv(timeout)
                if frames is not None:
                    self._last_heard = time.monotonic()
                while frames is not None:
                    try:
                        msg = self.codec.decode(frames, m.BROKER_IDENTITY)
                    except ProtocolError as exc:
                        log.warning("%s dropped a message from the broker: %s", self.name, exc)
                    else:
                        try:
                            self.on_io_message(msg)
                        except ProtocolError as exc:
                            log.warning("%s ignored %s: %s", self.name, type(msg).__name__, exc)
                    frames = endpoint.recv(0)
                timeout = min(self.io_tick(), self._keep_alive(), self._report())
        except Exception:
            log.exception("the I/O thread of %s failed", self.name)
            self.on_io_failed()

    def on_io_failed(self) -> None:
        """The I/O thread died: nothing can be sent or heard any more."""
        self._on_shutdown("its I/O thread failed")

    def stop_io(self) -> None:
        """Send what is queued, then stop the I/O thread and close the endpoint."""
        if self._stop:
            return
        self._stop = True
        self.endpoint.wakeup()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)
        self.endpoint.close()


class RootRuntime(ThreadedRuntime):
    """The runtime of a root or embedding program: results are delivered,
    and done-callbacks run, in the I/O thread (as in ``concurrent.futures``).

    With ``run_here``, a thread of the program that waits for a future not
    sent yet runs it itself, if its function is known to be cheap (see
    :mod:`scoop_core.call_costs`): a loop that submits a small call and
    waits for it then costs a function call, not a round trip through the
    broker and a worker. The future runs on a copy of its arguments (its
    pickled call), as on a worker. The I/O thread holds such a future back
    for up to ``HOLD_SECONDS`` before it sends it, so that the program's
    thread, busy submitting it, has the time to come and wait for it.

    Tiny futures (:data:`~scoop_core.call_costs.TINY_SECONDS`) cost more
    to send than to run: the root keeps at most ``MAX_TINY_ON_WORKERS`` of
    them sent and unfinished, and holds the others back. A thread that
    waits for a future already sent runs held ones meanwhile, newest first
    (the I/O thread sends the oldest as results come back), as SCOOP's
    root does: a program that submits thousands of small calls and then
    reads them has the root and the workers share them.
    """

    role = m.ROOT

    HOLD_SECONDS = 0.001

    MAX_TINY_ON_WORKERS = 256
    """Enough to keep the workers busy: the broker moves a few thousand
    futures a second, so more tiny futures on the workers would only wait
    in queues, while the root could run them for less than sending costs."""

    def __init__(self, endpoint: Endpoint, *, run_here: bool = True, **kwargs: Any) -> None:
        super().__init__(endpoint, **kwargs)
        self.runs_here = run_here
        # Tasks a waiting thread may still take, by future id, with when
        # they were submitted; a taken id moves to _taken, and the I/O
        # thread drops its task instead of sending it. One lock, so a task
        # is either sent or run here, never both.
        # With when they were submitted, and whether they are tiny.
        self._unsent: dict[int, tuple[m.Task, float, bool]] = {}
        self._taken: set[int] = set()
        self._take_lock = threading.Lock()
        # I/O thread only: the tasks it holds back a moment, oldest first,
        # with when they were submitted.
        self._held: list[tuple[m.Task, float]] = []
        # Tiny tasks held back until fewer are on the workers, oldest first
        # (under _take_lock: a waiting thread takes the newest).
        self._waiting: collections.deque[m.Task] = collections.deque()
        # Ids of the tiny futures sent and not finished (added by the I/O
        # thread, dropped wherever a future ends: see _forget).
        self._tiny_on_workers: set[int] = set()
        self._runner = self._run_here  # one bound method for every future
        if self.activity.events is not None:
            future_module.waits = self.activity.waited  # the root's waits, on its tracks

    def _send_tasks(self, tasks: list[m.Task]) -> None:
        if self.runs_here:
            # Registered before the I/O thread can see the tasks.
            here = []
            for task in tasks:
                fut = self._owned.get(task.fid)
                if fut is not None and fut.call is not None and self.costs.runs_here(*fut.call):
                    fut.run_here = self._runner
                    here.append((task, self.costs.is_tiny(*fut.call)))
            if here:
                now = time.monotonic()
                with self._take_lock:
                    for task, tiny in here:
                        self._unsent[task.fid] = (task, now, tiny)
        super()._send_tasks(tasks)

    def _send_pending(self) -> None:
        held = self._held
        if held and (self._stop or time.monotonic() - held[0][1] >= self.HOLD_SECONDS):
            # The oldest is due: all are looked at again, before what came after.
            self._outbox.extendleft(reversed([task for task, _ in held]))
            self._held = []
        room = self.MAX_TINY_ON_WORKERS - len(self._tiny_on_workers)
        if self._waiting and (room > 0 or self._stop):
            with self._take_lock:
                waiting = self._waiting
                count = len(waiting) if self._stop else min(room, len(waiting))
                leaving = [waiting.popleft() for _ in range(count)]
            self._outbox.extendleft(reversed(leaving))
        super()._send_pending()

    def not_taken(self, tasks: list[m.Task]) -> list[m.Task]:
        if not (self._unsent or self._taken):
            return tasks
        now = time.monotonic()
        kept = []
        on_workers = self._tiny_on_workers
        with self._take_lock:
            for task in tasks:
                fid = task.fid
                if fid in self._taken:
                    self._taken.discard(fid)
                    continue
                unsent = self._unsent.get(fid)
                if unsent is not None and not self._stop:
                    if now - unsent[1] < self.HOLD_SECONDS:
                        self._held.append((task, unsent[1]))
                        continue
                    if unsent[2]:
                        if len(on_workers) >= self.MAX_TINY_ON_WORKERS:
                            self._waiting.append(task)
                            continue
                        on_workers.add(fid)
                self._unsent.pop(fid, None)
                kept.append(task)
        return kept

    def _forget(self, fid: int) -> Future | None:
        self._tiny_on_workers.discard(fid)
        return super()._forget(fid)

    def io_tick(self) -> float:
        if not self._held:
            return super().io_tick()
        # Wake up when the oldest held task is due to leave.
        return max(0.0, self._held[0][1] + self.HOLD_SECONDS - time.monotonic())

    def _take(self, fut: Future) -> m.Task | None:
        """``fut``'s task if it was not sent yet (it will not be: it is ours now)."""
        with self._take_lock:
            unsent = self._unsent.pop(fut.fid, None)
            if unsent is None:
                return None
            self._taken.add(fut.fid)
        fut.run_here = None
        return unsent[0]

    def _take_waiting(self) -> tuple[Future, m.Task] | None:
        """The newest tiny future held back for want of room on the workers,
        and its task, taken to run here; None if there is none."""
        found = None
        given_back = []
        with self._take_lock:
            while self._waiting and found is None:
                task = self._waiting.pop()
                fid = task.fid
                if self._unsent.pop(fid, None) is not None:
                    fut = self._owned.get(fid)
                    if fut is not None:
                        fut.run_here = None
                        found = fut, task
                elif fid in self._taken:
                    self._taken.discard(fid)  # a thread took it for itself
                else:
                    given_back.append(task)  # it failed here: it goes to a worker
        if given_back:
            super()._send_tasks(given_back)
        return found

    def _run_here(self, fut: Future, *, help_out: bool = False) -> bool:
        """Run ``fut`` in the calling thread if it has not been sent yet;
        True if it did (``fut`` is then done). If it was sent, and
        ``help_out``, run tiny futures held back until ``fut`` is done;
        True if it is."""
        if self.in_io_thread():
            return False  # a done-callback: results must keep flowing
        task = self._take(fut)
        if task is None:
            while help_out and not fut.done():
                other = self._take_waiting()
                if other is None:
                    break
                self._run_task(*other)
            return fut.done()
        return self._run_task(fut, task)

    def _run_task(self, fut: Future, task: m.Task) -> bool:
        """Run ``fut``'s ``task``, taken back from the I/O thread, here; True
        if it ran (``fut`` is done), False if it was sent after all."""
        if not fut.set_running_or_notify_cancel():
            self._forget(fut.fid)
            return True
        act = self.activity
        act.running += 1
        start = time.perf_counter()
        try:
            with exit_guard.guarded():
                value = from_wire(self.serializer.loads(task.frames)).run()
            failed = isinstance(value, ChunkResult) and value.error is not None
        except KeyboardInterrupt as exc:
            self._done_here(fut, start)
            act.failed += 1
            fut.set_exception(exc)
            raise
        except exit_guard.ExitInFuture as exc:
            # It would have ended the root.
            log.warning(
                "%s: future %#x called os._exit(%s) in the root; sending it to a worker",
                self.name,
                fut.fid,
                exc.status,
            )
            failed = True
        except BaseException as exc:
            log.debug(
                "%s: future %#x failed in the root (%r); sending it to a worker",
                self.name,
                fut.fid,
                exc,
            )
            failed = True
        if failed:
            act.running -= 1
            # What fails here may run on a worker (a name only workers define,
            # say), and what would end the root ends a worker there: the
            # worker's outcome is the one that counts, as without
            # root_runs_futures, and the function stays on the workers.
            if fut.call is not None:
                self.costs.keep_on_workers(fut.call[0])
            self._give_back(task)
            return False
        self._done_here(fut, start)
        self._learn(fut, m.OK)
        fut.set_result(value)
        return True

    def _give_back(self, task: m.Task) -> None:
        """Send ``task`` after all, though a thread took it."""
        with self._take_lock:
            first_still_queued = task.fid in self._taken
            self._taken.discard(task.fid)
        if first_still_queued:
            self.endpoint.wakeup()  # it leaves as any other task
        else:
            super()._send_tasks([task])

    def _done_here(self, fut: Future, start: float) -> None:
        """``fut`` ran here from ``start`` (``time.perf_counter()``)."""
        fut.elapsed = elapsed = time.perf_counter() - start
        act = self.activity
        act.running -= 1
        items = items_of(fut)
        act.ran += items
        act.busy += elapsed
        if act.events is not None:
            lane = act.thread_lane()
            fn = act.name_id(fut.call[0] if fut.call is not None else None)
            act.events.extend(
                (activity.RUN, start, elapsed, fut.fid, 0, fn, items, fut.nbytes, 0, m.OK, lane)
            )
        self._forget(fut.fid)

    def cancel(self, fid: int) -> bool:
        return self._cancel_unsent(fid) or super().cancel(fid)

    def cancel_nowait(self, fids: Iterable[int]) -> None:
        super().cancel_nowait([fid for fid in fids if not self._cancel_unsent(fid)])

    def _cancel_unsent(self, fid: int) -> bool:
        """Cancel future ``fid`` here if it was never sent: nobody else will run it."""
        fut = self._owned.get(fid)
        if fut is None or fut.run_here is None or self._take(fut) is None:
            return False
        self._forget(fid)
        self.activity.cancelled += items_of(fut)
        fut.mark_cancelled()
        return True

    def on_io_message(self, msg: m.Message) -> None:
        self.handle(msg)

    def close(self, reason: str = "done") -> None:
        """Say goodbye to the broker and stop the I/O thread. Idempotent."""
        if self._stop:
            return
        if not self.closed:
            self._report(final=True)
            self._send(m.Bye(reason))
        self.closed = True
        self.stop_io()


_current: Runtime | None = None


def current() -> Runtime | None:
    return _current


def set_current(runtime: Runtime | None) -> None:
    global _current
    _current = runtime


def require(what: str) -> Runtime:
    rt = _current
    if rt is None or rt.closed:
        raise NotLaunchedError(f"{what} needs a running SCOOP pool: {LAUNCH_HINT}")
    return rt
