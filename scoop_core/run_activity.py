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

from dataclasses import dataclass


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
