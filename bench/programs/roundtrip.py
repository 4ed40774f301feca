"""roundtrip: latency of one future, submitted and waited for at once.

``futures.submit(inc, i).result()``, one at a time, R times (R = 2000
unless given as argv[1]) after R / 10 untimed warm-up calls; the median of
one call is what an interactive or iterative program waits per step.
Prints ``RESULT roundtrip <median s per call> <checksum>``.
"""

from harness import median_call, report, size

from scoop import futures


def inc(x):
    return x + 1


if __name__ == "__main__":
    calls = size(1, 2000)
    seconds, total = median_call(lambda i: futures.submit(inc, i).result(), calls, calls // 10)
    report("roundtrip", seconds, total)
