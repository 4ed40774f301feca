"""What the launcher needs from a way of reaching a host, whatever the client.

Two clients implement it: the built-in one (:mod:`.paramiko_client`) and an
external ``ssh``/``rsh`` program (:mod:`.program_client`). A
:class:`Connection` is one logged-in host; a :class:`Session` is one command
running there, with its standard streams as byte streams.
"""

from __future__ import annotations

import abc
from typing import Any

from scoop_core.hosts import Host
from scoop_launcher_ssh.parallel import Attempt


class Session(abc.ABC):
    """A command running on a host.

    ``stdin`` is a binary file (closing it sends end-of-file to the command);
    ``stdout`` is a binary file iterable by lines; ``stderr`` is iterable by
    lines (bytes)."""

    stdin: Any
    stdout: Any
    stderr: Any

    @abc.abstractmethod
    def wait(self, timeout: float) -> int | None:
        """The command's exit status, waiting up to ``timeout`` s; None if it still runs."""

    @abc.abstractmethod
    def error_output(self) -> str:
        """What the command wrote on stderr so far, without waiting (once it has exited)."""


class Connection(abc.ABC):
    """A host the launcher has logged in to. Everything it opens is registered
    with the :class:`Attempt` given to :meth:`Client.open`, which closes it."""

    @abc.abstractmethod
    def forward(self, host: str, port: int) -> None:
        """Ask for a port on the remote host's loopback that leads to
        ``host:port`` as seen from here (an SSH remote forward). Called
        before :meth:`execute`; :meth:`forwarded` says which port it got."""

    @abc.abstractmethod
    def forwarded(self, session: Session) -> dict[tuple[str, int], int]:
        """The remote port of each forward, by ``(host, port)``, once
        ``session`` (the one :meth:`execute` started) has said it runs."""

    @abc.abstractmethod
    def execute(self, command: str) -> Session:
        """Start ``command`` (a shell command line) on the host."""


class Client(abc.ABC):
    """Logs in to hosts."""

    program = ""
    """The external program that logs in (its exit status 255 is its own
    failure, not the command's), or empty for the built-in client."""

    @abc.abstractmethod
    def open(self, host: Host, attempt: Attempt) -> Connection:
        """Log in to ``host``; raise :class:`scoop_core.errors.LaunchError`
        naming it and the cause. ``attempt.stage`` says what is being done."""
