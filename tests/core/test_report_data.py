"""The figures of ``scoop report``, computed from traces written by hand.

A small trace whose every figure can be worked out on paper: two workers
on two hosts, three futures, a wait of the root, a loss and a restart.
Then properties over random traces (Hypothesis): utilisation stays a share
and accounts for every microsecond busy; the timeline's bars account for
every future, never overlap on a lane and stay within their bound; any
trace cut short reads as a prefix of its events.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scoop_core import report
from scoop_core.errors import UsageError


def _run(
    function: str, track: int, lane: int, start: float, dur: float, fid: str, **args: object
) -> dict:
    return {
        "ph": "X",
        "cat": "future",
        "name": function,
        "pid": track,
        "tid": lane,
        "ts": start,
        "dur": dur,
        "args": {
            "fid": fid,
            "parent": "0x0",
            "items": 1,
            "args_bytes": 100,
            "result_bytes": 10,
            "status": "ok",
            **args,
        },
    }


SMALL = {
    "traceEvents": [
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "launcher @ a"}},
        {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "root @ a (pid 1)"}},
        {"ph": "M", "name": "process_name", "pid": 10, "args": {"name": "worker-1 @ a (pid 11)"}},
        {"ph": "M", "name": "process_name", "pid": 11, "args": {"name": "worker-2 @ b (pid 12)"}},
        {"ph": "M", "name": "process_name", "pid": 12, "args": {"name": "worker-3 @ b (pid 13)"}},
        # worker-1 busy 0-400 (two futures overlapping on two lanes: 0-300, 100-400)
        _run("f", 10, 0, 0, 300, "0x1"),
        _run("g", 10, 1, 100, 300, "0x2", items=5),
        # worker-2 runs 0x3 200-300, then is lost at 500; worker-3 replaces it
        # and runs 0x3 again 600-1000, raising.
        _run("f", 11, 0, 200, 100, "0x3"),
        _run("f", 12, 0, 600, 400, "0x3", status="raised"),
        {
            "ph": "X",
            "cat": "wait",
            "name": "wait",
            "pid": 2,
            "tid": 0,
            "ts": 0,
            "dur": 1000,
            "args": {"fid": "0x3"},
        },
        {
            "ph": "i",
            "s": "p",
            "cat": "loss",
            "name": "lost",
            "pid": 1,
            "tid": 0,
            "ts": 500,
            "args": {"fid": "0x3", "worker": "worker-2", "losses": 1},
        },
        {
            "ph": "i",
            "s": "p",
            "cat": "restart",
            "name": "replaced",
            "pid": 1,
            "tid": 0,
            "ts": 500,
            "args": {"worker": "worker-2", "status": -9, "by": "worker-3"},
        },
    ],
    "scoop": {"run_id": "r1", "duration": 0.001, "hosts": {"a": 1, "b": 1}},
}


def summary_of(doc: dict) -> report.Summary:
    return report.summarise(report.parse_trace(json.dumps(doc)))


def test_functions_workers_and_losses_of_a_small_trace() -> None:
    summary = summary_of(SMALL)
    assert summary.end == 1000
    rows = {r.name: r for r in summary.functions}
    assert [r.name for r in summary.functions] == ["f", "g"]  # by total time
    assert (rows["f"].calls, rows["f"].total, rows["f"].longest, rows["f"].raised) == (
        3,
        800,
        400,
        1,
    )
    assert (rows["g"].calls, rows["g"].items, rows["g"].mean) == (1, 5, 300)
    workers = {t.name: t for t in summary.tracks}
    assert [t.name for t in summary.tracks] == ["root", "worker-1", "worker-2", "worker-3"]
    assert workers["worker-1"].busy == 400  # the union of its two lanes
    assert (workers["worker-1"].host, workers["worker-1"].pid, workers["worker-1"].lanes) == (
        "a",
        11,
        2,
    )
    # Each worker is counted while it was there: worker-2 until its loss,
    # worker-3 from the restart that brought it in.
    assert (workers["worker-2"].alive_from, workers["worker-2"].alive_to) == (0, 500)
    assert (workers["worker-3"].alive_from, workers["worker-3"].alive_to) == (500, 1000)
    assert [fid for fid, _ in summary.reruns] == ["0x3"]
    assert [(i["fid"], i["worker"]) for i in summary.losses] == [("0x3", "worker-2")]


def test_utilisation_of_a_small_trace() -> None:
    # Ten bins of 100 us. worker-1 is busy 0-400; worker-2 200-300 (there 0-500);
    # worker-3 600-1000 (there 500-1000).
    shares = report.utilisation(summary_of(SMALL).workers, 1000, bins=10)
    assert shares == pytest.approx([0.5, 0.5, 1.0, 0.5, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5])


def test_the_queue_is_derived_from_submits_and_starts_without_a_counter() -> None:
    doc = {
        "traceEvents": [
            {"ph": "s", "cat": "submit", "name": "submit", "id": 1, "pid": 2, "tid": 0, "ts": 0},
            {"ph": "s", "cat": "submit", "name": "submit", "id": 2, "pid": 2, "tid": 0, "ts": 0},
            {
                "ph": "f",
                "bp": "e",
                "cat": "submit",
                "name": "submit",
                "id": 1,
                "pid": 10,
                "tid": 0,
                "ts": 500,
            },
            _run("f", 10, 0, 500, 500, "0x1"),
        ]
    }
    queue = summary_of(doc).queue
    assert queue["source"] == "derived"
    half = report.QUEUE_BINS // 2
    assert queue["queued"][: half - 1] == [2] * (half - 1) and queue["queued"][-1] == 1
    assert queue["running"][0] == 0 and queue["running"][-1] == 1


def test_the_page_holds_every_worker_and_function_and_no_url() -> None:
    page = report.render(summary_of(SMALL))
    for name in ("worker-1", "worker-2", "worker-3", "root"):
        assert f'data-worker="{name}"' in page
    for name in ("f", "g"):
        assert f'data-function="{name}"' in page
    assert "http:" not in page and "https:" not in page


def test_text_in_the_trace_cannot_end_the_page_script() -> None:
    doc = json.loads(json.dumps(SMALL))
    doc["traceEvents"].append(_run("</script><script>alert(1)</script>", 10, 0, 900, 10, "0x9"))
    page = report.render(summary_of(doc))
    assert page.count("</script>") == 2  # the data's and the drawing code's
    assert "&lt;/script&gt;" in page


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "not JSON"),
        ("[1, 2]", 'no "traceEvents" list'),
        ('{"traceEvents": {"a": 1}}', 'no "traceEvents" list'),
        ('{"traceEvents": [{"ph": "X", "ts": "soon"}]}', "event 0 has a ts that is not a number"),
        ('{"traceEvents": [{"name": "x"}]}', 'event 0 is not an object with a "ph" field'),
    ],
)
def test_what_is_not_a_trace_says_why(text: str, why: str) -> None:
    with pytest.raises(UsageError, match="^t.json is not a trace written by --trace: " + why):
        report.parse_trace(text, "t.json")


def _written(doc: dict) -> str:
    events = ",\n".join(json.dumps(e) for e in doc["traceEvents"])
    return (
        '{"traceEvents": [\n' + events + '\n],\n"scoop": ' + json.dumps(doc.get("scoop", {})) + "}"
    )


def test_a_whole_trace_is_not_called_truncated() -> None:
    trace = report.parse_trace(_written(SMALL))
    assert not trace.truncated and trace.meta["run_id"] == "r1"


@given(st.data())
@settings(max_examples=60, deadline=None)
def test_a_trace_cut_anywhere_reads_as_a_prefix_of_its_events(data: st.DataObject) -> None:
    text = _written(SMALL)
    start = text.index("[") + 1
    cut = data.draw(st.integers(start, len(text) - 1))
    trace = report.parse_trace(text[:cut])
    assert trace.events == SMALL["traceEvents"][: len(trace.events)]
    assert trace.truncated
    report.render(report.summarise(trace))  # and it still makes a page


def _slices(draw: st.DrawFn, lanes: int) -> list[report.Slice]:
    """Futures on ``lanes`` lanes, never overlapping on one."""
    out = []
    for lane in range(lanes):
        at = draw(st.floats(0, 100))
        for _ in range(draw(st.integers(0, 30))):
            dur = draw(st.floats(0.001, 50))
            out.append(report.Slice(at, dur, lane, draw(st.sampled_from(["f", "g", "h"]))))
            at += dur + draw(st.floats(0, 20))
    return out


@st.composite
def workers(draw: st.DrawFn) -> list[report.Track]:
    tracks = []
    for number in range(draw(st.integers(1, 4))):
        track = report.Track(10 + number, f"worker-{number + 1}", "")
        track.runs = _slices(draw, draw(st.integers(1, 3)))
        track.alive_from = min((s.start for s in track.runs), default=0.0)
        track.alive_to = max((s.end for s in track.runs), default=0.0) + draw(st.floats(0, 50))
        tracks.append(track)
    return tracks


@given(workers(), st.integers(1, 50))
@settings(max_examples=80, deadline=None)
def test_utilisation_is_a_share_and_accounts_for_all_busy_time(
    tracks: list[report.Track], bins: int
) -> None:
    end = max(t.alive_to for t in tracks)
    shares = report.utilisation(tracks, end, bins)
    assert all(0.0 <= s <= 1.0 for s in shares)
    there = report.spread(((t.alive_from, t.alive_to) for t in tracks), end, bins)
    busy = sum(b - a for t in tracks for a, b in report.busy_intervals(t.runs))
    assert sum(s * t for s, t in zip(shares, there, strict=True)) == pytest.approx(
        busy, rel=1e-6, abs=1e-6
    )


@given(workers(), st.floats(0.01, 40))
@settings(max_examples=80, deadline=None)
def test_bars_account_for_every_future_and_never_overlap(
    tracks: list[report.Track], shortest: float
) -> None:
    index = {"f": 0, "g": 1, "h": 2, None: -1}
    for track in tracks:
        for lane in range(track.lanes):
            slices = [s for s in track.runs if s.lane == lane]
            bars = report.lane_bars(slices, shortest, index)
            assert sum(bar[4] for bar in bars) == len(slices)
            spans = sorted((bar[1], bar[1] + bar[2]) for bar in bars)
            assert all(a[1] <= b[0] + 1e-9 for a, b in zip(spans, spans[1:], strict=False))
            assert all(bar[2] <= 4 * shortest for bar in bars if bar[4] > 1)


def test_the_timeline_keeps_to_its_bound_and_says_so() -> None:
    events = [_run("f", 10, 0, i * 10.0, 5.0, hex(i)) for i in range(20_000)]
    summary = summary_of({"traceEvents": events})
    lines = report.timeline(summary, max_bars=500)
    drawn = sum(len(row["bars"]) for row in lines["rows"])
    assert drawn <= 500 and lines["drawn"] == drawn and lines["slices"] == 20_000
    assert sum(bar[4] for row in lines["rows"] for bar in row["bars"]) == 20_000
    assert "20,000 futures drawn as" in report.render(summary)
