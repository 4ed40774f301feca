"""map_tiny: per-item overhead of ``futures.map`` on items that cost nothing.

``list(futures.map(abs, range(N)))`` (N = 100000 unless given as argv[1]).
The time is all framework: cutting the iterable into tasks, serialising,
dispatching and gathering results. Prints ``RESULT map_tiny <s> <checksum>``.
"""

import sys
import time

from scoop import futures


def main(n):
    start = time.perf_counter()
    results = list(futures.map(abs, range(n)))
    seconds = time.perf_counter() - start
    if results != list(range(n)):
        sys.exit(f"map_tiny: wrong results (first items {results[:5]}, length {len(results)})")
    print(f"RESULT map_tiny {seconds:.6f} {sum(results)}", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100000)
