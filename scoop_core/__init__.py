"""scoop-core: Python futures spread over the cores of one machine and the nodes of a cluster.

The core holds the futures API (:mod:`scoop_core.futures`,
:mod:`scoop_core.shared`), the state machines and the broker; transports,
serializers and launchers are plugins (:mod:`scoop_core.plugins`). Programs
written for SCOOP import the facade package ``scoop`` instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scoop_core.executor import Executor

__version__ = "0.1.0"

__all__ = ["Executor", "__version__", "run"]


def run(workers: int | None = None, **options: Any) -> Executor:
    """Start a run from any Python program or notebook, without the launcher.

    ``with scoop_core.run(workers=4) as run:`` (or ``run = scoop_core.run()``
    in a notebook cell, and ``run.shutdown()`` at the end): while it is
    open, ``scoop.futures`` and ``scoop.shared`` work as in a program
    started by ``python -m scoop``. It is a :class:`scoop_core.Executor`,
    and takes the same keyword arguments (``hosts=``, ``transport=``,
    ``config=``...). In IPython and Jupyter, a cell that is interrupted
    cancels the futures it submitted (:mod:`scoop_core.notebook`)."""
    from scoop_core.executor import Executor

    return Executor(workers=workers, **options)


def __getattr__(name: str) -> Any:
    # Executor pulls in the broker and the plugin manager: only on demand.
    if name == "Executor":
        from scoop_core.executor import Executor

        return Executor
    raise AttributeError(f"module 'scoop_core' has no attribute {name!r}")
