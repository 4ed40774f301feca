"""``--trace FILE``: the run as a Chrome Trace Event file, from real runs.

Each program prints where each of its futures ran (the future's id and the
pid of the process that ran it); the trace must show every future exactly
once, on the track of that process, with the arrows of nesting and of
hand-overs between workers. The format docs/tracing.md documents is the
one a real trace has: the same fields, and only the events it lists.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import program_results, wait_for

PRELUDE = """
import json
import os
import time

from scoop import futures


def out(value):
    print("RESULT " + json.dumps(value), flush=True)


def where(x):
    time.sleep(0.002)
    return os.getpid()


def parent(n):
    children = [futures.submit(where, i) for i in range(n)]
    # The children's ids and pids, from inside a future.
    return os.getpid(), [[f.fid, f.result()] for f in children]
"""

# The root keeps every future on the workers, so that each one's place is known.
ON_WORKERS = {"SCOOP_ROOT_RUNS_FUTURES": "false"}


def read_trace(path: Path) -> dict[str, Any]:
    trace = json.loads(path.read_text())
    assert isinstance(trace["traceEvents"], list)
    for event in trace["traceEvents"]:
        # The fields every Trace Event viewer needs.
        assert event["ph"] in {"X", "M", "s", "t", "f", "i", "C"}, event
        assert isinstance(event["pid"], int), event
        if event["ph"] != "M":
            assert isinstance(event["ts"], (int, float)) and event["ts"] >= -1e6, event
        if event["ph"] == "X":
            assert event["dur"] >= 0, event
    return trace


def track_pids(trace: dict[str, Any]) -> dict[int, int]:
    """Track number -> the process id of the process it shows."""
    return {p["track"]: p["pid"] for p in trace["scoop"]["processes"]}


def slices(trace: dict[str, Any], category: str = "future") -> list[dict[str, Any]]:
    return [e for e in trace["traceEvents"] if e["ph"] == "X" and e.get("cat") == category]


@pytest.mark.both_transports
def test_every_future_appears_once_on_the_worker_that_ran_it(program, scoop_run, tmp_path):
    prog = program("""
if __name__ == "__main__":
    fs = [futures.submit(where, i) for i in range(40)]
    out([[f.fid, f.result()] for f in fs])
    out(list(futures.map(where, range(30))))
    top = futures.submit(parent, 12)
    out([top.fid, *top.result()])
""")
    path = tmp_path / "run.json"
    proc = scoop_run(prog, flags=("-n", "2", "--trace", str(path)), env=ON_WORKERS)
    submitted, mapped, (top_fid, top_pid, children) = program_results(proc)
    assert "wrote the trace" in proc.stderr and str(path) in proc.stderr
    trace = read_trace(path)
    pid_of = track_pids(trace)
    runs = slices(trace)
    # Each future once: no id twice.
    by_fid = {int(e["args"]["fid"], 16): e for e in runs}
    assert len(by_fid) == len(runs)
    ran_at = {fid: pid for fid, pid in submitted + children}
    ran_at[top_fid] = top_pid
    for fid, pid in ran_at.items():
        event = by_fid[fid]
        assert pid_of[event["pid"]] == pid, (hex(fid), event)
        assert event["name"] in ("where", "parent")
        assert event["args"]["status"] == "ok"
    for fid, _ in submitted:
        # Pickled to travel (a child run where it was submitted never is).
        args = by_fid[fid]["args"]
        assert args["args_bytes"] > 0 and args["result_bytes"] > 0
    # The map's items, in chunks: each item counted once, on the workers.
    items = sum(e["args"]["items"] for e in runs if e["name"] == "where")
    assert items == 40 + 30 + 12
    assert set(mapped) <= {pid_of[e["pid"]] for e in runs}
    # Nesting: the children's parent is the top future, whose slice holds
    # the arrows that start where they were submitted.
    top = by_fid[top_fid]
    for fid, _ in children:
        assert int(by_fid[fid]["args"]["parent"], 16) == top_fid
    starts = {e["id"]: e for e in trace["traceEvents"] if e["ph"] == "s"}
    ends = {e["id"]: e for e in trace["traceEvents"] if e["ph"] == "f"}
    for fid, _ in children:
        start = starts[fid]
        assert start["pid"] == top["pid"] and start["tid"] == top["tid"]
        assert top["ts"] <= start["ts"] <= top["ts"] + top["dur"]
        assert ends[fid]["pid"] == by_fid[fid]["pid"]
    # Every future's arrow starts somewhere and ends on its slice.
    assert set(by_fid) <= set(starts) and set(by_fid) == set(ends)
    # The root's waits for results are on its track.
    root_track = next(p["track"] for p in trace["scoop"]["processes"] if p["role"] == "root")
    waits = [int(e["args"]["fid"], 16) for e in slices(trace, "wait") if e["pid"] == root_track]
    assert waits and set(waits) <= set(by_fid)
    # Tracks are named by process, host and pid.
    names = {
        e["pid"]: e["args"]["name"]
        for e in trace["traceEvents"]
        if e["ph"] == "M" and e["name"] == "process_name"
    }
    for p in trace["scoop"]["processes"]:
        assert names[p["track"]] == f"{p['name']} @ {p['host']} (pid {p['pid']})"
    # Lanes never overlap: a worker's slices on one lane are apart or nested.
    for (track, lane), events in _by_lane(runs).items():
        ends_at = 0.0
        for e in sorted(events, key=lambda e: e["ts"]):
            assert e["ts"] >= ends_at - 0.01, (track, lane, e)
            ends_at = e["ts"] + e["dur"]
    scoop = trace["scoop"]
    assert scoop["transport"] == os.environ.get("SCOOP_TRANSPORT", scoop["transport"])
    assert scoop["workers"] == 2 and scoop["exit_status"] == 0
    assert scoop["totals"]["submitted"] == scoop["totals"]["done"] == 40 + 30 + 12 + 1


def _by_lane(events: list[dict[str, Any]]) -> dict[tuple[int, int], list[dict[str, Any]]]:
    lanes: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for e in events:
        lanes.setdefault((e["pid"], e["tid"]), []).append(e)
    return lanes


@pytest.mark.both_transports
def test_futures_handed_over_to_an_idle_worker_are_arrows_between_workers(
    program, scoop_run, tmp_path
):
    prog = program("""
def busy_parent(n):
    children = [futures.submit(slow, i) for i in range(n)]
    return [[f.fid, f.result()] for f in children]


def slow(x):
    time.sleep(0.05)
    return os.getpid()


if __name__ == "__main__":
    top = futures.submit(busy_parent, 16)
    out(top.result())
""")
    path = tmp_path / "steal.json"
    proc = scoop_run(prog, flags=("-n", "2", "--trace", str(path)), env=ON_WORKERS)
    [children] = program_results(proc)
    trace = read_trace(path)
    runs = {int(e["args"]["fid"], 16): e for e in slices(trace)}
    handed = [e for e in trace["traceEvents"] if e["ph"] == "t"]
    # The idle worker took some of the busy one's children: each went
    # submit (s) -> handed over (t, on the giver's track) -> run (f, elsewhere).
    assert handed, "no future was handed over"
    assert all(step["tid"] == 999 for step in handed)
    top_track = next(e["pid"] for e in runs.values() if e["name"] == "busy_parent")
    moved = {fid for fid, e in runs.items() if e["pid"] != top_track}
    assert moved, "no child ran on the other worker"
    # Every child that ran on the other worker went by a hand-over. (One
    # handed over may come back to its worker, if it asks first, or be handed
    # over again by the worker that took it: hand-overs may outnumber moves.)
    assert moved <= {step["id"] for step in handed}
    assert len({pid for _, pid in children}) == 2, "the children all ran on one worker"
    handed_over = sum(p["handed"] for p in trace["scoop"]["processes"])
    assert handed_over == len(handed)


@pytest.mark.both_transports
def test_a_lost_future_and_the_restart_are_instants_and_it_appears_once(
    program, scoop_run, tmp_path
):
    marker = tmp_path / "died-once"
    prog = program(f"""
def fragile(x):
    if not os.path.exists({str(marker)!r}):
        open({str(marker)!r}, "w").close()
        os._exit(7)
    return os.getpid()


if __name__ == "__main__":
    f = futures.submit(fragile, 1)
    out([f.fid, f.result()])
""")
    path = tmp_path / "lost.json"
    proc = scoop_run(prog, flags=("-n", "2", "--trace", str(path)), env=ON_WORKERS)
    [[fid, pid]] = program_results(proc)
    trace = read_trace(path)
    pid_of = track_pids(trace)
    [run] = [e for e in slices(trace) if int(e["args"]["fid"], 16) == fid]
    assert pid_of[run["pid"]] == pid
    instants = [e for e in trace["traceEvents"] if e["ph"] == "i"]
    losses = [e for e in instants if e["cat"] == "loss"]
    assert [int(e["args"]["fid"], 16) for e in losses] == [fid]
    assert losses[0]["args"]["losses"] == 1
    restarts = [e for e in instants if e["cat"] == "restart"]
    assert len(restarts) == 1 and restarts[0]["args"]["status"] != 0
    lost_on = losses[0]["args"]["worker"]
    assert restarts[0]["args"]["worker"] == lost_on
    assert trace["scoop"]["totals"]["lost"] == 1
    assert {p["name"]: p["losses"] for p in trace["scoop"]["processes"]}[lost_on] == 1


@pytest.mark.both_transports
def test_a_run_whose_program_dies_keeps_what_reached_the_launcher(program, transport_env, tmp_path):
    prog = program("""
import signal

if __name__ == "__main__":
    out([f.result() for f in [futures.submit(where, i) for i in range(10)]])
    time.sleep(1.5)  # the workers' reports of those futures reach the launcher
    os.kill(os.getpid(), signal.SIGKILL)
""")
    path = tmp_path / "died.json"
    proc = subprocess.run(
        [sys.executable, "-m", "scoop", "-n", "2", "--trace", str(path), str(prog)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **transport_env, **ON_WORKERS},
    )
    assert proc.returncode != 0
    trace = read_trace(path)
    assert sum(e["args"]["items"] for e in slices(trace)) == 10
    assert trace["scoop"]["exit_status"] == 128 + signal.SIGKILL


def test_ctrl_c_still_writes_the_trace(program, tmp_path):
    prog = program("""
if __name__ == "__main__":
    out([f.result() for f in [futures.submit(where, i) for i in range(6)]])
    open("started", "w").close()
    time.sleep(60)
""")
    path = tmp_path / "stopped.json"
    launcher = subprocess.Popen(
        [sys.executable, "-m", "scoop", "-n", "2", "--trace", str(path), str(prog)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **ON_WORKERS},
    )
    try:
        wait_for(lambda: (tmp_path / "started").exists(), "the program's futures")
        launcher.send_signal(signal.SIGINT)
        launcher.communicate(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    trace = read_trace(path)
    assert trace["scoop"]["exit_status"] == 128 + signal.SIGINT
    assert len(slices(trace)) >= 1


def test_without_trace_no_process_keeps_events(program, scoop_run, tmp_path):
    prog = program("""
from scoop_core import activity

def kept(x):
    return activity.here.events is None

if __name__ == "__main__":
    out([activity.here.events is None, all(futures.map(kept, range(8)))])
""")
    assert program_results(scoop_run(prog)) == [[True, True]]
    assert not list(tmp_path.glob("*.json"))


def test_a_message_the_broker_refuses_is_an_instant_on_the_launcher_track(
    program, scoop_run, tmp_path
):
    prog = program("""
import zmq
import scoop

if __name__ == "__main__":
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.connect(scoop.BROKER)
    sock.send_multipart([b"not", b"a message"])  # no signature: refused
    # Round trips through the broker, which reads the stranger's message meanwhile.
    out(sum(futures.map(where, range(4))) > 0)
    sock.close()
""")
    path = tmp_path / "refused.json"
    proc = scoop_run(prog, flags=("-n", "1", "--trace", str(path)))
    assert program_results(proc) == [True]
    trace = read_trace(path)
    [refused] = [e for e in trace["traceEvents"] if e["ph"] == "i" and e["cat"] == "rejected"]
    assert refused["pid"] == 1 and refused["args"]["reason"]


def test_more_events_than_one_report_holds_all_arrive(program, scoop_run, tmp_path):
    prog = program("""
def tiny(x):
    return x

if __name__ == "__main__":
    fs = [futures.submit(tiny, i) for i in range(25_000)]
    out(sum(f.result() for f in fs))
""")
    path = tmp_path / "many.json"
    proc = scoop_run(prog, flags=("-n", "2", "--trace", str(path)), env=ON_WORKERS)
    assert program_results(proc) == [sum(range(25_000))]
    trace = read_trace(path)
    # More than activity.MAX_EVENTS_PER_REPORT submits in the root alone.
    assert len([e for e in trace["traceEvents"] if e["ph"] == "s"]) == 25_000
    assert len({e["args"]["fid"] for e in slices(trace)}) == len(slices(trace)) == 25_000


DOC = Path(__file__).resolve().parents[2] / "docs" / "tracing.md"


def documented_sample() -> dict[str, Any]:
    """The ``scoop`` object shown in docs/tracing.md."""
    [sample] = re.findall(r"^```json\n(.*?)^```$", DOC.read_text(), re.S | re.M)
    found: dict[str, Any] = json.loads(sample)
    return found


def documented_events() -> set[tuple[str, str | None]]:
    """``(ph, cat)`` of each kind of event the table of docs/tracing.md lists."""
    table = DOC.read_text().split("### Events\n", 1)[1].strip().split("\n\n", 1)[0]
    kinds = set()
    for row in table.splitlines()[2:]:
        phases, categories = row.split("|")[1:3]
        for ph in re.findall(r"`(\w)`", phases):
            kinds |= {(ph, cat) for cat in re.findall(r"`([\w ]+)`", categories) or [None]}
    return kinds


def test_a_trace_has_the_fields_and_events_the_docs_describe(program, scoop_run, tmp_path):
    prog = program("""
if __name__ == "__main__":
    out(len(list(futures.map(where, range(20)))))
    top = futures.submit(parent, 4)
    out(len(top.result()[1]))
""")
    path = tmp_path / "run.json"
    assert program_results(scoop_run(prog, flags=("-n", "2", "--trace", str(path)))) == [20, 4]
    trace = read_trace(path)
    sample = documented_sample()

    assert set(trace) == {"traceEvents", "displayTimeUnit", "scoop"}
    assert set(trace["scoop"]) == set(sample)
    for process in trace["scoop"]["processes"]:
        assert set(process) == set(sample["processes"][0]), process["name"]
    assert set(trace["scoop"]["totals"]) == set(sample["totals"])
    documented = documented_events()
    assert {("X", "future"), ("C", None), ("i", "loss")} <= documented
    seen = {(e["ph"], e.get("cat")) for e in trace["traceEvents"] if e["ph"] != "M"}
    assert seen <= documented, f"events the docs do not list: {seen - documented}"
