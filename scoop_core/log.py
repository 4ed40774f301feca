"""``scoop.logger``: log records that say when, which worker and which module.

The launcher owns the console, so the library never prints: it logs under
``scoop.*``. In the processes of a launched run (and in the launcher) this
module gives the ``scoop`` logger one handler with SCOOP's layout plus the
worker's name; a program that merely imports the library (an embedding
program) keeps its own logging setup.
"""

from __future__ import annotations

import logging
import sys

from scoop_core import context

logger = logging.getLogger("scoop")

FORMAT = "[%(asctime)s] %(worker)-9s %(module)-12s %(levelname)-7s %(message)s"


class _WorkerName(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = context.worker or "-"
        return True


def configure(level: str | int = "WARNING", stream: object = None) -> None:
    """Give the ``scoop`` logger its handler (once) and set its level."""
    if not any(getattr(h, "_scoop", False) for h in logger.handlers):
        handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
        handler.setFormatter(logging.Formatter(FORMAT))
        handler.addFilter(_WorkerName())
        handler._scoop = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level if isinstance(level, int) else level.upper())


def reset() -> None:
    """Take away the handlers :func:`configure` and :func:`add_file` gave:
    in a fork of the launcher, whose handlers (a ``--log`` file) are not
    its own, before it configures its logging as a new process would."""
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


def add_file(path: str) -> logging.Handler:
    """Send the ``scoop`` logger's records to ``path`` too (appended), in
    the same layout; returns the handler so the caller can remove it."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(_WorkerName())
    logger.addHandler(handler)
    return handler
