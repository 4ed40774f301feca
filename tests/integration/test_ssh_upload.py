"""Hosts without the launcher's file system, and hosts whose login prints: real runs over SSH.

The hosts are those of ``test_ssh_runs.py`` and four more, each an sshd in
a mount namespace of its own (``ssh_hosts.View``): ``hprivate`` does not see
the directory the tests' programs are written in (an empty tmpfs covers it
there); ``hstale`` neither, but holds its own files at the same paths (a
stale copy); ``hfull`` neither, and its temporary directory is all but
full; ``hnoisy`` sees everything but logs in through a ``.bashrc`` that
prints lines and binary junk on stdout and stderr.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_ssh_runs import (
    NAPPING,
    PROGRAM,
    Machines,
    checks,
    result_of,
    run_scoop,
    ssh_hosts,
    start_machines,
)

pytestmark = pytest.mark.cluster

CLIENTS = {"paramiko": {}, "ssh": {"SCOOP_LAUNCHER_SSH_SSH_EXECUTABLE": "ssh"}}
"""The built-in SSH client, and the ``ssh`` program (``--ssh-executable ssh``)."""


@pytest.fixture(scope="module")
def programs() -> Iterator[Path]:
    """Where the tests write their programs: a directory some hosts do not see."""
    directory = Path(tempfile.mkdtemp(prefix="scoop-programs-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def machines(programs: Path) -> Iterator[Machines]:
    views = {
        "hprivate": ssh_hosts.View(hides=(programs,)),
        "hstale": ssh_hosts.View(hides=(programs,)),
        "hnoisy": ssh_hosts.View(bashrc=ssh_hosts.NOISY_BASHRC),
        "hfull": ssh_hosts.View(hides=(programs,), tmp_bytes=64 * 1024),
    }
    yield from start_machines(views)


@pytest.fixture
def here(programs: Path, request: pytest.FixtureRequest) -> Path:
    """This test's own directory among the programs."""
    directory = programs / request.node.name.replace("[", "-").strip("]")
    directory.mkdir()
    return directory


def refused(machines: Machines, proc: subprocess.CompletedProcess[str]) -> str:
    """What a run that did not start said: it failed without a traceback,
    and left nothing on any host."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    assert machines.leftovers() == {}
    return proc.stderr


UPLOADED = """
import json, os, time
from scoop import futures
import helper_mod

def place():
    directory = os.path.dirname(os.path.abspath(__file__))
    return [directory, oct(os.stat(directory).st_mode & 0o777),
            os.environ.get("SCOOP_TEST_HOST", "launcher")]

def probe(i):
    time.sleep(0.1)  # long enough for every worker to get some
    with open("data.txt") as fh:
        word = fh.read().strip()
    return [i * i, helper_mod.VALUE, word, *place()]

if __name__ == "__main__":
    rows = list(futures.map(probe, range(40)))
    print("RESULT " + json.dumps({"rows": rows, "root": place()}), flush=True)
"""


@pytest.mark.parametrize("client", CLIENTS)
def test_upload_sends_the_program_and_its_files_to_a_host_that_does_not_see_them(
    machines: Machines, here: Path, client: str
) -> None:
    prog = here / "prog.py"
    prog.write_text(UPLOADED)
    (here / "helper_mod.py").write_text("VALUE = 'helper sent'\n")
    (here / "data.txt").write_text("data sent\n")
    assert not machines.cluster["hprivate"].own(prog).exists()

    proc = run_scoop(
        machines,
        prog,
        "--hosts",
        "hprivate",
        "hprivate",
        "h1",
        "--path",
        str(here),
        "--upload-file",
        str(here / "helper_mod.py"),
        "--upload-file",
        str(here / "data.txt"),
        env=CLIENTS[client],
    )

    got = result_of(proc)
    rows = got["rows"]
    assert [r[0] for r in rows] == [i * i for i in range(40)]
    assert {tuple(r[1:3]) for r in rows} == {("helper sent", "data sent")}
    private, h1 = machines.marker("hprivate"), machines.marker("h1")
    # As in SCOOP the first host runs the program itself: from what it was sent.
    root_dir, root_mode, root_host = got["root"]
    assert root_host == private
    sent = {r[3] for r in rows if r[5] == private} | {root_dir}
    assert {r[5] for r in rows} == {private, h1}
    # h1 sees the program where it is: nothing is sent there.
    assert {r[3] for r in rows if r[5] == h1} == {str(here)}
    for directory in sent:
        assert os.path.basename(directory).startswith("scoop-upload-"), directory
    assert {r[4] for r in rows if r[5] == private} == {"0o700"} and root_mode == "0o700"
    # The run is over: what was sent is gone from the host, and nothing runs there.
    for directory in sent:
        assert not machines.cluster["hprivate"].own(directory).exists(), directory
    assert machines.leftovers() == {}


REPLACED = """
import json, os, time
import scoop
from scoop import futures

def who(i):
    time.sleep(0.05)
    flag = os.path.join(os.path.dirname(os.path.abspath(__file__)), "killed")
    if scoop.worker == "worker-1" and not os.path.exists(flag):
        open(flag, "w").close()
        os.kill(os.getpid(), 9)
    return [scoop.worker, os.path.dirname(os.path.abspath(__file__))]

if __name__ == "__main__":
    seen = {}
    deadline = time.time() + 60
    while "worker-3" not in seen and time.time() < deadline:
        seen.update(futures.map(who, range(8)))
    print("RESULT " + json.dumps(seen), flush=True)
"""


def test_a_worker_that_replaces_a_dead_one_runs_what_was_sent_too(
    machines: Machines, here: Path
) -> None:
    prog = here / "prog.py"
    prog.write_text(REPLACED)

    proc = run_scoop(machines, prog, "--hosts", "hprivate", "hprivate", "--upload")

    seen = result_of(proc)
    assert "worker-1 exited with status -9; worker-3 replaces it" in proc.stderr, proc.stderr
    # worker-3 imported the program from where its host's supervisor put it.
    sent = Path(seen["worker-3"])
    assert sent.parent == machines.cluster["hprivate"].temporary, seen
    assert sent.name.startswith("scoop-upload-"), seen
    assert machines.leftovers() == {}


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "killed"])
def test_what_was_sent_goes_when_the_launcher_is_stopped_or_killed(
    machines: Machines, here: Path, how: signal.Signals
) -> None:
    prog = here / "prog.py"
    prog.write_text(NAPPING)
    private = machines.cluster["hprivate"]
    temporary = private.own(private.temporary)
    before = set(temporary.glob("scoop-upload-*"))
    argv = [sys.executable, "-m", "scoop", "--broker-hostname", machines.here, "--upload"]
    run = checks.start_piped([*argv, "--hosts", "hprivate", "hprivate", str(prog)], machines.env)
    try:
        assert run.stdout is not None
        assert run.stdout.readline().strip() == "READY"
        # The program runs there (its first host), and so do the workers:
        # each of the two supervisors has its own copy.
        sent = set(temporary.glob("scoop-upload-*")) - before
        assert len(sent) == 2, sent
        run.send_signal(how)
        run.wait(30)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    checks.wait_for(
        lambda: not any(d.exists() for d in sent), f"{sent} removed from hprivate", 15.0
    )
    assert machines.leftovers() == {}


def test_a_host_that_does_not_see_the_program_fails_the_start_before_any_worker(
    machines: Machines, here: Path
) -> None:
    started = here.parent / f"{here.name}-imported"
    prog = here / "prog.py"
    prog.write_text(f"open({str(started)!r}, 'a').close()\n" + PROGRAM)

    proc = run_scoop(machines, prog, "--hosts", "h1", "hprivate", "h2", timeout=60)

    assert (
        f"hprivate: the host does not see {prog}: use a shared file system, copy it there, "
        "or run with --upload [--upload-file FILE]"
    ) in refused(machines, proc)
    # No worker started anywhere, not even on the hosts that see the program.
    assert not started.exists()


def test_a_stale_copy_on_a_host_is_reported_and_upload_replaces_it(
    machines: Machines, here: Path
) -> None:
    prog = here / "prog.py"
    prog.write_text(PROGRAM)
    stale = machines.cluster["hstale"].own(prog)
    stale.parent.mkdir(parents=True)
    # The same size, another content: only the content tells them apart.
    stale.write_text(PROGRAM.replace("i * i", "i + i"))
    assert stale.stat().st_size == prog.stat().st_size

    proc = run_scoop(machines, prog, "--hosts", "h1", "hstale", timeout=60)

    said = refused(machines, proc)
    assert f"hstale: {prog} there is not the same as here (a stale copy?)" in said
    assert "or run with --upload" in said

    proc = run_scoop(machines, prog, "--hosts", "h1", "hstale", "hstale", "--upload")

    got = result_of(proc)
    assert got["squares"] == [i * i for i in range(60)]
    assert machines.marker("hstale") in got["hosts"]
    assert "i + i" in stale.read_text()  # the host's own copy is left as it was
    assert machines.leftovers() == {}


def test_a_host_whose_temporary_directory_is_full_fails_the_start_by_name(
    machines: Machines, here: Path
) -> None:
    prog = here / "prog.py"
    prog.write_text(PROGRAM)
    (here / "big.dat").write_bytes(b"x" * 256 * 1024)
    full = machines.cluster["hfull"]

    proc = run_scoop(
        machines, prog, "--hosts", "h1", "hfull", "--upload-file", str(here / "big.dat")
    )

    said = refused(machines, proc)
    assert "hfull: the host could not keep the files sent (--upload): " in said
    assert f"in {full.temporary}: [Errno 28] No space left on device" in said
    assert "is its temporary directory full?" in said
    # What was written before the space ran out is gone too.
    assert list(full.own(full.temporary).iterdir()) == []


def test_an_upload_file_missing_here_is_refused_before_any_host_is_reached(
    machines: Machines, here: Path
) -> None:
    prog = here / "prog.py"
    prog.write_text(PROGRAM)
    missing = here / "no-such-data.txt"

    proc = run_scoop(machines, prog, "--hosts", "hprivate", "--upload-file", str(missing))

    assert f"--upload-file {missing}: no such file here" in refused(machines, proc)


@pytest.mark.parametrize("client", CLIENTS)
def test_a_login_that_prints_breaks_nothing(machines: Machines, here: Path, client: str) -> None:
    prog = here / "prog.py"
    prog.write_text(PROGRAM)

    proc = run_scoop(machines, prog, "--hosts", "hnoisy", "hnoisy", "h2", env=CLIENTS[client])

    got = result_of(proc)
    assert got["squares"] == [i * i for i in range(60)]
    assert got["root"] == machines.marker("hnoisy")
    assert machines.marker("hnoisy") in got["hosts"]
    # What the login printed is the login's, not the program's output.
    for text in ("noisy login", "login warning", "binary junk"):
        assert text not in proc.stdout and text not in proc.stderr, text
    assert machines.leftovers() == {}


def test_the_noisy_host_login_does_print(machines: Machines) -> None:
    """What makes the test above worth its name: ssh itself shows the noise."""
    login = subprocess.run(
        [
            "ssh",
            "-F",
            machines.env["SCOOP_LAUNCHER_SSH_SSH_CONFIG"],
            "-o",
            f"UserKnownHostsFile={machines.env['SCOOP_LAUNCHER_SSH_KNOWN_HOSTS']}",
            "-o",
            "BatchMode=yes",
            "hnoisy",
            "echo the-command",
        ],
        capture_output=True,
        timeout=30,
    )
    assert login.stdout.startswith(b"Welcome to a noisy login\n"), login
    assert login.stdout.endswith(b"binary junk without a newlinethe-command\n"), login
    assert b"a login warning on stderr" in login.stderr, login


# -- docs/remote-hosts.md: its examples, run on the test hosts ------------------------

DOC = Path(__file__).resolve().parents[2] / "docs" / "remote-hosts.md"
WHERE = "/home/ana/work"
"""The directory the page's examples live in; the test's own stands for it."""


def doc_blocks(kind: str) -> list[str]:
    return re.findall(rf"^```{kind}\n(.*?)^```$", DOC.read_text(), re.S | re.M)


def doc_files() -> dict[str, str]:
    """The files the page writes: each block whose first line is ``# NAME``."""
    files = {}
    for kind in ("python", "text"):
        for block in doc_blocks(kind):
            name = re.match(r"# ([\w.]+)\n", block)
            if name:
                files[name[1]] = block
    return files


def doc_commands() -> list[tuple[str, list[str]]]:
    """Each command the page runs (``$ ...``), with the lines it shows after it."""
    return [
        (block.splitlines()[0][2:], block.splitlines()[1:])
        for block in doc_blocks("console")
        if block.startswith("$ ")
    ]


def run_doc_command(
    machines: Machines, here: Path, command: str, hosts: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    words = [hosts.get(w, w) for w in command.split()]
    assert words[:3] == ["python", "-m", "scoop"], command
    argv = [sys.executable, "-m", "scoop", "--broker-hostname", machines.here, *words[3:]]
    proc = subprocess.run(
        argv, cwd=here, env=machines.env, capture_output=True, text=True, timeout=180
    )
    assert machines.leftovers() == {}
    return proc


def test_the_docs_examples_run_on_a_host_that_does_not_see_them(
    machines: Machines, here: Path
) -> None:
    for name, text in doc_files().items():
        (here / name).write_text(text)
    (refused, said), (uploading, shown) = doc_commands()

    proc = run_doc_command(machines, here, refused, {"node1": "h1", "node2": "hprivate"})

    assert proc.returncode != 0
    expected = said[0].replace("node2", "hprivate").replace(WHERE, str(here))
    assert proc.stderr.strip().splitlines()[-1] == expected, proc.stderr

    proc = run_doc_command(machines, here, uploading, {"node1": "hprivate", "node2": "h1"})

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == shown

    # The same, from the configuration file instead of the flags.
    [toml] = doc_blocks("toml")
    (here / "scoop.toml").write_text(toml.replace(WHERE, str(here)))

    proc = run_doc_command(machines, here, refused, {"node1": "hprivate", "node2": "h1"})

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == shown


def test_the_docs_quiet_bashrc_is_quiet_when_not_interactive(tmp_path: Path) -> None:
    [guard] = doc_blocks("bash")
    bashrc = tmp_path / "bashrc"
    bashrc.write_text(guard + "echo a greeting\n")

    quiet = subprocess.run(["bash", "-c", f". {bashrc}; echo the command"], capture_output=True)
    talking = subprocess.run(["bash", "-ic", f". {bashrc}"], capture_output=True)

    assert quiet.stdout == b"the command\n"
    assert b"a greeting" in talking.stdout
