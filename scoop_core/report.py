"""``scoop report TRACE.json``: a trace written by ``--trace`` as one HTML page.

The page is self-contained (its data, style and drawing code inline, no
URL to fetch), so it can be mailed, attached to an issue or opened on a
machine without network. It shows what SCOOP's debug plots and Dask's
performance report show: the run's settings, a timeline of every worker
with each future a bar coloured by its function, the share of workers busy
and the futures queued over time, the functions that took the most time,
the futures lost and run again, and each worker's share of work.

Reading (:func:`read_trace`) accepts a trace cut short, as Chrome's viewer
and Perfetto do: the launcher killed mid-write leaves a ``traceEvents``
array without its end and no ``scoop`` metadata; what the events tell is
then shown, and the page says the trace was truncated.

The figures are computed here (:func:`summarise`), in Python, where they
can be tested without a browser; the page's script only draws them. A large
run would give the browser a bar per future to draw, which a run of a
hundred thousand futures makes too many to open: futures narrower than a
pixel that ran back to back on one lane are drawn as one bar
(:func:`lane_bars`), up to :data:`MAX_BARS` bars in all, and the page says
how many futures each drawn bar stands for.
"""

from __future__ import annotations

import argparse
import datetime
import html
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from scoop_core.errors import UsageError

MAX_BARS = 30_000
"""Bars drawn in the timeline at most; tiny futures beyond are merged."""

TIMELINE_PIXELS = 1100
"""The timeline's width the merging of tiny bars assumes (the page's plot
area at a common window size): a pixel of it is the shortest bar kept alone."""

UTILISATION_BINS = 300
QUEUE_BINS = 600

MAX_LISTED = 200
"""Rows at most in the tables of losses, re-runs, restarts and rejected messages."""

PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#59a14f",
    "#e15759",
    "#76b7b2",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#86bcb6",
    "#d37295",
    "#8cd17d",
)
"""Colours of the functions that took the most time, in that order; the rest are grey."""

OTHER_COLOUR = "#b8b8b8"
WAIT_COLOUR = "#dcdcdc"

LAUNCHER_TRACK = 1
ROOT_TRACK = 2
HANDOVER_LANE = 999

_PROCESS_NAME = re.compile(r"^(?P<name>\S+)(?: @ (?P<host>\S+))?(?: \(pid (?P<pid>\d+)\))?")


@dataclass
class Trace:
    """A trace file as read: its events, its run metadata, and whether it was cut short."""

    events: list[dict[str, Any]]
    meta: dict[str, Any]
    truncated: bool = False


@dataclass
class Slice:
    """One run of a future (or one wait, ``function`` None) on a lane of a track."""

    start: float
    dur: float
    lane: int
    function: str | None
    fid: str = ""
    items: int = 1
    args_bytes: int = 0
    result_bytes: int = 0
    status: str = "ok"

    @property
    def end(self) -> float:
        return self.start + self.dur


@dataclass
class Track:
    """A process of the run as the trace shows it: the root, or one worker."""

    track: int
    name: str
    label: str
    host: str = ""
    pid: int | None = None
    role: str = "worker"
    runs: list[Slice] = field(default_factory=list)
    """Its futures' runs."""
    waits: list[Slice] = field(default_factory=list)
    """Its waits for results."""
    handed: int = 0
    alive_from: float = 0.0
    alive_to: float = 0.0
    busy: float = 0.0  # microseconds with at least one future running

    @property
    def slices(self) -> list[Slice]:
        return self.runs + self.waits

    @property
    def lanes(self) -> int:
        return 1 + max((s.lane for s in (*self.runs, *self.waits)), default=0)


@dataclass
class FunctionRow:
    name: str
    calls: int = 0
    items: int = 0
    total: float = 0.0
    longest: float = 0.0
    raised: int = 0
    colour: str = OTHER_COLOUR

    @property
    def mean(self) -> float:
        return self.total / self.calls if self.calls else 0.0


@dataclass
class Summary:
    """Everything the page shows, in microseconds of the run's clock."""

    meta: dict[str, Any]
    truncated: bool
    end: float
    tracks: list[Track]
    functions: list[FunctionRow]
    utilisation: list[float]
    queue: dict[str, Any]
    losses: list[dict[str, Any]]
    runs_of: dict[str, list[tuple[str, Slice]]]
    """Each future's runs (by id), with the process that ran each, in time order."""
    restarts: list[dict[str, Any]]
    rejected: list[dict[str, Any]]
    failed: list[dict[str, Any]]

    @property
    def workers(self) -> list[Track]:
        return [t for t in self.tracks if t.role == "worker"]

    @property
    def reruns(self) -> list[tuple[str, list[tuple[str, Slice]]]]:
        """The futures that ran more than once, with their runs, the first rerun first."""
        again = [(fid, runs) for fid, runs in self.runs_of.items() if len(runs) > 1]
        return sorted(again, key=lambda fr: fr[1][1][1].start)


# -- reading ------------------------------------------------------------------


def _not_a_trace(path: str | Path, why: str) -> UsageError:
    return UsageError(f"{path} is not a trace written by --trace: {why}")


def read_trace(path: str | Path) -> Trace:
    """The trace at ``path``; :class:`UsageError` naming the file if it cannot be one."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(
            f"{path}: no such file (a trace is written by scoop run --trace FILE)"
        ) from None
    except UnicodeDecodeError:
        raise _not_a_trace(path, "it is not UTF-8 text") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    return parse_trace(text, path)


def parse_trace(text: str, path: str | Path = "the input") -> Trace:
    """The trace in ``text``, whole or cut short (see the module's docstring)."""
    truncated = False
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        doc = _salvage(text)
        if doc is None:
            raise _not_a_trace(path, f"not JSON ({exc.msg}, line {exc.lineno})") from None
        truncated = True
    if not isinstance(doc, dict) or not isinstance(doc.get("traceEvents"), list):
        raise _not_a_trace(path, 'no "traceEvents" list in it')
    events = doc["traceEvents"]
    for number, event in enumerate(events):
        if not isinstance(event, dict) or not isinstance(event.get("ph"), str):
            raise _not_a_trace(path, f'event {number} is not an object with a "ph" field')
        for key in ("ts", "dur"):
            value = event.get(key)
            if value is not None and not isinstance(value, int | float):
                raise _not_a_trace(path, f"event {number} has a {key} that is not a number")
    meta = doc.get("scoop")
    return Trace(events, meta if isinstance(meta, dict) else {}, truncated)


_SEPARATORS = re.compile(r"[\s,]*")


def _salvage(text: str) -> dict[str, Any] | None:
    """The top-level object of a trace cut short: its members up to the cut,
    and of ``traceEvents`` every event before it; None if nothing is a trace."""
    decoder = json.JSONDecoder()
    at = _SEPARATORS.match(text, 0).end()  # type: ignore[union-attr]
    if not text.startswith("{", at):
        return None
    doc: dict[str, Any] = {}
    at += 1
    while True:
        at = _SEPARATORS.match(text, at).end()  # type: ignore[union-attr]
        try:
            key, at = decoder.raw_decode(text, at)
            at = _SEPARATORS.match(text, at).end()  # type: ignore[union-attr]
            if not text.startswith(":", at):
                break
            at = _SEPARATORS.match(text, at + 1).end()  # type: ignore[union-attr]
            if key == "traceEvents" and text.startswith("[", at):
                events, at, whole = _salvage_array(decoder, text, at + 1)
                doc[key] = events
                if not whole:
                    break
                continue
            doc[key], at = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            break
    return doc if "traceEvents" in doc else None


def _salvage_array(decoder: json.JSONDecoder, text: str, at: int) -> tuple[list[Any], int, bool]:
    """The items of the array from ``at`` up to its end or the cut; the
    position after it; whether it was whole."""
    items: list[Any] = []
    while True:
        at = _SEPARATORS.match(text, at).end()  # type: ignore[union-attr]
        if text.startswith("]", at):
            return items, at + 1, True
        try:
            item, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            return items, at, False
        items.append(item)


# -- summarising --------------------------------------------------------------


def summarise(trace: Trace) -> Summary:
    """The figures of the page, from the events and, where it has them, the metadata."""
    meta = trace.meta
    names: dict[int, str] = {}
    tracks: dict[int, Track] = {}
    instants: dict[str, list[dict[str, Any]]] = defaultdict(list)
    counters: list[tuple[float, float, float]] = []
    submits: list[float] = []
    starts: list[float] = []
    end = 0.0
    for event in trace.events:
        ph = event["ph"]
        pid = event.get("pid", 0)
        ts = float(event.get("ts") or 0.0)
        if ph == "X":
            cat = event.get("cat")
            if cat not in ("future", "wait") or pid == LAUNCHER_TRACK:
                continue
            dur = float(event.get("dur") or 0.0)
            end = max(end, ts + dur)
            args = _args(event)
            track = tracks.get(pid) or tracks.setdefault(pid, Track(pid, "", ""))
            if cat == "wait":
                track.waits.append(
                    Slice(ts, dur, _int(event.get("tid")), None, str(args.get("fid", "")))
                )
                continue
            track.runs.append(
                Slice(
                    ts,
                    dur,
                    _int(event.get("tid")),
                    str(event.get("name", "?")),
                    str(args.get("fid", "")),
                    _int(args.get("items"), 1),
                    _int(args.get("args_bytes")),
                    _int(args.get("result_bytes")),
                    str(args.get("status", "ok")),
                )
            )
        elif ph == "M" and event.get("name") == "process_name":
            names[pid] = str(_args(event).get("name", ""))
        elif ph == "i" or ph == "I":
            end = max(end, ts)
            instants[str(event.get("cat", ""))].append(
                {**_args(event), "t": ts, "text": str(event.get("name", ""))}
            )
        elif ph == "C" and event.get("name") == "futures":
            end = max(end, ts)
            args = _args(event)
            counters.append((ts, _number(args.get("queued")), _number(args.get("running"))))
        elif ph == "s":
            submits.append(ts)
        elif ph == "f":
            starts.append(ts)
        elif ph == "t":
            (tracks.get(pid) or tracks.setdefault(pid, Track(pid, "", ""))).handed += 1
    if isinstance(meta.get("duration"), int | float):
        end = max(end, float(meta["duration"]) * 1e6)
    _name_tracks(tracks, names, meta)
    ordered = sorted(
        (
            t
            for t in tracks.values()
            if t.role in ("root", "worker") and (t.slices or t.role == "worker")
        ),
        key=lambda t: (t.role != "root", t.track),
    )
    _lifetimes(ordered, instants, end)
    functions = _functions(ordered)
    running = [(s.start, s.end) for t in ordered for s in t.runs]
    if counters:
        queue = {"source": "counter", **_resample_counters(sorted(counters), end)}
    else:
        queue = {"source": "derived", **_derive_queue(submits, starts, running, end)}
    return Summary(
        meta=meta,
        truncated=trace.truncated,
        end=end,
        tracks=ordered,
        functions=functions,
        utilisation=utilisation([t for t in ordered if t.role == "worker"], end),
        queue=queue,
        losses=sorted(instants["loss"], key=lambda i: i["t"]),
        runs_of=_runs_of(ordered),
        restarts=sorted(instants["restart"], key=lambda i: i["t"]),
        rejected=sorted(instants["rejected"], key=lambda i: i["t"]),
        failed=sorted(instants["failed"], key=lambda i: i["t"]),
    )


def _args(event: dict[str, Any]) -> dict[str, Any]:
    args = event.get("args")
    return args if isinstance(args, dict) else {}


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) else default


def _name_tracks(tracks: dict[int, Track], names: dict[int, str], meta: dict[str, Any]) -> None:
    """Names, hosts and roles: the metadata's process list first, then the
    tracks' own names, then the track numbers of the format."""
    known = {p.get("track"): p for p in meta.get("processes") or [] if isinstance(p, dict)}
    for pid, track in tracks.items():
        label = names.get(pid, "")
        parsed = _PROCESS_NAME.match(label)
        process = known.get(pid, {})
        name = process.get("name") or (parsed.group("name") if parsed and label else "")
        if not name:
            name = (
                "root"
                if pid == ROOT_TRACK
                else "launcher"
                if pid == LAUNCHER_TRACK
                else f"track {pid}"
            )
        track.name = str(name)
        track.host = str(process.get("host") or (parsed.group("host") if parsed else "") or "")
        pid_text = process.get("pid") or (parsed.group("pid") if parsed else None)
        track.pid = int(pid_text) if pid_text else None
        role = process.get("role")
        if not role:
            role = (
                "launcher"
                if pid == LAUNCHER_TRACK
                else "root"
                if pid == ROOT_TRACK or track.name == "root"
                else "worker"
            )
        track.role = str(role)
        where = f" @ {track.host}" if track.host else ""
        track.label = label or f"{track.name}{where}" + (f" (pid {track.pid})" if track.pid else "")


def _lifetimes(tracks: list[Track], instants: dict[str, list[dict[str, Any]]], end: float) -> None:
    """When each worker was there: from the run's start, or from the restart
    that brought it in, to the run's end, or to the loss or restart that
    ended it; and its busy time within."""
    born = {i.get("by"): i["t"] for i in instants["restart"] if i.get("by")}
    died: dict[str, float] = {}
    for kind in ("restart", "loss"):
        for i in instants[kind]:
            name = i.get("worker")
            if name:
                died[name] = min(died.get(name, end), i["t"])
    for track in tracks:
        track.alive_from = born.get(track.name, 0.0)
        track.alive_to = died.get(track.name, end)
        if track.slices:
            track.alive_from = min(track.alive_from, min(s.start for s in track.slices))
            track.alive_to = max(track.alive_to, max(s.end for s in track.slices))
        track.busy = sum(b - a for a, b in busy_intervals(track.runs))


def busy_intervals(slices: Iterable[Slice]) -> list[tuple[float, float]]:
    """The union of the slices' spans, sorted, none overlapping."""
    merged: list[tuple[float, float]] = []
    for s in sorted(slices, key=lambda s: s.start):
        if merged and s.start <= merged[-1][1]:
            if s.end > merged[-1][1]:
                merged[-1] = (merged[-1][0], s.end)
        else:
            merged.append((s.start, s.end))
    return merged


def spread(spans: Iterable[tuple[float, float]], end: float, bins: int) -> list[float]:
    """How much of the spans falls in each of ``bins`` equal bins of [0, end]."""
    amounts = [0.0] * bins
    if end <= 0:
        return amounts
    width = end / bins
    for a, b in spans:
        a, b = max(a, 0.0), min(b, end)
        if b <= a:
            continue
        first, last = min(int(a / width), bins - 1), min(int(b / width), bins - 1)
        if first == last:
            amounts[first] += b - a
            continue
        amounts[first] += (first + 1) * width - a
        for i in range(first + 1, last):
            amounts[i] += width
        amounts[last] += b - last * width
    return amounts


def utilisation(workers: Sequence[Track], end: float, bins: int = UTILISATION_BINS) -> list[float]:
    """The share of the workers there that were running a future, in each of
    ``bins`` equal bins of the run (0 where no worker was there)."""
    busy = spread((span for w in workers for span in busy_intervals(w.runs)), end, bins)
    there = spread(((w.alive_from, w.alive_to) for w in workers), end, bins)
    return [min(1.0, b / t) if t > 0 else 0.0 for b, t in zip(busy, there, strict=True)]


def _functions(tracks: Sequence[Track]) -> list[FunctionRow]:
    rows: dict[str, FunctionRow] = {}
    for track in tracks:
        for s in track.runs:
            assert s.function is not None
            row = rows.get(s.function) or rows.setdefault(s.function, FunctionRow(s.function))
            row.calls += 1
            row.items += s.items
            row.total += s.dur
            row.longest = max(row.longest, s.dur)
            row.raised += s.status != "ok"
    ordered = sorted(rows.values(), key=lambda r: (-r.total, r.name))
    for row, colour in zip(ordered, PALETTE, strict=False):
        row.colour = colour
    return ordered


def _runs_of(tracks: Sequence[Track]) -> dict[str, list[tuple[str, Slice]]]:
    runs: dict[str, list[tuple[str, Slice]]] = defaultdict(list)
    for track in tracks:
        for s in track.runs:
            if s.fid:
                runs[s.fid].append((track.name, s))
    for again in runs.values():
        if len(again) > 1:
            again.sort(key=lambda r: r[1].start)
    return runs


def _steps_max(points: Sequence[tuple[float, float]], end: float, bins: int) -> list[float]:
    """A step function given by its change points, as its highest value in each bin."""
    out = [0.0] * bins
    if end <= 0:
        return out
    width = end / bins
    value, i = 0.0, 0
    for b in range(bins):
        top = value
        bin_end = (b + 1) * width
        while i < len(points) and points[i][0] < bin_end:
            value = points[i][1]
            top = max(top, value)
            i += 1
        out[b] = top
    return out


def _resample_counters(
    counters: Sequence[tuple[float, float, float]], end: float
) -> dict[str, Any]:
    return {
        "queued": _steps_max([(t, q) for t, q, _ in counters], end, QUEUE_BINS),
        "running": _steps_max([(t, r) for t, _, r in counters], end, QUEUE_BINS),
    }


def _derive_queue(
    submits: Sequence[float],
    starts: Sequence[float],
    running: Sequence[tuple[float, float]],
    end: float,
) -> dict[str, Any]:
    """Without the launcher's counter: queued from submit and start flows,
    running from the futures' slices."""

    def level(changes: list[tuple[float, int]]) -> list[tuple[float, float]]:
        changes.sort()
        points, count = [], 0
        for t, step in changes:
            count += step
            points.append((t, float(count)))
        return points

    queued = level([(t, 1) for t in submits] + [(t, -1) for t in starts])
    busy = level([(a, 1) for a, _ in running] + [(b, -1) for _, b in running])
    return {
        "queued": _steps_max(queued, end, QUEUE_BINS) if submits else None,
        "running": _steps_max(busy, end, QUEUE_BINS),
    }


# -- the timeline's bars --------------------------------------------------------


def lane_bars(
    slices: Sequence[Slice], shortest: float, function_index: dict[str | None, int]
) -> list[list[Any]]:
    """The bars of one lane: a slice at least ``shortest`` long is its own
    bar ``[lane, start, dur, function, 1, fid, items, args_bytes,
    result_bytes, status]``; shorter ones that follow each other closely
    are merged into ``[lane, start, dur, function, count, what]`` (``what``
    counts each function's futures, ``function`` is the commonest),
    up to a few ``shortest`` wide so the colours still show what ran."""
    bars: list[list[Any]] = []
    group: list[Slice] = []

    def flush() -> None:
        if len(group) == 1:
            bars.append(_bar(group[0], function_index))
        elif group:
            kinds = Counter(s.function for s in group)
            top = kinds.most_common(1)[0][0]
            what = ", ".join(f"{n} × {f or 'wait'}" for f, n in kinds.most_common(4))
            if len(kinds) > 4:
                what += ", ..."
            bars.append(
                [
                    group[0].lane,
                    group[0].start,
                    group[-1].end - group[0].start,
                    function_index[top],
                    len(group),
                    what,
                ]
            )
        group.clear()

    for s in sorted(slices, key=lambda s: s.start):
        if s.dur >= shortest:
            flush()
            bars.append(_bar(s, function_index))
        elif (
            group and s.start - group[-1].end <= shortest and s.end - group[0].start <= 4 * shortest
        ):
            group.append(s)
        else:
            flush()
            group.append(s)
    flush()
    return bars


def _bar(s: Slice, function_index: dict[str | None, int]) -> list[Any]:
    return [
        s.lane,
        s.start,
        s.dur,
        function_index[s.function],
        1,
        s.fid,
        s.items,
        s.args_bytes,
        s.result_bytes,
        s.status,
    ]


def timeline(summary: Summary, max_bars: int = MAX_BARS) -> dict[str, Any]:
    """The timeline's rows and bars, merging more and more of the short
    futures until at most ``max_bars`` bars are left."""
    index: dict[str | None, int] = {row.name: i for i, row in enumerate(summary.functions)}
    index[None] = -1
    count = sum(len(t.slices) for t in summary.tracks)
    shortest = summary.end / TIMELINE_PIXELS if summary.end > 0 else 0.0
    while True:
        rows: list[dict[str, Any]] = []
        for track in summary.tracks:
            by_lane: dict[int, list[Slice]] = defaultdict(list)
            for s in track.slices:
                by_lane[s.lane].append(s)
            bars = [
                bar for lane in sorted(by_lane) for bar in lane_bars(by_lane[lane], shortest, index)
            ]
            rows.append(
                {
                    "worker": track.name,
                    "label": track.label,
                    "role": track.role,
                    "lanes": track.lanes,
                    "from": track.alive_from,
                    "to": track.alive_to,
                    "bars": bars,
                }
            )
        drawn = sum(len(r["bars"]) for r in rows)
        if drawn <= max_bars or shortest <= 0:
            break
        shortest *= 2
    return {
        "rows": rows,
        "slices": count,
        "drawn": drawn,
        "shortest": shortest if drawn < count else 0.0,
    }


# -- the page -------------------------------------------------------------------


def seconds(us: float) -> str:
    """A duration for people: ``1.23 s``, ``45.6 ms``, ``12 µs``."""
    s = us / 1e6
    if s >= 3600:
        return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"
    if s >= 60:
        return f"{int(s // 60)} min {s % 60:04.1f} s"
    if s >= 1:
        return f"{s:.3g} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} µs"


def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(head: Sequence[str], rows: Iterable[str], *, numeric_from: int = 1) -> str:
    cells = "".join(
        f'<th class="{"num" if i >= numeric_from else ""}">{_e(h)}</th>' for i, h in enumerate(head)
    )
    body = "".join(rows)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def _cells(values: Sequence[Any], *, numeric_from: int = 1, raw: bool = False) -> str:
    return "".join(
        f'<td class="{"num" if i >= numeric_from else ""}">{v if raw else _e(v)}</td>'
        for i, v in enumerate(values)
    )


def _kv(pairs: Iterable[tuple[str, Any]]) -> str:
    pairs = (
        (k, f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else v) for k, v in pairs
    )
    rows = "".join(
        f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in pairs if v not in (None, "")
    )
    return f'<table class="kv">{rows}</table>'


def _settings_section(summary: Summary) -> str:
    meta = summary.meta
    workers = summary.workers
    started = meta.get("started")
    when = (
        datetime.datetime.fromtimestamp(started, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        if isinstance(started, int | float)
        else ""
    )
    argv = meta.get("argv")
    run = _kv(
        [
            ("run id", meta.get("run_id")),
            (
                "program",
                " ".join(map(str, argv))
                if isinstance(argv, list) and argv
                else meta.get("program"),
            ),
            ("transport", meta.get("transport")),
            ("serializer", meta.get("serializer")),
            ("started", when),
            ("duration", seconds(summary.end)),
            ("exit status", meta.get("exit_status")),
            ("workers", meta.get("workers", len(workers))),
        ]
    )
    hosts = meta.get("hosts")
    if not isinstance(hosts, dict) or not hosts:
        hosts = Counter(t.host or "?" for t in workers)
    ran: Counter[str] = Counter()
    for t in workers:
        ran[t.host or "?"] += sum(s.items for s in t.runs)
    host_rows = (f"<tr>{_cells([h, n, f'{ran.get(h, 0):,}'])}</tr>" for h, n in hosts.items())
    settings = meta.get("settings")
    if not isinstance(settings, dict):
        # The writer may put the run's settings beside the fields above.
        settings = {k: v for k, v in meta.items() if k not in _RUN_FIELDS}
    totals = meta.get("totals") if isinstance(meta.get("totals"), dict) else {}
    assert isinstance(totals, dict)
    futures = sum(r.items for r in summary.functions)
    derived = [
        ("submitted", totals.get("submitted")),
        ("done", totals.get("done", futures)),
        ("failed", totals.get("failed", sum(r.raised for r in summary.functions))),
        ("cancelled", totals.get("cancelled")),
        ("lost", totals.get("lost", len(summary.losses))),
    ]
    parts = [
        '<div class="grid3">',
        f"<div><h3>Run</h3>{run}</div>",
        f"<div><h3>Hosts</h3>{_table(['host', 'workers', 'futures run'], host_rows)}"
        f"<h3>Totals</h3>{_kv(derived)}</div>",
        "<div><h3>Settings</h3>"
        + (
            _kv(sorted((str(k), _flat(v)) for k, v in settings.items()))
            if isinstance(settings, dict) and settings
            else '<p class="muted">not in the trace</p>'
        )
        + "</div>",
        "</div>",
    ]
    return "".join(parts)


_RUN_FIELDS = frozenset(
    [
        "format",
        "run_id",
        "transport",
        "serializer",
        "program",
        "argv",
        "started",
        "duration",
        "exit_status",
        "hosts",
        "workers",
        "processes",
        "totals",
        "settings",
    ]
)
"""The metadata's fields shown apart from the run's settings."""


def _flat(value: Any) -> str:
    if value is None:
        return "not set"
    return value if isinstance(value, str) else json.dumps(value)


def _cards(summary: Summary) -> str:
    workers = summary.workers
    futures = sum(r.items for r in summary.functions)
    failed = sum(r.raised for r in summary.functions)
    busy = sum(t.busy for t in workers)
    there = sum(t.alive_to - t.alive_from for t in workers)
    hosts = summary.meta.get("hosts")
    host_count = len(hosts) if isinstance(hosts, dict) and hosts else len({t.host for t in workers})
    cards = [
        ("duration", seconds(summary.end), ""),
        ("workers", str(len(workers)), f"on {host_count} host{'s' if host_count != 1 else ''}"),
        ("futures run", f"{futures:,}", f"{failed:,} raised" if failed else "none raised"),
        (
            "utilisation",
            f"{100 * busy / there:.0f} %" if there > 0 else "–",
            "of workers' time busy",
        ),
        (
            "lost",
            f"{len(summary.losses):,}",
            f"{len(summary.restarts)} restart{'s' if len(summary.restarts) != 1 else ''}",
        ),
    ]
    return "".join(
        f'<div class="card"><div class="label">{_e(k)}</div><div class="value">{_e(v)}</div>'
        f'<div class="sub">{_e(s)}</div></div>'
        for k, v, s in cards
    )


def _functions_section(summary: Summary) -> str:
    total = sum(r.total for r in summary.functions) or 1.0
    rows = (
        f'<tr data-function="{_e(r.name)}"><td><span class="swatch" style="background:{r.colour}"></span>'
        f"<code>{_e(r.name)}</code></td>"
        + _cells(
            [
                f"{r.calls:,}",
                f"{r.items:,}",
                seconds(r.total),
                f"{100 * r.total / total:.1f} %",
                seconds(r.mean),
                seconds(r.longest),
                f"{r.raised:,}",
            ],
            numeric_from=0,
        )
        + "</tr>"
        for r in summary.functions
    )
    if not summary.functions:
        return '<p class="muted">No future ran in this trace.</p>'
    return _table(["function", "calls", "items", "total", "share", "mean", "max", "raised"], rows)


def _losses_section(summary: Summary) -> str:
    parts = []
    reruns = summary.reruns
    if summary.losses:
        rows = []
        for loss in summary.losses[:MAX_LISTED]:
            fid = str(loss.get("fid", ""))
            again = next((r for r in summary.runs_of.get(fid, ()) if r[1].end >= loss["t"]), None)
            after = (
                f"on {again[0]} at {seconds(again[1].start)}"
                if again
                else "not run again in the trace"
            )
            rows.append(
                f"<tr>{_cells([seconds(loss['t']), fid, loss.get('worker', ''), loss.get('losses', ''), after], numeric_from=9)}</tr>"
            )
        parts.append(f"<h3>Futures lost with their worker ({len(summary.losses):,})</h3>")
        parts.append(
            _table(["when", "future", "lost with", "losses", "ran again"], rows, numeric_from=9)
        )
        parts.append(_more(len(summary.losses)))
    else:
        parts.append('<h3>Futures lost with their worker</h3><p class="muted">None.</p>')
    if reruns:
        rows = []
        for fid, runs in reruns[:MAX_LISTED]:
            text = "; ".join(f"{name} at {seconds(s.start)} ({seconds(s.dur)})" for name, s in runs)
            rows.append(
                f"<tr>{_cells([fid, runs[0][1].function, len(runs), text], numeric_from=9)}</tr>"
            )
        parts.append(f"<h3>Futures run more than once ({len(reruns):,})</h3>")
        parts.append(_table(["future", "function", "runs", "where"], rows, numeric_from=9))
        parts.append(_more(len(reruns)))
    for title, items, keys in (
        ("Workers restarted", summary.restarts, ("worker", "status", "by")),
        ("Messages rejected", summary.rejected, ("from", "reason")),
        ("Failures", summary.failed, ()),
    ):
        if not items:
            if title != "Failures":
                parts.append(f'<h3>{title}</h3><p class="muted">None.</p>')
            continue
        rows = [
            f"<tr>{_cells([seconds(i['t']), i['text'], *(i.get(k, '') for k in keys)], numeric_from=9)}</tr>"
            for i in items[:MAX_LISTED]
        ]
        parts.append(f"<h3>{title} ({len(items):,})</h3>")
        parts.append(_table(["when", "what", *keys], rows, numeric_from=9))
        parts.append(_more(len(items)))
    return "".join(parts)


def _more(count: int) -> str:
    return (
        f'<p class="muted">The first {MAX_LISTED} of {count:,} are listed.</p>'
        if count > MAX_LISTED
        else ""
    )


def _workers_section(summary: Summary) -> str:
    rows = []
    for t in summary.tracks:
        life = t.alive_to - t.alive_from
        share = t.busy / life if life > 0 else 0.0
        futures = t.runs
        bar = f'<div class="meter"><div style="width:{100 * share:.1f}%"></div></div>'
        rows.append(
            f'<tr data-worker="{_e(t.name)}">'
            + _cells([t.name, t.host, t.pid or ""], numeric_from=2)
            + _cells(
                [
                    f"{len(futures):,}",
                    f"{sum(s.items for s in futures):,}",
                    f"{t.handed:,}",
                    t.lanes,
                    seconds(t.busy),
                    seconds(life),
                ],
                numeric_from=0,
            )
            + f'<td class="num">{100 * share:.0f} %</td><td>{bar}</td></tr>'
        )
    if not rows:
        return '<p class="muted">No worker in this trace.</p>'
    return _table(
        [
            "process",
            "host",
            "pid",
            "futures",
            "items",
            "handed over",
            "lanes",
            "busy",
            "present",
            "busy share",
            "",
        ],
        rows,
        numeric_from=2,
    )


def _script_json(value: Any) -> str:
    """JSON that can sit in a <script> element: no ``<`` to end it early."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).replace("<", "\\u003c")


def render(summary: Summary) -> str:
    """The page, as one HTML document."""
    page = resources.files("scoop_core") / "report_page"
    lines = timeline(summary)
    marks = [
        {"t": i["t"], "kind": "loss", "text": f"{i.get('fid', '')} lost with {i.get('worker', '')}"}
        for i in summary.losses
    ]
    marks += [
        {
            "t": i["t"],
            "kind": "restart",
            "text": f"{i.get('worker', '')} replaced by {i.get('by', '')}",
        }
        for i in summary.restarts
    ]
    data = {
        "end": summary.end,
        "functions": [{"name": r.name, "colour": r.colour} for r in summary.functions],
        "other": OTHER_COLOUR,
        "wait": WAIT_COLOUR,
        "timeline": lines,
        "marks": marks,
        "utilisation": summary.utilisation,
        "queue": summary.queue,
    }
    program = Path(str(summary.meta.get("program") or "a traced run")).name
    run_id = summary.meta.get("run_id")
    title = f"scoop report: {program}" + (f" (run {run_id})" if run_id else "")
    notes = []
    if summary.truncated:
        notes.append(
            "This trace was cut short (its writer was stopped): what follows is what its events tell."
        )
    if not summary.meta:
        notes.append(
            "The trace has no run metadata: settings and totals are computed from its events."
        )
    merged = ""
    if lines["drawn"] < lines["slices"]:
        merged = (
            f"{lines['slices']:,} futures drawn as {lines['drawn']:,} bars: futures shorter than "
            f"{seconds(lines['shortest'])} that ran back to back on a lane are merged into one bar, "
            "coloured by the commonest function in it (its tooltip counts them)."
        )
    slots = {
        "TITLE": _e(title),
        "STYLE": (page / "page.css").read_text(encoding="utf-8"),
        "SCRIPT": (page / "page.js").read_text(encoding="utf-8"),
        "DATA": _script_json(data),
        "HEADING": _e(program),
        "SUBHEADING": _e(
            " · ".join(
                x
                for x in (
                    f"run {run_id}" if run_id else "",
                    str(summary.meta.get("transport") or ""),
                    f"{len(summary.workers)} workers",
                    seconds(summary.end),
                )
                if x
            )
        ),
        "NOTES": "".join(f'<p class="note">{_e(n)}</p>' for n in notes),
        "CARDS": _cards(summary),
        "SETTINGS": _settings_section(summary),
        "MERGED": f'<p class="muted">{_e(merged)}</p>' if merged else "",
        "FUNCTIONS": _functions_section(summary),
        "LOSSES": _losses_section(summary),
        "WORKERS": _workers_section(summary),
        "QUEUE_SOURCE": _e(
            "Sampled by the launcher."
            if summary.queue["source"] == "counter"
            else "Derived from the futures' submits and runs (the trace has no launcher counter)."
        ),
    }
    text = (page / "page.html").read_text(encoding="utf-8")
    return re.sub(r"<!--(\w+)-->", lambda m: slots.get(m.group(1), m.group(0)), text)


# -- the command ----------------------------------------------------------------


def main(options: argparse.Namespace) -> int:
    """``scoop report TRACE.json [-o PAGE.html]``."""
    source = Path(options.trace)
    output = Path(options.output) if options.output else source.with_suffix(".html")
    if output.resolve() == source.resolve():
        raise UsageError(f"the page would overwrite the trace {source}: name another with -o")
    summary = summarise(read_trace(source))
    try:
        output.write_text(render(summary), encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror}") from None
    print(f"wrote {output}")
    return 0
