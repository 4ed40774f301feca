"""Map: ``futures.map`` as a parallel drop-in for the built-in ``map``.

The absolute value of 1000 random numbers, computed by the workers and
serially; both give the same list, in the same order.

Run with:  python -m scoop -n 2 examples/map_abs.py
"""

import random

from scoop import futures

if __name__ == "__main__":
    rng = random.Random(42)  # seeded, so every run prints the same sum
    data = [rng.randint(-1000, 1000) for _ in range(1000)]

    serial = list(map(abs, data))
    parallel = list(futures.map(abs, data))

    assert parallel == serial
    print(f"map: {len(parallel)} values, sum of abs = {sum(parallel)} (same as serial)")
