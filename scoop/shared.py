"""SCOOP's ``scoop.shared``: re-exports :mod:`scoop_core.shared`."""

from scoop_core.shared import get_const, getConst, set_const, setConst

__all__ = ["getConst", "get_const", "setConst", "set_const"]
