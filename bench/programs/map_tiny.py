"""map_tiny: per-item overhead of ``futures.map`` on items that cost nothing.

``list(futures.map(abs, range(N)))`` (N = 100000 unless given as argv[1]).
The time is all framework: cutting the iterable into tasks, serialising,
dispatching and gathering results. Prints ``RESULT map_tiny <s> <checksum>``.
"""

from harness import run_sized

from scoop import futures

if __name__ == "__main__":
    run_sized(
        "map_tiny", 100000, lambda n: list(futures.map(abs, range(n))), lambda n: list(range(n))
    )
