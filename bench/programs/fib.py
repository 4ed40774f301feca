"""fib: recursive Fibonacci with a future at every call (SCOOP's classic).

Times ``fib(n)`` of examples/fibonacci.py (n = 18 unless given as argv[1]),
which submits ``fib(n - 1)`` and ``fib(n - 2)`` and adds their results:
2 * fib(n + 1) - 2 futures (8360 for 18), each doing almost nothing but
waiting on two children, so this measures deep nesting and the cost of
suspending and resuming a waiting task. Prints ``RESULT fib <s> <checksum>``.
"""

import sys
from pathlib import Path

from harness import check, report, size, timed

# The example is the program users know; the benchmark times that very function.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from fibonacci import fib, serial_fib  # noqa: E402

if __name__ == "__main__":
    n = size(1, 18)
    value, seconds = timed(fib, n)
    check(value == serial_fib(n), f"fib: fib({n}) gave {value}, expected {serial_fib(n)}")
    report("fib", seconds, value)
