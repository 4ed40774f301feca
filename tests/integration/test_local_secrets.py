"""The run's secrets on the machine itself: the key file, ``~/.scoop`` and the environment.

Another user of the same host is the attacker here. Their moves are made
by a separate process running as ``nobody`` (these tests run as root, as
.ci/run does), on a home directory the test makes reachable to them, and
through the real launcher: ``python -m scoop`` over Redis (the transport
that writes key files) and over ZeroMQ.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import _start_redis, environ_without_scoop, run_command, wait_gone

NOBODY = pwd.getpwnam("nobody")

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="the other local user is played by nobody, which needs root"
)


@pytest.fixture
def home() -> Iterator[Path]:
    """A home directory that other users can traverse, as /home/USER often is
    (pytest's own tmp_path is not: it is under a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="scoop-home-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def as_nobody(code: str, *args: str) -> str:
    """Run ``code`` in a separate Python process as the user nobody; its stdout.
    The system's Python: the test's own may be under a directory only root can read."""
    python = shutil.which("python3", path=os.defpath)
    assert python, f"no python3 in {os.defpath} for the user nobody to run"
    proc = subprocess.run(
        [python, "-c", code, *args],
        user=NOBODY.pw_uid,
        group=NOBODY.pw_gid,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def launch(
    prog: Path, env: dict[str, str], *flags: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scoop", *flags, str(prog)],
        cwd=prog.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        umask=0o022,
    )


def clean_env(**extra: str) -> dict[str, str]:
    base = environ_without_scoop()
    return {**base, **extra}


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def keys_left(env: dict[str, str]) -> list[bytes]:
    client = redis.Redis.from_url(env["SCOOP_TRANSPORT_REDIS_URL"])
    try:
        return list(client.scan_iter(match=f"{env['SCOOP_TRANSPORT_REDIS_PREFIX']}:*"))
    finally:
        client.close()


@pytest.fixture
def redis_env(redis_server_url: str, home: Path) -> dict[str, str]:
    """A run over Redis with a prefix of its own, and ``home`` as its home."""
    return clean_env(
        HOME=str(home),
        SCOOP_TRANSPORT="redis",
        SCOOP_TRANSPORT_REDIS_URL=redis_server_url,
        SCOOP_TRANSPORT_REDIS_PREFIX=f"t{uuid.uuid4().hex[:8]}",
    )


# -- ~/.scoop and the key file ----------------------------------------------------------

MODES = """
import os, stat
from pathlib import Path
from scoop import futures

if __name__ == "__main__":
    top = Path.home() / ".scoop"
    for path in [top, top / "runs", *sorted((top / "runs").glob("*.key"))]:
        print("MODE", path.relative_to(top), oct(stat.S_IMODE(os.lstat(path).st_mode)))
    print("SUM", sum(futures.map(abs, [-1, -2])))
"""


def test_scoop_dir_runs_dir_and_key_file_are_the_users_alone(write_program, redis_env, home):
    prog = write_program(MODES)
    proc = launch(prog, redis_env, "-n", "1", "--run-id", "modes")
    assert proc.returncode == 0, proc.stderr
    lines = [line.split()[1:] for line in proc.stdout.splitlines() if line.startswith("MODE")]
    # Created under umask 022: each directory 0700 all the same, the key 0600.
    assert lines == [[".", "0o700"], ["runs", "0o700"], ["runs/modes.key", "0o600"]]
    assert "SUM 3" in proc.stdout
    # The run's end removed its key; the directories stay, private.
    assert list((home / ".scoop" / "runs").iterdir()) == []


def test_a_loose_scoop_dir_of_ours_is_made_private_and_says_so(write_program, redis_env, home):
    (home / ".scoop" / "runs").mkdir(parents=True)
    (home / ".scoop").chmod(0o755)
    (home / ".scoop" / "runs").chmod(0o777)
    proc = launch(write_program(MODES), redis_env, "-n", "1", "--run-id", "loose")
    assert proc.returncode == 0, proc.stderr
    assert mode(home / ".scoop") == 0o700 and mode(home / ".scoop" / "runs") == 0o700
    runs = home / ".scoop" / "runs"
    assert f"{runs} was open to other users (mode 0777); made it 0700" in proc.stderr


@needs_root
def test_a_symlink_planted_at_the_key_path_is_refused_not_written_through(
    write_program, redis_env, home
):
    # The user once opened ~/.scoop/runs to others; another user plants a
    # link where the next run's key will be written, to a file they can read.
    runs = home / ".scoop" / "runs"
    runs.mkdir(parents=True)
    (home / ".scoop").chmod(0o777)
    runs.chmod(0o777)
    loot = as_nobody(
        "import os, sys, tempfile\n"
        "fd, loot = tempfile.mkstemp(prefix='scoop-loot-', dir='/tmp')\n"
        "os.fchmod(fd, 0o666)\n"
        "os.symlink(loot, sys.argv[1])\n"
        "print(loot)\n",
        str(runs / "target.key"),
    ).strip()
    try:
        prog = write_program(MODES)
        proc = launch(prog, redis_env, "-n", "1", "--run-id", "target")
        assert Path(loot).read_text() == ""
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "SUM" not in proc.stdout
        assert f"{runs / 'target.key'} is a symbolic link" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert wait_gone(str(prog)) == []
        assert keys_left(redis_env) == []  # the run that did not start left nothing in Redis
    finally:
        os.unlink(loot)


@needs_root
def test_a_scoop_dir_owned_by_another_user_is_refused(write_program, redis_env, home):
    # ~/.scoop open to others: another user made ~/.scoop/runs before us.
    (home / ".scoop").mkdir()
    (home / ".scoop").chmod(0o777)
    runs = home / ".scoop" / "runs"
    as_nobody("import os, sys; os.mkdir(sys.argv[1], 0o777)", str(runs))
    prog = write_program(MODES)
    proc = launch(prog, redis_env, "-n", "1", "--run-id", "theirs")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"{runs} belongs to uid {NOBODY.pw_uid}, not to you (uid 0)" in proc.stderr
    assert list(runs.iterdir()) == []
    assert wait_gone(str(prog)) == []
    assert keys_left(redis_env) == []


JOINABLE = """
import sys, time
import scoop
from scoop import futures

def where(i):
    time.sleep(0.02)
    return scoop.worker

if __name__ == "__main__":
    print("READY", flush=True)
    seen = set()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # until a worker that joined took a future
        seen.update(futures.map(where, range(20)))
        if any(not name.startswith("worker-") for name in seen):
            break
    print("SEEN", sorted(seen), flush=True)
"""


def join(run_id: str, env: dict[str, str], *flags: str) -> subprocess.CompletedProcess[str]:
    return run_command(["scoop", "worker", "--run", run_id, "-n", "1", *flags], env=env, timeout=60)


@needs_root
def test_scoop_worker_reads_only_a_private_key_file_of_its_own(
    write_program, redis_env, home, tmp_path
):
    prog = write_program(JOINABLE)
    run = subprocess.Popen(
        [sys.executable, "-m", "scoop", "-n", "1", "--run-id", "joinable", str(prog)],
        cwd=prog.parent,
        env=redis_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    joined = None
    try:
        assert run.stdout is not None and run.stdout.readline() == "READY\n"
        key_text = (home / ".scoop" / "runs" / "joinable.key").read_text()

        shared = tmp_path / "shared.key"
        shared.write_text(key_text)
        shared.chmod(0o644)
        theirs = tmp_path / "theirs.key"
        theirs.write_text(key_text)
        theirs.chmod(0o600)
        os.chown(theirs, NOBODY.pw_uid, NOBODY.pw_gid)
        fifo = tmp_path / "fifo.key"
        os.mkfifo(fifo, 0o600)

        refused = {
            shared: f"{shared} is open to other users (mode 0644)",
            theirs: f"{theirs} belongs to uid {NOBODY.pw_uid}, not to you (uid 0)",
            fifo: f"{fifo} is not a regular file",
        }
        for path, why in refused.items():
            proc = join("joinable", redis_env, "--key-file", str(path))
            assert proc.returncode == 1, proc.stderr
            assert why in proc.stderr, proc.stderr
            assert "Traceback" not in proc.stderr

        # The key file the run wrote, found by the run id alone, is fine.
        joined = subprocess.Popen(
            ["scoop", "worker", "--run", "joinable", "-n", "1"],
            env=redis_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
        assert f"'{socket.gethostname()}-" in out  # a future ran on the worker that joined
        assert joined.wait(30) == 0
    finally:
        for proc in (run, joined):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert wait_gone(str(prog)) == []


# -- the environment of the user's own subprocesses ------------------------------------

PROBE = """
import json, subprocess, sys
from scoop import futures

CHILD = "import json, os; print(json.dumps(dict(os.environ)))"

def child_env(_):
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)

if __name__ == "__main__":
    envs = [child_env(None), *futures.map(child_env, range(2))]
    print("ENVS " + json.dumps(envs))
"""


@pytest.fixture(params=["zmq", "redis", "redis-password-in-env"])
def secret_run(
    request: pytest.FixtureRequest, home: Path, tmp_path: Path
) -> Iterator[tuple[dict[str, str], list[str], list[str]]]:
    """Environment and flags of a run over ZeroMQ, or over a Redis that takes
    a password (given in a config file, or in the environment variable
    docs/redis.md suggests); the secrets to look for."""
    key = secrets.token_hex(32)
    env = clean_env(HOME=str(home), SCOOP_RUN_KEY=key, PROBE_MARK="seen")
    if request.param == "zmq":
        yield env, ["--transport", "zmq"], [key]
        return
    password = "pw-" + secrets.token_hex(8)
    with _start_redis()(password) as url:
        config = tmp_path / "scoop.toml"
        in_file = f'password = "{password}"\n'
        if request.param == "redis-password-in-env":
            env["SCOOP_TRANSPORT_REDIS_PASSWORD"] = password
            in_file = ""
        config.write_text(
            f'[scoop.transport.redis]\nurl = "{url.replace(f":{password}@", "")}"\n'
            f'{in_file}prefix = "t{uuid.uuid4().hex[:8]}"\n'
        )
        config.chmod(0o600)
        yield env, ["--transport", "redis", "--config", str(config)], [key, password]


def test_secrets_stay_out_of_the_users_own_subprocesses(write_program, secret_run):
    env, flags, hidden = secret_run
    prog = write_program(PROBE)
    proc = run_command(["scoop", *flags, "run", "-n", "2", str(prog)], cwd=prog.parent, env=env)
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.startswith("ENVS "))
    envs = json.loads(line[5:])
    assert len(envs) == 3  # the root's child, and two futures' children
    for child in envs:
        assert child["PROBE_MARK"] == "seen"  # the environment is passed on...
        # ...but not the run's key, the transport's settings or a password.
        assert not {"_SCOOP_KEY", "_SCOOP_TRANSPORT_SETTINGS", "SCOOP_RUN_KEY"} & set(child)
        for secret in hidden:
            assert not [name for name, value in child.items() if secret in value]
    assert wait_gone(str(prog)) == []
