"""A run's snapshot as text: the summary ``-v`` ends with, and ``scoop status``'s tables."""

from __future__ import annotations

from collections.abc import Sequence

from scoop_core.run_activity import ProcessRow, RunSnapshot


def table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> str:
    """Columns padded to their widest cell; those in ``right`` aligned right."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        padded = [
            str(c).rjust(w) if i in right else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(padded).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])


def seconds(value: float) -> str:
    if value >= 3600:
        return f"{int(value // 3600)}:{int(value % 3600 // 60):02d}:{int(value % 60):02d}"
    if value >= 60:
        return f"{int(value // 60)}:{value % 60:04.1f}"
    return f"{value:.2f}s" if value < 10 else f"{value:.1f}s"


def totals_line(s: RunSnapshot) -> str:
    """The run's futures in one line."""
    parts = [f"{s.submitted:,} submitted", f"{s.done:,} done"]
    if s.failed:
        parts.append(f"{s.failed:,} failed")
    if s.cancelled:
        parts.append(f"{s.cancelled:,} cancelled")
    if s.lost:
        parts.append(f"{s.lost:,} lost with their worker")
    return "futures: " + ", ".join(parts)


def _share(row: ProcessRow) -> str:
    return f"{row.busy_share:.0%}" if row.alive > 0 else "-"


def summary(s: RunSnapshot) -> str:
    """What each process of the run did, and the run's totals (``-v``'s last lines)."""
    rows = []
    for p in s.processes:
        rows.append(
            [
                p.name,
                p.host,
                f"{p.ran:,}",
                seconds(p.busy),
                _share(p),
                f"{p.handed:,}",
                f"{p.losses:,}",
            ]
        )
    workers = s.workers
    busy = sum(p.busy for p in workers)
    alive = sum(p.alive for p in workers)
    rows.append(
        [
            "all workers",
            "",
            f"{sum(p.ran for p in workers):,}",
            seconds(busy),
            f"{busy / alive:.0%}" if alive > 0 else "-",
            f"{sum(p.handed for p in workers):,}",
            f"{sum(p.losses for p in workers):,}",
        ]
    )
    header = ["process", "host", "futures run", "busy", "share", "handed over", "losses"]
    rate = s.ended / s.elapsed if s.elapsed > 0 else 0.0
    return "\n".join(
        [
            f"run {s.run_id} ({s.transport}): {seconds(s.elapsed)}, {rate:,.1f} futures/s",
            table(header, rows, right={2, 3, 4, 5, 6}),
            totals_line(s),
        ]
    )


def status(s: RunSnapshot) -> str:
    """A running run's processes and futures (``scoop status RUN_ID``)."""
    rows = [
        [
            p.name,
            p.host,
            str(p.pid),
            f"{p.ran:,}",
            p.state,
            f"{p.last_heard:.1f} s ago",
        ]
        for p in s.processes
    ]
    header = ["process", "host", "pid", "futures run", "state", "last heard"]
    return "\n".join(
        [
            f"run {s.run_id} ({s.transport}), running for {seconds(s.elapsed)}",
            table(header, rows, right={2, 3}),
            f"futures: {s.queued:,} queued, {s.running:,} running, {s.done:,} done"
            + (f", {s.failed:,} failed" if s.failed else "")
            + (f", {s.cancelled:,} cancelled" if s.cancelled else "")
            + f" ({s.submitted:,} submitted)",
        ]
    )
