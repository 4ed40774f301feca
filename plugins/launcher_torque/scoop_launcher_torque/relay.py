"""``python -m scoop_launcher_torque.relay TICKET``: a node's supervisor, connected back to the launcher.

Torque's ``pbsdsh`` and PBS's ``pbs_tmrsh`` start a process on a node of the
job through the Task Manager, which passes no stdin (and sends output to
the job's output file), so the plan and the run's key cannot travel the way
they do through ``srun``. Instead the launcher listens on a port and writes
a *ticket* (its host, that port and a one-time token) to a file only the
user can read, in a directory the nodes share; only the file's path goes on
the command line. This relay, started on the node:

1. reads the ticket and deletes it. It uses a ticket only if it is a
   regular file (not a symbolic link: it is opened with ``O_NOFOLLOW``) of
   the user's own with no permission for group or others, as the launcher
   writes it: whoever could write a ticket the relay accepts could make it
   connect to them and receive the plan, with the run's key;
2. opens two connections back to the launcher, each starting with
   ``TOKEN stdio`` / ``TOKEN stderr``;
3. makes the first one its stdin and stdout and the second its stderr, and
   becomes the supervisor (:func:`scoop_core.host_supervisor.supervise`), which reads
   its plan from the launcher over the connection. When the launcher closes
   it (or dies), the supervisor's stdin ends and it kills its workers.

Errors before the connection go to stdout, which ``pbsdsh -o`` passes back
to the launcher.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys

from scoop_core.host_supervisor import supervise
from scoop_core.run_keys import read_private_file

STREAMS = ("stdio", "stderr")
"""The connections a relay opens, in order, each announced by its name after the token."""

CONNECT_TIMEOUT = 30.0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    # The Task Manager may start us without some of fds 0-2: fill them, so
    # that the connections below do not land on them.
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.dup2(os.open(os.devnull, os.O_RDWR), fd)
    if len(args) != 1:
        _say("usage: python -m scoop_launcher_torque.relay TICKET (run by the torque launcher)")
        return 2
    path = args[0]
    try:
        text = read_private_file(path, "the launcher's ticket", follow=False)
    except ValueError as exc:
        _say(f"refused the launcher's ticket: {exc}")
        return 2
    finally:
        with contextlib.suppress(OSError):  # one use only, whatever happens
            os.unlink(path)
    try:
        ticket = json.loads(text)
        host, port, token = str(ticket["host"]), int(ticket["port"]), str(ticket["token"])
    except (ValueError, KeyError, TypeError) as exc:
        _say(f"cannot read the launcher's ticket {path}: {exc}")
        return 2
    try:
        conns = [_connect(host, port, f"{token} {stream}\n") for stream in STREAMS]
    except OSError as exc:
        _say(f"cannot connect back to the launcher at {host}:{port}: {exc}")
        return 1
    stdio, errors = conns
    if sys.stdout is not None:
        sys.stdout.flush()
    os.dup2(stdio.fileno(), 0)
    os.dup2(stdio.fileno(), 1)
    os.dup2(errors.fileno(), 2)
    stdio.close()
    errors.close()
    # Python saw no fd 0-2 at startup if TM gave none (sys.stdin is then None): rebuild them.
    sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115
    sys.stdout = open(1, "w", encoding="utf-8", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", encoding="utf-8", buffering=1, closefd=False)  # noqa: SIM115
    return supervise()


def _connect(host: str, port: int, hello: str) -> socket.socket:
    conn = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
    conn.settimeout(None)
    conn.sendall(hello.encode())
    return conn


def _say(text: str) -> None:
    print(f"scoop relay on {socket.gethostname()}: {text}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
