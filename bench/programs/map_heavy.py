"""map_heavy: scaling of ``futures.map`` over CPU-bound items.

Maps a pure-Python loop of fixed size (about 10 ms on this machine) over
N = 200 items (argv[1]); with 2 workers the ideal is half the serial time,
which ``python map_heavy.py N --serial`` (no framework, builtin ``map``)
measures. Prints ``RESULT map_heavy <s> <checksum>``.
"""

import sys
import time

from scoop import futures

LOOP = 150000


def work(seed):
    acc = seed
    for k in range(LOOP):
        acc = (acc * 1103515245 + k) & 0xFFFFFFFF
    return acc


def main(n, serial):
    start = time.perf_counter()
    results = list((map if serial else futures.map)(work, range(n)))
    seconds = time.perf_counter() - start
    if len(results) != n or any(results[i] != work(i) for i in range(0, n, max(1, n // 10))):
        sys.exit("map_heavy: wrong results")
    print(f"RESULT map_heavy{'_serial' if serial else ''} {seconds:.6f} {sum(results)}", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200, "--serial" in sys.argv[2:])
