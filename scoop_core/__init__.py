"""scoop-core: Python futures spread over the cores of one machine and the nodes of a cluster.

The core holds the futures API (:mod:`scoop_core.futures`,
:mod:`scoop_core.shared`), the state machines and the broker; transports,
serializers and launchers are plugins (:mod:`scoop_core.plugins`). Programs
written for SCOOP import the facade package ``scoop`` instead.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["Executor", "__version__"]


def __getattr__(name: str) -> Any:
    # Executor pulls in the broker and the plugin manager: only on demand.
    if name == "Executor":
        from scoop_core.executor import Executor

        return Executor
    raise AttributeError(f"module 'scoop_core' has no attribute {name!r}")
