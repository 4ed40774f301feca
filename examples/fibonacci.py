"""Recursive Fibonacci with a future at every level of the recursion.

A deliberately naive recursion: each call submits fib(n - 1) and fib(n - 2)
as futures and waits for both, so fib(15) creates about two thousand nested
futures. It shows that nesting is cheap and never blocks a worker.

Run with:  python -m scoop -n 2 examples/fibonacci.py [n]   (default n = 15)
"""

import sys

from scoop import futures


def fib(n):
    if n < 2:
        return n
    left = futures.submit(fib, n - 1)
    right = futures.submit(fib, n - 2)
    return left.result() + right.result()


def serial_fib(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    value = fib(n)
    assert value == serial_fib(n)
    print(f"fib({n}) = {value}")
