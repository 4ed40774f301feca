"""SLURM's compressed node lists and task counts, read in pure Python (no ``scontrol``).

SLURM hands a job its nodes in environment variables written in its own
compact notation; this module turns them into :class:`~scoop_core.hosts.Host`
records. Nothing here does I/O: every function takes strings (or an
environment mapping) and returns values, so tests drive it directly.

Node lists (``SLURM_JOB_NODELIST``)::

    node[01-04,07],gpu[1-2],login     node01 node02 node03 node04 node07 gpu1 gpu2 login
    rack[1-2]-node[01-02]             rack1-node01 rack1-node02 rack2-node01 rack2-node02

- Items are separated by commas outside brackets; a bracket holds
  comma-separated numbers and ``lo-hi`` ranges.
- Zero padding is kept: the width of a range is the width of its lower
  bound as written (``[08-10]`` gives 08 09 10).
- Several bracket groups in one item multiply out, the first outermost.

Task counts (``SLURM_TASKS_PER_NODE``, ``SLURM_JOB_CPUS_PER_NODE``)::

    2(x3),1                           2 2 2 1

Malformed text raises ``ValueError`` naming the offending part.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

from scoop_core.hosts import Host

__all__ = [
    "MAX_NODES",
    "allocation_from_env",
    "expand_nodelist",
    "expand_tasks_per_node",
]

MAX_NODES = 1 << 20
"""The most names one node list may expand to: a typo like ``n[0-999999999]``
is an error, not a few gigabytes of strings."""

_LITERAL = re.compile(r"[A-Za-z0-9_.\-]*\Z")
_RANGE = re.compile(r"(?P<lo>\d+)(?:-(?P<hi>\d+))?\Z")
_COUNT = re.compile(r"(?P<count>\d+)(?:\(x(?P<times>\d+)\))?\Z")
_T = TypeVar("_T")


def expand_nodelist(text: str) -> list[str]:
    """Every node name in SLURM's compressed ``text``, in order (see the module docstring).

    ``""`` gives ``[]``. Raises ``ValueError`` naming the bad part for
    unbalanced or nested brackets, empty items or ranges, a range whose end
    is below its start, or characters that cannot be in a node name."""
    names: list[str] = []
    for item in _split_items(text):
        names += _expand_item(item, text)
        if len(names) > MAX_NODES:
            raise ValueError(f"node list {text!r} names more than {MAX_NODES} nodes")
    return names


def _split_items(text: str) -> Iterator[str]:
    """The top-level items of a node list: split at commas outside brackets."""
    if not text.strip():
        return
    depth = 0
    start = 0
    for i, char in enumerate(text):
        if char == "[":
            if depth:
                raise ValueError(f"node list {text!r}: nested '[' at position {i}")
            depth = 1
        elif char == "]":
            if not depth:
                raise ValueError(f"node list {text!r}: ']' without '[' at position {i}")
            depth = 0
        elif char == "," and not depth:
            yield _item(text, start, i)
            start = i + 1
    if depth:
        raise ValueError(f"node list {text!r}: '[' at position {text.rindex('[')} is never closed")
    yield _item(text, start, len(text))


def _item(text: str, start: int, end: int) -> str:
    item = text[start:end].strip()
    if not item:
        raise ValueError(f"node list {text!r}: empty item at position {start}")
    return item


def _expand_item(item: str, text: str) -> list[str]:
    # re.split with a group keeps the bracket contents at the odd positions.
    parts = re.split(r"\[([^\]]*)\]", item)
    choices: list[list[str]] = []
    for index, part in enumerate(parts):
        if index % 2 == 0:
            if not _LITERAL.match(part):
                raise ValueError(
                    f"node list {text!r}: {part!r} in {item!r} holds characters a node "
                    "name cannot have"
                )
            choices.append([part])
        else:
            choices.append(_expand_ranges(part, item, text))
    total = 1
    for options in choices:
        total *= len(options)
    if total > MAX_NODES:
        raise ValueError(f"node list {text!r}: {item!r} names more than {MAX_NODES} nodes")
    return ["".join(combo) for combo in itertools.product(*choices)]


def _expand_ranges(ranges: str, item: str, text: str) -> list[str]:
    numbers: list[str] = []
    for piece in ranges.split(","):
        match = _RANGE.match(piece.strip())
        if not match:
            raise ValueError(
                f"node list {text!r}: [{ranges}] in {item!r}: {piece!r} is not a number "
                "or a 'lo-hi' range"
            )
        lo_text, hi_text = match["lo"], match["hi"]
        lo = int(lo_text)
        hi = int(hi_text) if hi_text is not None else lo
        if hi < lo:
            raise ValueError(
                f"node list {text!r}: [{ranges}] in {item!r}: range {piece!r} ends before it starts"
            )
        if hi - lo >= MAX_NODES:
            raise ValueError(
                f"node list {text!r}: range {piece!r} names more than {MAX_NODES} nodes"
            )
        width = len(lo_text)
        numbers += [str(n).zfill(width) for n in range(lo, hi + 1)]
    return numbers


def expand_tasks_per_node(text: str) -> list[int]:
    """``"2(x3),1"`` → ``[2, 2, 2, 1]``: SLURM's per-node counts, one per node.

    Raises ``ValueError`` naming an item that is not ``N`` or ``N(xM)``."""
    counts: list[int] = []
    for piece in text.split(","):
        match = _COUNT.match(piece.strip())
        if not match:
            raise ValueError(
                f"task counts {text!r}: {piece!r} is not 'N' or 'N(xM)' (N per node, M nodes)"
            )
        times = int(match["times"]) if match["times"] is not None else 1
        if times < 1:
            raise ValueError(f"task counts {text!r}: {piece!r} repeats a count {times} times")
        if len(counts) + times > MAX_NODES:
            raise ValueError(f"task counts {text!r} cover more than {MAX_NODES} nodes")
        counts += [int(match["count"])] * times
    return counts


def allocation_from_env(environ: Mapping[str, str]) -> list[Host] | None:
    """The hosts of the SLURM job described by ``environ``, or None outside a job.

    Nodes come from ``SLURM_JOB_NODELIST`` (or the older ``SLURM_NODELIST``);
    the workers per node from the first of these that fits:

    1. ``SLURM_TASKS_PER_NODE``, if it covers exactly the job's nodes (inside
       a job step it describes the step, and may not);
    2. ``SLURM_NTASKS`` (or ``SLURM_NPROCS``) spread evenly, earlier nodes
       taking the remainder, as SLURM's block distribution does;
    3. ``SLURM_JOB_CPUS_PER_NODE``, if it covers the job's nodes;
    4. ``SLURM_CPUS_ON_NODE`` on every node;
    5. none: the count is left to the core (one worker per core).

    Nodes given no worker are left out. Raises ``ValueError`` (naming the
    variable) if a variable is malformed."""
    variable = "SLURM_JOB_NODELIST" if environ.get("SLURM_JOB_NODELIST") else "SLURM_NODELIST"
    if not _job_id(environ) or not environ.get(variable):
        return None
    nodes = _read(expand_nodelist, variable, environ[variable])
    counts = _counts(environ, len(nodes))
    if counts is None:
        return [Host(user=None, name=name) for name in nodes]
    return [
        Host(user=None, name=name, count=count)
        for name, count in zip(nodes, counts, strict=True)
        if count > 0
    ]


def _job_id(environ: Mapping[str, str]) -> str | None:
    return environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID")


def _counts(environ: Mapping[str, str], nodes: int) -> list[int] | None:
    per_node = environ.get("SLURM_TASKS_PER_NODE")
    if per_node:
        counts = _read(expand_tasks_per_node, "SLURM_TASKS_PER_NODE", per_node)
        if len(counts) == nodes:
            return counts
    for name in ("SLURM_NTASKS", "SLURM_NPROCS"):
        if environ.get(name):
            total = _read(_whole, name, environ[name])
            return [total // nodes + (1 if i < total % nodes else 0) for i in range(nodes)]
    cpus = environ.get("SLURM_JOB_CPUS_PER_NODE")
    if cpus:
        counts = _read(expand_tasks_per_node, "SLURM_JOB_CPUS_PER_NODE", cpus)
        if len(counts) == nodes:
            return counts
    if environ.get("SLURM_CPUS_ON_NODE"):
        return [_read(_whole, "SLURM_CPUS_ON_NODE", environ["SLURM_CPUS_ON_NODE"])] * nodes
    return None


def _whole(text: str) -> int:
    if not text.strip().isdigit():
        raise ValueError(f"{text!r} is not a whole number")
    return int(text)


def _read(parse: Callable[[str], _T], variable: str, value: str) -> _T:
    try:
        return parse(value)
    except ValueError as exc:
        raise ValueError(f"${variable}: {exc}") from None
