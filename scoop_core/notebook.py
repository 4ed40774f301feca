"""IPython and Jupyter: a cell that is interrupted cancels the futures it submitted.

The notebook's stop button raises KeyboardInterrupt in the kernel's main
thread, wherever the cell was. A ``futures.map`` being read is closed by it
and cancels the rest of its items on its own; futures the cell submitted
and was waiting on (``submit`` then ``wait``, ``as_completed``) would still
run, and the next cell's work would queue behind them. So, in an IPython
shell, a run remembers which futures were outstanding when each cell
started, and when a cell ends in KeyboardInterrupt it cancels those
submitted since, as Dask's client does for a cell's tasks. Futures already
running finish (a running Python call cannot be stopped from outside
without killing its worker); the run and its workers stay.

Outside IPython nothing is registered: ``watch_cells`` costs one lookup.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scoop_core.runtime import RootRuntime

log = logging.getLogger("scoop.notebook")


def _shell() -> Any:
    """The running IPython shell, or None (IPython is never imported here)."""
    ipython = sys.modules.get("IPython")
    get = getattr(ipython, "get_ipython", None)
    return get() if get is not None else None


class _CellWatch:
    """The pre/post cell callbacks of one run's root runtime."""

    def __init__(self, shell: Any, rt: RootRuntime) -> None:
        self.shell = shell
        self.rt = rt
        self.outstanding: set[int] = set()

    def pre_run_cell(self, info: object = None) -> None:
        self.outstanding = {f.fid for f in self.rt.owned()}

    def post_run_cell(self, result: Any) -> None:
        if not isinstance(getattr(result, "error_in_exec", None), KeyboardInterrupt):
            return
        new = [f.fid for f in self.rt.owned() if f.fid not in self.outstanding]
        if new and not self.rt.closed:
            log.info("the cell was interrupted: cancelling the %d future(s) it submitted", len(new))
            self.rt.cancel_nowait(new)

    def unregister(self) -> None:
        for event in ("pre_run_cell", "post_run_cell"):
            # ValueError: already gone (the shell was reset).
            with contextlib.suppress(ValueError):
                self.shell.events.unregister(event, getattr(self, event))


def watch_cells(rt: RootRuntime) -> _CellWatch | None:
    """In an IPython shell, cancel what an interrupted cell submitted to
    ``rt``; returns the watch (call its ``unregister`` when the run ends),
    or None outside IPython."""
    shell = _shell()
    if shell is None or not hasattr(shell, "events"):
        return None
    watch = _CellWatch(shell, rt)
    shell.events.register("pre_run_cell", watch.pre_run_cell)
    shell.events.register("post_run_cell", watch.post_run_cell)
    return watch
