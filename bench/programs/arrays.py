"""arrays: throughput of large numpy arrays sent to workers and back.

Eight arrays of M MiB each (M = 64 unless given as argv[1]; float64, all
distinct) are submitted at once, each to a future that returns it as it
came, and the results collected: 2 * 8 * M MiB cross between processes.
The time is serialisation and transport. Prints
``RESULT arrays <s> <checksum>``.
"""

import numpy as np
from harness import check, report, size, timed

from scoop import futures

COUNT = 8


def echo(array):
    return array


def round_trip(arrays):
    pending = [futures.submit(echo, a) for a in arrays]
    return [f.result() for f in pending]


if __name__ == "__main__":
    items = size(1, 64) * 1024 * 1024 // 8
    arrays = [np.arange(items, dtype=np.float64) + k for k in range(COUNT)]
    back, seconds = timed(round_trip, arrays)
    check(
        all(np.array_equal(a, b) for a, b in zip(arrays, back, strict=True)),
        "arrays: an array came back different",
    )
    report("arrays", seconds, int(sum(float(b[-1]) for b in back)))
