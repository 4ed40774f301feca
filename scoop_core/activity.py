"""What this process did: counters always, trace events when the run is traced.

Every root and worker keeps one :class:`Activity` (:data:`here`). Its
counters are a few integer additions per future, and cost nothing worth
measuring; with ``--trace`` (:data:`TRACING`) it also buffers one small
tuple per event: a future run, a submit, a hand-over, a wait. Every
:data:`REPORT_INTERVAL` the runtime's I/O thread sends what changed in a
:class:`~scoop_core.messages.Report`: the counters, and the events buffered
since the last report packed in one frame; and once more when the process
leaves. So events cost no message of their own, and a run that dies keeps
what its processes reported before.

Times are this process's ``time.perf_counter()``; a report carries the
anchor that turns them into the run's clock (:meth:`Activity.anchor`):
this process's wall clock at a known ``perf_counter``, and the offset of
its wall clock from the run's reference clock, measured at hello (the
broker's, or the store server's).
"""

from __future__ import annotations

import heapq
import itertools
import os
import socket
import threading
import time
from typing import Any

import msgpack

TRACE_ENV = "_SCOOP_TRACE"
"""Set to 1 in the environment of a traced run's processes (the launcher's ``--trace``)."""

REPORT_INTERVAL = 0.5
"""Seconds between two reports of a process (when something changed), in a
run of up to :data:`REPORTS_PER_SECOND` / 2 processes; in a larger one,
longer, so that the broker (or the store) gets at most about that many
reports a second whatever the size of the run."""

REPORTS_PER_SECOND = 400

MAX_REPORT_BYTES = 48 << 10
"""Bytes of packed events in one report at most; the rest go in the next
ones, sent at once. So a report is a small message: below the size from
which a frame is signed by its digest (and relayed unread by the broker) or
goes through shared memory, and far below any message size limit."""

# Event kinds: the first field of each buffered event.
RUN = (
    0  # (RUN, start, seconds, fid, parent, function, items, args_bytes, result_bytes, status, lane)
)
WAIT = 1  # (WAIT, start, seconds, fid, lane)
SUBMIT = 2  # (SUBMIT, time, fid, lane)
HANDED = 3  # (HANDED, time, fid)
INSTANT = 4  # (INSTANT, time, category, text, args)

HANDOVER_LANE = 999
"""The lane of a process's hand-overs (its I/O thread's doing)."""

# The counters a report carries, in this order.
COUNTERS = (
    "submitted",  # futures submitted here (each item of a map counts one)
    "ended",  # of those, the ones that ended (result, exception or cancelled)
    "failed",  # of those, ended with an exception
    "cancelled",
    "expected",  # futures of maps of known length started here
    "ran",  # futures run here
    "running",  # futures running here now
    "handed",  # futures handed to other workers unstarted
)


def boot_id() -> str:
    """This kernel's boot id: processes that share it read one wall clock."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


_BOOT = boot_id()


def offset_from(welcome: Any, said: int, heard: int) -> int:
    """How far (ns) the run's reference clock is ahead of ours, from a
    :class:`~scoop_core.messages.Welcome` answering a hello sent at ``said``
    and heard at ``heard`` (our wall clock): NTP's estimate, the mean of
    the two one-way differences; 0 under the broker's own kernel."""
    if not welcome.clock or (welcome.boot and welcome.boot == _BOOT):
        return 0
    return ((welcome.clock - said) + (welcome.clock + welcome.held - heard)) // 2


def function_name(fn: Any) -> str:
    """How a trace names the function a future calls."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if name is None:
        return type(fn).__qualname__
    module = getattr(fn, "__module__", None)
    # The program's own functions by their bare name, wherever it was imported as.
    return (
        name if module in (None, "__main__", "__scoop_main__", "builtins") else f"{module}.{name}"
    )


class Activity:
    """The counters and trace events of one process of a run."""

    def __init__(self, name: str, role: str, *, tracing: bool | None = None) -> None:
        self.name = name
        self.role = role
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.born = time.perf_counter()
        self.wall = time.time_ns()
        self.clock_offset = 0  # ns to add to our wall clock to read the run's
        self.submitted = self.ended = self.failed = self.cancelled = self.expected = 0
        self.ran = self.running = self.handed = 0
        self.busy = 0.0  # seconds spent running futures
        self.losses: dict[str, int] = {}  # futures lost with each worker, seen here
        if tracing is None:
            tracing = os.environ.get(TRACE_ENV) == "1"
        self.events: list[tuple[Any, ...]] | None = [] if tracing else None
        # Lanes are taken by any thread of a root: each step below is one
        # call the GIL makes atomic (a heap of free lanes, a counter of new ones).
        self._free_lanes: list[int] = []
        self._new_lanes = itertools.count()
        self._lane_of: dict[int, int] = {}  # running future (or thread) -> its lane
        self._names: dict[Any, str] = {}  # function -> its name in the trace
        self._last_sent: tuple[Any, ...] | None = None
        self._next_report = 0.0
        self.interval = REPORT_INTERVAL
        # A report goes at least this often, changed or not: "last heard from".
        self.max_quiet = 5.0
        self._last_report = 0.0
        self._batch = 1000  # events packed in one report, adapted to stay under the limit

    def run_size(self, processes: int) -> None:
        """The run has about ``processes`` processes: report less often if many."""
        self.interval = max(REPORT_INTERVAL, processes / REPORTS_PER_SECOND)

    # -- lanes: where a running future's slices go --------------------------------

    def take_lane(self, key: int) -> int:
        """The lowest free lane, for ``key`` (a running future, a thread)
        until :meth:`free_lane`."""
        try:
            lane = heapq.heappop(self._free_lanes)
        except IndexError:
            lane = next(self._new_lanes)
        self._lane_of[key] = lane
        return lane

    def free_lane(self, key: int) -> int:
        """Free the lane of ``key``, and return it."""
        lane = self._lane_of.pop(key, None)
        if lane is None:
            return 0
        heapq.heappush(self._free_lanes, lane)
        return lane

    def lane_of(self, key: int) -> int:
        return self._lane_of.get(key, 0)

    def thread_lane(self) -> int:
        """The lane of the calling thread (a root's threads each have one)."""
        ident = threading.get_ident()
        lane = self._lane_of.get(ident)
        return self.take_lane(ident) if lane is None else lane

    # -- what happened ------------------------------------------------------------

    def name_of(self, fn: Any) -> str:
        """:func:`function_name` of ``fn``, worked out once per function."""
        try:
            return self._names[fn]
        except KeyError:
            name = self._names[fn] = function_name(fn)
            return name
        except TypeError:  # not hashable
            return function_name(fn)

    def instant(self, category: str, text: str, **args: Any) -> None:
        """Something that happened at one moment: a loss, a restart, a refusal.
        Recorded when tracing (it is rare: no cost worth a test)."""
        if self.events is not None:
            self.events.append((INSTANT, time.perf_counter(), category, text, args))

    def lost_with(self, worker: str, fid: int, losses: int) -> None:
        """A future was lost when ``worker`` died (this process's policy saw it)."""
        self.losses[worker] = self.losses.get(worker, 0) + 1
        self.instant(
            "loss", f"future {fid:#x} lost with {worker}", fid=fid, worker=worker, losses=losses
        )

    def waited(self, fid: int, start: float) -> None:
        """The calling thread waited for future ``fid``'s result since ``start``."""
        assert self.events is not None
        now = time.perf_counter()
        self.events.append((WAIT, start, now - start, fid, self.thread_lane()))

    # -- reports ------------------------------------------------------------------

    def anchor(self) -> list[Any]:
        """[perf_counter at birth, wall clock ns then, clock offset ns]."""
        return [self.born, self.wall, self.clock_offset]

    def counters(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "host": self.host,
            "pid": self.pid,
            "alive": time.perf_counter() - self.born,
            "busy": self.busy,
            "losses": dict(self.losses),
            "anchor": self.anchor(),
            **{c: getattr(self, c) for c in COUNTERS},
        }

    def report_due(self, now: float) -> float:
        """Seconds until the next report is due (0: now)."""
        return max(0.0, self._next_report - now)

    def take_report(
        self, now: float, *, final: bool = False
    ) -> tuple[dict[str, Any], bytes] | None:
        """The counters and the packed events since the last report, if
        anything changed, or nothing did for :attr:`max_quiet` seconds
        (always when ``final``); None otherwise."""
        self._next_report = now + self.interval
        state = (self.busy, len(self.losses), *[getattr(self, c) for c in COUNTERS])
        events = self.events
        quiet = now - self._last_report < self.max_quiet
        if not final and not events and state == self._last_sent and quiet:
            return None
        self._last_sent = state
        self._last_report = now
        packed = b""
        if events:
            # Events are only ever added at the end: the first ones stay put.
            count = min(len(events), self._batch)
            packed = msgpack.packb(events[:count], use_bin_type=True)
            while len(packed) > MAX_REPORT_BYTES and count > 1:
                count //= 2
                packed = msgpack.packb(events[:count], use_bin_type=True)
            self._batch = count * 2 if len(packed) < MAX_REPORT_BYTES // 4 else count
            del events[:count]  # one step under the GIL: an event added meanwhile stays
            if events:
                self._next_report = now  # more than one report holds: the next one now
        counters = self.counters()
        counters["final"] = final and not events  # the last of the last reports
        counters["sent"] = time.time_ns()
        return counters, packed


here: Activity | None = None
"""This process's activity, once its runtime is made."""


def expect(count: int) -> None:
    """A map of ``count`` futures started in this process (its length is known)."""
    if here is not None:
        here.expected += count
