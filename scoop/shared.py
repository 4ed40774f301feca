"""Constants shared with every worker of the run: ``setConst`` and ``getConst``.

SCOOP's ``scoop.shared`` (re-exported from ``scoop_core.shared``). A
constant is defined once per run, from any process; it reaches every worker
before any future submitted after ``setConst`` returns.
"""

from scoop_core.shared import get_const, getConst, set_const, setConst

__all__ = ["getConst", "get_const", "setConst", "set_const"]
