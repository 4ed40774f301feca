"""SCOOP's ``scoop.futures``: re-exports :mod:`scoop_core.futures`.

The names are those of ``scoop_core.futures.__all__``, so the two lists
cannot drift apart.
"""

from scoop_core import futures as _core_futures
from scoop_core.futures import *  # noqa: F403

__all__ = _core_futures.__all__
