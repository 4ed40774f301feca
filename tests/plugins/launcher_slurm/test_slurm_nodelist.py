"""SLURM's node lists and task counts, expanded in pure Python, and a job's allocation from its variables."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scoop_launcher_slurm import (
    allocation_from_env,
    expand_nodelist,
    expand_tasks_per_node,
    in_allocation,
)
from scoop_launcher_slurm.nodelist import MAX_NODES

from scoop_core.hosts import Host

# -- node lists ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nodelist", "names"),
    [
        # The forms SLURM's own documentation uses.
        ("lx[15,18,32-33]", ["lx15", "lx18", "lx32", "lx33"]),
        ("linux[00-03]", ["linux00", "linux01", "linux02", "linux03"]),
        ("tux[0-3]", ["tux0", "tux1", "tux2", "tux3"]),
        ("dev0,dev1", ["dev0", "dev1"]),
        ("rack[0-1]_blade[0-2]", [f"rack{r}_blade{b}" for r in "01" for b in "012"]),
        # The example: several items, commas inside brackets, padding kept.
        (
            "node[01-04,07],gpu[1-2],login",
            ["node01", "node02", "node03", "node04", "node07", "gpu1", "gpu2", "login"],
        ),
        ("rack[1-2]-node[01-02]", ["rack1-node01", "rack1-node02", "rack2-node01", "rack2-node02"]),
        ("n[08-11]", ["n08", "n09", "n10", "n11"]),
        ("n[998-1001]", ["n998", "n999", "n1000", "n1001"]),
        ("cn[001-002].cluster.org", ["cn001.cluster.org", "cn002.cluster.org"]),
        ("a[1]", ["a1"]),
        ("single", ["single"]),
        ("", []),
    ],
)
def test_expand_nodelist(nodelist: str, names: list[str]) -> None:
    assert expand_nodelist(nodelist) == names


@pytest.mark.parametrize(
    ("nodelist", "complaint"),
    [
        ("n[1-3", "'[' at position 1 is never closed"),
        ("n1-3]", "']' without '['"),
        ("n[1-[2]]", "nested '['"),
        ("n1,,n2", "empty item at position 3"),
        ("n1,", "empty item"),
        ("n[3-1]", "'3-1' ends before it starts"),
        ("n[1-x]", "'1-x' is not a number or a 'lo-hi' range"),
        ("n[]", "'' is not a number"),
        ("n[1,,2]", "'' is not a number"),
        ("bad host[1-2]", "'bad host' in 'bad host[1-2]' holds characters"),
        ("n[0-99999999]", f"more than {MAX_NODES} nodes"),
        ("a[0-9999]b[0-9999]", f"more than {MAX_NODES} nodes"),
    ],
)
def test_bad_nodelists_name_the_bad_part(nodelist: str, complaint: str) -> None:
    with pytest.raises(ValueError) as caught:
        expand_nodelist(nodelist)
    assert complaint in str(caught.value)
    assert repr(nodelist) in str(caught.value)


# A node list item as a structure: literal, then (bracket, literal) pairs.
literal_start = st.from_regex(r"[a-z][a-z0-9_-]{0,5}", fullmatch=True)
literal_more = st.from_regex(r"[a-z0-9._-]{0,4}", fullmatch=True)
number_range = st.tuples(st.integers(0, 120), st.integers(0, 4), st.integers(1, 4))


@st.composite
def items(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A node list item's text and, built independently, the names it stands for."""
    text = draw(literal_start)
    choices: list[list[str]] = [[text]]
    for _ in range(draw(st.integers(0, 2))):
        ranges = draw(st.lists(number_range, min_size=1, max_size=3))
        pieces, numbers = [], []
        for lo, span, width in ranges:
            hi = lo + span
            pieces.append(f"{lo:0{width}d}" if span == 0 else f"{lo:0{width}d}-{hi:0{width}d}")
            numbers += [f"{n:0{width}d}" for n in range(lo, hi + 1)]
        suffix = draw(literal_more)
        text += f"[{','.join(pieces)}]{suffix}"
        choices += [numbers, [suffix]]
    return text, ["".join(combo) for combo in itertools.product(*choices)]


@given(st.lists(items(), min_size=1, max_size=4))
def test_round_trip_from_structure(parts: list[tuple[str, list[str]]]) -> None:
    assert expand_nodelist(",".join(text for text, _ in parts)) == [
        name for _, names in parts for name in names
    ]


def compress(names: list[tuple[str, int, int]]) -> tuple[str, list[str]]:
    """A node list for ``(prefix, number, width)`` names, as SLURM would write it,
    and the names in the order it lists them."""
    groups: dict[tuple[str, int], set[int]] = {}
    for prefix, number, width in names:
        groups.setdefault((prefix, width), set()).add(number)
    items, order = [], []
    for (prefix, width), numbers in groups.items():
        runs: list[list[int]] = []
        for n in sorted(numbers):
            if runs and n == runs[-1][1] + 1:
                runs[-1][1] = n
            else:
                runs.append([n, n])
        pieces = [f"{a:0{width}d}" if a == b else f"{a:0{width}d}-{b:0{width}d}" for a, b in runs]
        items.append(f"{prefix}[{','.join(pieces)}]")
        order += [f"{prefix}{n:0{width}d}" for n in sorted(numbers)]
    return ",".join(items), order


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["node", "gpu", "rack1-n", "cn"]),
            st.integers(0, 300),
            st.integers(1, 4),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_round_trip_through_compression(names: list[tuple[str, int, int]]) -> None:
    nodelist, order = compress(names)
    expanded = expand_nodelist(nodelist)
    assert expanded == order
    assert set(expanded) == {f"{p}{n:0{w}d}" for p, n, w in names}


# -- task counts --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "counts"),
    [
        ("2(x3),1", [2, 2, 2, 1]),
        ("16", [16]),
        ("1(x4)", [1, 1, 1, 1]),
        ("4,2(x2),8", [4, 2, 2, 8]),
    ],
)
def test_expand_tasks_per_node(text: str, counts: list[int]) -> None:
    assert expand_tasks_per_node(text) == counts


@pytest.mark.parametrize("text", ["", "2(x0)", "x", "2(3)", "2(x3", "-1", "2,,1"])
def test_bad_task_counts_name_the_bad_part(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not 'N' or 'N\(xM\)'|repeats a count 0 times"):
        expand_tasks_per_node(text)


@given(st.lists(st.tuples(st.integers(0, 64), st.integers(1, 5)), min_size=1, max_size=10))
def test_task_counts_round_trip(runs: list[tuple[int, int]]) -> None:
    text = ",".join(str(c) if t == 1 else f"{c}(x{t})" for c, t in runs)
    assert expand_tasks_per_node(text) == [c for c, t in runs for _ in range(t)]


# -- a job's allocation ---------------------------------------------------------------


def job(**variables: str) -> dict[str, str]:
    return {"SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "n[1-3]", **variables}


def hosts(*counts: tuple[str, int | None]) -> list[Host]:
    return [Host(None, name, None, count) for name, count in counts]


def test_tasks_per_node_give_the_workers_per_node() -> None:
    env = job(SLURM_TASKS_PER_NODE="2(x2),1", SLURM_NTASKS="5")
    assert allocation_from_env(env) == hosts(("n1", 2), ("n2", 2), ("n3", 1))


def test_inside_a_step_the_steps_task_counts_do_not_fit_so_ntasks_is_spread() -> None:
    # srun -n1 python -m scoop ...: the step's counts describe one node.
    env = job(SLURM_TASKS_PER_NODE="1", SLURM_NTASKS="5", SLURM_STEP_ID="0")
    assert allocation_from_env(env) == hosts(("n1", 2), ("n2", 2), ("n3", 1))


def test_fewer_tasks_than_nodes_leaves_the_last_nodes_out() -> None:
    assert allocation_from_env(job(SLURM_NTASKS="2")) == hosts(("n1", 1), ("n2", 1))


def test_then_cpus_per_node_then_cpus_on_node() -> None:
    assert allocation_from_env(job(SLURM_JOB_CPUS_PER_NODE="4(x2),8")) == hosts(
        ("n1", 4), ("n2", 4), ("n3", 8)
    )
    assert allocation_from_env(job(SLURM_CPUS_ON_NODE="6")) == hosts(
        ("n1", 6), ("n2", 6), ("n3", 6)
    )
    assert allocation_from_env(job()) == hosts(("n1", None), ("n2", None), ("n3", None))


def test_the_older_variable_names_work_too() -> None:
    env = {"SLURM_JOBID": "7", "SLURM_NODELIST": "gpu[1-2]", "SLURM_TASKS_PER_NODE": "4(x2)"}
    assert allocation_from_env(env) == hosts(("gpu1", 4), ("gpu2", 4))


def test_outside_a_job_there_is_no_allocation() -> None:
    assert allocation_from_env({}) is None
    assert allocation_from_env({"SLURM_JOB_NODELIST": "n1"}) is None
    assert allocation_from_env({"SLURM_JOB_ID": "1"}) is None


def test_a_malformed_variable_is_named() -> None:
    with pytest.raises(ValueError, match=r"\$SLURM_JOB_NODELIST: node list 'n\[1-'"):
        allocation_from_env(job(SLURM_JOB_NODELIST="n[1-"))
    with pytest.raises(ValueError, match=r"\$SLURM_TASKS_PER_NODE: task counts '2\(x'"):
        allocation_from_env(job(SLURM_TASKS_PER_NODE="2(x"))


def test_detect_says_yes_inside_a_job_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from scoop_core.plugins.manager import get_plugin_manager

    record = get_plugin_manager().launcher("slurm")
    assert record.detect is not None
    for name in ("SLURM_JOB_ID", "SLURM_JOBID", "SLURM_JOB_NODELIST", "SLURM_NODELIST"):
        monkeypatch.delenv(name, raising=False)
    assert not record.detect()
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    assert not record.detect()  # sbatch always sets both; a stray id alone is not a job
    monkeypatch.setenv("SLURM_JOB_NODELIST", "n[1-2]")
    assert record.detect()
    assert in_allocation({"SLURM_JOBID": "1", "SLURM_NODELIST": "a"})
