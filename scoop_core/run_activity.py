"""What a run is doing: its processes' reports, gathered where they can be read.

Every process of a run (root, workers) keeps counters of what it did
(:mod:`scoop_core.activity`) and sends them, with its trace events when the
run is traced, in a report every :data:`~scoop_core.activity.REPORT_INTERVAL`
and when it leaves: to the broker on a hub-based transport, into the
store's ``reports`` table on a store-backed one. :class:`RunActivity` turns
the newest report of each process into a :class:`RunSnapshot`, the one
picture of a run that ``--progress``, ``scoop status`` and the summary of
``-v`` all show, whatever the transport.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from scoop_core.activity import COUNTERS, Activity
from scoop_core.errors import ProtocolError
from scoop_core.interfaces import Frame
from scoop_core.messages import buffer_of


@dataclass(frozen=True)
class ProcessRow:
    """One process of a run, as its newest report tells."""

    name: str
    """The peer's name: ``root``, ``worker-3``..."""
    role: str
    """``root``, ``worker`` or ``client``."""
    host: str
    pid: int
    ran: int
    """Futures run there; each item of a map counts as one future."""
    busy: float
    """Seconds it spent running futures."""
    alive: float
    """Seconds from its start to its newest report."""
    running: int
    """Futures running there now."""
    handed: int
    """Futures it handed to other workers unstarted (taken by idle workers, or asked back)."""
    losses: int
    """Futures lost when it died."""
    last_heard: float
    """Seconds since its newest report."""
    state: str
    """``busy``, ``idle``, ``left`` (it said goodbye) or ``lost`` (it died or went silent)."""

    @property
    def busy_share(self) -> float:
        """The part of its life it spent running futures, 0 to 1."""
        return min(1.0, self.busy / self.alive) if self.alive > 0 else 0.0


@dataclass(frozen=True)
class RunSnapshot:
    """A run's futures and processes at one moment. Futures are counted as
    the program sees them: each item of a ``map`` is one."""

    run_id: str
    transport: str
    elapsed: float
    """Seconds since the run started."""
    submitted: int
    """Futures submitted so far, by every process."""
    done: int
    """Futures that ended with a result."""
    failed: int
    """Futures that ended with an exception (those lost for good included)."""
    cancelled: int
    lost: int
    """Times a future was lost with its worker (whether it then ran elsewhere or failed)."""
    running: int
    queued: int
    """Futures submitted that have neither started nor ended."""
    expected: int
    """Futures of the maps whose length is known, started so far (0: none)."""
    rate: float
    """Futures ended per second, over the last few seconds."""
    processes: tuple[ProcessRow, ...]

    @property
    def ended(self) -> int:
        return self.done + self.failed + self.cancelled

    @property
    def workers(self) -> tuple[ProcessRow, ...]:
        return tuple(p for p in self.processes if p.role == "worker")

    @property
    def eta(self) -> float | None:
        """Seconds until the futures known so far have ended, at the current
        rate; None unless a map of known length is running."""
        if self.expected <= 0 or self.rate <= 0:
            return None
        return max(0, max(self.expected, self.submitted) - self.ended) / self.rate


def joined(frames: Sequence[Frame]) -> bytes:
    """The bytes of ``frames``, one after the other."""
    return b"".join(memoryview(buffer_of(f)) for f in frames)


def check_trace(trace: Any) -> None:
    """The ``trace`` part of a report: function names and instants."""
    if not isinstance(trace, dict):
        raise ProtocolError("a report's trace part is not a map")
    names = trace.get("names", [])
    instants = trace.get("instants", [])
    if not isinstance(names, list) or not all(
        isinstance(n, list) and len(n) == 2 and isinstance(n[0], int) and isinstance(n[1], str)
        for n in names
    ):
        raise ProtocolError("a report's function names are malformed")
    if not isinstance(instants, list) or not all(
        isinstance(i, list)
        and len(i) == 4
        and _number(i[0])
        and isinstance(i[1], str)
        and isinstance(i[2], str)
        and isinstance(i[3], dict)
        for i in instants
    ):
        raise ProtocolError("a report's instants are malformed")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_report(counters: Any) -> dict[str, Any]:
    """``counters`` of a :class:`~scoop_core.messages.Report`, checked; raises
    :class:`ProtocolError` naming what is wrong (a report of another version)."""
    if not isinstance(counters, dict):
        raise ProtocolError("a report's counters are not a map")
    for name in ("role", "host"):
        if not isinstance(counters.get(name), str):
            raise ProtocolError(f"a report's {name} is missing or not text")
    for name in ("pid", "sent", *COUNTERS):
        value = counters.get(name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ProtocolError(f"a report's {name} is missing or not an integer")
    for name in ("busy", "alive"):
        if not _number(counters.get(name)):
            raise ProtocolError(f"a report's {name} is missing or not a number")
    losses = counters.get("losses")
    if not isinstance(losses, dict) or not all(
        isinstance(k, str) and isinstance(v, int) for k, v in losses.items()
    ):
        raise ProtocolError("a report's losses are not a map of worker names to counts")
    anchor = counters.get("anchor")
    if not (isinstance(anchor, list) and len(anchor) == 3 and all(map(_number, anchor))):
        raise ProtocolError("a report's clock anchor is malformed")
    return counters


RATE_WINDOW = 5.0
"""Seconds over which the rate of ended futures is measured."""


class RunActivity:
    """The newest report of every process of a run, and the trace events they sent.

    Fed by the broker's thread (:meth:`add`, from
    :class:`~scoop_core.messages.Report` messages) or by the launcher
    reading a store's ``reports`` table; read from any thread
    (:meth:`snapshot`). ``launcher`` is the activity of the process that
    holds this object: its broker's losses, its refusals, its restarts.
    """

    def __init__(
        self,
        run_id: str = "",
        transport: str = "",
        *,
        tracing: bool = False,
        heartbeat_timeout: float = 30.0,
    ) -> None:
        self.run_id = run_id
        self.transport = transport
        self.tracing = tracing
        self.heartbeat_timeout = heartbeat_timeout
        self.launcher = Activity("launcher", "launcher", tracing=tracing)
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._reports: dict[str, dict[str, Any]] = {}
        self._heard: dict[str, float] = {}  # time.monotonic() of each newest report
        self._lost: set[str] = set()
        # Trace events as they came: (process name, its clock anchor, the
        # report's trace part, the events' bytes).
        self.batches: list[tuple[str, list[Any], dict[str, Any], bytes]] = []
        # (time.perf_counter(), queued, running, ended) about twice a second.
        self.samples: list[tuple[float, int, int, int]] = []
        self._recent: collections.deque[tuple[float, int]] = collections.deque()

    def add(
        self,
        name: str,
        counters: dict[str, Any],
        events: Sequence[Frame] = (),
        *,
        heard: float | None = None,
    ) -> None:
        """The report of process ``name`` (its counters checked by
        :func:`check_report`), with the frames of its trace events;
        ``heard``: when it was sent, on this process's ``time.monotonic()``
        clock (default: now)."""
        counters = check_report(counters)
        with self._lock:
            self._reports[name] = counters
            self._heard[name] = time.monotonic() if heard is None else heard
        trace = counters.get("trace") or {}
        if events or trace:
            self.add_events(name, counters["anchor"], trace, joined(events))

    def add_events(
        self, name: str, anchor: list[Any], trace: dict[str, Any], events: bytes
    ) -> None:
        """Trace events of process ``name`` (their bytes), with its clock
        ``anchor`` and the ``trace`` part of its report (function names and
        instants): from a report, or from a store, where they come apart."""
        if not (isinstance(anchor, list) and len(anchor) == 3 and all(map(_number, anchor))):
            raise ProtocolError("trace events with a malformed clock anchor")
        check_trace(trace)
        if len(events) % 8:
            raise ProtocolError("trace events that are not whole numbers")
        if self.tracing:
            with self._lock:
                self.batches.append((name, anchor, trace, events))

    def lost(self, name: str) -> None:
        """Process ``name`` died or went silent (the broker or the launcher says so)."""
        with self._lock:
            self._lost.add(name)

    def reports(self) -> dict[str, dict[str, Any]]:
        """The newest counters of each process, by name."""
        with self._lock:
            return dict(self._reports)

    def snapshot(self) -> RunSnapshot:
        """The run now."""
        now = time.monotonic()
        with self._lock:
            reports = dict(self._reports)
            heard = dict(self._heard)
            lost_names = set(self._lost)
        reports.setdefault("launcher", self.launcher.counters())
        totals = dict.fromkeys(COUNTERS, 0)
        losses: dict[str, int] = {}
        for counters in reports.values():
            for c in COUNTERS:
                totals[c] += counters[c]
            for worker, count in counters["losses"].items():
                losses[worker] = losses.get(worker, 0) + count
        rows = []
        for name, r in reports.items():
            if r["role"] == "launcher":
                continue
            last = now - heard.get(name, now)
            if r.get("final"):
                state = "left"
            elif name in lost_names or last > self.heartbeat_timeout:
                state = "lost"
            else:
                state = "busy" if r["running"] > 0 else "idle"
            rows.append(
                ProcessRow(
                    name=name,
                    role=r["role"],
                    host=r["host"],
                    pid=r["pid"],
                    ran=r["ran"],
                    busy=float(r["busy"]),
                    alive=float(r["alive"]),
                    running=r["running"] if state in ("busy", "idle") else 0,
                    handed=r["handed"],
                    losses=losses.get(name, 0),
                    last_heard=last,
                    state=state,
                )
            )
        rows.sort(key=lambda r: (r.role != "root", natural_key(r.name)))
        ended = totals["ended"]
        failed, cancelled = totals["failed"], totals["cancelled"]
        running = sum(r.running for r in rows)
        return RunSnapshot(
            run_id=self.run_id,
            transport=self.transport,
            elapsed=now - self.started,
            submitted=totals["submitted"],
            done=max(0, ended - failed - cancelled),
            failed=failed,
            cancelled=cancelled,
            lost=sum(losses.values()),
            running=running,
            queued=max(0, totals["submitted"] - ended - running),
            expected=totals["expected"],
            rate=self._rate(now, ended),
            processes=tuple(rows),
        )

    def _rate(self, now: float, ended: int) -> float:
        """Futures ended per second over the last :data:`RATE_WINDOW` seconds."""
        with self._lock:
            recent = self._recent
            if not recent or now - recent[-1][0] >= 0.2:
                recent.append((now, ended))
            while len(recent) > 2 and now - recent[1][0] >= RATE_WINDOW:
                recent.popleft()
            first_time, first_ended = recent[0]
        span = now - first_time
        return (ended - first_ended) / span if span > 0.5 else 0.0

    def sample(self) -> RunSnapshot:
        """The run now, kept for the trace's queue counter too."""
        snap = self.snapshot()
        if self.tracing:
            with self._lock:
                self.samples.append((time.perf_counter(), snap.queued, snap.running, snap.ended))
        return snap


def natural_key(name: str) -> tuple[Any, ...]:
    """``worker-2`` before ``worker-10``."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def pack_snapshot(snapshot: RunSnapshot) -> bytes:
    """``snapshot`` as bytes, for a :class:`~scoop_core.messages.StatusReply`."""
    return msgpack.packb(dataclasses.asdict(snapshot), use_bin_type=True)


def unpack_snapshot(blob: bytes) -> RunSnapshot:
    """The snapshot :func:`pack_snapshot` packed; :class:`ProtocolError` if it is not one."""
    try:
        fields = msgpack.unpackb(blob, raw=False)
        rows = tuple(ProcessRow(**row) for row in fields.pop("processes"))
        return RunSnapshot(**fields, processes=rows)
    except (ValueError, TypeError, KeyError, AttributeError, msgpack.UnpackException) as exc:
        raise ProtocolError(f"a malformed status reply: {exc}") from None
