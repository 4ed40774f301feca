"""Errors users can catch, each with a message that names the problem and the way out.

``TimeoutError`` and ``CancelledError`` are the ``concurrent.futures`` ones,
re-exported here so that code written for PEP 3148 catches ours too.
"""

from __future__ import annotations

from concurrent.futures import BrokenExecutor, CancelledError, TimeoutError

__all__ = [
    "BrokenPool",
    "CancelledError",
    "ConfigError",
    "ConstantError",
    "ConstantNotFound",
    "LaunchError",
    "NotLaunchedError",
    "PluginError",
    "ProtocolError",
    "RemoteError",
    "ScoopError",
    "SerializationError",
    "TimeoutError",
    "TransportClosed",
    "UsageError",
]


PROGRAM_IMPORT_FAILED = 3
"""Exit status of a worker that could not import the program. The launcher
does not replace such a worker: its replacement would fail the same way."""


WORKER_RETIRED = 75
"""Exit status of a worker that ran its ``max_tasks_per_child`` futures,
handed back those it held and left: the run replaces it, and this counts
neither as a loss nor against ``max_restarts``. (75 is ``EX_TEMPFAIL``:
"try again", which a new worker does.)"""

INITIALIZER_FAILED = 76
"""Exit status of a worker whose Executor ``initializer`` raised. It is not
replaced (its replacement would fail the same way): the pool is broken,
as a ``ProcessPoolExecutor`` is."""

EXIT_REASONS = {
    PROGRAM_IMPORT_FAILED: "program import failed",
    WORKER_RETIRED: "retired",
    INITIALIZER_FAILED: "initializer failed",
}
"""What a worker that ends with one of the statuses above says in its last
report (``leaving``). A future may end its worker with any status
(``os._exit(3)``): the launcher believes a status only with the worker's word,
and counts any other exit as a death."""


class ScoopError(Exception):
    """Base class of every error scoop-core raises on its own account."""


class UsageError(ScoopError):
    """A command line, flag or value the launcher cannot accept."""


class ConfigError(ScoopError):
    """A configuration file, environment variable or setting is wrong.

    The message names the key, where it came from (``file:line`` or the
    environment variable) and what was expected."""


class PluginError(ScoopError):
    """A plugin cannot be found, loaded or chosen."""


class LaunchError(ScoopError):
    """Workers or the broker could not be started."""


class NotLaunchedError(ScoopError):
    """The API needs a running pool and there is none."""


class ProtocolError(ScoopError):
    """A message or a state transition broke the protocol.

    Raised by the state machines for an event that is illegal in the current
    state; the state is left unchanged."""


class TransportClosed(ScoopError):
    """A transport endpoint was used after it was closed."""


class SerializationError(ScoopError, TypeError):
    """An object cannot be sent to (or back from) a worker.

    A ``TypeError`` too, since that is what ``pickle`` raises for most
    unpicklable objects and what callers already catch."""


class RemoteError(ScoopError):
    """Stands in for an exception raised in a worker that could not itself be
    sent back (its class cannot be pickled or imported on this side)."""


class ConstantError(ScoopError, TypeError):
    """A shared constant was defined twice (a ``TypeError``, as SCOOP raised,
    so SCOOP's ``except TypeError:`` still catches it)."""

    @staticmethod
    def defined_twice(name: str) -> str:
        """The message for a second definition of ``name``, wherever it is refused."""
        return f"shared constant {name!r} is already defined; a constant is defined once per run"


class ConstantNotFound(ScoopError, KeyError):
    """``shared.getConst`` found no constant of that name within its timeout."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class WorkerLostError(ScoopError):
    """A future's worker died and the future could not be run elsewhere."""


class BrokenPool(ScoopError, BrokenExecutor):
    """A :class:`scoop_core.Executor` cannot run futures any more: a worker's
    ``initializer`` raised, or every worker has exited and none replaces them.

    A ``concurrent.futures.BrokenExecutor`` (as ``ProcessPoolExecutor``'s
    ``BrokenProcessPool`` is): its pending futures fail with it, and so
    does every later ``submit``."""
