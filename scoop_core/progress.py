"""The launcher's live progress line (``--progress``): one line at the
bottom of the terminal, redrawn in place, that the program's output never
runs into.

The numbers come from the launcher's picture of the run (a
:class:`~scoop_core.run_activity.RunSnapshot`); this module only shows
them. The rules it keeps:

- Only on a terminal. When the launcher's stderr is not one (a pipe, a log
  file), :class:`ProgressLine` does nothing at all: no pseudo-terminal, no
  thread, output byte for byte what it is without ``--progress``.
- The program never writes to the real terminal while the line is on. The
  launcher's stderr, and its stdout when that is the same terminal, are
  pointed at a pseudo-terminal (so the root and the workers, which inherit
  them, still see a terminal: line-buffered output, colours); one thread
  copies what comes out of it to the real terminal and is the only writer
  there, so it can take the line away before program output and put it
  back after. Stdout and stderr share the one pseudo-terminal and reach the
  screen merged, as they would anyway on one terminal; a stdout redirected
  to a file or a pipe is left alone. Stdin stays the real terminal.
- The line is drawn only where a line of the program's output has ended: a
  prompt without a newline, or a program's own ``\\r`` progress bar, keeps
  it away until the program ends that line.
- Every byte is copied, in order, as it comes: the pseudo-terminal passes
  bytes through unchanged (its output processing is off, the real
  terminal does that once).
- The line is tqdm's: it knows the terminal's width as it changes, and
  how to clear a line, so no escape code is written here.
- Leaving the block, also on an exception or Ctrl-C, copies what is left,
  restores fds 1 and 2, removes the line and closes every fd it opened;
  the real terminal's modes are read, never changed.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import select
import sys
import termios
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TextIO
from weakref import WeakSet

if TYPE_CHECKING:
    from scoop_core.run_activity import RunSnapshot

log = logging.getLogger("scoop.launcher")

REDRAW_INTERVAL = 0.2
"""Seconds between two redraws of the line (five a second)."""

QUIET_BEFORE_REDRAW = 0.05
"""Seconds without program output before the line comes back: a burst of
output is not interleaved with a redraw after each of its pieces."""

LAST_WORDS_WAIT = 0.2
"""Seconds the copy waits, at the end, for output from a process that
still holds the pseudo-terminal (one that outlived the run)."""

ECHO_ROOM = 3
"""Columns left free at the right of the line (see ``wipe`` in :func:`_line_class`)."""

_READ_SIZE = 65536


def describe(snapshot: RunSnapshot) -> tuple[bool, str]:
    """Whether the line has a bar (a map of known length runs), and its text
    after the bar: counts, failures, rate, ETA and workers."""
    with_bar = snapshot.eta is not None
    if with_bar:
        total = max(snapshot.expected, snapshot.submitted)
        parts = [f"{snapshot.ended:,}/{total:,} futures"]
    else:
        parts = [f"{snapshot.ended:,} done / {snapshot.submitted:,} submitted"]
    if snapshot.failed:
        parts.append(f"{snapshot.failed:,} failed")
    if snapshot.lost:
        parts.append(f"{snapshot.lost:,} lost")
    rate = snapshot.rate
    parts.append(f"{rate:,.1f}/s" if 0 < rate < 10 else f"{rate:,.0f}/s")
    if snapshot.eta is not None:
        parts.append(f"ETA {_line_class().format_interval(snapshot.eta)}")
    workers = sum(1 for w in snapshot.workers if w.state in ("busy", "idle"))
    parts.append(f"{workers} worker" + ("" if workers == 1 else "s"))
    return with_bar, "  ".join(parts)


@functools.cache
def _line_class() -> type[Any]:
    """The line's class, a tqdm bar; tqdm is imported here, so that a
    launcher whose stderr is no terminal never spends the time."""
    from tqdm import tqdm

    class Line(tqdm):
        """A tqdm bar that shows our text beside it.

        Its own lock, instance set and no monitor thread: the launcher has no
        other bar, and tqdm's defaults would make a multiprocessing lock (which
        fixes the process's start method) and a thread that outlives the run."""

        monitor_interval = 0
        _lock = threading.RLock()
        _instances: WeakSet[Any] = WeakSet()
        text = ""
        drawn = 0  # the length of the line on screen (0: none)

        @property
        def format_dict(self) -> dict[str, Any]:
            shape = super().format_dict
            # A few columns stay free at the right: the ^C that the terminal
            # echoes after the line (or a key typed) stays on its row, where
            # wipe() reaches it, instead of wrapping to the next.
            if shape["ncols"]:
                shape["ncols"] = max(1, shape["ncols"] - ECHO_ROOM)
            return {**shape, "text": self.text}

        def draw(self) -> None:
            """Show the line as it is now, in place of the one on screen."""
            if self.drawn > self.columns():
                self.wipe()
            self.refresh()
            self.drawn = len(str(self))

        def wipe(self) -> None:
            """Take the line off the screen, with what the terminal echoed after
            it: blank its whole row (a character in the last column leaves
            the cursor there until the next one, and ``\\r`` comes next). A
            terminal made narrower than the line has rewrapped it over
            several rows, the cursor on the last: each is blanked, upwards."""
            width = self.columns()
            rows = max(1, -(-self.drawn // width))
            if rows > 1:
                self.sp = self.status_printer(self.fp)  # forget the old length: blanks fit a row
            for row in range(rows):
                if row:
                    self.moveto(-1)
                self.display(msg=" " * width)
                self.clear()
            self.drawn = 0

        def columns(self) -> int:
            return (self.dynamic_ncols(self.fp)[0] if self.dynamic_ncols else None) or 80

    return Line


class ProgressLine:
    """A context manager: while in it, the launcher's terminal shows the
    run's progress on its last line, from ``snapshot()`` (None until the
    run has one). Does nothing unless stderr is a terminal."""

    def __init__(self, snapshot: Callable[[], RunSnapshot | None]) -> None:
        self._snapshot = snapshot
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._saved: dict[int, int] = {}  # fd we redirected -> a dup of what it was
        self._master = self._slave = -1
        self._term: TextIO | None = None
        self._failure: Exception | None = None

    def __enter__(self) -> ProgressLine:
        if not os.isatty(2):
            return self
        _flush_python_streams()
        redirected = [1, 2] if _same_terminal(1, 2) else [2]
        self._master, self._slave = os.openpty()
        try:
            _copy_terminal(2, self._slave)
            real = os.dup(2)
            self._term = open(  # noqa: SIM115 (closed in __exit__)
                real, "w", encoding=sys.stderr.encoding or "utf-8", errors="replace"
            )
            for fd in redirected:
                self._saved[fd] = os.dup(fd)
                os.dup2(self._slave, fd)
        except BaseException:
            self._restore()
            raise
        self._thread = threading.Thread(target=self._copy, name="scoop-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._thread is None:
            return
        _flush_python_streams()
        # Once fds 1 and 2 are back and our slave fd is closed, nobody holds
        # the pseudo-terminal (the run's processes have ended) and reading
        # it gives what is left, then EIO: the copy ends there.
        for fd, saved in self._saved.items():
            os.dup2(saved, fd)
        self._closing.set()
        os.close(self._slave)
        self._slave = -1
        self._thread.join()
        self._thread = None
        self._restore()
        if self._failure is not None:
            log.warning(
                "the progress line stopped early: it could not be drawn", exc_info=self._failure
            )

    def _restore(self) -> None:
        """Close every fd opened here (fds 1 and 2 are back already, or were
        never moved)."""
        for fd, saved in self._saved.items():
            os.dup2(saved, fd)
            os.close(saved)
        self._saved.clear()
        for fd in (self._slave, self._master):
            if fd >= 0:
                os.close(fd)
        self._master = self._slave = -1
        if self._term is not None:
            with contextlib.suppress(OSError):
                self._term.close()
            self._term = None

    # -- the copying thread: the only writer to the real terminal ---------------

    def _copy(self) -> None:
        assert self._term is not None
        screen = _Screen(self._term, self._snapshot)
        last_output = last_draw = 0.0
        output_since_draw = False
        size = b""
        while True:
            if self._closing.is_set():
                timeout = LAST_WORDS_WAIT
            else:
                due = _redraw_due(last_draw, output_since_draw, last_output)
                timeout = max(0.0, due - time.monotonic())
            ready, _, _ = select.select([self._master], [], [], timeout)
            if ready:
                try:
                    data = os.read(self._master, _READ_SIZE)
                except OSError:  # EIO: every writer has closed the pseudo-terminal
                    data = b""
                if not data:
                    break
                screen.output(data)
                output_since_draw, last_output = True, time.monotonic()
            elif self._closing.is_set():
                break  # a process outlived the run and holds the pseudo-terminal, silent
            now = time.monotonic()
            if self._closing.is_set() or now < _redraw_due(
                last_draw, output_since_draw, last_output
            ):
                continue
            last_draw, output_since_draw = now, False
            size = _follow_size(self._term.fileno(), self._master, size)
            screen.redraw()
        screen.remove_line()
        self._failure = screen.failure


def _redraw_due(last_draw: float, output_since_draw: bool, last_output: float) -> float:
    """When the line is redrawn next: at the next tick, or sooner once
    program output has paused (it comes back quickly after a line, and a
    burst of output still sees it at every tick)."""
    due = last_draw + REDRAW_INTERVAL
    return min(due, last_output + QUIET_BEFORE_REDRAW) if output_since_draw else due


class _Screen:
    """The real terminal, as the copying thread writes to it: program output
    as it comes, and the line wherever a line of output has ended."""

    def __init__(self, term: TextIO, snapshot: Callable[[], RunSnapshot | None]) -> None:
        self.term = term
        self.snapshot = snapshot
        self.line: Any = None  # the tqdm bar, made at the first redraw
        self.shown = False
        self.at_line_start = True
        self.failure: Exception | None = None  # drawing failed: output goes on without the line
        self.gone = False  # the terminal went away: output is read and dropped

    def output(self, data: bytes) -> None:
        self.at_line_start = data.endswith(b"\n")
        if self.gone:
            return
        if self.shown:
            self.shown = False
            try:
                self.line.wipe()
            except Exception as error:  # the line stops; the output must go on
                self.failure = error
        try:
            _write_all(self.term.fileno(), data)
        except OSError:
            self.gone = True

    def redraw(self) -> None:
        """Draw the line from a fresh snapshot, if a line of output has ended."""
        if not self.at_line_start or self.gone or self.failure is not None:
            return
        try:
            snapshot = self.snapshot()
            if snapshot is None:
                return
            with_bar, text = describe(snapshot)
            if self.line is None:
                self.line = _line_class()(
                    file=self.term,
                    dynamic_ncols=True,
                    leave=False,
                    mininterval=0,
                    bar_format="scoop {text}",
                )
            line = self.line
            line.text = text
            if with_bar:
                line.bar_format = "scoop |{bar}| {text}"
                line.total = max(snapshot.expected, snapshot.submitted)
                line.n = min(snapshot.ended, line.total)
            else:
                line.bar_format = "scoop {text}"
                line.total = None
                line.n = snapshot.ended
            line.draw()
            self.shown = True
        except Exception as error:
            # Said when the line ends (ProgressLine.__exit__): a log record
            # written now would go into the pseudo-terminal this thread
            # drains. The program's output goes on without the line.
            self.failure = error

    def remove_line(self) -> None:
        if self.line is None:
            return
        if self.shown and not self.gone:
            with contextlib.suppress(OSError, ValueError):
                self.line.wipe()
        self.line.disable = True  # off the screen: close() would blank the cursor's row


def _flush_python_streams() -> None:
    # What this process wrote before a switch of fds 1 and 2 goes where it was meant to.
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def _same_terminal(fd: int, other: int) -> bool:
    """Whether ``fd`` is a terminal and the same one as ``other``."""
    if not os.isatty(fd):
        return False
    a, b = os.fstat(fd), os.fstat(other)
    return (a.st_rdev, a.st_ino, a.st_dev) == (b.st_rdev, b.st_ino, b.st_dev)


def _copy_terminal(real: int, slave: int) -> None:
    """Give the pseudo-terminal the real one's modes and size, with output
    processing off: bytes pass through it as written, and the real terminal
    turns ``\\n`` into ``\\r\\n`` once, as it does without us."""
    attrs = termios.tcgetattr(real)
    attrs[1] &= ~termios.OPOST
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, fcntl.ioctl(real, termios.TIOCGWINSZ, b"\0" * 8))


def _follow_size(term: int, master: int, known: bytes) -> bytes:
    """Pass a change of the real terminal's size on to the pseudo-terminal
    (polled: a SIGWINCH handler belongs to the main thread, which is the
    launcher's). Returns the size now."""
    try:
        size = fcntl.ioctl(term, termios.TIOCGWINSZ, b"\0" * 8)
        if size != known:
            fcntl.ioctl(master, termios.TIOCSWINSZ, size)
        return size
    except OSError:
        return known


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
