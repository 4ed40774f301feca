"""``scoop report``: a trace turned into one HTML page, as users run it.

The command runs in a subprocess, as ``python -m scoop_core report``, on
traces made here in the format ``--trace`` writes (see
:func:`realistic_trace`): a run of a genetic algorithm on two hosts, with a
worker lost and replaced, futures that wait for their children, the root's
waits and the launcher's queue counter. The page must name every worker and
function, hold no URL to fetch, and stay small for a run of 100,000
futures. Bad input gets one line and exit status 2.

The browser tests (cluster suite: they need Chromium, ``.ci/install-packages
cluster``) render the page in headless Chromium from a ``file://`` URL:
the DOM after its script ran has a timeline row for every worker, and a
screenshot is not blank.
"""

from __future__ import annotations

import bisect
import contextlib
import html.parser
import json
import os
import random
import re
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

FUNCTIONS = {
    # qualname: mean seconds of a run
    "evaluate": 0.040,
    "fitness.score": 0.012,
    "mutate": 0.006,
    "crossover": 0.015,
    "load_chunk": 0.030,
}
HOSTS = {"node1": 4, "node2": 4}


def realistic_trace(futures: int = 1500, seed: int = 7) -> dict[str, Any]:
    """A trace of a run on :data:`HOSTS`: the root submits generations of
    futures, some of which wait for children of their own (their lane stays
    taken; the worker runs others on the next lane), ``worker-3`` is killed
    a third of the way in (its running future lost, run again elsewhere) and
    replaced by ``worker-9``."""
    rnd = random.Random(seed)
    events: list[dict[str, Any]] = [
        _name(1, "launcher @ node1"),
        _name(2, "root @ node1 (pid 4100)"),
    ]
    workers = []
    for host, count in HOSTS.items():
        for _ in range(count):
            number = len(workers) + 1
            track = 9 + number
            events.append(_name(track, f"worker-{number} @ {host} (pid {4200 + number})"))
            workers.append({"track": track, "name": f"worker-{number}", "host": host, "free": 0.02})
    names = list(FUNCTIONS)
    fid = 0x100000000
    now = 0.01
    killed_at: float | None = None
    lost: dict[str, Any] | None = None
    starts: list[tuple[float, float, float]] = []  # submitted, started, ended
    per_generation = 40
    while fid - 0x100000000 < futures:
        generation_start = now
        for _ in range(min(per_generation, futures - (fid - 0x100000000))):
            fid += 1
            function = names[0] if rnd.random() < 0.5 else rnd.choice(names)
            worker = min((w for w in workers if w.get("gone") is None), key=lambda w: w["free"])
            start = max(worker["free"], now) + rnd.uniform(0.0002, 0.001)
            dur = rnd.expovariate(1 / FUNCTIONS[function])
            events.append(_flow("s", fid, 2, 0, now))
            if rnd.random() < 0.03:  # taken from a busy worker by an idle one
                events.append(_flow("t", fid, worker["track"], 999, start - 0.0002))
            events.append(_flow("f", fid, worker["track"], 0, start))
            children = 2 if function == "evaluate" and rnd.random() < 0.25 else 0
            if children:
                # It waits for two children: the worker runs them (and others) on lane 1.
                at = start + dur * 0.3
                for _ in range(children):
                    child = rnd.expovariate(1 / FUNCTIONS["fitness.score"])
                    events.append(_run("fitness.score", worker["track"], 1, at, child, 0, rnd))
                    at += child + 0.0003
                dur = max(dur, at - start + 0.001)
            events.append(_run(function, worker["track"], 0, start, dur, fid, rnd))
            starts.append((now, start, start + dur))
            worker["free"] = start + dur
            if (
                killed_at is None
                and not children
                and fid - 0x100000000 >= futures // 3
                and worker["name"] == "worker-3"
            ):
                killed_at = start + dur / 2
                events.pop()  # it never ended there
                worker["gone"] = killed_at
                lost = {"fid": fid, "function": function, "dur": dur}
                workers.append(
                    {"track": 18, "name": "worker-9", "host": "node1", "free": killed_at + 0.3}
                )
                events.append(_name(18, "worker-9 @ node1 (pid 4309)"))
            now += rnd.uniform(0, 0.0004)
        end_of_generation = max(w["free"] for w in workers if w.get("gone") is None)
        events.append(_wait(2, 0, generation_start, end_of_generation - generation_start))
        # The root picks the next generation itself.
        select = rnd.uniform(0.002, 0.01)
        events.append(_run("select", 2, 0, end_of_generation, select, 0, rnd))
        now = end_of_generation + select
    assert killed_at is not None and lost is not None
    # The lost future ran again on the first free worker.
    again = min((w for w in workers if w.get("gone") is None), key=lambda w: w["free"])
    events.append(
        _run(lost["function"], again["track"], 0, again["free"], lost["dur"], lost["fid"], rnd)
    )
    end = max(now, again["free"] + lost["dur"]) + 0.05
    events += [
        _instant(
            "loss",
            f"future {hex(lost['fid'])} lost with worker-3",
            killed_at + 0.01,
            fid=hex(lost["fid"]),
            worker="worker-3",
            losses=1,
        ),
        _instant(
            "restart",
            "worker-3 replaced",
            killed_at + 0.02,
            worker="worker-3",
            status=-9,
            by="worker-9",
        ),
        _instant(
            "rejected",
            "message refused",
            end * 0.8,
            **{"from": "10.0.0.7:41234", "reason": "bad signature"},
        ),
    ]
    # The launcher's counter: what was submitted, started and ended by each sample.
    submitted, started, ended = (sorted(times) for times in zip(*starts, strict=True))
    t = 0.0
    while t < end:
        counts = [bisect.bisect_right(times, t) for times in (submitted, started, ended)]
        queued, running, done = counts[0] - counts[1], counts[1] - counts[2], counts[2]
        events.append(
            {
                "ph": "C",
                "name": "futures",
                "pid": 1,
                "ts": t * 1e6,
                "args": {"queued": queued, "running": running, "done": done},
            }
        )
        t += 0.5 if end > 20 else end / 40
    meta = {
        "format": 1,
        "run_id": "7f3a91c2",
        "transport": "zmq",
        "serializer": "cloudpickle",
        "program": "evolve.py",
        "argv": ["evolve.py", "--population", "40"],
        "started": 1764900000.0,
        "duration": end,
        "exit_status": 0,
        "hosts": HOSTS,
        "workers": 8,
        "settings": {"max_losses": 2, "heartbeat_interval": 5.0, "heartbeat_timeout": 30.0},
        "processes": [
            {
                "track": w["track"],
                "name": w["name"],
                "role": "worker",
                "host": w["host"],
                "pid": 4200 + int(w["name"].split("-")[1]),
            }
            for w in workers
        ],
        "totals": {"submitted": futures, "done": futures, "failed": 0, "cancelled": 0, "lost": 1},
    }
    return {"traceEvents": events, "displayTimeUnit": "ms", "scoop": meta}


def _name(track: int, name: str) -> dict[str, Any]:
    return {"ph": "M", "name": "process_name", "pid": track, "args": {"name": name}}


def _flow(ph: str, fid: int, track: int, lane: int, at: float) -> dict[str, Any]:
    event = {
        "ph": ph,
        "cat": "submit",
        "name": "submit",
        "id": fid,
        "pid": track,
        "tid": lane,
        "ts": at * 1e6,
    }
    if ph == "f":
        event["bp"] = "e"
    return event


def _run(
    function: str, track: int, lane: int, at: float, dur: float, fid: int, rnd: random.Random
) -> dict[str, Any]:
    return {
        "ph": "X",
        "cat": "future",
        "name": function,
        "pid": track,
        "tid": lane,
        "ts": at * 1e6,
        "dur": dur * 1e6,
        "args": {
            "fid": hex(fid) if fid else hex(rnd.randrange(1 << 32, 1 << 33)),
            "parent": "0x0",
            "items": 1,
            "args_bytes": rnd.randrange(200, 9000),
            "result_bytes": rnd.randrange(40, 2000),
            "status": "ok" if rnd.random() > 0.004 else "raised",
        },
    }


def _wait(track: int, lane: int, at: float, dur: float) -> dict[str, Any]:
    return {
        "ph": "X",
        "cat": "wait",
        "name": "wait",
        "pid": track,
        "tid": lane,
        "ts": at * 1e6,
        "dur": dur * 1e6,
        "args": {"fid": "0x100000001"},
    }


def _instant(category: str, text: str, at: float, **args: Any) -> dict[str, Any]:
    return {
        "ph": "i",
        "s": "p",
        "cat": category,
        "name": text,
        "pid": 1,
        "tid": 0,
        "ts": at * 1e6,
        "args": args,
    }


def write_trace(path: Path, trace: dict[str, Any]) -> Path:
    """``trace`` as the writer lays it out: one event a line, the metadata last."""
    lines = ",\n".join(json.dumps(e) for e in trace["traceEvents"])
    path.write_text(
        '{"traceEvents": [\n'
        + lines
        + '\n],\n"displayTimeUnit": "ms",\n"scoop": '
        + json.dumps(trace["scoop"])
        + "}\n"
    )
    return path


def report(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scoop_core", "report", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class _Elements(html.parser.HTMLParser):
    """The attributes of every element of a page, and the ids of its sections around each."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str], str]] = []  # tag, attributes, section
        self._section: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "section":
            self._section.append(values.get("id", ""))
        self.found.append((tag, values, self._section[-1] if self._section else ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "section" and self._section:
            self._section.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def values(self, attribute: str, section: str) -> set[str]:
        return {a[attribute] for _, a, s in self.found if attribute in a and s == section}


def elements(page: str) -> _Elements:
    parsed = _Elements()
    parsed.feed(page)
    return parsed


def external_urls(page: str) -> list[str]:
    """Every reference in the page that a browser would fetch from a network."""
    return re.findall(
        r"""(?:src|href|action)\s*=\s*["']?\s*(?:https?:)?//[^"'\s>]*|url\(\s*["']?(?:https?:)?//[^)]*|@import""",
        page,
    )


def function_cells(page: str, function: str) -> list[str]:
    """The figures of ``function``'s row in the table of functions: calls,
    items, total, share, mean, max, raised."""
    row = re.search(rf'<tr data-function="{re.escape(function)}">(.*?)</tr>', page)
    assert row is not None, f"no row for {function}"
    return re.findall(r'<td class="num">([^<]*)</td>', row.group(1))


@pytest.fixture
def trace_file(tmp_path: Path) -> Path:
    return write_trace(tmp_path / "evolve.json", realistic_trace())


# -- the page, read as text ------------------------------------------------------

TRACED = """
import time
from scoop import futures

def square(x):
    time.sleep(0.01)
    return x * x

def total(n):
    return sum(futures.map(square, range(n)))

if __name__ == "__main__":
    print(sum(futures.map(total, [3, 4, 5, 6])))
"""


@pytest.mark.both_transports
def test_a_traced_run_gives_a_page_of_its_workers_and_functions(
    scoop_run: Callable[..., subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    prog = tmp_path / "prog.py"
    prog.write_text(TRACED)
    trace = tmp_path / "run.json"
    done = scoop_run(prog, flags=("-n", "3", "--trace", str(trace)))
    assert done.returncode == 0 and done.stdout.strip() == "104", done.stderr
    made = report(trace, "-o", tmp_path / "run.html")
    assert made.returncode == 0, made.stderr
    page = (tmp_path / "run.html").read_text()
    found = elements(page)
    assert {"worker-1", "worker-2", "worker-3"} <= found.values("data-worker", "workers")
    assert found.values("data-function", "functions") == {"square", "total"}
    assert function_cells(page, "total")[1] == "4"  # items
    assert function_cells(page, "square")[1] == "18"  # 3 + 4 + 5 + 6
    assert "prog.py" in " ".join(found.text)


def test_the_page_names_every_worker_and_function_and_fetches_nothing(trace_file: Path) -> None:
    done = report(trace_file)
    assert done.returncode == 0, done.stderr
    page_path = trace_file.with_suffix(".html")  # the default output
    assert done.stdout.strip() == f"wrote {page_path}"
    page = page_path.read_text()
    found = elements(page)
    workers = {f"worker-{n}" for n in range(1, 10)}
    assert found.values("data-worker", "workers") == workers | {"root"}
    assert found.values("data-function", "functions") == set(FUNCTIONS) | {"select"}
    for section in (
        "settings",
        "timeline",
        "utilisation",
        "queue",
        "functions",
        "losses",
        "workers",
    ):
        assert any(tag == "section" and a.get("id") == section for tag, a, _ in found.found), (
            section
        )
    text = " ".join(" ".join(found.text).split())
    assert "7f3a91c2" in text and "evolve.py --population 40" in text and "zmq" in text
    assert "0x" in text and "lost with" in text and "bad signature" in text
    assert external_urls(page) == []


def test_function_totals_are_the_sums_of_their_runs(tmp_path: Path) -> None:
    trace = realistic_trace(futures=300, seed=3)
    runs = [e for e in trace["traceEvents"] if e["ph"] == "X" and e["cat"] == "future"]
    write_trace(tmp_path / "t.json", trace)
    assert report(tmp_path / "t.json", "-o", tmp_path / "page.html").returncode == 0
    page = (tmp_path / "page.html").read_text()
    for function in FUNCTIONS:
        calls = sum(1 for e in runs if e["name"] == function)
        total = sum(e["dur"] for e in runs if e["name"] == function) / 1e6
        cells = function_cells(page, function)
        assert cells[0] == f"{calls:,}", (function, cells)
        assert cells[2] == f"{total:.3g} s" or cells[2] == f"{total * 1e3:.3g} ms", cells


def test_a_trace_cut_short_still_gives_a_page(tmp_path: Path, trace_file: Path) -> None:
    text = trace_file.read_text()
    cut = tmp_path / "cut.json"
    cut.write_text(text[: len(text) * 2 // 3])  # mid-event, no "scoop" metadata
    done = report(cut, "-o", tmp_path / "cut.html")
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "cut.html").read_text()
    assert "cut short" in page
    assert "worker-1" in elements(page).values("data-worker", "workers")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("this is not json\n", "is not a trace written by --trace: not JSON"),
        ('{"results": [1, 2, 3]}', 'is not a trace written by --trace: no "traceEvents" list'),
        ('{"traceEvents": [1, 2]}', "is not a trace written by --trace: event 0 is not an object"),
        ("", "is not a trace written by --trace: not JSON"),
    ],
    ids=["missing", "not-json", "not-a-trace", "not-events", "empty"],
)
def test_bad_input_is_one_line_and_status_2(
    tmp_path: Path, content: str | None, message: str
) -> None:
    source = tmp_path / "input.json"
    if content is not None:
        source.write_text(content)
    done = report(source)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert str(source) in done.stderr and message in done.stderr
    assert not source.with_suffix(".html").exists()


def test_a_run_of_100000_futures_gives_a_page_that_opens(tmp_path: Path) -> None:
    trace = realistic_trace(futures=100_000, seed=11)
    write_trace(tmp_path / "big.json", trace)
    started = time.monotonic()
    done = report(tmp_path / "big.json", "-o", tmp_path / "big.html")
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert took < 30, f"scoop report took {took:.1f} s"  # about 3 s when the machine is idle
    page = (tmp_path / "big.html").read_text()
    assert len(page) < 8_000_000
    data = json.loads(
        re.search(
            r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S
        ).group(1)
    )
    drawn = sum(len(row["bars"]) for row in data["timeline"]["rows"])
    assert drawn <= 30_000
    assert re.search(r"[\d,]+ futures drawn as [\d,]+ bars", page)


# -- the page, rendered by a browser (cluster suite) -----------------------------------

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium; the test fails, never skips, where it is missing."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"the browser tests need Chromium ({CHROMIUM}), which is not installed: "
            "install it as root with .ci/install-packages cluster"
        )
    return CHROMIUM


def headless(chromium: Path, profile: Path, *args: str, timeout: float = 120) -> str:
    """Run headless Chromium to its end in a session of its own (so nothing
    of it outlives the test); its stdout."""
    argv = [
        str(chromium),
        "--headless=new",
        "--disable-gpu",
        "--no-sandbox",
        f"--user-data-dir={profile}",
        "--no-first-run",
        "--disable-extensions",
        # Nothing may leave the machine: any host name a page asked for would not resolve.
        "--host-resolver-rules=MAP * ~NOTFOUND",
        *args,
    ]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "HOME": str(profile)},
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, f"chromium exited {proc.returncode}:\n{err[-3000:]}"
    return out


def png_pixels(path: Path) -> Iterator[bytes]:
    """The rows of an 8-bit RGB or RGBA PNG, unfiltered (the standard library only)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    at, idat = 8, []
    width = height = channels = 0
    while at < len(data):
        (size,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + size]
        at += 12 + size
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat.append(body)
    raw = zlib.decompress(b"".join(idat))
    stride = width * channels
    previous = bytearray(stride)
    for y in range(height):
        kind, row = (
            raw[y * (stride + 1)],
            bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]),
        )
        if kind == 1:
            for i in range(channels, stride):
                row[i] = (row[i] + row[i - channels]) & 0xFF
        elif kind == 2:
            row = bytearray((a + b) & 0xFF for a, b in zip(row, previous, strict=True))
        elif kind == 3:
            for i in range(stride):
                left = row[i - channels] if i >= channels else 0
                row[i] = (row[i] + ((left + previous[i]) >> 1)) & 0xFF
        elif kind == 4:
            for i in range(stride):
                a = row[i - channels] if i >= channels else 0
                b, c = previous[i], previous[i - channels] if i >= channels else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                row[i] = (row[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        yield bytes(row) if channels == 3 else bytes(v for i, v in enumerate(row) if i % 4 != 3)
        previous = row


@pytest.fixture
def page(tmp_path: Path, trace_file: Path) -> Path:
    output = tmp_path / "page.html"
    done = report(trace_file, "-o", output)
    assert done.returncode == 0, done.stderr
    return output


def test_the_browser_draws_a_timeline_row_for_every_worker(
    chromium: Path, page: Path, tmp_path: Path
) -> None:
    dom = headless(chromium, tmp_path / "profile", "--dump-dom", page.as_uri())
    found = elements(dom)
    # Only the page's script makes the timeline's rows: their presence says it ran.
    assert found.values("data-worker", "timeline") == {f"worker-{n}" for n in range(1, 10)} | {
        "root"
    }
    bars = [
        a
        for tag, a, s in found.found
        if tag == "rect" and "bar" in a.get("class", "") and s == "timeline"
    ]
    assert len(bars) > 1000
    titles = " ".join(found.text)
    for function in FUNCTIONS:
        assert function in titles
    assert re.search(r"future 0x[0-9a-f]+", titles)
    assert any(tag == "path" and s == "utilisation" for tag, _, s in found.found)
    assert any(tag == "path" and s == "queue" for tag, _, s in found.found)


def test_a_screenshot_of_the_page_is_not_blank(chromium: Path, page: Path, tmp_path: Path) -> None:
    shot = tmp_path / "page.png"
    headless(
        chromium,
        tmp_path / "profile",
        f"--screenshot={shot}",
        "--window-size=1400,2000",
        page.as_uri(),
    )
    colours: set[bytes] = set()
    white = total = 0
    for row in png_pixels(shot):
        for x in range(0, len(row), 3 * 7):  # every 7th pixel is plenty
            pixel = row[x : x + 3]
            colours.add(pixel)
            white += pixel == b"\xff\xff\xff" or pixel == b"\xf4\xf6\xf8"  # the panels, the page
            total += 1
    assert len(colours) > 50, f"only {len(colours)} colours"
    assert white / total < 0.9, f"{100 * white / total:.0f} % of the screenshot is background"
