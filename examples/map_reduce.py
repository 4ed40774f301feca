"""mapReduce: map a function over the data, then reduce the results, in parallel.

A sum of absolute values with ``operator.add``, checked against the serial
``sum(map(abs, data))``; then a reduction that is not commutative (string
concatenation), to show that the reduction keeps the order of the inputs.

Run with:  python -m scoop -n 2 examples/map_reduce.py
"""

import operator
import random

from scoop import futures

if __name__ == "__main__":
    rng = random.Random(7)
    data = [rng.randint(-1000, 1000) for _ in range(1000)]

    serial_sum = sum(map(abs, data))
    parallel_sum = futures.mapReduce(abs, operator.add, data)
    assert parallel_sum == serial_sum
    print(f"mapReduce sum = {parallel_sum} (same as serial)")

    digits = futures.mapReduce(str, operator.add, range(30))
    assert digits == "".join(map(str, range(30)))
    print(f"mapReduce concat = {digits}")
