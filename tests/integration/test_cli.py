"""The launcher as users run it: ``python -m scoop`` and ``scoop run`` in real
subprocesses, with real workers, checking what a user sees: the program's
output and arguments, the exit status, the messages, and that no process of
the run is left behind.

Programs print ``RESULT <json>`` lines; the tests read them back."""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import environ_without_scoop, kill_run, run_command, wait_gone

PRELUDE = """
import json, os, sys, time
import scoop
from scoop import futures

def out(value):
    print("RESULT " + json.dumps(value), flush=True)
"""

REPORT = (
    PRELUDE
    + """
if __name__ == "__main__":
    out({"size": scoop.SIZE, "argv": sys.argv[1:]})
"""
)


def results(proc: subprocess.CompletedProcess[str]) -> list:
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    return [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]


def size_of(proc: subprocess.CompletedProcess[str]) -> int:
    return results(proc)[0]["size"]


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The single line a usage error prints, after checking status 2 and silence elsewhere."""
    assert proc.returncode == 2, f"exit {proc.returncode}\nstderr:\n{proc.stderr}"
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def scoop_command() -> list[str]:
    """The ``scoop`` console script of this Python (the one next to it, if there)."""
    beside = Path(sys.executable).with_name("scoop")
    found = str(beside) if beside.exists() else shutil.which("scoop")
    assert found, "the scoop console script is not installed"
    return [found]


# -- the two commands ---------------------------------------------------------


def test_python_m_scoop_and_scoop_run_do_the_same_thing(write_program, scoop_run, tmp_path):
    prog = write_program(REPORT)
    config = tmp_path / "settings.toml"
    config.write_text('[scoop]\nserializer = "pickle"\n')
    args = ("a", "b", "-n", "3", "--foo", "--", "-v")
    by_module = scoop_run(prog, *args, flags=("-n", "2"))
    by_script = scoop_run(
        prog,
        *args,
        command=[*scoop_command(), "--transport", "zmq", "--config", str(config), "-v", "run"],
        flags=("-n", "2"),
    )
    expected = [{"size": 2, "argv": ["a", "b", "-n", "3", "--foo", "--", "-v"]}]
    assert results(by_module) == expected
    assert results(by_script) == expected
    # -v before `run` counts: the launcher says where the broker is.
    assert "2 worker(s)" in by_script.stderr
    assert by_module.stderr == ""


def test_workers_default_to_one_per_core_and_n_sets_them(write_program, scoop_run):
    prog = write_program(REPORT)
    assert size_of(scoop_run(prog, flags=())) == os.cpu_count()
    assert size_of(scoop_run(prog, flags=("-n", "3"))) == 3


def test_worker_output_reaches_the_launchers_output(write_program, scoop_run):
    prog = write_program(
        PRELUDE
        + """
def speak(i):
    print(f"out of future {i}", flush=True)
    print(f"err of future {i}", file=sys.stderr, flush=True)
    return i

if __name__ == "__main__":
    print("root says hello", flush=True)
    out(list(futures.map(speak, range(4))))
"""
    )
    proc = scoop_run(prog)
    assert results(proc) == [[0, 1, 2, 3]]
    assert "root says hello" in proc.stdout
    for i in range(4):
        assert f"out of future {i}" in proc.stdout
        assert f"err of future {i}" in proc.stderr


# -- exit status and errors ---------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "on_stderr"),
    [
        ("pass", 0, []),
        ("sys.exit(7)", 7, []),
        ("sys.exit('the disk is full')", 1, ["the disk is full"]),
        ("raise ValueError('bad input')", 1, ["Traceback", "ValueError: bad input"]),
    ],
    ids=["ok", "exit-7", "exit-message", "exception"],
)
def test_the_launcher_exits_with_the_programs_status(
    write_program, scoop_run, body, status, on_stderr
):
    prog = write_program(
        PRELUDE
        + f"\nif __name__ == '__main__':\n    futures.submit(abs, -1).result()\n    {body}\n"
    )
    proc = scoop_run(prog)
    assert proc.returncode == status, proc.stderr
    for text in on_stderr:
        assert text in proc.stderr
    if not on_stderr:
        assert proc.stderr == ""


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (("--frobnicate",), "unrecognized arguments: --frobnicate"),
        (("-n", "0"), "argument -n: expected a number of at least 1, got 0"),
        (("-n", "x"), "argument -n: expected a whole number, got 'x'"),
        (("--transport", "carrier-pigeon"), "choose one of: redis, zmq"),
        (("--hosts",), "argument --hosts: expected at least one host"),
    ],
)
def test_a_bad_command_line_is_one_line_and_status_2(write_program, scoop_run, flags, expected):
    line = one_line_error(scoop_run(write_program(REPORT), flags=flags))
    assert expected in line


def test_a_missing_program_is_named(scoop_run, tmp_path):
    missing = tmp_path / "no_such_program.py"
    assert "no_such_program.py" in one_line_error(scoop_run(missing))


def test_scoop_plugins_lists_the_built_in_plugins(tmp_path):
    proc = run_command([*scoop_command(), "plugins"], cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines()[1:]}
    for name, kind in [
        ("zmq", "transport"),
        ("local", "launcher"),
        ("cloudpickle", "serializer"),
        ("pickle", "serializer"),
    ]:
        assert rows[name][1] == kind
        assert "scoop-core" in rows[name]


# -- stopping -----------------------------------------------------------------

LONG_FUTURES = (
    PRELUDE
    + """
def nap(i):
    print(f"BUSY {i}", flush=True)
    time.sleep(60)
    return i

if __name__ == "__main__":
    running = [futures.submit(nap, i) for i in range(2)]
    print("READY", flush=True)
    futures.wait(running)
    out("the futures finished: the run was not stopped")
"""
)


def read_until(proc: subprocess.Popen[bytes], wanted: tuple[str, ...], timeout: float) -> str:
    """Read ``proc``'s stdout as it comes until every string in ``wanted``
    was seen or ``timeout`` passes; return what was read. (The root and the
    workers share the pipe, so their lines may interleave mid-line.)"""
    assert proc.stdout is not None
    text = ""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while not all(w in text for w in wanted) and time.monotonic() < deadline:
            if not selector.select(max(0.0, deadline - time.monotonic())):
                continue
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            text += chunk.decode()
    return text


@pytest.mark.parametrize(
    ("signum", "whole_group", "status"),
    [
        (signal.SIGINT, False, 130),
        (signal.SIGTERM, False, 143),
        (signal.SIGINT, True, 130),
    ],
    ids=["sigint", "sigterm", "ctrl-c-in-a-terminal"],
)
def test_a_signal_stops_the_run_and_leaves_nothing_behind(
    write_program, tmp_path, signum, whole_group, status
):
    prog = write_program(LONG_FUTURES)
    proc = subprocess.Popen(
        [sys.executable, "-m", "scoop", "-n", "2", str(prog)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=whole_group,
    )
    try:
        # READY from the root, BUSY from a worker: a future is running.
        seen = read_until(proc, ("READY", "BUSY"), timeout=60)
        assert "READY" in seen and "BUSY" in seen, seen
        if whole_group:
            os.killpg(proc.pid, signum)  # what a terminal does on Ctrl-C
        else:
            proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=5)
        assert proc.returncode == status, stderr.decode()
        # Stopping is no fault: no word of workers that left holding futures.
        assert "holding" not in stderr.decode(), stderr.decode()
        assert wait_gone(str(prog)) == []
    finally:
        kill_run(str(prog), proc)


# -- the seed's flags ---------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "workers"),
    [
        (("--hosts", "localhost", "localhost"), 2),
        (("--host", "localhost", "127.0.0.1", "--"), 2),
        (("--hosts", "localhost", "-n", "3"), 3),
        (("--hostfile", "hosts"), 2),
    ],
    ids=["hosts-then-program", "host-and-dashes", "hosts-and-n", "hostfile"],
)
def test_local_hosts_run_their_workers_here(write_program, scoop_run, tmp_path, flags, workers):
    (tmp_path / "hosts").write_text("# this machine\nlocalhost 2\n")
    assert size_of(scoop_run(write_program(REPORT), flags=flags)) == workers


def test_an_unreachable_remote_host_is_named_in_one_line(write_program, scoop_run, tmp_path):
    # ".invalid" never resolves (RFC 2606): the ssh launcher must say which host and why.
    start = time.monotonic()
    proc = scoop_run(
        write_program(REPORT), flags=("-n", "2", "--hosts", "localhost", "otherbox.invalid")
    )
    took = time.monotonic() - start
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert errors and "otherbox.invalid" in errors[-1], proc.stderr
    assert "Traceback" not in proc.stderr
    assert took < 30


def test_hosts_beyond_what_n_needs_are_left_out(write_program, scoop_run, tmp_path):
    # The seed's rule: fewer workers than the hosts offer fill the hosts in
    # order, so the remote host of this file gets none and is never contacted.
    (tmp_path / "hosts").write_text("localhost 2\notherbox.invalid 4\n")
    assert size_of(scoop_run(write_program(REPORT), flags=("--hostfile", "hosts", "-n", "1"))) == 1


def test_a_malformed_hostfile_line_is_named(write_program, scoop_run, tmp_path):
    (tmp_path / "hosts").write_text("localhost 2\nlocalhost zero\n")
    line = one_line_error(scoop_run(write_program(REPORT), flags=("--hostfile", "hosts")))
    assert "hosts:2:" in line and "'zero'" in line


def test_worker_flags_shape_the_workers(write_program, scoop_run, tmp_path):
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    libdir = tmp_path / "lib"
    libdir.mkdir()
    (libdir / "only_in_lib.py").write_text("VALUE = 'from lib'\n")
    prolog = tmp_path / "prolog.sh"
    prolog.write_text("export FROM_PROLOG=prolog-ran\n")
    prog = write_program(
        PRELUDE
        + """
def look(_):
    import only_in_lib
    return {
        "cwd": os.getcwd(),
        "nice": os.nice(0),
        "lib": only_in_lib.VALUE,
        "prolog": os.environ.get("FROM_PROLOG"),
        "python": sys.executable,
        "debug": scoop.DEBUG,
    }

if __name__ == "__main__":
    out({"debug": scoop.DEBUG, "workers": list(futures.map(look, range(8)))})
"""
    )
    proc = scoop_run(
        prog,
        flags=(
            "-n",
            "2",
            "--path",
            str(workdir),
            "--nice",
            "5",
            "--pythonpath",
            str(libdir),
            "--prolog",
            str(prolog),
            "--python-interpreter",
            sys.executable,
            "--profile",
            "--debug",
        ),
        # The futures must run on the workers these flags shape, not in the root.
        env={"SCOOP_ROOT_RUNS_FUTURES": "false"},
    )
    [got] = results(proc)
    assert got["debug"] is True
    for seen in got["workers"]:
        assert seen["cwd"] == str(workdir)
        assert seen["nice"] == os.nice(0) + 5
        assert seen["lib"] == "from lib"
        assert seen["prolog"] == "prolog-ran"
        assert seen["python"] == sys.executable
        assert seen["debug"] is True
    profiles = sorted(p.name for p in workdir.glob("*.prof"))
    assert profiles == ["scoop-profile-worker-1.prof", "scoop-profile-worker-2.prof"]


def test_remote_only_flags_run_with_a_warning(write_program, scoop_run, tmp_path):
    log_file = tmp_path / "scoop.log"
    proc = scoop_run(
        write_program(REPORT),
        flags=(
            "-n",
            "1",
            "--tunnel",
            "--external-hostname",
            "me.example.org",
            "--broker-hostname",
            "10.0.0.1",
            "-b",
            "2",
            "--backend",
            "zmq",
            "--log",
            str(log_file),
        ),
    )
    assert size_of(proc) == 1
    logged = log_file.read_text()
    for flag in ("--tunnel", "--external-hostname", "--broker-hostname", "-b 2"):
        [warning] = [line for line in proc.stderr.splitlines() if flag in line]
        assert "WARNING" in warning
        assert ("one broker serves" if flag == "-b 2" else "remote hosts") in warning
        # --log: the launcher's records go to the file as well.
        assert warning in logged.splitlines()


def test_the_log_file_has_each_processs_records_once(write_program, scoop_run, tmp_path):
    log_file = tmp_path / "scoop.log"
    prog = write_program(
        PRELUDE
        + """
def note(_):
    scoop.logger.warning("a note from %s", scoop.worker)
    return scoop.worker


if __name__ == "__main__":
    worker = futures.submit(note, 0).result()
    note(0)
    out({"size": scoop.SIZE, "worker": worker})
"""
    )
    proc = scoop_run(
        prog,
        flags=("-n", "1", "--log", str(log_file)),
        env={"SCOOP_ROOT_RUNS_FUTURES": "false"},
    )

    [report] = results(proc)
    assert report == {"size": 1, "worker": "worker-1"}
    logged = log_file.read_text().splitlines()
    for name in ("root", "worker-1"):
        assert len([line for line in logged if f"a note from {name}" in line]) == 1, logged


@pytest.mark.parametrize(
    ("verbosity", "shown", "hidden"),
    [
        (("-q",), [], ["WARNING", "INFO", "DEBUG"]),
        ((), ["WARNING"], ["INFO", "DEBUG"]),
        (("-v",), ["WARNING", "INFO"], ["DEBUG"]),
        (("-vv",), ["WARNING", "INFO", "DEBUG"], []),
    ],
    ids=["quiet", "default", "verbose", "very-verbose"],
)
def test_verbosity_flags_change_what_is_logged(write_program, scoop_run, verbosity, shown, hidden):
    proc = scoop_run(write_program(REPORT), flags=("-n", "1", "-b", "2", *verbosity))
    assert size_of(proc) == 1
    levels = {word for line in proc.stderr.splitlines() for word in line.split()}
    for level in shown:
        assert level in levels, proc.stderr
    for level in hidden:
        assert level not in levels, proc.stderr


# -- configuration end to end -------------------------------------------------


def test_config_file_environment_and_n_in_that_order(write_program, scoop_run, tmp_path):
    prog = write_program(REPORT)
    (tmp_path / "scoop.toml").write_text("[scoop]\nworkers = 3\n")
    assert size_of(scoop_run(prog, flags=())) == 3
    assert size_of(scoop_run(prog, flags=(), env={"SCOOP_WORKERS": "2"})) == 2
    assert size_of(scoop_run(prog, flags=("-n", "1"), env={"SCOOP_WORKERS": "2"})) == 1


# -- workers in batch jobs: --dry-run and the flags' errors -------------------------------


def test_dry_run_prints_the_job_script_and_submits_nothing(write_program, tmp_path):
    prog = write_program(REPORT)
    home = tmp_path / "home"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # An sbatch that leaves a trace if anything calls it.
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\ntouch {tmp_path / 'submitted'}\n")
    (bin_dir / "sbatch").chmod(0o755)
    key = "5e" * 32
    env = {
        **os.environ,
        "HOME": str(home),
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SCOOP_RUN_KEY": key,
    }
    flags = ["--jobs", "2", "--scheduler", "slurm", "--cores-per-job", "4", "--memory", "8G"]
    flags += ["--walltime", "2:00:00", "--queue", "short", "--job-extra=--account=abc"]
    proc = run_command(
        [sys.executable, "-m", "scoop", *flags, "--dry-run", str(prog)], cwd=tmp_path, env=env
    )
    assert proc.returncode == 0, proc.stderr
    script = proc.stdout
    for line in (
        "#!/bin/sh",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --mem=8192M",
        "#SBATCH --time=2:00:00",
        "#SBATCH --partition=short",
        "#SBATCH --account=abc",
        f"cd {tmp_path} || exit 1",
    ):
        assert f"\n{line}\n" in f"\n{script}", script
    assert script.splitlines()[0].endswith("8 workers: 2 jobs x 4 via scheduler slurm")
    header = next(line for line in script.splitlines() if line.startswith("# run "))
    run_id = header.split()[2].rstrip(":")
    jobs = tmp_path / "scoop-jobs" / run_id
    assert f"exec {sys.executable} -m scoop_core.worker_jobs {home}/.scoop/jobs/{run_id}/" in script
    assert f"sbatch --parsable {jobs}/job-1.sh\nsbatch --parsable {jobs}/job-2.sh\n" in script
    assert key not in script
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "prog.py"]  # nothing written
    assert "RESULT" not in script  # the program did not run


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--jobs", "2"], "--jobs needs --scheduler: one of sge, slurm, torque"),
        (["--queue", "q"], "--queue only with --jobs N"),
        (["--jobs", "2", "--scheduler", "ssh"], "the ssh launcher cannot submit jobs"),
        (["--jobs", "2", "--scheduler", "pbs"], "pbs"),
        (["--jobs", "2", "--scheduler", "slurm", "-n", "4"], "--jobs and -n:"),
        (["--jobs", "2", "--scheduler", "slurm", "--hosts", "a", "b"], "--jobs and --hosts:"),
        (["--jobs", "0", "--scheduler", "slurm"], "expected a number of at least 1"),
        (["--jobs", "1", "--scheduler", "slurm", "--memory", "2"], "is not a size with a unit"),
        (["--jobs", "1", "--scheduler", "slurm", "--walltime", "1:30"], "1:30:00"),
        (["--jobs", "1", "--scheduler", "sge", "--cores-per-job", "2"], "parallel environment"),
    ],
)
def test_job_flags_that_do_not_fit_are_one_line_errors(write_program, tmp_path, flags, message):
    prog = write_program(REPORT)
    proc = run_command([sys.executable, "-m", "scoop", *flags, str(prog)], cwd=tmp_path)
    assert message in one_line_error(proc)
    assert not (tmp_path / "scoop-jobs").exists()


def test_the_original_scoop_distribution_installed_beside_is_named(tmp_path):
    """pip does not warn that SCOOP and scoop-core overwrite each other's ``scoop``
    package; the launcher does, when SCOOP's distribution is found (as pip records it)."""
    record = tmp_path / "site" / "scoop-0.7.2.0.dist-info"
    record.mkdir(parents=True)
    (record / "METADATA").write_text("Metadata-Version: 2.1\nName: scoop\nVersion: 0.7.2.0\n")
    env = environ_without_scoop()
    alone = run_command([*scoop_command(), "plugins"], env=env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(record.parent), env.get("PYTHONPATH")]))
    beside = run_command([*scoop_command(), "plugins"], env=env)
    assert alone.returncode == beside.returncode == 0
    assert "original SCOOP" not in alone.stderr
    assert "the original SCOOP distribution (scoop 0.7.2.0) is installed" in beside.stderr
    assert "virtualenv of its own" in beside.stderr
    assert beside.stdout == alone.stdout


@pytest.mark.parametrize("command", [["config"], ["plugins"]])
def test_a_reader_that_leaves_early_gets_no_traceback(command):
    """``scoop config | head -1``: the pipe closes before the table is written."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before a byte is written
    try:
        proc = subprocess.run(
            [*scoop_command(), *command],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            env=environ_without_scoop(),
            timeout=60,
        )
    finally:
        os.close(write)
    assert proc.stderr == ""
    assert proc.returncode == 128 + signal.SIGPIPE
