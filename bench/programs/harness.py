"""What every benchmark program does around its work: sizes, timing, results.

A program takes its sizes from argv (``size``), times its parallel part
(``timed``), checks what it got and exits non-zero if that is wrong
(``check``), and prints one line per measure for bench/run.py:
``RESULT <measure> <seconds> <checksum>`` (``report``). The checksum must
not depend on the framework, so that run.py can compare it between them.

It imports nothing of a framework: the same program runs under scoop-core,
the original SCOOP and the pools of bench/peers.py.
"""

import statistics
import sys
import time


def size(position, default):
    """The ``position``-th argument that is not an ``--option``, as an integer, or ``default``."""
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    return int(args[position - 1]) if len(args) >= position else default


def serial():
    """Whether the program was asked (``--serial``) to use the builtin ``map``."""
    return "--serial" in sys.argv[1:]


def warm_up():
    """Start the workers of a pool that starts them at first use (bench/peers.py)."""
    futures = sys.modules.get("scoop.futures")
    getattr(futures, "warm_up", lambda: None)()


def timed(work, *args):
    """``work(*args)`` and the seconds it took, once the workers are running."""
    warm_up()
    start = time.perf_counter()
    value = work(*args)
    return value, time.perf_counter() - start


def median_call(work, calls, warmup):
    """The median seconds of one ``work(i)``, over ``calls`` calls after
    ``warmup`` untimed ones, and the sum of what the timed calls returned."""
    for i in range(warmup):
        work(i)
    times = []
    total = 0
    for i in range(calls):
        value, seconds = timed(work, i)
        times.append(seconds)
        total += value
    return statistics.median(times), total


def check(ok, message):
    """Stop the program with ``message`` (exit status 1) unless ``ok``."""
    if not ok:
        sys.exit(message)


def report(measure, seconds, checksum):
    print(f"RESULT {measure} {seconds:.6f} {checksum}", flush=True)


def run_sized(measure, default, work, expected):
    """Time ``work(n)`` for the n of argv[1] (``default``), check it equals
    ``expected(n)`` and report its sum."""
    n = size(1, default)
    results, seconds = timed(work, n)
    want = expected(n)
    check(
        results == want,
        f"{measure}: wrong results (first items {results[:5]}, length {len(results)}, "
        f"expected {len(want)})",
    )
    report(measure, seconds, sum(results))
