"""SCOOP's ``scoop.futures``: re-exports :mod:`scoop_core.futures`."""

from scoop_core.futures import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    CancelledError,
    Future,
    TimeoutError,
    as_completed,
    map,
    map_as_completed,
    mapReduce,
    mapScan,
    options,
    shutdown,
    submit,
    wait,
)

__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "CancelledError",
    "Future",
    "TimeoutError",
    "as_completed",
    "map",
    "mapReduce",
    "mapScan",
    "map_as_completed",
    "options",
    "shutdown",
    "submit",
    "wait",
]
