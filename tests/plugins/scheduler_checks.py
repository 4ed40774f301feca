"""Checks every scheduler launcher (slurm, sge, torque) must pass, with real processes.

Each plugin's tests put a stand-in for the scheduler's remote-start command
(``srun``, ``qrsh``, ``pbsdsh``) first on ``PATH``: a script with the real
command's command line that really starts the command on this machine,
with the real one's stdin/stdout behaviour. :func:`check_lifecycle` then
starts workers on two "nodes" and checks what a user would notice: output
arrives prefixed by its node, the run's secret is on no command line, a
killed worker is seen, and ``stop()`` leaves no process behind.

For jobs of workers submitted from outside a job (``scoop run --jobs N
--scheduler NAME``), :func:`check_jobs_run` runs :data:`JOB_PROGRAM` and
checks that every job's workers took futures, the results are right and the
run's key went nowhere it must not; :func:`check_ctrl_c` interrupts a run
at a chosen moment. Each scheduler's tests then look at its own queue.

It sits beside ``tests/plugins/conftest.py``, so every plugin's tests
import it by name.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from scoop_core.errors import LaunchError
from scoop_core.interfaces import Launcher, WorkerSpec
from scoop_core.plugins.manager import get_plugin_manager

MARK_VAR = "SCOOP_TEST_RUN"
"""Set in the launcher's environment: every process of the run inherits it,
so /proc shows whether anything of the run is left."""

SECRET_VAR = "SCOOP_TEST_SECRET"
"""Handed to workers in WorkerSpec.env, like the run's key: never on a command line."""

WORKER = textwrap.dedent(
    """
    import os, sys, time
    # Whole lines, as real workers write them (scoop_core.bootstrap): the
    # workers of a host share its supervisor's stdout.
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True, write_through=False)
    print(f"{os.environ['_SCOOP_NAME']} pid={os.getpid()} "
          f"secret={os.environ['SCOOP_TEST_SECRET']} cwd={os.getcwd()}", flush=True)
    print(f"{os.environ['_SCOOP_NAME']} says hi on stderr", file=sys.stderr, flush=True)
    time.sleep(600)
    """
)


DRIVER_TOOLS = textwrap.dedent(
    """
    import json, os, signal, sys, time
    from pathlib import Path

    from scoop_core.interfaces import WorkerSpec

    def wait(predicate, what, timeout=60):
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                sys.exit(f"driver: timed out waiting for {what}")
            time.sleep(0.05)

    def start_workers(launcher, out, argv, env):
        # worker-1, worker-2, ...: one a slot of the job's allocation, each
        # writing its pid file in out.
        allocation = launcher.allocation()
        specs = [
            WorkerSpec(
                name=f"worker-{i}",
                host=host.name,
                argv=argv,
                env={"_SCOOP_NAME": f"worker-{i}", **env},
            )
            for i, host in enumerate(
                (h for h in allocation for _ in range(h.count)), start=1
            )
        ]
        group = launcher.start(specs)
        names = [s.name for s in specs]
        wait(lambda: all((out / n).exists() for n in names), "the workers' pid files")
        return allocation, group, names
    """
)
"""The start of a driver program run inside a real job (``test_real_*.py``):
``wait`` for a condition, and ``start_workers`` through a launcher."""


def fail_unless_installed(missing: str | None) -> Any:
    """A module's autouse fixture for a real scheduler's tests: never skipped,
    a machine without the scheduler fails them, naming what to install (.ci/run
    installs it). ``missing`` is looked at once, at collection: before the
    module's own cluster starts."""

    @pytest.fixture(autouse=True, scope="module")
    def _scheduler_installed() -> None:
        if missing is not None:
            pytest.fail(missing)

    return _scheduler_installed


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def warning_with_an_empty_path(
    launcher_class: Callable[..., Launcher],
    env: dict[str, str],
    placement: Sequence[tuple[str, str]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> str:
    """A scheduler's launcher started with nothing on PATH: it warns, then goes
    through ssh, which cannot reach the job's node names, so the start fails.
    The warning's text (logged as a warning)."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    env["PATH"] = str(empty)
    launcher = launcher_class({}, environ=env)
    specs = specs_for(tmp_path / "w.py", placement, "s3cret", tmp_path)
    with caplog.at_level(logging.WARNING, logger="scoop.launcher"), pytest.raises(LaunchError):
        launcher.start(specs)
    warning = next(r for r in caplog.records if "on PATH" in r.getMessage())
    assert warning.levelno == logging.WARNING
    return warning.getMessage()


def check_detect(name: str, variable: str, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``name`` launcher's ``detect`` says no without ``variable`` and yes with it."""
    record = get_plugin_manager().launcher(name)
    assert record.detect is not None
    monkeypatch.delenv(variable, raising=False)
    assert not record.detect()
    monkeypatch.setenv(variable, value)
    assert record.detect()


def wait_for(
    predicate: Callable[[], Any],
    what: str,
    timeout: float = 30.0,
    context: Callable[[], str] = str,
) -> Any:
    """Poll ``predicate`` until it returns something true; fail naming ``what``
    (and showing ``context()``)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}\n{context()}")
        time.sleep(0.02)


def write_script(path: Path, body: str) -> Path:
    """An executable Python script at ``path`` run by this interpreter."""
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


SUBMITTERS_PYTHON = "python: the one first on the submitter's PATH"


def submitters_python(bin_dir: Path) -> Path:
    """A ``python`` in ``bin_dir`` that runs this interpreter and first says
    :data:`SUBMITTERS_PYTHON` on stderr: put ``bin_dir`` first on PATH where a
    job is submitted, and the job's output shows whether its ``python`` is
    the one the user submitted with (a virtualenv's, say) or another one
    the job's shell found."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    python = bin_dir / "python"
    python.write_text(f'#!/bin/sh\necho "{SUBMITTERS_PYTHON}" >&2\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    return python


def job_environment(bin_dir: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment with ``bin_dir`` first on PATH, a run mark, and ``extra``."""
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', os.defpath)}"
    env[MARK_VAR] = uuid.uuid4().hex
    env.update(extra)
    return env


def _proc_entries() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:
        return b""


def processes_marked(mark: str) -> list[int]:
    """Live processes whose environment holds ``MARK_VAR=mark`` (zombies have none)."""
    needle = f"{MARK_VAR}={mark}".encode()
    return [pid for pid in _proc_entries() if needle in _read(f"/proc/{pid}/environ").split(b"\0")]


def kill_marked(mark: str) -> list[int]:
    """Kill (SIGKILL) every live process whose environment holds ``MARK_VAR=mark``
    and return their pids: ``[]`` when the run left nothing. Checks assert on
    it, so that a failed one leaves no process behind either."""
    left = processes_marked(mark)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


def command_lines_containing(text: str) -> list[str]:
    """The command lines of every process that hold ``text``."""
    found = []
    for pid in _proc_entries():
        cmdline = _read(f"/proc/{pid}/cmdline")
        if text.encode() in cmdline:
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


class Output(io.TextIOBase):
    """A thread-safe stand-in for ``sys.stdout`` / ``sys.stderr`` that keeps
    everything written: launchers forward remote output from their own
    threads, and pytest's capture may lose a write that races its reads."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._parts: list[str] = []

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            self._parts.append(text)
        return len(text)

    @property
    def text(self) -> str:
        with self._lock:
            return "".join(self._parts)


def specs_for(
    script: Path, placement: Sequence[tuple[str, str]], secret: str, cwd: Path
) -> list[WorkerSpec]:
    """One WorkerSpec per ``(name, host)``: the worker script, the secret in its env."""
    return [
        WorkerSpec(
            name=name,
            host=host,
            argv=(sys.executable, str(script)),
            env={"_SCOOP_NAME": name, SECRET_VAR: secret},
            cwd=str(cwd),
        )
        for name, host in placement
    ]


def check_lifecycle(
    launcher: Launcher,
    placement: Sequence[tuple[str, str]],
    mark: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    labels: Mapping[str, str] | None = None,
) -> None:
    """Start workers placed by ``(name, host)``, and check them through to ``stop()``.

    ``labels`` maps a host to the label its output lines carry (default: the host)."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    secret = uuid.uuid4().hex
    out, err = Output(), Output()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    group = launcher.start(specs_for(script, placement, secret, tmp_path))

    def show() -> str:
        return f"stdout:\n{out.text}\nstderr:\n{err.text}\nstatuses: {group.poll()}"

    try:
        pids: dict[str, int] = {}
        for name, host in placement:
            label = (labels or {}).get(host, host)
            prefix = f"[{label}] {name} pid="

            def seen(prefix: str = prefix) -> str | None:
                for line in out.text.splitlines():
                    if line.startswith(prefix):
                        return line
                return None

            line = wait_for(seen, f"{prefix!r} on stdout", context=show)
            assert f"secret={secret}" in line, line  # the env came through the plan
            assert f"cwd={tmp_path}" in line, line
            pids[name] = int(line.split("pid=")[1].split()[0])

            def said(text: str = f"[{label}] {name} says hi on stderr") -> bool:
                return text in err.text

            wait_for(said, f"{name}'s stderr", context=show)
        assert command_lines_containing(secret) == []
        assert set(group.poll().items()) == {(name, None) for name, _ in placement}

        victim = placement[0][0]
        os.kill(pids[victim], signal.SIGKILL)
        wait_for(lambda: group.poll()[victim] == -signal.SIGKILL, f"{victim}'s death")
        assert all(group.poll()[name] is None for name, _ in placement[1:])
    finally:
        group.stop(2.0)
        left = kill_marked(mark)
    assert left == []
    statuses = group.poll()
    assert all(status is not None for status in statuses.values()), statuses


LAUNCH = """
import sys
from pathlib import Path

from scoop_core.interfaces import WorkerSpec

{make_launcher}
placement = {placement!r}
script = {script!r}
group = launcher.start(
    [
        WorkerSpec(
            name=name,
            host=host,
            argv=(sys.executable, script),
            env={{"_SCOOP_NAME": name, "SCOOP_TEST_SECRET": "s3cret"}},
        )
        for name, host in placement
    ]
)
print("STARTED", flush=True)
sys.stdin.read()  # until the test kills this process
"""


def start_piped(
    argv: Sequence[str], env: Mapping[str, str], **options: Any
) -> subprocess.Popen[str]:
    """``argv`` started in ``env`` with its stdout and stderr piped to the
    caller as text; ``options`` go to :class:`subprocess.Popen`."""
    return subprocess.Popen(
        list(argv),
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **options,
    )


def check_launcher_death(
    make_launcher: str,
    placement: Sequence[tuple[str, str]],
    env: Mapping[str, str],
    mark: str,
    tmp_path: Path,
) -> None:
    """A launcher that dies (SIGKILL: no clean-up of its own) takes its
    workers with it: each supervisor's stdin ends and its stdout breaks, and
    it kills them (``tests/integration/test_remote_supervisor.py`` checks
    each of the two alone, and a supervisor killed outright).

    ``make_launcher`` is Python code that binds ``launcher`` in a fresh
    process whose environment is ``env``."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    launch = tmp_path / "launch.py"
    launch.write_text(
        LAUNCH.format(make_launcher=make_launcher, placement=list(placement), script=str(script))
    )
    proc = start_piped([sys.executable, str(launch)], env, stdin=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        waiting = {name for name, _ in placement}
        lines = []
        for line in proc.stdout:
            lines.append(line)
            waiting -= {name for name in waiting if f"] {name} pid=" in line}
            if not waiting:
                break
        assert not waiting, f"workers {waiting} never spoke:\n{''.join(lines)}"
        proc.kill()
        proc.wait()
        wait_for(
            lambda: processes_marked(mark) == [],
            "the workers of a killed launcher to go",
            context=lambda: f"left: {processes_marked(mark)}",
        )
    finally:
        proc.kill()
        proc.wait()
        kill_marked(mark)


# -- jobs of workers submitted from outside the scheduler (scoop run --jobs) ----------

JOB_PROGRAM = textwrap.dedent(
    """
    import json, os, sys, time
    from scoop import futures

    # argv: the job-id variable of the scheduler, the number of jobs to wait for.
    variable, expected = sys.argv[1], int(sys.argv[2])

    def where(x):
        time.sleep(0.02)
        return [x * x, os.environ.get(variable, ""), os.environ["_SCOOP_NAME"],
                "SCOOP_RUN_KEY" in os.environ]

    if __name__ == "__main__":
        jobs, workers, leaked, total, rounds = set(), set(), False, 0, 0
        deadline = time.monotonic() + 120
        # Until a future has run in every job (the program starts before the jobs do).
        while len(jobs) < expected and time.monotonic() < deadline:
            rounds += 1
            for square, job, worker, key in futures.map(where, range(40)):
                total += square
                jobs.add(job)
                workers.add(worker)
                leaked = leaked or key
        print("RESULT " + json.dumps({"jobs": sorted(jobs), "workers": sorted(workers),
              "right": total == rounds * sum(x * x for x in range(40)), "leaked": leaked}),
              flush=True)
    """
)
"""A program whose futures say which job and worker ran them, until every job has run some."""

BLOCKING_PROGRAM = textwrap.dedent(
    """
    import time
    from scoop import futures

    if __name__ == "__main__":
        print("STARTED", flush=True)
        list(futures.map(time.sleep, [600] * 16))
    """
)
"""A program whose futures never end: the run ends when the launcher is stopped."""


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line or environment holds ``text``."""
    needle = text.encode()
    return [
        pid
        for pid in _proc_entries()
        if pid != os.getpid()
        and (needle in _read(f"/proc/{pid}/cmdline") or needle in _read(f"/proc/{pid}/environ"))
    ]


def kill_mentioning(text: str) -> list[int]:
    """Kill every live process whose command line or environment holds
    ``text``; their pids (``[]`` when none was left)."""
    left = processes_mentioning(text)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


def job_run_env(
    base: Mapping[str, str], home: Path, transport: str, redis_url: str
) -> dict[str, str]:
    """``base`` for a ``scoop run --jobs`` over ``transport``: HOME in the test's
    directory (the jobs' plans go under it), a run key the test knows (to look
    for it where it must not be), and the scheduler's list looked at often."""
    env = {k: v for k, v in base.items() if not k.startswith(("SCOOP_", "_SCOOP_"))}
    env.update(HOME=str(home), SCOOP_RUN_KEY=uuid.uuid4().hex * 2)
    for scheduler in ("SLURM", "SGE", "TORQUE"):
        env[f"SCOOP_LAUNCHER_{scheduler}_POLL_INTERVAL"] = "0.3"
    if transport == "redis":
        env.update(
            SCOOP_TRANSPORT="redis",
            SCOOP_TRANSPORT_REDIS_URL=redis_url,
            SCOOP_TRANSPORT_REDIS_PREFIX=f"jobs-{uuid.uuid4().hex[:8]}",
        )
    return env


def check_job_files(run_dir: Path, key: str, jobs: int) -> None:
    """The run's job files are where the launcher said, and hold no key; its plans are gone."""
    scripts = sorted(run_dir.glob("job-*.sh"))
    assert len(scripts) == jobs, list(run_dir.iterdir())
    for path in run_dir.iterdir():
        assert key not in path.read_text(errors="replace"), path


def run_directory(stderr: str) -> Path:
    """The directory of job scripts and output the launcher's log line names."""
    found = re.search(r"their scripts and output are in (\S+);", stderr)
    assert found, stderr
    return Path(found.group(1))


@contextlib.contextmanager
def redis_server() -> Any:
    """A throw-away redis-server (the Redis transport tests' own); its URL."""
    path = Path(__file__).parent / "transport_redis" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_scoop_jobs_redis", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with module.start_redis() as url:
        yield url


def check_jobs_run(
    tmp_path: Path, env: Mapping[str, str], flags: Sequence[str], variable: str, jobs: int
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """``scoop run FLAGS`` of :data:`JOB_PROGRAM` in ``tmp_path``, ``jobs``
    jobs of two workers each: every future ran in a job (``variable`` names
    its id), every worker of every job took some, the results are right, the
    run's key travelled neither in the jobs' environment nor into their files,
    and no process of the run is left. The finished run and its directory of
    job files."""
    program = tmp_path / "prog.py"
    program.write_text(JOB_PROGRAM)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "scoop", *flags, str(program), variable, str(jobs)],
            cwd=tmp_path,
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert result.returncode == 0, result.stderr
        line = next(ln for ln in result.stdout.splitlines() if ln.startswith("RESULT "))
        report = json.loads(line[len("RESULT ") :])
        assert report["right"]
        assert len(report["jobs"]) == jobs and "" not in report["jobs"]  # every future in a job
        assert report["workers"] == [f"worker-{i}" for i in range(1, 2 * jobs + 1)]
        assert not report["leaked"]  # the key did not travel in the jobs' environment
        run_dir = run_directory(result.stderr)
        assert run_dir.parent == tmp_path / "scoop-jobs"
        check_job_files(run_dir, env["SCOOP_RUN_KEY"], jobs)
        assert not (Path(env["HOME"]) / ".scoop" / "jobs" / run_dir.name).exists()
    finally:
        assert kill_mentioning(str(program)) == []
    return result, run_dir


def check_ctrl_c(
    tmp_path: Path,
    env: Mapping[str, str],
    flags: Sequence[str],
    ready: Callable[[], Any],
    what: str,
    context: Callable[[], str] = str,
) -> str:
    """``scoop run FLAGS`` of :data:`BLOCKING_PROGRAM`, interrupted (SIGINT)
    once ``ready()``: it exits 130 and leaves no process. Its stderr."""
    program = tmp_path / "prog.py"
    program.write_text(BLOCKING_PROGRAM)
    proc = start_piped([sys.executable, "-m", "scoop", *flags, str(program)], env, cwd=tmp_path)
    try:
        wait_for(ready, what, timeout=90, context=context)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 130, stderr
    finally:
        proc.kill()
        proc.wait()
        assert kill_mentioning(str(program)) == []
    return stderr
