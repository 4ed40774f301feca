"""What a process learns of its functions' costs, and when the root may run one itself."""

from __future__ import annotations

import functools

from scoop_core.call_costs import RUN_HERE_SECONDS, RUNS_BEFORE_HERE, CallCosts


def cheap(x):
    return x


def other(x):
    return -x


def test_a_function_is_unknown_until_an_outcome_is_learned() -> None:
    costs = CallCosts()
    assert costs.item_seconds(cheap) == -1.0
    assert not costs.runs_here(cheap, 1)
    costs.learn(cheap, 0.002)
    assert costs.item_seconds(cheap) == 0.002
    assert costs.item_seconds(other) == -1.0


def test_the_cost_follows_recent_outcomes() -> None:
    costs = CallCosts()
    costs.learn(cheap, 0.004)
    costs.learn(cheap, 0.002)
    assert costs.item_seconds(cheap) == 0.003


def test_the_root_runs_a_cheap_function_only_after_enough_good_runs() -> None:
    costs = CallCosts()
    for _ in range(RUNS_BEFORE_HERE - 1):
        costs.learn(cheap, 1e-5)
    assert not costs.runs_here(cheap, 1)
    costs.learn(cheap, 1e-5)
    assert costs.runs_here(cheap, 1)
    # A chunk counts all its items: too many, and it leaves for a worker.
    assert not costs.runs_here(cheap, int(2 * RUN_HERE_SECONDS / 1e-5))


def test_a_slow_function_is_never_run_in_the_root() -> None:
    costs = CallCosts()
    for _ in range(10):
        costs.learn(cheap, 2 * RUN_HERE_SECONDS)
    assert not costs.runs_here(cheap, 1)


def test_a_function_kept_on_workers_is_never_run_in_the_root() -> None:
    costs = CallCosts()
    for _ in range(10):
        costs.learn(cheap, 1e-6)
    costs.keep_on_workers(cheap)
    costs.learn(cheap, 1e-6)
    assert not costs.runs_here(cheap, 1)


def test_unhashable_callables_are_not_learned() -> None:
    class Unhashable:
        __hash__ = None  # type: ignore[assignment]

        def __call__(self, x):
            return x

    fn = Unhashable()
    costs = CallCosts()
    for _ in range(5):
        costs.learn(fn, 1e-6)
    assert costs.item_seconds(fn) == -1.0
    assert not costs.runs_here(fn, 1)


def test_the_table_forgets_the_least_recently_used_functions() -> None:
    costs = CallCosts(kept=2)
    costs.learn(cheap, 1.0)
    costs.learn(other, 2.0)
    costs.learn(cheap, 1.0)  # cheap is now the most recent
    third = functools.partial(cheap)
    costs.learn(third, 3.0)
    assert costs.item_seconds(other) == -1.0
    assert costs.item_seconds(cheap) == 1.0
    assert costs.item_seconds(third) == 3.0
