"""What a program can ask about the run it is part of (``scoop.IS_ORIGIN`` and friends).

Set once by the process's bootstrap, before the user's program is imported;
read through the ``scoop`` facade.
"""

from __future__ import annotations

IS_ORIGIN = False
"""True in the root program (the process that runs ``if __name__ == '__main__'``)."""

IS_RUNNING = False
"""True in any process of a launched run (root or worker)."""

worker: str | None = None
"""This process's name in the run: ``"root"``, ``"worker-3"``; None outside a run."""

BROKER: str | None = None
"""The address of the run's broker; None outside a run."""

DEBUG = False
"""True when the run was launched with ``--debug`` (or ``-vv``)."""

SIZE = 0
"""How many workers the run was launched with."""
