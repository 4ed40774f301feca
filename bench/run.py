"""Benchmark scoop-core against the original SCOOP on the programs in bench/programs.

Each program runs unchanged under both frameworks (``python -m scoop -n W
prog.py``): scoop-core with this interpreter, SCOOP with the interpreter of
a virtualenv that this script makes once (``--venv``, cached between runs)
with ``pip install scoop``. SCOOP's code is never copied into the repository.

Every measurement is repeated (``--repeat``) and the median reported, twice:
the program's own time around its parallel part (``RESULT name seconds
checksum`` on its stdout) and the whole process's wall time, startup and
shutdown included. The two frameworks' runs alternate, so both see the same
noise on a shared machine: compare the ratios, not the absolute numbers.

Every run is bounded by ``--timeout``; a run that overstays has its whole
process group killed, and anything of its that escaped the group is found
(this process is made the subreaper of its descendants) and killed too, so
no process is left behind.

    python bench/run.py                     # both frameworks, 3 repeats
    python bench/run.py --only ours         # when SCOOP cannot run
    python bench/run.py --programs fib map_tiny --repeat 5 --markdown
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
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
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROGRAMS_DIR = HERE / "programs"
# name -> extra argv; the defaults of the programs themselves are the documented sizes.
PROGRAMS: dict[str, list[str]] = {
    "map_tiny": [],
    "submit_many": [],
    "nested_tree": [],
    "fib": [],
    "map_heavy": [],
}
RESULT_RE = re.compile(r"^RESULT (\S+) (\S+) (\S+)\s*$", re.MULTILINE)
PR_SET_CHILD_SUBREAPER = 36


@dataclass
class Run:
    ok: bool
    seconds: float | None = None  # measured by the program
    wall: float | None = None  # whole process
    checksum: str | None = None
    error: str = ""


@dataclass
class Series:
    runs: list[Run] = field(default_factory=list)

    def good(self) -> list[Run]:
        return [r for r in self.runs if r.ok]

    def median(self, attr: str) -> float | None:
        values = [getattr(r, attr) for r in self.good()]
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
    """``pid``'s command line, for reports ("exited" if it is already a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except (OSError, IndexError):
        return f"{pid} (gone)"
    return f"{pid} (exited)" if state == "Z" else f"{pid} {cmd[:120]}"


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
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
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
    text = out.decode(errors="replace")
    match = RESULT_RE.search(text)
    if proc.returncode != 0 or match is None:
        return Run(False, wall=wall, error=f"exit status {proc.returncode}; {tail(err or out)}")
    run = Run(True, seconds=float(match.group(2)), wall=wall, checksum=match.group(3))
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
    """The interpreter of a virtualenv holding the original SCOOP, made once."""
    python = venv_python(venv)
    if python.exists() and scoop_version(python):
        return python
    print(f"creating {venv} with {base_python} and installing {spec} ...", file=sys.stderr)
    if venv.exists():
        shutil.rmtree(venv)
    subprocess.run([base_python, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", spec],
        check=True,
        timeout=600,
    )
    if not scoop_version(python):
        raise SystemExit(f"SCOOP was installed in {venv} but `import scoop` fails there")
    return python


# -- reporting -------------------------------------------------------------------


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
        f"  run {rep + 1}/{repeat} {name:<12} {label:<5} {status}{note}",
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


def ratio(theirs: float | None, ours: float | None) -> str:
    if theirs is None or ours is None or ours <= 0:
        return "-"
    return f"{theirs / ours:.2f}"


LABELS = {"ours": "ours", "scoop": "SCOOP"}


def table(
    results: dict[str, dict[str, Series]], frameworks: list[str], markdown: bool
) -> list[str]:
    """Medians per program: in-program time, then wall time; with both
    frameworks, each followed by the ratio SCOOP/ours (above 1: ours is faster)."""
    both = frameworks == ["ours", "scoop"]
    head = ["program"]
    for attr, suffix in (("seconds", "(s)"), ("wall", "wall (s)")):
        head += [f"{LABELS[fw]} {suffix}" for fw in frameworks]
        if both:
            head.append("SCOOP/ours" + (" wall" if attr == "wall" else ""))
    rows = []
    for name, by_fw in results.items():
        row = [name]
        for attr in ("seconds", "wall"):
            row += [cell(by_fw[fw], attr) for fw in frameworks]
            if both:
                row.append(ratio(med(by_fw["scoop"], attr), med(by_fw["ours"], attr)))
        rows.append(row)
    if markdown:
        lines = [
            "| " + " | ".join(head) + " |",
            "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
        ]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return lines
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    out = [
        "  ".join(
            h.rjust(w) if i else h.ljust(w)
            for i, (h, w) in enumerate(zip(head, widths, strict=False))
        )
    ]
    out += [
        "  ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=False))
        )
        for r in rows
    ]
    return out


def med(series: Series | None, attr: str) -> float | None:
    return series.median(attr) if series else None


def cell(series: Series | None, attr: str) -> str:
    if series is None:
        return "-"
    value = series.median(attr)
    if value is None:
        return "FAIL"
    return fmt(value)


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
        default=180.0,
        help="seconds one run may take before its processes are killed (default 180)",
    )
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument("--json", type=Path, help="also write every run to this file")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    p.add_argument(
        "--only",
        choices=["ours", "scoop"],
        help="run one framework only (`ours` needs no virtualenv)",
    )
    add_run_options(p, list(PROGRAMS))
    p.add_argument("--no-serial", action="store_true", help="skip the serial baseline of map_heavy")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.repeat < 1 or args.workers < 1:
        raise SystemExit("--repeat and --workers must be at least 1")
    become_subreaper()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    frameworks = ["ours", "scoop"] if args.only is None else [args.only]
    pythons = {"ours": sys.executable} if "ours" in frameworks else {}
    if "scoop" in frameworks:
        pythons["scoop"] = str(ensure_venv(args.venv, args.scoop_base_python, args.scoop_spec))

    env = {k: v for k, v in os.environ.items() if not k.startswith("_SCOOP_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONPATH", None)  # each interpreter finds its own `scoop`
    envs = {fw: env for fw in frameworks}
    if args.ours_src is not None and "ours" in frameworks:
        src = args.ours_src.resolve()
        if not (src / "scoop_core" / "__init__.py").exists():
            raise SystemExit(f"--ours-src {src}: no scoop_core package there")
        paths = [str(src), *sorted(str(p) for p in (src / "plugins").glob("*") if p.is_dir())]
        envs["ours"] = {**env, "PYTHONPATH": os.pathsep.join(paths)}

    versions = {fw: scoop_version(Path(py), envs[fw]) or "?" for fw, py in pythons.items()}
    print(heading(args.workers, args.repeat), file=sys.stderr)
    for fw, py in pythons.items():
        print(f"#   {fw}: {py} (scoop {versions[fw]})", file=sys.stderr)

    results: dict[str, dict[str, Series]] = {
        p: {fw: Series() for fw in frameworks} for p in args.programs
    }
    serial = Series()
    workdir = tempfile.mkdtemp(prefix="scoop-bench-")
    try:
        for rep in range(args.repeat):
            for name in args.programs:
                prog = str(PROGRAMS_DIR / f"{name}.py")
                # Alternate who goes first, so neither always runs on a warmer machine.
                order = frameworks if rep % 2 == 0 else frameworks[::-1]
                for fw in order:
                    cmd = [
                        pythons[fw],
                        "-m",
                        "scoop",
                        "-n",
                        str(args.workers),
                        prog,
                        *PROGRAMS[name],
                    ]
                    run = run_once(cmd, args.timeout, workdir, envs[fw])
                    results[name][fw].runs.append(run)
                    progress(rep, args.repeat, name, fw, run, [run.error] if run.error else [])
            if "map_heavy" in args.programs and not args.no_serial:
                prog = str(PROGRAMS_DIR / "map_heavy.py")
                run = run_once(
                    [sys.executable, prog, *(PROGRAMS["map_heavy"] or ["200"]), "--serial"],
                    args.timeout,
                    workdir,
                    env,
                )
                serial.runs.append(run)
    finally:
        kill_orphans()
        shutil.rmtree(workdir, ignore_errors=True)

    print()
    for line in table(results, frameworks, args.markdown):
        print(line)
    if serial.good():
        print(
            f"\nmap_heavy serial baseline (builtin map, no framework): "
            f"{fmt(serial.median('seconds'))} s"
        )
    failed = False
    for name, by_fw in results.items():
        sums = {str(r.checksum) for s in by_fw.values() for r in s.good()}
        if len(sums) > 1:
            failed = True
            print(f"{name}: checksums differ between runs: {sorted(sums)}")
        failed = report_failures(name, by_fw) or failed
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    **machine(args.workers),
                    "versions": versions,
                    "runs": {
                        n: {fw: [r.__dict__ for r in s.runs] for fw, s in by.items()}
                        for n, by in results.items()
                    },
                    "map_heavy_serial": [r.__dict__ for r in serial.runs],
                },
                indent=2,
            )
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
