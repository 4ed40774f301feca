"""What this process did: counters always, trace events when the run is traced."""

from __future__ import annotations


def expect(count: int) -> None:
    """A map of ``count`` futures started in this process (its length is known)."""
