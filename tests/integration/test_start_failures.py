"""A worker that cannot start (its prolog fails, its interpreter is broken)
is reported once, with what it printed, and not restarted.

Real runs through ``python -m scoop``: the error names the host, the
worker, its exit status and its last line on stderr, no replacement is
started, nothing is left running, and the workers' stderr reaches the
terminal as whole lines, even written in pieces by a shell.
"""

from __future__ import annotations

import re
import sys
import uuid

import pytest
from conftest import wait_gone
from test_remote_supervisor import _host, _wait

from scoop_core.host_supervisor import HostGroup
from scoop_core.interfaces import WorkerSpec

PROGRAM = """
from scoop import futures

if __name__ == "__main__":
    print(list(futures.map(abs, [-1, -2])))
"""

# Written in two pieces, so that a line shared unbuffered with other
# processes would be cut in the middle by theirs.
SAYS_WHY = """
printf 'prolog: cannot load ' >&2
sleep 0.1
printf 'module x\\n' >&2
exit 3
"""

NO_COMMAND = """
export BEFORE=1
nonexistent_command_x load x
"""

START_FAILURE = "before it reached the broker"


def errors(stderr: str) -> list[str]:
    """The launcher's error lines about workers that could not start."""
    return [line for line in stderr.splitlines() if START_FAILURE in line and "ERROR" in line]


def started(stderr: str) -> set[str]:
    """The workers the launcher names (with -v, it names each that could not start)."""
    return set(re.findall(r"\bworker-\d+\b", stderr))


@pytest.mark.both_transports
def test_a_prolog_that_exits_stops_the_run_with_one_error(scoop_run, write_program):
    prolog = write_program(SAYS_WHY, "prolog.sh")
    proc = scoop_run(write_program(PROGRAM), flags=("-v", "-n", "2", "--prolog", str(prolog)))

    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    [error] = errors(proc.stderr)
    assert re.search(r"worker-[12] on this machine exited with status 3", error), error
    assert "prolog: cannot load module x" in error
    assert "--prolog" in error and "--python-interpreter" in error
    # Neither worker is replaced: only the two that were started are named.
    assert started(proc.stderr) == {"worker-1", "worker-2"}, proc.stderr
    assert "replaces it" not in proc.stderr
    # Each worker's line reached the terminal whole, once.
    lines = proc.stderr.splitlines()
    assert lines.count("prolog: cannot load module x") == 2, proc.stderr
    assert all(
        line == "prolog: cannot load module x" or line.startswith("[")
        for line in lines
        if "prolog" in line or "module x" in line
    ), proc.stderr


@pytest.mark.both_transports
def test_a_missing_command_in_the_prolog_is_named(scoop_run, write_program):
    prolog = write_program(NO_COMMAND, "prolog.sh")
    proc = scoop_run(write_program(PROGRAM), flags=("-v", "-n", "3", "--prolog", str(prolog)))

    assert proc.returncode == 1, proc.stderr
    [error] = errors(proc.stderr)
    assert "exited with status 1" in error
    assert re.search(r"nonexistent_command_x.*not found", error), error
    assert started(proc.stderr) == {"worker-1", "worker-2", "worker-3"}, proc.stderr
    shell_lines = [line for line in proc.stderr.splitlines() if "nonexistent_command_x" in line]
    assert len(shell_lines) == 4, proc.stderr  # three workers' own lines, and the error


def test_an_interpreter_that_cannot_run_workers_stops_the_run_with_one_error(
    scoop_run, write_program, tmp_path
):
    # The interpreter of a host where it is broken: it runs the root here,
    # but not the workers (as another host's would).
    python = tmp_path / "python"
    python.write_text(
        f"""#!/bin/sh
case "$*" in *"bootstrap worker"*)
    echo "python: error while loading shared libraries: libpython3.so" >&2; exit 127;;
esac
exec {sys.executable} "$@"
"""
    )
    python.chmod(0o755)
    proc = scoop_run(
        write_program(PROGRAM), flags=("-v", "-n", "2", "--python-interpreter", str(python))
    )

    assert proc.returncode == 1, proc.stderr
    [error] = errors(proc.stderr)
    assert re.search(r"worker-[12] on this machine exited with status 127", error), error
    assert "error while loading shared libraries: libpython3.so" in error
    assert "--python-interpreter" in error
    assert started(proc.stderr) == {"worker-1", "worker-2"}, proc.stderr


def test_an_interpreter_that_cannot_start_at_all_ends_the_run(scoop_run, write_program):
    # /bin/false runs neither the root nor the workers: the run ends with
    # the root's status, saying why, and nothing is restarted.
    proc = scoop_run(
        write_program(PROGRAM), flags=("-v", "-n", "2", "--python-interpreter", "/bin/false")
    )

    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    assert "replaces it" not in proc.stderr
    assert started(proc.stderr) <= {"worker-1", "worker-2"}, proc.stderr
    # The root's interpreter is the same: it is named, not left to guess.
    root_lines = [line for line in proc.stderr.splitlines() if "the root process" in line]
    assert len(root_lines) == 1, proc.stderr
    assert "(/bin/false) exited with status 1 before it reached the run" in root_lines[0]
    assert "has scoop-core installed (--python-interpreter)" in root_lines[0]


def test_the_run_goes_on_without_a_host_whose_workers_cannot_start(scoop_run, write_program):
    # Two hosts that are both this machine; the prolog fails for the second's worker only.
    prolog = write_program(
        'if [ "$_SCOOP_NAME" = worker-2 ]; then echo "no module here" >&2; exit 3; fi\n',
        "prolog.sh",
    )
    program = write_program(
        """
import scoop
from scoop import futures

def where(_):
    return scoop.worker

if __name__ == "__main__":
    print(sorted(set(futures.map(where, range(10)))))
"""
    )
    proc = scoop_run(
        program, flags=("-n", "2", "--hosts", "localhost", "127.0.0.1", "--prolog", str(prolog))
    )

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['worker-1']"
    [error] = errors(proc.stderr)
    assert "worker-2 on host 127.0.0.1 exited with status 3" in error
    assert "no module here" in error
    assert "replaces it" not in proc.stderr


@pytest.mark.both_transports
def test_workers_that_started_are_still_replaced(scoop_run, write_program):
    # The only worker dies on its first future, as soon as it can: it had
    # reached the broker, so the usual policy replaces it.
    program = write_program(
        """
import os
from scoop import futures

def crash_once(x):
    marker = "crashed-once"
    if x == 0 and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(9)
    return x

if __name__ == "__main__":
    print(sum(futures.map(crash_once, range(6))))
"""
    )
    proc = scoop_run(program, flags=("-n", "1"))

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "15"
    assert errors(proc.stderr) == []
    assert "worker-2 replaces it" in proc.stderr


def test_a_remote_host_reports_what_its_worker_said_before_it_exited(tmp_path, capfd):
    # A host's supervisor (a subprocess whose pipes stand for the channel a
    # launcher has to the host) runs a worker whose prolog fails: written in
    # pieces, its lines still come whole, and its exit is reported with its
    # last line on stderr, even after a line left unfinished on stdout.
    marker = f"scoop-start-failure-{uuid.uuid4().hex[:8]}"
    script = tmp_path / f"{marker}.sh"
    script.write_text(SAYS_WHY.replace("exit 3", "printf 'loading'\nexit 3"))
    specs = [WorkerSpec(n, "nodeA", ("/bin/sh", str(script)), {}) for n in ("w1", "w2")]
    host, proc = _host(specs)
    try:
        _wait(lambda: None not in host.poll().values(), "both exits reported")
        assert host.poll() == {"w1": 3, "w2": 3}
        group = HostGroup([host])
        assert group.last_lines("w1") == group.last_lines("w2") == ["prolog: cannot load module x"]
        group.stop(1.0)
    finally:
        proc.kill()
        proc.wait()
    out, err = capfd.readouterr()
    assert out.splitlines() == ["[nodeA] loading", "[nodeA] loading"]
    assert err.splitlines() == ["[nodeA] prolog: cannot load module x"] * 2
    assert wait_gone(marker) == []
