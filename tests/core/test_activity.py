"""A process's activity (its counters, lanes and reports) and the run's snapshot of them."""

from __future__ import annotations

import msgpack
import pytest

from scoop_core import activity as a
from scoop_core import trace_file
from scoop_core.errors import ProtocolError
from scoop_core.run_activity import RunActivity, pack_snapshot, unpack_snapshot


def test_a_running_future_takes_the_lowest_free_lane() -> None:
    act = a.Activity("worker-1", "worker", tracing=True)
    assert [act.take_lane(k) for k in (10, 11, 12)] == [0, 1, 2]
    assert act.free_lane(11) == 1
    assert act.free_lane(10) == 0
    assert act.take_lane(13) == 0 and act.take_lane(14) == 1 and act.take_lane(15) == 3
    assert act.free_lane(99) == 0  # a key with no lane frees nothing
    assert act.take_lane(16) == 4


def test_a_report_is_sent_only_when_something_changed() -> None:
    act = a.Activity("worker-1", "worker", tracing=False)
    first = act.take_report(0.0)
    assert first is not None and first[1] == ()
    assert act.take_report(1.0) is None
    assert act.take_report(6.0) is not None  # nothing changed for max_quiet: "still here"
    assert act.take_report(6.5) is None
    act.ran += 3
    counters, events = act.take_report(2.0)  # type: ignore[misc]
    assert counters["ran"] == 3 and counters["final"] is False and events == ()
    final = act.take_report(3.0, final=True)
    assert final is not None and final[0]["final"] is True


def test_events_travel_as_their_bytes_in_small_frames_and_none_is_lost() -> None:
    act = a.Activity("root", "root", tracing=True)
    assert act.events is not None
    for fid in range(30_000):
        act.events.extend((a.SUBMIT, 0.5, fid, 0))
    act.events.extend((a.RUN, 1.0, 0.25, 7, 0, act.name_id(len), 1, 10, 20, 0, 3))
    act.instant("loss", "lost", fid=7)
    counters, frames = act.take_report(0.0, final=True)  # type: ignore[misc]
    assert frames and all(len(f) <= a.FRAME_BYTES for f in frames)
    data = b"".join(frames)
    events = list(trace_file.records(data))
    assert [int(e[2]) for e in events[:-1]] == list(range(30_000))
    assert list(events[-1]) == [a.RUN, 1.0, 0.25, 7, 0, 0, 1, 10, 20, 0, 3]
    assert counters["trace"]["names"] == [[0, "len"]]
    assert [i[1:3] for i in counters["trace"]["instants"]] == [["loss", "lost"]]
    assert len(act.events) == 0 and act.take_report(1.0) is None
    # A name is told once: the next report of an event that uses it does not repeat it.
    act.events.extend((a.RUN, 2.0, 0.1, 8, 0, act.name_id(len), 1, 0, 0, 0, 0))
    counters, frames = act.take_report(2.0)  # type: ignore[misc]
    assert "trace" not in counters and len(b"".join(frames)) == 11 * 8


def _report(name: str, role: str = "worker", **counts: int) -> dict[str, object]:
    act = a.Activity(name, role)
    for key, value in counts.items():
        setattr(act, key, value)
    report = act.take_report(0.0)
    assert report is not None
    return report[0]


def test_the_snapshot_adds_up_every_process() -> None:
    run = RunActivity("r1", "zmq")
    run.add("root", _report("root", "root", submitted=100, ended=60, failed=5, expected=100))
    run.add("worker-1", _report("worker-1", ran=40, running=1))
    run.add("worker-2", _report("worker-2", ran=20, running=0, submitted=10, ended=10))
    run.launcher.lost_with("worker-2", 7, 1)
    snap = run.snapshot()
    assert (snap.submitted, snap.done, snap.failed, snap.running) == (110, 65, 5, 1)
    assert snap.queued == 110 - 70 - 1
    assert snap.expected == 100 and snap.lost == 1
    rows = {p.name: p for p in snap.processes}
    assert [p.name for p in snap.processes] == ["root", "worker-1", "worker-2"]
    assert rows["worker-1"].state == "busy" and rows["worker-2"].state == "idle"
    assert rows["worker-2"].losses == 1
    assert unpack_snapshot(pack_snapshot(snap)) == snap


def test_a_process_that_said_goodbye_or_died_is_told_apart() -> None:
    run = RunActivity()
    final = _report("worker-1")
    final["final"] = True
    run.add("worker-1", final)
    run.add("worker-2", _report("worker-2", running=2))
    run.lost("worker-2")
    rows = {p.name: p for p in run.snapshot().processes}
    assert rows["worker-1"].state == "left"
    assert rows["worker-2"].state == "lost" and rows["worker-2"].running == 0


@pytest.mark.parametrize(
    "change",
    [
        {"ran": "3"},
        {"busy": None},
        {"losses": {"w": "x"}},
        {"anchor": [1, 2]},
        {"role": 5},
    ],
)
def test_a_malformed_report_is_refused(change: dict[str, object]) -> None:
    report = {**_report("worker-1"), **change}
    with pytest.raises(ProtocolError):
        RunActivity().add("worker-1", report)


def test_malformed_status_reply_is_refused() -> None:
    with pytest.raises(ProtocolError):
        unpack_snapshot(msgpack.packb({"run_id": 1}))
