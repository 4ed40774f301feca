"""fib: recursive Fibonacci with a future at every call (SCOOP's classic).

``fib(n)`` submits ``fib(n - 1)`` and ``fib(n - 2)`` and adds their results
(n = 18 unless given as argv[1]): 2 * fib(n + 1) - 2 futures (8360 for 18),
each doing almost nothing but waiting on two children, so this measures
deep nesting and the cost of suspending and resuming a waiting task.
Prints ``RESULT fib <s> <checksum>``.
"""

import sys
import time

from scoop import futures


def fib(n):
    if n < 2:
        return n
    a = futures.submit(fib, n - 1)
    b = futures.submit(fib, n - 2)
    return a.result() + b.result()


def fib_serial(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def main(n):
    start = time.perf_counter()
    value = fib(n)
    seconds = time.perf_counter() - start
    if value != fib_serial(n):
        sys.exit(f"fib: fib({n}) gave {value}, expected {fib_serial(n)}")
    print(f"RESULT fib {seconds:.6f} {value}", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 18)
