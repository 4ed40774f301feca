"""What this process did: counters always, trace events when the run is traced.

Every root and worker keeps one :class:`Activity` (:data:`here`). Its
counters are a few integer additions per future, and cost nothing worth
measuring; with ``--trace`` (:data:`TRACE_ENV`) it also buffers each event
(a future run, a submit, a hand-over, a wait) as a few numbers at the end
of one flat array of doubles: no Python object is kept per event, and
sending them is copying the array's memory. Every :data:`REPORT_INTERVAL`
the runtime's I/O thread sends what changed in a
:class:`~scoop_core.messages.Report`: the counters, the names of the
functions and the rare instants (losses, refusals) first seen since the
last report, and the events' bytes, cut in frames small enough for the
broker to read them as any small frame; and once more when the process
leaves. So events cost no message of their own, and a run that dies keeps
what its processes reported before.

Times are this process's ``time.perf_counter()``; a report carries the
anchor that turns them into the run's clock (:meth:`Activity.anchor`):
this process's wall clock at a known ``perf_counter``, and the offset of
its wall clock from the run's reference clock, measured at hello (the
broker's, or the store server's).
"""

from __future__ import annotations

import array
import contextlib
import heapq
import itertools
import os
import socket
import threading
import time
from typing import Any

TRACE_ENV = "_SCOOP_TRACE"
"""Set to 1 in the environment of a traced run's processes (the launcher's ``--trace``)."""

REPORT_INTERVAL = 0.5
"""Seconds between two reports of a process (when something changed), in a
run of up to :data:`REPORTS_PER_SECOND` / 2 processes; in a larger one,
longer, so that the broker (or the store) gets at most about that many
reports a second whatever the size of the run."""

REPORTS_PER_SECOND = 400

FRAME_BYTES = 48 << 10
"""A report's events are cut into frames of this many bytes at most: below
the size from which a frame is signed by its digest (and relayed unread by
the broker) or goes through shared memory."""

# Event kinds: the first number of each buffered event, which tells how
# many numbers it has (WIDTHS). Future ids fit a double exactly (53 bits).
# RUN: start, seconds, fid, parent, function id, items, args bytes, result bytes, status, lane
RUN = 0
WAIT = 1  # start, seconds, fid, lane
SUBMIT = 2  # time, fid, lane
HANDED = 3  # time, fid
WIDTHS = {RUN: 11, WAIT: 5, SUBMIT: 4, HANDED: 3}

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
    if fn is None:
        return "?"
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
        # Why this process leaves, said in its last report (see EXIT_REASONS
        # in scoop_core.errors): what backs up its exit status for the launcher.
        self.leaving = ""
        self.losses: dict[str, int] = {}  # futures lost with each worker, seen here
        if tracing is None:
            tracing = os.environ.get(TRACE_ENV) == "1"
        # The events: each one extend() of whole numbers, so the array's
        # length is always at an event's end (one C call under the GIL).
        self.events: array.array[float] | None = array.array("d") if tracing else None
        # Instants (time, category, text, args) and function names (id,
        # name) not reported yet: few, sent beside the events.
        self.instants: list[list[Any]] = []
        self._new_names: list[list[Any]] = []
        # Lanes are taken by any thread of a root: each step below is one
        # call the GIL makes atomic (a heap of free lanes, a counter of new ones).
        self._free_lanes: list[int] = []
        self._new_lanes = itertools.count()
        self._lane_of: dict[int, int] = {}  # running future (or thread) -> its lane
        self._name_ids = itertools.count()
        self._names: dict[Any, int] = {}  # function (and name) -> its name's id in the trace
        self._last_sent: tuple[Any, ...] | None = None
        self._next_report = 0.0
        self.interval = REPORT_INTERVAL
        # A report goes at least this often, changed or not: "last heard from".
        self.max_quiet = 5.0
        self._last_report = 0.0

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

    def name_id(self, fn: Any) -> int:
        """The id of :func:`function_name` of ``fn`` in this process's events,
        worked out once per function."""
        try:
            return self._names[fn]
        except (KeyError, TypeError):  # a new function, or one not hashable
            pass
        name = function_name(fn)
        ident = self._names.get(name)
        if ident is None:
            ident = self._names[name] = next(self._name_ids)
            self._new_names.append([ident, name])
        with contextlib.suppress(TypeError):
            self._names[fn] = ident
        return ident

    def instant(self, category: str, text: str, **args: Any) -> None:
        """Something that happened at one moment: a loss, a restart, a refusal.
        Recorded when tracing (it is rare: no cost worth a test)."""
        if self.events is not None:
            self.instants.append([time.perf_counter(), category, text, args])

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
        self.events.extend((WAIT, start, now - start, fid, self.thread_lane()))

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
            **({"leaving": self.leaving} if self.leaving else {}),
        }

    def report_due(self, now: float) -> float:
        """Seconds until the next report is due (0: now)."""
        return max(0.0, self._next_report - now)

    def take_report(
        self, now: float, *, final: bool = False
    ) -> tuple[dict[str, Any], tuple[memoryview, ...]] | None:
        """The counters and the events since the last report (their bytes,
        in frames of :data:`FRAME_BYTES` at most), if anything changed, or
        nothing did for :attr:`max_quiet` seconds (always when ``final``);
        None otherwise. With trace events or instants, the counters hold
        ``trace``: the instants, and the function names the events use that
        no earlier report named."""
        self._next_report = now + self.interval
        state = (self.busy, len(self.losses), *[getattr(self, c) for c in COUNTERS])
        events = self.events
        quiet = now - self._last_report < self.max_quiet
        if not (final or events or self.instants or state != self._last_sent or not quiet):
            return None
        self._last_sent = state
        self._last_report = now
        frames: tuple[memoryview, ...] = ()
        counters = self.counters()
        if events is not None:
            # Up to an event's end: one added meanwhile stays for the next report.
            count = len(events)
            data = memoryview(events[:count].tobytes())
            del events[:count]
            frames = tuple(data[i : i + FRAME_BYTES] for i in range(0, len(data), FRAME_BYTES))
            # Taken after the events: the names they use were made before them.
            names, self._new_names = self._new_names, []
            instants, self.instants = self.instants, []
            if names or instants:
                counters["trace"] = {"names": names, "instants": instants}
        counters["final"] = final
        counters["sent"] = time.time_ns()
        return counters, frames


here: Activity | None = None
"""This process's activity, once its runtime is made."""


def expect(count: int) -> None:
    """A map of ``count`` futures started in this process (its length is known)."""
    if here is not None:
        here.expected += count
