"""A plain Python program's ``scoop_core.Executor`` inside a real scheduler job.

No launcher: the program creates ``scoop_core.Executor()`` (or
``scoop_core.run(workers=N)``) itself, inside a SLURM or Grid Engine job,
and the pool finds the job's allocation as ``python -m scoop`` does. The
program (:data:`PROGRAM`) maps a function over the pool until every worker
has run a future and reports, as JSON: the pool's size, where each worker
ran (its pid, its host and the variables the scheduler set for it, and
for the program), whether the results are right, what the scheduler listed
while the pool ran and once it was shut, and which processes of the test
started after the pool were left then, while the job itself still ran (the
job's end would kill them anyway). Each scheduler's ``test_real_*.py`` runs
it in a job and checks the report.

It sits beside ``tests/plugins/conftest.py``, so every plugin's tests
import it by name.
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scheduler_checks import MARK_VAR

PROGRAM = textwrap.dedent(
    """
    import json, os, shlex, socket, subprocess, sys, time
    import scoop_core

    # argv: "executor" for Executor(), or N for run(workers=N); the variable
    # marking the test's processes; the variables each worker reports, comma
    # separated; a command listing what the scheduler runs for the job ("": none).
    how, mark_var, variables, listing = sys.argv[1:5]

    def reported():
        return {name: os.environ.get(name) for name in variables.split(",")}

    def where(x):
        return [x * x, os.getpid(), socket.gethostname(), reported(), sys.argv]

    def scheduler_list():
        if not listing:
            return []
        argv = [os.path.expandvars(word) for word in shlex.split(listing)]
        return subprocess.run(argv, capture_output=True, text=True).stdout.splitlines()

    def marked():
        # Live processes of the test: they carry its mark.
        mark = f"{mark_var}={os.environ[mark_var]}".encode()
        found = []
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{entry}/environ", "rb") as fh:
                    if mark in fh.read().split(b"\\0"):
                        found.append(int(entry))
            except OSError:
                pass
        return found

    if __name__ == "__main__":
        # This one, its parents, and a submitter waiting for the job (qsub -sync y).
        before = set(marked())
        pool = scoop_core.Executor() if how == "executor" else scoop_core.run(workers=int(how))
        workers, argv_seen, right = {}, [], True
        deadline = time.monotonic() + 60
        with pool:
            listed = scheduler_list()
            # Until every worker has run a future.
            while len(workers) < pool.workers and time.monotonic() < deadline:
                results = list(pool.map(where, range(40)))
                right = right and [r[0] for r in results] == [x * x for x in range(40)]
                for _, pid, host, env, argv in results:
                    workers[pid] = [host, env]
                    argv_seen += [argv] if argv not in argv_seen else []
            running = sorted(set(marked()) - before)
        left = sorted(set(marked()) - before)
        report = {
            "root": reported(), "size": pool.workers, "workers": list(workers.values()),
            "pids": list(workers), "right": right, "argv": sys.argv, "argv_seen": argv_seen, "running": running,
            "listed": listed, "listed_after": scheduler_list(), "left": left,
        }
        print("REPORT", json.dumps(report), flush=True)
    """
)


def write_program(directory: Path) -> Path:
    """:data:`PROGRAM` as ``prog.py`` in ``directory``."""
    program = directory / "prog.py"
    program.write_text(PROGRAM)
    return program


def program_argv(program: Path, how: str, variables: Sequence[str], listing: str = "") -> list[str]:
    """The command line that runs ``program`` (``how``: ``"executor"`` or a
    number of workers), its workers reporting ``variables``."""
    return [sys.executable, str(program), how, MARK_VAR, ",".join(variables), listing]


def read_report(text: str) -> dict[str, Any]:
    """The program's report in its output ``text``, checked for what every
    run must show: the results are right, the workers saw the program's
    ``sys.argv``, they were the test's processes while the pool ran, and none
    is left once it was shut."""
    line = next((ln for ln in text.splitlines() if ln.startswith("REPORT ")), None)
    assert line is not None, f"the program reported nothing:\n{text}"
    report: dict[str, Any] = json.loads(line[len("REPORT ") :])
    assert report["right"], report
    assert report["argv_seen"] == [report["argv"]], report  # as 'spawn' children see it
    assert len(report["workers"]) == report["size"], report
    assert set(report["pids"]) <= set(report["running"]), report
    assert report["left"] == [], report
    return report
