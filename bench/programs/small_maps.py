"""small_maps: latency of ``futures.map`` over a handful of items.

``list(futures.map(inc, range(k)))`` for k = 10 and then k = 180, each
R times (R = 300 unless given as argv[1]) after R / 10 untimed warm-up
maps; the median time of one map is the latency a program pays per small
batch, such as one generation of an evolutionary algorithm. Prints
``RESULT map10 <median s per map> <checksum>`` and the same for ``map180``.
"""

from harness import median_call, report, size

from scoop import futures


def inc(x):
    return x + 1


if __name__ == "__main__":
    repeat = size(1, 300)
    for items in (10, 180):
        seconds, total = median_call(
            lambda i, k=items: sum(futures.map(inc, range(i, i + k))), repeat, repeat // 10
        )
        report(f"map{items}", seconds, total)
