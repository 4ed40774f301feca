"""Run calls on the workers of the run: ``submit``, ``map`` and their relatives.

SCOOP's ``scoop.futures``, with PEP 3148 semantics where SCOOP is vague.
Outside a launched program (``python prog.py`` with no ``scoop_core.run()``
open), ``map`` and its relatives run serially with one warning, and
``submit`` raises :class:`~scoop_core.errors.NotLaunchedError`, saying how
to launch. The guide is in "Writing a program".

(The names are re-exported from ``scoop_core.futures``, whose ``__all__``
this module's is, so the two lists cannot drift apart.)
"""

from scoop_core import futures as _core_futures
from scoop_core.futures import *  # noqa: F403

__all__ = _core_futures.__all__
