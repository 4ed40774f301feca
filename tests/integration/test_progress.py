"""The live progress line (``--progress``) as a person sees it: programs run
in a terminal (a private tmux server, read back with ``capture-pane``),
checked while they run and after they end.

A small program drives :class:`~scoop_core.progress.ProgressLine` with a
snapshot source that counts up as the program prints, so the screen's
content is known at every step; it also writes down its fds, threads and
terminal modes before, inside and after the line, for the checks that
nothing is left behind. Without a terminal the line must change nothing.

docs/progress.md's screen capture is checked here too: its program, run
in a terminal as the page says, shows a line of the same shape, and leaves
the output the page shows.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import RunResult, kill_run, program_results, wait_for, wait_gone

# tmux is on the machines this project runs on, and .ci/install-packages
# installs it for CI, where a test must fail rather than skip.
pytestmark = pytest.mark.skipif(
    shutil.which("tmux") is None and not os.environ.get("CI"),
    reason="needs tmux (.ci/install-packages default installs it)",
)

DRIVER = """
import contextlib, json, os, sys, termios, threading, time
from scoop_core.progress import ProgressLine
from scoop_core.run_activity import ProcessRow, RunSnapshot

mode, expected, lines, go, record = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
printed = 0
broken = threading.Event()  # the line has asked for numbers and been refused


def snapshot():
    # Ten futures end per line printed: the line's counts follow the program.
    ended = printed * 10
    if mode == "broken" and printed:
        broken.set()
        raise RuntimeError("no numbers today")
    worker = ProcessRow("worker-1", "worker", "here", 1, ended, 0.0, 1.0, 1, 0, 0, 0.0, "busy")
    return RunSnapshot("run", "zmq", 1.0, submitted=ended + 5, done=ended - 2, failed=2,
                       cancelled=0, lost=0, running=1, queued=4, expected=expected,
                       rate=100.0, processes=(worker,) * 8)


def wait_for_go():
    deadline = time.monotonic() + 60
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            raise SystemExit("gave up waiting for the test's go-ahead")
        time.sleep(0.01)


def state():
    modes = [repr(termios.tcgetattr(fd)) if os.isatty(fd) else None for fd in (0, 1, 2)]
    return {"fds": sorted(os.listdir("/proc/self/fd")), "threads": threading.active_count(),
            "modes": modes, "tty": [os.isatty(fd) for fd in (0, 1, 2)]}


def program():
    global printed
    if mode.startswith("flood"):
        for i in range(lines):
            print(f"program line {i}")
        return
    for i in range(lines):
        print(f"program line {i}", flush=True)
        printed += 1
    print("warning line", file=sys.stderr, flush=True)
    if mode == "broken" and not broken.wait(30):
        raise SystemExit("the progress line never asked for numbers")
    if mode == "prompt":
        print("Name? ", end="", flush=True)
        wait_for_go()
        print("Ann", flush=True)
    else:
        wait_for_go()
    if mode == "resize":
        print("columns", os.get_terminal_size(1).columns, flush=True)
    for i in range(lines, 2 * lines):
        print(f"program line {i}", flush=True)
        printed += 1


before = state()
inside = None
interrupted = False
start = time.perf_counter()
try:
    with contextlib.nullcontext() if mode.endswith("plain") else ProgressLine(snapshot):
        inside = state()
        program()
        sys.stdout.flush()
except KeyboardInterrupt:
    interrupted = True
took = time.perf_counter() - start  # with the line: until it has copied the last byte
print("after the line", flush=True)
after = state()
with open(record, "w") as fh:
    json.dump({"before": before, "inside": inside, "after": after, "took": took,
               "interrupted": interrupted}, fh)
"""

BAR_WITH_ETA = re.compile(
    r"^scoop \|.*\| (\d+)/1,000 futures  2 failed  100/s  ETA 00:\d\d  8 workers$"
)
BAR_WITHOUT_ETA = re.compile(r"^scoop (\d+) done / \d+ submitted  2 failed  100/s  8 workers$")


class Screen:
    """A program run in a terminal of its own: a private tmux server whose
    one pane is ``width`` x ``height``, kept on screen after the program
    ends (``remain-on-exit``) so what it left can be read."""

    def __init__(
        self,
        tmp_path: Path,
        argv: list[str],
        width: int = 120,
        height: int = 30,
        env: dict[str, str] | None = None,
    ) -> None:
        self.socket = f"scoop-progress-{uuid.uuid4().hex[:8]}"
        config = tmp_path / "tmux.conf"
        config.write_text(
            "set -g history-limit 50000\nset -g remain-on-exit on\nset -g status off\n"
        )
        # The server, started by this first command, gives its environment to the pane.
        self._tmux(
            "-f",
            str(config),
            "new-session",
            "-d",
            "-x",
            str(width),
            "-y",
            str(height),
            "-c",
            str(tmp_path),
            shlex.join(argv),
            env=env,
        )

    def _tmux(self, *args: str, env: dict[str, str] | None = None) -> str:
        return subprocess.run(
            ["tmux", "-L", self.socket, *args],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout

    def lines(self) -> list[str]:
        """The pane's lines as shown, from the top of its history, without
        the trailing blank ones and tmux's word on the program's end (which
        scrolls the screen a line: the history keeps what scrolled away)."""
        text = self._tmux("capture-pane", "-p", "-S", "-", "-E", "-")
        shown = [line.rstrip() for line in text.splitlines()]
        shown = [line for line in shown if not line.startswith("Pane is dead")]
        while shown and not shown[-1]:
            shown.pop()
        return shown

    def ended(self) -> bool:
        return self._tmux("display-message", "-p", "#{pane_dead}").strip() == "1"

    def wait(
        self, condition: Callable[[list[str]], object], what: str, timeout: float = 30
    ) -> list[str]:
        """Poll the screen until ``condition(lines)`` holds; return those lines."""
        seen: list[str] = []

        def holds() -> object:
            nonlocal seen
            seen = self.lines()
            return condition(seen)

        try:
            wait_for(holds, what, timeout)
        except AssertionError as error:
            raise AssertionError(f"{error}; the screen:\n" + "\n".join(seen)) from None
        return seen

    def wait_for_line(self, above: list[str], line: re.Pattern[str]) -> re.Match[str]:
        """Wait until the screen shows the lines ``above`` and, below them,
        a progress line that matches ``line``; return that match."""
        lines = self.wait(
            lambda lines: lines[:-1] == above and line.match(lines[-1]),
            f"the progress line below {above}",
        )
        match = line.match(lines[-1])
        assert match is not None
        return match

    def resize(self, width: int, height: int) -> None:
        self._tmux("resize-window", "-x", str(width), "-y", str(height))

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", *keys)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10)


@pytest.fixture
def screens() -> Iterator[Callable[..., Screen]]:
    opened: list[Screen] = []

    def open_screen(tmp_path: Path, argv: list[str], **options: Any) -> Screen:
        opened.append(Screen(tmp_path, argv, **options))
        return opened[-1]

    yield open_screen
    for screen in opened:
        screen.close()


@pytest.fixture
def driver(tmp_path: Path) -> Callable[..., list[str]]:
    """The argv of the driver program: ``driver(mode, expected, lines)``,
    its go-ahead file ``tmp_path/go`` and its record ``tmp_path/record.json``."""
    path = tmp_path / "driver.py"
    path.write_text(textwrap.dedent(DRIVER))

    def argv(mode: str, expected: int = 1000, lines: int = 5) -> list[str]:
        go, record = tmp_path / "go", tmp_path / "record.json"
        return [sys.executable, str(path), mode, str(expected), str(lines), str(go), str(record)]

    return argv


def program_lines(first: int, last: int) -> list[str]:
    return [f"program line {i}" for i in range(first, last)]


def record_of(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "record.json").read_text())


def assert_nothing_left(record: dict) -> None:
    """The line's fds and thread are gone and the terminal's modes are as they were."""
    assert record["after"]["fds"] == record["before"]["fds"]
    assert record["after"]["threads"] == record["before"]["threads"]
    assert record["after"]["modes"] == record["before"]["modes"]


@pytest.mark.parametrize(
    ("expected", "bar"), [(1000, BAR_WITH_ETA), (0, BAR_WITHOUT_ETA)], ids=["eta", "no-eta"]
)
def test_the_line_shows_the_counts_below_whole_program_lines(
    tmp_path: Path,
    screens: Callable[..., Screen],
    driver: Callable[..., list[str]],
    expected: int,
    bar: re.Pattern[str],
) -> None:
    screen = screens(tmp_path, driver("wait", expected))
    match = screen.wait_for_line([*program_lines(0, 5), "warning line"], bar)
    assert match.group(1) == "50"  # 10 futures per line printed

    (tmp_path / "go").touch()
    wait_for(screen.ended, "the program's end")
    assert screen.lines() == [
        *program_lines(0, 5),
        "warning line",
        *program_lines(5, 10),
        "after the line",
    ]
    record = record_of(tmp_path)
    assert record["inside"]["tty"] == [True, True, True]  # the program still sees a terminal
    assert_nothing_left(record)


def test_a_prompt_keeps_the_line_away_until_it_is_answered(
    tmp_path: Path, screens: Callable[..., Screen], driver: Callable[..., list[str]]
) -> None:
    screen = screens(tmp_path, driver("prompt"))
    screen.wait(
        lambda lines: lines == [*program_lines(0, 5), "warning line", "Name?"], "the prompt"
    )
    # The line is redrawn five times a second: for a second it must stay away.
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        assert screen.lines()[-1] == "Name?"
        time.sleep(0.05)  # sampling the screen over a second, not waiting for a condition
    (tmp_path / "go").touch()
    wait_for(screen.ended, "the program's end")
    assert screen.lines() == [
        *program_lines(0, 5),
        "warning line",
        "Name? Ann",
        *program_lines(5, 10),
        "after the line",
    ]


def test_the_line_and_the_program_follow_a_resized_terminal(
    tmp_path: Path, screens: Callable[..., Screen], driver: Callable[..., list[str]]
) -> None:
    screen = screens(tmp_path, driver("resize"))
    above = [*program_lines(0, 5), "warning line"]
    screen.wait_for_line(above, BAR_WITH_ETA)
    screen.resize(70, 30)
    # tmux rewraps the rows it had when it narrows, which can leave a blank one.
    screen.wait(
        lambda lines: (
            [line for line in lines[:-1] if line] == above
            and BAR_WITH_ETA.match(lines[-1])
            and len(lines[-1]) < 70
        ),
        "the line redrawn within 70 columns",
    )
    (tmp_path / "go").touch()
    wait_for(screen.ended, "the program's end")
    shown = [line for line in screen.lines() if line]
    assert shown == [*above, "columns 70", *program_lines(5, 10), "after the line"]


def test_a_line_that_cannot_be_drawn_stops_and_the_output_goes_on(
    tmp_path: Path, screens: Callable[..., Screen], driver: Callable[..., list[str]]
) -> None:
    screen = screens(tmp_path, driver("broken"))
    screen.wait(
        lambda lines: lines == [*program_lines(0, 5), "warning line"], "the program's lines alone"
    )
    (tmp_path / "go").touch()
    wait_for(screen.ended, "the program's end")
    lines = screen.lines()
    assert lines[:11] == [*program_lines(0, 5), "warning line", *program_lines(5, 10)]
    assert lines[11] == "the progress line stopped early: it could not be drawn"
    assert "RuntimeError: no numbers today" in lines
    assert lines[-1] == "after the line"


def test_twenty_thousand_lines_come_through_whole_and_in_order(
    tmp_path: Path, screens: Callable[..., Screen], driver: Callable[..., list[str]]
) -> None:
    count = 20_000
    took = {}
    for mode in ("flood-plain", "flood"):
        screen = screens(tmp_path, driver(mode, lines=count))
        wait_for(screen.ended, "the program's end", timeout=120)
        assert screen.lines() == [*program_lines(0, count), "after the line"]
        took[mode] = record_of(tmp_path)["took"]
    print(
        f"20,000 lines: {took['flood-plain']:.3f} s without the line, {took['flood']:.3f} s with it"
    )
    assert took["flood"] < 3 * took["flood-plain"] + 0.5


def test_ctrl_c_leaves_a_clean_terminal(
    tmp_path: Path, screens: Callable[..., Screen], driver: Callable[..., list[str]]
) -> None:
    screen = screens(tmp_path, driver("wait"))
    screen.wait_for_line([*program_lines(0, 5), "warning line"], BAR_WITH_ETA)
    screen.keys("C-c")
    wait_for(screen.ended, "the program's end")
    *before, last = screen.lines()
    assert before == [*program_lines(0, 5), "warning line"]
    # The terminal echoes ^C after it sends SIGINT: the echo can come after
    # the line is gone, at the start of the row, as it does without the line.
    assert last.removeprefix("^C") == "after the line"
    record = record_of(tmp_path)
    assert record["interrupted"]
    assert_nothing_left(record)


def test_stdout_sent_to_a_file_is_left_alone(
    tmp_path: Path, screens: Callable[..., Screen], driver: Callable[..., list[str]]
) -> None:
    argv = driver("wait")
    screen = screens(tmp_path, ["sh", "-c", shlex.join(argv) + " > out.txt"])
    screen.wait_for_line(["warning line"], BAR_WITH_ETA)
    (tmp_path / "go").touch()
    wait_for(screen.ended, "the program's end")
    assert screen.lines() == ["warning line"]
    expected = [*program_lines(0, 10), "after the line"]
    assert (tmp_path / "out.txt").read_text() == "".join(line + "\n" for line in expected)
    assert record_of(tmp_path)["inside"]["tty"] == [True, False, True]


def test_without_a_terminal_nothing_changes(
    tmp_path: Path, driver: Callable[..., list[str]]
) -> None:
    outputs = []
    for mode in ("wait-plain", "wait"):
        (tmp_path / "go").touch()
        proc = subprocess.run(driver(mode), capture_output=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        outputs.append((proc.stdout, proc.stderr))
        record = record_of(tmp_path)
        assert record["inside"]["tty"] == [False, False, False]
        assert record["inside"]["fds"] == record["before"]["fds"]  # no pseudo-terminal
        assert record["inside"]["threads"] == record["before"]["threads"]  # no thread
    assert outputs[0] == outputs[1]
    assert b"\x1b" not in outputs[1][1] and b"\r" not in outputs[1][1]


# -- the program-level bars, in real runs ----------------------------------------

BAR_PROGRAM = """
import json, sys
from tqdm import tqdm
from scoop import futures


def square(x):
    return x * x


if __name__ == "__main__":
    results = []
    if sys.argv[1] == "tqdm":
        for value in tqdm(futures.map_as_completed(square, range(100)), total=100):
            results.append(value)
    elif sys.argv[1] == "rich":
        from rich.progress import track

        for value in track(futures.map_as_completed(square, range(100)), total=100):
            results.append(value)
    elif sys.argv[1] == "as_completed":
        fs = [futures.submit(square, x) for x in range(100)]
        for fut in tqdm(futures.as_completed(fs), total=len(fs)):
            results.append(fut.result())
    else:
        results = list(futures.map_as_completed(square, range(100), progress=True))
        results.append(sum(futures.map(square, range(50), progress=True)))
    print("RESULT " + json.dumps(sorted(results)), flush=True)
"""


@pytest.mark.parametrize("form", ["tqdm", "as_completed", "rich", "progress=True"])
def test_a_program_shows_its_own_bar_over_results_as_they_come(
    write_program: Callable[[str, str], Path], scoop_run: Callable[..., RunResult], form: str
) -> None:
    proc = scoop_run(write_program(BAR_PROGRAM, "prog.py"), form)
    squares = [x * x for x in range(100)]
    if form == "progress=True":
        assert program_results(proc) == [sorted([*squares, sum(squares[:50])])]
        assert "50/50" in proc.stderr
        assert "100/100" in proc.stderr
    elif form == "rich":
        assert program_results(proc) == [squares]  # rich draws on a terminal only
    else:
        assert program_results(proc) == [squares]
        assert "100/100" in proc.stderr
    assert "ignores the keyword" not in proc.stderr


# -- --progress in real runs ----------------------------------------------------

RUN_PROGRAM = """
import os, sys, time
from scoop import futures


def work(x):
    return x


if __name__ == "__main__":
    for i, value in enumerate(futures.map_as_completed(work, range(2000))):
        if i == 1000:
            print("half way", flush=True)
            deadline = time.monotonic() + 60
            while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:
                time.sleep(0.01)  # waiting for the test's go-ahead, with a deadline
    print("all", i + 1, flush=True)
"""


def end_run(screen: Screen, program: Path) -> None:
    """Close ``screen`` and check that no process of its run is left."""
    screen.close()  # first: the tmux server's command line names the program too
    left = wait_gone(str(program))
    kill_run(str(program))
    assert left == [], "processes of the run were left running"


RUN_LINE = re.compile(
    r"^scoop (\|.*\| [\d,]+/2,000 futures|[\d,]+ done / [\d,]+ submitted)  .*  \d+ workers?$"
)


@pytest.mark.both_transports
def test_a_run_with_progress_shows_the_line_and_leaves_its_output_whole(
    tmp_path: Path,
    screens: Callable[..., Screen],
    write_program: Callable[[str, str], Path],
    transport_env: dict[str, str],
) -> None:
    program = write_program(RUN_PROGRAM, "prog.py")
    argv = [sys.executable, "-m", "scoop", "-n", "2", "--progress", str(program), "go"]
    screen = screens(tmp_path, argv, env={**os.environ, **transport_env})
    try:
        screen.wait_for_line(["half way"], RUN_LINE)
        (tmp_path / "go").touch()
        wait_for(screen.ended, "the run's end", timeout=60)
        assert screen.lines() == ["half way", "all 2000"]
    finally:
        (tmp_path / "go").touch()
        end_run(screen, program)


@pytest.mark.both_transports
def test_a_run_with_progress_without_a_terminal_writes_what_it_would_without(
    write_program: Callable[[str, str], Path], scoop_run: Callable[..., RunResult], tmp_path: Path
) -> None:
    program = write_program(RUN_PROGRAM, "prog.py")
    (tmp_path / "go").touch()
    plain = scoop_run(program, "go")
    with_flag = scoop_run(program, "go", flags=("-n", "2", "--progress"))
    assert plain.returncode == with_flag.returncode == 0, with_flag.stderr
    assert (with_flag.stdout, with_flag.stderr) == (plain.stdout, plain.stderr)
    assert with_flag.stdout == "half way\nall 2000\n"


def test_a_programs_own_bar_and_the_progress_line_share_the_terminal(
    tmp_path: Path, screens: Callable[..., Screen], write_program: Callable[[str, str], Path]
) -> None:
    program = write_program(BAR_PROGRAM, "prog.py")
    argv = [sys.executable, "-m", "scoop", "-n", "2", "--progress", str(program), "tqdm"]
    screen = screens(tmp_path, argv)
    try:
        wait_for(screen.ended, "the run's end", timeout=60)
        bar, *rows = screen.lines()
        assert bar.startswith("100%|") and "| 100/100 [" in bar  # the program's bar, whole
        assert "".join(rows) == "RESULT " + json.dumps([x * x for x in range(100)])  # wrapped
    finally:
        end_run(screen, program)


PAGE = Path(__file__).resolve().parents[2] / "docs" / "progress.md"


def shape_of(line: str) -> re.Pattern[str]:
    """A progress line as the page shows it, its bar and numbers free."""
    head, bar, tail = line.split("|")
    numbers = r"\d[\d,]*"
    return re.compile(
        "^"
        + re.escape(head)
        + r"\|.*\|"
        + re.sub(numbers, lambda _: numbers, re.escape(tail).replace(r"\ ", " "))
        + "$"
    )


def test_the_pages_program_shows_the_line_its_screen_capture_shows(
    tmp_path: Path, screens: Callable[..., Screen]
) -> None:
    text = PAGE.read_text()
    program = re.search(r"^```python\n(# prog\.py\n.*?)^```$", text, re.S | re.M)
    capture = re.search(r"^```text\n\$ (.*)\n(scoop .*)\n```$", text, re.M)
    after = re.search(r"^```console\n\$ ([^\n]*)\n(.*?)^```$", text, re.S | re.M)
    assert program and capture and after, "the page's program, screen capture and output"
    assert capture.group(1) == after.group(1), "the capture is of the command the page runs"
    (tmp_path / "prog.py").write_text(program.group(1))
    command = capture.group(1).split()
    assert command[0] == "python"
    screen = screens(tmp_path, [sys.executable, *command[1:]])
    try:
        lines = screen.wait(
            lambda lines: lines and shape_of(capture.group(2)).match(lines[-1]),
            f"a line like {capture.group(2)!r}",
        )
        assert lines[:-1] == [], "nothing above the line while the program prints nothing"
        wait_for(screen.ended, "the run's end", timeout=60)
        assert screen.lines() == after.group(2).splitlines()
    finally:
        end_run(screen, tmp_path / "prog.py")
