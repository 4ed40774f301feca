"""Benchmark scoop-core against the original SCOOP and Python's process pools.

Each program of bench/programs runs unchanged (``from scoop import
futures``) under every framework chosen with ``--frameworks``:

- ``ours``: ``python -m scoop -n W prog.py``, this interpreter's scoop-core
  (or the tree of ``--ours-src``);
- ``scoop``: the same with the original SCOOP, from a virtualenv this
  script makes once (``--venv``, cached between runs) with ``pip install
  scoop``; SCOOP's code is never copied into the repository;
- ``pool``, ``executor``, ``loky``: ``python bench/peers.py --with KIND -n W
  prog.py``, which gives the program a ``scoop.futures`` made of
  ``multiprocessing.Pool``, ``concurrent.futures.ProcessPoolExecutor`` or
  loky's executor. Programs with nested futures (a task that submits and
  waits) cannot run there and show ``n/a``;
- ``serial``: ``python prog.py --serial``, the builtin ``map`` and no
  framework, for the programs that have such a mode.

A program prints ``RESULT <measure> <seconds> <checksum>`` lines; each
measure is a row of the table, shown in its unit (futures/s, ms per call,
GB/s...). Every run is repeated ``--repeat`` times, the frameworks taking
turns, the first one changing every round, so all see the same noise on a
shared machine: compare the ratios of one run, not absolute numbers from
different runs. A cell is the median and, in parentheses, the smallest and
largest of the runs; a ratio column is the framework's median time over
ours (above 1: ours is faster), whatever the unit of the row.

Every run is bounded by ``--timeout``; a run that overstays has its whole
process group killed, and anything of its that escaped the group is found
(this process is made the subreaper of its descendants) and killed too, so
no process is left behind. Exit status 1 if a run failed, timed out, or if
two runs of a measure disagreed on its checksum.

    python bench/run.py --quick                    # every framework, small sizes, 3 repeats
    python bench/run.py --frameworks ours pool     # no SCOOP, no virtualenv
    python bench/run.py --programs fib roundtrip --repeat 5 --json /tmp/bench.json
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROGRAMS_DIR = HERE / "programs"
PEERS = HERE / "peers.py"
RESULT_RE = re.compile(r"^RESULT (\S+) (\S+) (\S+)\s*$", re.MULTILINE)
PR_SET_CHILD_SUBREAPER = 36
CAPTURE = {"stdin": subprocess.DEVNULL, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
FRAMEWORKS = ["ours", "traced", "scoop", "pool", "executor", "loky"]
# Run only when asked for by name: ours again, with --trace (its overhead).
ON_REQUEST = {"traced"}
LABELS = {
    "ours": "ours",
    "traced": "ours --trace",
    "scoop": "SCOOP",
    "pool": "Pool",
    "executor": "Executor",
    "loky": "loky",
    "serial": "serial",
}
MiB = 1024 * 1024


@dataclass(frozen=True)
class Unit:
    """How a measure's seconds are shown: ``value(seconds)`` in ``name``."""

    name: str
    value: Callable[[float], float]


def seconds() -> Unit:
    return Unit("s", lambda s: s)


def millis() -> Unit:
    return Unit("ms", lambda s: s * 1000)


def rate(count: float, name: str) -> Unit:
    return Unit(name, lambda s: count / s)


@dataclass(frozen=True)
class Case:
    """One program with its arguments, and how to show each of its measures.

    ``units``: measure -> unit (the program's name if it has one measure);
    ``attr``: ``wall`` to show the whole process's time instead of the
    program's own; ``nested``: needs futures inside futures (no pools);
    ``serial``: has a ``--serial`` mode with the builtin ``map``."""

    program: str
    args: list[str]
    units: dict[str, Unit]
    attr: str = "seconds"
    nested: bool = False
    serial: bool = False


def cases(quick: bool) -> dict[str, Case]:
    """Every benchmark case, at full size or at ``--quick`` size (some left out)."""
    map_items = 10**5 if quick else 10**6
    array_mib = 8 if quick else 64
    calls, maps = ("500", "100") if quick else ("2000", "300")
    table = {
        "hello": Case("hello", [], {"hello": Unit("s (whole process)", lambda s: s)}, attr="wall"),
        "roundtrip": Case("roundtrip", [calls], {"roundtrip": millis()}),
        "small_maps": Case("small_maps", [maps], {"map10": millis(), "map180": millis()}),
        "generations": Case("generations", ["40", "180"], {"generations": seconds()}, serial=True),
        "submit_many": Case("submit_many", ["10000"], {"submit_many": rate(1e4, "futures/s")}),
        "submit_many_100k": Case(
            "submit_many", ["100000"], {"submit_many": rate(1e5, "futures/s")}
        ),
        "map_tiny": Case("map_tiny", [str(map_items)], {"map_tiny": rate(map_items, "items/s")}),
        "arrays": Case(
            "arrays",
            [str(array_mib)],
            {"arrays": rate(2 * 8 * array_mib * MiB / 1e9, "GB/s")},
        ),
        "nested_tree": Case("nested_tree", ["10", "4"], {"nested_tree": seconds()}, nested=True),
        "fib": Case("fib", ["18"], {"fib": seconds()}, nested=True),
        "map_heavy": Case("map_heavy", ["64"], {"map_heavy": seconds()}, serial=True),
    }
    if quick:
        del table["submit_many_100k"]
    return table


ALL_CASES = list(cases(quick=False))


@dataclass
class Run:
    ok: bool
    seconds: float | None = None  # measured by the program (its first measure)
    wall: float | None = None  # whole process
    checksum: str | None = None
    error: str = ""
    measures: dict[str, tuple[float, str]] = field(default_factory=dict)  # every RESULT line


@dataclass
class Series:
    runs: list[Run] = field(default_factory=list)

    def good(self) -> list[Run]:
        return [r for r in self.runs if r.ok]

    def values(self, attr: str, measure: str | None = None) -> list[float]:
        """``attr`` of every good run: ``seconds`` of ``measure`` if given."""
        if measure is not None and attr == "seconds":
            return [r.measures[measure][0] for r in self.good() if measure in r.measures]
        return [getattr(r, attr) for r in self.good()]

    def median(self, attr: str, measure: str | None = None) -> float | None:
        values = self.values(attr, measure)
        return statistics.median(values) if values else None

    def failure(self) -> str:
        bad = [r.error for r in self.runs if not r.ok]
        return bad[0] if bad else ""


# -- processes -------------------------------------------------------------------


def become_subreaper() -> bool:
    """Make orphaned descendants re-parent to this process (Linux), so that a
    worker that left its process group can still be found and killed."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _stat_fields() -> list[tuple[int, list[str]]]:
    """(pid, fields after the command name) of every process."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces.
        found.append((int(entry), stat[stat.rfind(")") + 2 :].split()))
    return found


def children_of(pid: int) -> list[int]:
    return [p for p, fields in _stat_fields() if len(fields) > 1 and int(fields[1]) == pid]


def group_members(pgid: int) -> list[int]:
    return [p for p, fields in _stat_fields() if len(fields) > 2 and int(fields[2]) == pgid]


def kill_group(pgid: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return
        if sig == signal.SIGTERM:
            time.sleep(0.2)


def describe(pid: int) -> str:
    """``pid``'s command line, for reports ("exited" if it is a zombie or exiting)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except (OSError, IndexError):
        return f"{pid} (gone)"
    # No command line left: the process has released its memory and is exiting.
    return f"{pid} (exited)" if state == "Z" or not cmd else f"{pid} {cmd[:120]}"


def kill_orphans(exclude: frozenset[int] = frozenset()) -> list[str]:
    """Kill and reap this process's children other than ``exclude``: the
    processes of a run that outlived its launcher re-parent to us, the
    subreaper. Returns a description of each."""
    found: list[str] = []
    if not sys.platform.startswith("linux"):
        return found
    for _ in range(5):
        pids = [p for p in children_of(os.getpid()) if p not in exclude]
        if not pids:
            break
        for pid in pids:
            found.append(describe(pid))
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
    return found


def finish(
    proc: subprocess.Popen[bytes], keep: frozenset[int] = frozenset()
) -> tuple[bytes, bytes, list[str]]:
    """Kill what is left of a run (its process group, then any escapee but
    our own children ``keep``), collect its output, and return it with the
    processes that outlived the launcher."""
    # Zombies had exited by themselves: not left running, so not reported.
    survivors = [describe(p) for p in group_members(proc.pid) if p != proc.pid]
    survivors = [d for d in survivors if not d.endswith("(exited)")]
    kill_group(proc.pid)
    proc.wait()
    # Its orphans are ours now (we are their subreaper); one may hold the pipes.
    escaped = kill_orphans(keep | {proc.pid})
    out, err = proc.communicate(timeout=30)
    return out, err, survivors + [e for e in escaped if not e.endswith("(exited)")]


def run_once(
    cmd: list[str],
    timeout: float,
    cwd: str,
    env: dict[str, str],
    keep: frozenset[int] = frozenset(),
) -> Run:
    """Run one measurement; ``keep``: children of ours that are not the run's
    (a server the benchmark started), spared when its leftovers are killed."""
    start = time.perf_counter()
    # Its own session: one process group to kill, whatever it starts.
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, start_new_session=True, **CAPTURE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _, err, _ = finish(proc, keep)
        return Run(False, error=f"timed out after {timeout:.0f} s; {tail(err)}")
    except BaseException:  # Ctrl-C or SIGTERM: leave nothing running
        finish(proc, keep)
        raise
    wall = time.perf_counter() - start
    # The launcher has exited; whatever it left behind goes too.
    _, _, leftovers = finish(proc, keep)
    found = RESULT_RE.findall(out.decode(errors="replace"))
    if proc.returncode != 0 or not found:
        return Run(False, wall=wall, error=f"exit status {proc.returncode}; {tail(err or out)}")
    measures = {name: (float(seconds), checksum) for name, seconds, checksum in found}
    seconds, checksum = measures[found[0][0]]
    run = Run(True, seconds=seconds, wall=wall, checksum=checksum, measures=measures)
    if leftovers:
        run.error = f"{len(leftovers)} process(es) outlived the launcher: {'; '.join(leftovers)}"
    return run


def tail(data: bytes, lines: int = 6) -> str:
    text = data.decode(errors="replace").strip().splitlines()
    return " | ".join(text[-lines:]) if text else "(no output)"


# -- the SCOOP virtualenv --------------------------------------------------------


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


_VERSION_CODE = (
    "import os, scoop; print(getattr(scoop, '__version__', '?'), getattr(scoop, '__revision__', ''),"
    " 'from', os.path.dirname(os.path.dirname(os.path.abspath(scoop.__file__))))"
)


def scoop_version(python: Path, env: dict[str, str] | None = None) -> str | None:
    env = env or {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    try:
        out = subprocess.run(
            # -E is not used: PYTHONPATH may select the tree to measure. cwd=/ so
            # that a `scoop` in the current directory is not the one found.
            [str(python), "-c", _VERSION_CODE],
            capture_output=True,
            env=env,
            cwd="/",
            timeout=60,
            start_new_session=True,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.decode().strip() if out.returncode == 0 else None


def ensure_venv(venv: Path, base_python: str, spec: str) -> Path:
    """The interpreter of a virtualenv holding the original SCOOP, made once,
    and numpy, which the arrays program sends."""
    python = venv_python(venv)
    if not (python.exists() and scoop_version(python)):
        print(f"creating {venv} with {base_python} and installing {spec} ...", file=sys.stderr)
        if venv.exists():
            shutil.rmtree(venv)
        subprocess.run([base_python, "-m", "venv", str(venv)], check=True, timeout=300)
    missing = [] if scoop_version(python) else [spec]
    if subprocess.run([str(python), "-c", "import numpy"], capture_output=True).returncode:
        missing.append("numpy")
    if missing:
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, *missing], check=True, timeout=600)
    if not scoop_version(python):
        raise SystemExit(f"SCOOP was installed in {venv} but `import scoop` fails there")
    return python


# -- reporting -------------------------------------------------------------------


def compile_tree(src: Path | None, env: dict[str, str]) -> None:
    """Byte-compile the scoop-core tree measured (``src``, or the installed
    one), as an installed package is: SCOOP's virtualenv and the standard
    library have their .pyc files, and an environment with
    PYTHONDONTWRITEBYTECODE would otherwise have every run of ours compile
    its modules again (a tenth of a second of hello)."""
    if src is None:
        found = subprocess.run(
            [sys.executable, "-c", "import scoop_core; print(scoop_core.__file__)"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if found.returncode != 0:
            return
        src = Path(found.stdout.strip()).parents[1]
    trees = [
        src / "scoop_core",
        src / "scoop",
        *(p for p in (src / "plugins").glob("*") if p.is_dir()),
    ]
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", *(str(t) for t in trees if t.exists())],
        env={k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"},
        check=False,
    )


def heading(workers: int, repeat: int) -> str:
    """The first line of a report: when, where and how the runs were made."""
    return (
        f"# {datetime.datetime.now():%Y-%m-%d %H:%M}  {platform.node()}  "
        f"{os.cpu_count()} cores  Python {platform.python_version()}  -n {workers}  "
        f"repeat {repeat}"
    )


def progress(rep: int, repeat: int, name: str, label: str, run: Run, notes: list[str]) -> None:
    """One finished run, on stderr as it happens, so a long benchmark shows it is alive."""
    status = f"{run.seconds:.3f} s (wall {run.wall:.3f} s)" if run.ok else "FAILED"
    note = "".join(f"  [{n}]" for n in notes)
    print(
        f"  run {rep + 1}/{repeat} {name:<16} {label:<8} {status}{note}",
        file=sys.stderr,
        flush=True,
    )


def report_failures(name: str, series: dict[str, Series]) -> bool:
    """Say which runs of ``name`` failed, under each label of ``series``; true if any did."""
    failed = False
    for label, s in series.items():
        if s.failure():
            failed = True
            print(
                f"{name} under {label}: {len(s.runs) - len(s.good())} of {len(s.runs)} "
                f"run(s) failed: {s.failure()}"
            )
    return failed


def machine(workers: int) -> dict[str, object]:
    """The JSON report's description of the machine and the run size."""
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "workers": workers,
    }


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def number(value: float) -> str:
    """About three significant digits, large numbers in thousands (k) or millions (M)."""
    if abs(value) >= 1e6:
        return f"{value / 1e6:.3g}M"
    if abs(value) >= 1e3:
        return f"{value / 1e3:.3g}k"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def cell(series: Series | None, case: Case, measure: str) -> str:
    """Median (smallest-largest) of a measure in its unit; ``n/a`` if not run."""
    if series is None:
        return "n/a"
    values = series.values(case.attr, measure)
    if not values:
        return "FAIL"
    unit = case.units[measure].value
    shown = sorted(unit(v) for v in values)
    return f"{number(unit(statistics.median(values)))} ({number(shown[0])}-{number(shown[-1])})"


def ratio(theirs: float | None, ours: float | None) -> str:
    if theirs is None or ours is None or ours <= 0:
        return "-"
    return f"{theirs / ours:.2f}"


def table(
    results: dict[str, dict[str, Series]], chosen: dict[str, Case], columns: list[str]
) -> list[str]:
    """A Markdown row per measure: each framework's cell, then each one's
    median time over ours (above 1: ours is faster)."""
    others = [fw for fw in columns if fw != "ours"] if "ours" in columns else []
    head = ["measure", "unit", *(LABELS[fw] for fw in columns)]
    head += [f"{LABELS[fw]}/ours" for fw in others]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---", "---"] + ["---:"] * (len(head) - 2)) + "|",
    ]
    for name, case in chosen.items():
        by_fw = results[name]
        for measure, unit in case.units.items():
            label = name if len(case.units) == 1 else measure
            row = [label, unit.name, *(cell(by_fw.get(fw), case, measure) for fw in columns)]
            ours = by_fw["ours"].median(case.attr, measure) if "ours" in by_fw else None
            for fw in others:
                theirs = by_fw[fw].median(case.attr, measure) if fw in by_fw else None
                row.append(ratio(theirs, ours) if fw in by_fw else "n/a")
            lines.append("| " + " | ".join(row) + " |")
    return lines


def disagreements(name: str, case: Case, by_fw: dict[str, Series]) -> list[str]:
    """A line per measure of ``name`` whose runs printed different checksums."""
    lines = []
    for measure in case.units:
        sums = {
            f"{fw}:{r.measures[measure][1]}"
            for fw, s in by_fw.items()
            for r in s.good()
            if measure in r.measures
        }
        if len({s.split(":", 1)[1] for s in sums}) > 1:
            lines.append(f"{name} {measure}: checksums differ between runs: {sorted(sums)}")
    return lines


# -- main ------------------------------------------------------------------------------


def add_run_options(p: argparse.ArgumentParser, programs: list[str]) -> None:
    """The options every benchmark takes: which of its ``programs`` run, how
    often, with how many workers and for how long at most, and the report."""
    p.add_argument(
        "--programs",
        nargs="+",
        choices=programs,
        default=programs,
        metavar="NAME",
        help=f"subset of: {' '.join(programs)}",
    )
    p.add_argument("--repeat", type=int, default=3, help="runs of each measurement (default 3)")
    p.add_argument("-n", "--workers", type=int, default=2, help="-n of every run (default 2)")
    p.add_argument(
        "--timeout",
        type=float,
        # SCOOP's million-item map takes about 4 minutes here.
        default=600.0,
        help="seconds one run may take before its processes are killed (default 600)",
    )
    p.add_argument("--json", type=Path, help="also write every run to this file")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--frameworks",
        nargs="+",
        choices=FRAMEWORKS,
        metavar="NAME",
        help=f"subset of: {' '.join(FRAMEWORKS)} (default: every one available)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="small sizes, some cases left out: a few minutes with 3 repeats",
    )
    p.add_argument(
        "--venv",
        type=Path,
        default=Path("/tmp/scoop-bench-venv"),
        help="virtualenv for the original SCOOP, made once (default %(default)s)",
    )
    p.add_argument(
        "--scoop-base-python",
        default=sys.executable,
        help="interpreter the SCOOP virtualenv is made with (default: this one)",
    )
    p.add_argument(
        "--scoop-spec", default="scoop", help="what to pip install into it (default %(default)s)"
    )
    p.add_argument(
        "--ours-src",
        type=Path,
        metavar="DIR",
        help="run scoop-core from this source tree (e.g. a `git archive` of another "
        "commit) instead of the installed one",
    )
    add_run_options(p, ALL_CASES)
    p.add_argument("--no-serial", action="store_true", help="skip the serial baselines")
    return p.parse_args(argv)


def choose_frameworks(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The frameworks to run and the interpreter of the SCOOP ones. By default
    every framework that can run here: SCOOP if its virtualenv can be made,
    loky if it is installed; one asked for by name that cannot run stops us."""
    asked = args.frameworks is not None
    default = [fw for fw in FRAMEWORKS if fw not in ON_REQUEST]
    frameworks = [fw for fw in FRAMEWORKS if fw in (args.frameworks or default)]
    pythons = {fw: sys.executable for fw in ("ours", "traced") if fw in frameworks}
    if "loky" in frameworks and importlib.util.find_spec("loky") is None:
        if asked:
            raise SystemExit("loky is not installed: pip install loky (or pip install .[bench])")
        print("# loky is not installed: left out", file=sys.stderr)
        frameworks.remove("loky")
    if "scoop" in frameworks:
        try:
            pythons["scoop"] = str(ensure_venv(args.venv, args.scoop_base_python, args.scoop_spec))
        except (OSError, subprocess.SubprocessError, SystemExit) as exc:
            if asked:
                raise
            print(f"# SCOOP cannot be installed in {args.venv} ({exc}): left out", file=sys.stderr)
            frameworks.remove("scoop")
    return frameworks, pythons


def command(fw: str, python: str, workers: int, prog: str, args: list[str]) -> list[str]:
    """How framework ``fw`` runs ``prog`` with ``workers`` workers."""
    if fw in ("ours", "scoop"):
        return [python, "-m", "scoop", "-n", str(workers), prog, *args]
    if fw == "traced":
        # Written in the run's working directory, a temporary one.
        return [python, "-m", "scoop", "-n", str(workers), "--trace", "trace.json", prog, *args]
    if fw == "serial":
        return [python, prog, *args, "--serial"]
    return [python, str(PEERS), "--with", fw, "-n", str(workers), prog, *args]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.repeat < 1 or args.workers < 1:
        raise SystemExit("--repeat and --workers must be at least 1")
    become_subreaper()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    frameworks, pythons = choose_frameworks(args)
    chosen = {name: case for name, case in cases(args.quick).items() if name in args.programs}

    env = {k: v for k, v in os.environ.items() if not k.startswith("_SCOOP_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONPATH", None)  # each interpreter finds its own `scoop`
    envs = {fw: env for fw in [*frameworks, "serial"]}
    if args.ours_src is not None and "ours" in frameworks:
        src = args.ours_src.resolve()
        if not (src / "scoop_core" / "__init__.py").exists():
            raise SystemExit(f"--ours-src {src}: no scoop_core package there")
        paths = [str(src), *sorted(str(p) for p in (src / "plugins").glob("*") if p.is_dir())]
        envs["ours"] = envs["traced"] = {**env, "PYTHONPATH": os.pathsep.join(paths)}

    if "ours" in frameworks:
        compile_tree(args.ours_src, envs["ours"])
    versions = {fw: scoop_version(Path(py), envs[fw]) or "?" for fw, py in pythons.items()}
    print(heading(args.workers, args.repeat), file=sys.stderr)
    for fw, py in pythons.items():
        print(f"#   {fw}: {py} (scoop {versions[fw]})", file=sys.stderr)
    if "loky" in frameworks:
        versions["loky"] = importlib.metadata.version("loky")
        print(f"#   loky {versions['loky']}", file=sys.stderr)

    # Which frameworks run which case: no pools under nested futures, serial where it exists.
    runs_of = {
        name: [
            *(fw for fw in frameworks if not (case.nested and fw in ("pool", "executor", "loky"))),
            *(["serial"] if case.serial and not args.no_serial else []),
        ]
        for name, case in chosen.items()
    }
    results = {name: {fw: Series() for fw in runs_of[name]} for name in chosen}
    workdir = tempfile.mkdtemp(prefix="scoop-bench-")
    try:
        for rep in range(args.repeat):
            for name, case in chosen.items():
                prog = str(PROGRAMS_DIR / f"{case.program}.py")
                # Take turns going first, so none always runs on a warmer machine.
                order = runs_of[name]
                order = order[rep % len(order) :] + order[: rep % len(order)]
                for fw in order:
                    python = pythons.get(fw, sys.executable)
                    cmd = command(fw, python, args.workers, prog, case.args)
                    run = run_once(cmd, args.timeout, workdir, envs[fw])
                    results[name][fw].runs.append(run)
                    progress(rep, args.repeat, name, fw, run, [run.error] if run.error else [])
    finally:
        kill_orphans()
        shutil.rmtree(workdir, ignore_errors=True)

    columns = [fw for fw in [*frameworks, "serial"] if any(fw in r for r in results.values())]
    print()
    for line in table(results, chosen, columns):
        print(line)
    print()
    failed = False
    for name, by_fw in results.items():
        for line in disagreements(name, chosen[name], by_fw):
            failed = True
            print(line)
        failed = report_failures(name, by_fw) or failed
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    **machine(args.workers),
                    "quick": args.quick,
                    "versions": versions,
                    "args": {n: c.args for n, c in chosen.items()},
                    "runs": {
                        n: {fw: [r.__dict__ for r in s.runs] for fw, s in by.items()}
                        for n, by in results.items()
                    },
                },
                indent=2,
            )
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
