"""A Grid Engine parallel job on this machine: a ``$PE_HOSTFILE`` and a stand-in ``qrsh`` first on PATH.

The stand-in has ``qrsh -inherit``'s command line (``qrsh -inherit [opts]
host command...``) and behaviour: the host must be one of the job's, the
command words are joined and run through a shell again (as sge_shepherd
does, so they must be quoted), and stdin, stdout and stderr pass through.
It refuses a host that is not the job's, or one named in
``$STANDIN_DOWN_HOSTS`` (as when its execution daemon does not answer).
It really runs the command, here.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def _load_checks() -> ModuleType:
    path = Path(__file__).parents[1] / "launcher_slurm" / "scheduler_checks.py"
    spec = importlib.util.spec_from_file_location("scheduler_checks", path)
    assert spec is not None and spec.loader is not None
    module = sys.modules.get("scheduler_checks") or importlib.util.module_from_spec(spec)
    if "scheduler_checks" not in sys.modules:
        sys.modules["scheduler_checks"] = module
        spec.loader.exec_module(module)
    return module


checks = _load_checks()

QRSH = '''
    """Stand-in for Grid Engine's qrsh -inherit (see tests/plugins/launcher_sge/conftest.py)."""
    import os, sys

    args = sys.argv[1:]
    if args[:1] != ["-inherit"]:
        sys.exit("qrsh stand-in: only qrsh -inherit is emulated")
    args = args[1:]
    while args and args[0].startswith("-"):
        args = args[1:]  # -nostdin, -verbose...: accepted, ignored
    if len(args) < 2:
        sys.exit("usage: qrsh -inherit [options] host command [args]")
    host, command = args[0], args[1:]
    if "JOB_ID" not in os.environ:
        sys.exit("error: JOB_ID is not set")
    with open(os.environ["PE_HOSTFILE"]) as fh:
        hosts = [line.split()[0] for line in fh if line.strip()]
    if host not in hosts:
        sys.exit(f"error: host {host} is not a member of job {os.environ['JOB_ID']}'s PE")
    if host in os.environ.get("STANDIN_DOWN_HOSTS", "").split():
        sys.exit(
            f"error: executing task of job {os.environ['JOB_ID']} failed: "
            f"execution daemon on host \\"{host}\\" didn't accept task"
        )
    os.environ["HOSTNAME"] = host
    os.execvp("sh", ["sh", "-c", " ".join(command)])
'''


class SgeJob:
    """A parallel job on hosts ``node1`` (2 slots) and ``node2`` (1 slot), qrsh on PATH."""

    def __init__(self, tmp_path: Path) -> None:
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        checks.write_script(self.bin / "qrsh", QRSH)
        self.hostfile = tmp_path / "pe_hostfile"
        self.hostfile.write_text("node1 2 all.q@node1 UNDEFINED\nnode2 1 all.q@node2 UNDEFINED\n")
        self.env = checks.job_environment(
            self.bin,
            {"JOB_ID": "17", "PE_HOSTFILE": str(self.hostfile), "NSLOTS": "3", "PE": "scoop"},
        )
        self.mark = self.env[checks.MARK_VAR]
