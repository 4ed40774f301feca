"""submit_many: cost of one future, submitted and collected one by one.

N calls ``futures.submit(abs, i)`` (N = 20000 unless given as argv[1]), then
``.result()`` of each, in order. Unlike ``map`` nothing can be batched by
the API, so this measures the per-future round trip. Prints
``RESULT submit_many <s> <checksum>``.
"""

import sys
import time

from scoop import futures


def main(n):
    start = time.perf_counter()
    fs = [futures.submit(abs, -i) for i in range(n)]
    results = [f.result() for f in fs]
    seconds = time.perf_counter() - start
    if results != list(range(n)):
        sys.exit(f"submit_many: wrong results (first items {results[:5]}, length {len(results)})")
    print(f"RESULT submit_many {seconds:.6f} {sum(results)}", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20000)
