"""``--trace FILE``: a run's trace events as one Chrome Trace Event file.

The file opens in Perfetto (ui.perfetto.dev), ``chrome://tracing`` and
``scoop report`` (:mod:`scoop_core.report`). Its layout, which ``docs/tracing.md``
describes for users and other tools:

- one *track* (``pid``) per process: 1 the launcher, 2 the root, 10 and up
  the workers in name order; a worker's futures run in greenlets, so each
  running future takes the lowest free *lane* (``tid``) for its whole life,
  and the slices of one lane never overlap;
- a slice (``X``) per future run, named by its function, with its id, its
  parent's, its items, the sizes of its arguments and result, and how it
  ended; a slice per wait of the root for a result;
- flow arrows (``s``, ``t``, ``f``), one per future, from where it was
  submitted, through the workers that handed it over unstarted, to where
  it ran;
- instants (``i``) for futures lost with their worker, workers replaced and
  messages refused; a counter (``C``) of the futures queued, running and
  done over time;
- a ``scoop`` object: the run's settings, processes and totals.

Every process's times are turned into the run's clock here, from the
anchor its reports carry (:meth:`scoop_core.activity.Activity.anchor`):
microseconds since the launcher's start, on the reference clock (the
broker's, or the store server's) that each process measured its offset
from at hello.
"""

from __future__ import annotations

import array
import json
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

from scoop_core import activity as a
from scoop_core import messages as m
from scoop_core.run_activity import RunActivity, RunSnapshot, natural_key

FORMAT = 1
"""The version of the ``scoop`` object's layout."""

LAUNCHER_TRACK, ROOT_TRACK, FIRST_WORKER_TRACK = 1, 2, 10

_FLOW = "submit"

log = logging.getLogger("scoop.launcher")


class _Clock:
    """Turns one process's ``perf_counter`` times into microseconds of the run."""

    def __init__(self, anchor: list[Any], origin_ns: int) -> None:
        born, wall, offset = anchor
        self.born = float(born)
        self.base_us = (int(wall) + int(offset) - origin_ns) / 1000

    def __call__(self, t: float) -> float:
        return round(self.base_us + (t - self.born) * 1e6, 3)


def _fid(fid: int) -> str:
    return f"{fid:#x}"


def tracks(reports: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    """The track (``pid``) of each process: the launcher, the root, then
    the workers and others in name order."""
    numbers = {"launcher": LAUNCHER_TRACK}
    rest = [n for n in reports if n != "launcher"]
    roots = [n for n in rest if reports[n].get("role") == m.ROOT]
    for name in roots[:1]:
        numbers[name] = ROOT_TRACK
    others = sorted((n for n in rest if n not in numbers), key=natural_key)
    for i, name in enumerate(others):
        numbers[name] = FIRST_WORKER_TRACK + i
    return numbers


def records(data: bytes) -> Iterator[array.array[float]]:
    """The events in ``data`` (see :mod:`scoop_core.activity`), each as its
    numbers; ValueError if it ends in the middle of one or has an unknown kind."""
    numbers = array.array("d")
    numbers.frombytes(data)
    at, end = 0, len(numbers)
    while at < end:
        width = a.WIDTHS.get(int(numbers[at]), 0)
        if not width or at + width > end:
            raise ValueError(f"an event of unknown kind {numbers[at]!r}, or cut short")
        yield numbers[at : at + width]
        at += width


def _process_events(
    pid: int,
    clock: _Clock,
    data: bytes,
    names: Mapping[int, str],
    instants: list[list[Any]],
    lanes: set[int],
) -> Iterator[dict[str, Any]]:
    """The trace events of one process's events (``data``, see
    :mod:`scoop_core.activity`; ``names``: its function names by id) and
    ``instants``."""
    submits: dict[tuple[int, float], list[int]] = {}
    for ev in records(data):
        kind = int(ev[0])
        if kind == a.RUN:
            _, start, seconds, fid_, parent, fn, items, args_bytes, result_bytes, status, lane_ = ev
            fid, lane = int(fid_), int(lane_)
            ts = clock(start)
            lanes.add(lane)
            yield {
                "ph": "X",
                "cat": "future",
                "name": names.get(int(fn), "?"),
                "pid": pid,
                "tid": lane,
                "ts": ts,
                "dur": round(seconds * 1e6, 3),
                "args": {
                    "fid": _fid(fid),
                    "parent": _fid(int(parent)),
                    "items": int(items),
                    "args_bytes": int(args_bytes),
                    "result_bytes": int(result_bytes),
                    "status": m.STATUS_NAMES.get(int(status), str(status)),
                },
            }
            # The arrow's head, inside the slice it binds to.
            yield {
                "ph": "f",
                "bp": "e",
                "cat": _FLOW,
                "name": _FLOW,
                "id": fid,
                "pid": pid,
                "tid": lane,
                "ts": ts + 0.001,
            }
        elif kind == a.WAIT:
            _, start, seconds, fid_, lane_ = ev
            fid, lane = int(fid_), int(lane_)
            lanes.add(lane)
            yield {
                "ph": "X",
                "cat": "wait",
                "name": "wait",
                "pid": pid,
                "tid": lane,
                "ts": clock(start),
                "dur": round(seconds * 1e6, 3),
                "args": {"fid": _fid(fid)},
            }
        elif kind == a.SUBMIT:
            _, t, fid_, lane_ = ev
            submits.setdefault((int(lane_), t), []).append(int(fid_))
        else:  # a.HANDED
            _, t, fid_ = ev
            submits.setdefault((a.HANDOVER_LANE, t), []).append(int(fid_))
    for t, category, text, args in instants:
        yield {
            "ph": "i",
            "s": "p",
            "cat": category,
            "name": text,
            "pid": pid,
            "tid": 0,
            "ts": clock(t),
            "args": {k: _fid(v) if k == "fid" else v for k, v in args.items()},
        }
    # Submits and hand-overs of one moment share a slice, where their
    # arrows start (an arrow binds to the slice around it).
    for (lane, t), fids in submits.items():
        ts = clock(t)
        lanes.add(lane)
        handed = lane == a.HANDOVER_LANE
        yield {
            "ph": "X",
            "cat": "handed over" if handed else "submit",
            "name": f"{'handed over' if handed else 'submit'} {len(fids)}",
            "pid": pid,
            "tid": lane,
            "ts": ts,
            "dur": 0,
            "args": {"fids": [_fid(f) for f in fids[:100]], "count": len(fids)},
        }
        for fid in fids:
            yield {
                "ph": "t" if handed else "s",
                "cat": _FLOW,
                "name": _FLOW,
                "id": fid,
                "pid": pid,
                "tid": lane,
                "ts": ts,
            }


def _names(pid: int, title: str, lanes: set[int]) -> Iterator[dict[str, Any]]:
    yield {"ph": "M", "name": "process_name", "pid": pid, "args": {"name": title}}
    yield {"ph": "M", "name": "process_sort_index", "pid": pid, "args": {"sort_index": pid}}
    for lane in sorted(lanes):
        name = "hand-overs" if lane == a.HANDOVER_LANE else f"lane {lane}"
        yield {"ph": "M", "name": "thread_name", "pid": pid, "tid": lane, "args": {"name": name}}


def _order(event: dict[str, Any]) -> tuple[float, int, float]:
    # By time; at one time, metadata first and longer slices before the
    # slices they enclose.
    return (event.get("ts", -1.0), 0 if event["ph"] == "X" else 1, -event.get("dur", 0))


def build(run: RunActivity, snapshot: RunSnapshot, info: Mapping[str, Any]) -> dict[str, Any]:
    """The trace of the run ``run`` gathered (its final ``snapshot``), with
    ``info`` (the run's settings) in its ``scoop`` object."""
    reports = run.reports()
    launcher = run.launcher
    reports["launcher"] = launcher.counters()
    origin_ns = launcher.wall + launcher.clock_offset
    numbers = tracks(reports)
    lanes: dict[int, set[int]] = {pid: set() for pid in numbers.values()}
    events: list[dict[str, Any]] = []
    batches = list(run.batches)
    batches.append(("launcher", launcher.anchor(), {"instants": launcher.instants}, b""))
    names: dict[str, dict[int, str]] = {}
    for name, anchor, trace, data in batches:
        pid = numbers.get(name)
        if pid is None:  # events of a process whose report never came
            pid = numbers[name] = FIRST_WORKER_TRACK + len(numbers)
            lanes[pid] = set()
        known = names.setdefault(name, {})
        known.update((ident, text) for ident, text in trace.get("names", []))
        clock = _Clock(anchor, origin_ns)
        try:
            events.extend(
                _process_events(pid, clock, data, known, trace.get("instants", []), lanes[pid])
            )
        except ValueError as exc:  # a process of another version, say: the rest is good
            log.warning("left out events of %s from the trace: %s", name, exc)
    clock = _Clock(launcher.anchor(), origin_ns)
    for t, queued, running, ended in run.samples:
        events.append(
            {
                "ph": "C",
                "name": "futures",
                "pid": LAUNCHER_TRACK,
                "ts": clock(t),
                "args": {"queued": queued, "running": running, "done": ended},
            }
        )
    events.sort(key=_order)
    meta: list[dict[str, Any]] = []
    for name, pid in numbers.items():
        seen = reports.get(name, {})
        if name == "launcher":
            title = f"launcher @ {launcher.host}"
        else:
            title = f"{name} @ {seen.get('host', '?')} (pid {seen.get('pid', '?')})"
        meta.extend(_names(pid, title, lanes.get(pid, set())))
    rows = {p.name: p for p in snapshot.processes}
    processes = []
    for name, pid in sorted(numbers.items(), key=lambda item: item[1]):
        c = reports.get(name)
        if c is None or name == "launcher":
            continue
        row = rows.get(name)
        offset = c["anchor"][2] if "anchor" in c else 0
        processes.append(
            {
                "track": pid,
                "name": name,
                "role": c.get("role", ""),
                "host": c.get("host", ""),
                "pid": c.get("pid", 0),
                "clock_offset_us": round(offset / 1000, 3),
                "ran": c.get("ran", 0),
                "busy": round(float(c.get("busy", 0.0)), 6),
                "alive": round(float(c.get("alive", 0.0)), 6),
                "handed": c.get("handed", 0),
                "losses": row.losses if row else 0,
                "state": row.state if row else "",
            }
        )
    hosts: dict[str, int] = {}
    for p in processes:
        if p["role"] == m.WORKER:
            hosts[p["host"]] = hosts.get(p["host"], 0) + 1
    scoop = {
        "format": FORMAT,
        "run_id": run.run_id,
        "transport": run.transport,
        **info,
        "started": origin_ns / 1e9,
        "duration": round(snapshot.elapsed, 6),
        "hosts": hosts,
        "workers": sum(hosts.values()),
        "processes": processes,
        "totals": {
            "submitted": snapshot.submitted,
            "done": snapshot.done,
            "failed": snapshot.failed,
            "cancelled": snapshot.cancelled,
            "lost": snapshot.lost,
        },
    }
    return {"traceEvents": meta + events, "displayTimeUnit": "ms", "scoop": scoop}


def write(path: str, trace: Mapping[str, Any]) -> None:
    """Write ``trace`` to ``path``, whole or not at all (through a temporary file)."""
    partial = f"{path}.partial"
    with open(partial, "w", encoding="utf-8") as out:
        out.write('{"traceEvents": [\n')
        for i, event in enumerate(trace["traceEvents"]):
            if i:
                out.write(",\n")
            out.write(json.dumps(event, separators=(",", ":")))
        out.write('\n],\n"displayTimeUnit": "ms",\n"scoop": ')
        json.dump(trace["scoop"], out, indent=1, default=str)
        out.write("}\n")
    os.replace(partial, path)
