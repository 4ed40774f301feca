"""map_heavy: speed-up of ``futures.map`` over CPU-bound items.

Maps a pure-Python loop of fixed size (about 40 ms on a 2-core VM) over
N = 64 items (argv[1]); with 2 workers the ideal is half the serial time,
which ``python map_heavy.py N --serial`` (no framework, builtin ``map``)
measures. Prints ``RESULT map_heavy <s> <checksum>``.
"""

from harness import check, report, serial, size, timed

from scoop import futures

LOOP = 600000


def work(seed):
    acc = seed
    for k in range(LOOP):
        acc = (acc * 1103515245 + k) & 0xFFFFFFFF
    return acc


if __name__ == "__main__":
    n = size(1, 64)
    results, seconds = timed(lambda: list((map if serial() else futures.map)(work, range(n))))
    spot = range(0, n, max(1, n // 10))
    check(
        len(results) == n and all(results[i] == work(i) for i in spot), "map_heavy: wrong results"
    )
    report("map_heavy", seconds, sum(results))
