"""Results as they finish: ``futures.map_as_completed`` and ``futures.as_completed``.

``map_as_completed`` is used like ``map`` but yields each result as soon as
it is ready, so results may come in any order; ``as_completed`` does the
same for futures returned by ``submit``.

Run with:  python -m scoop -n 2 examples/map_as_completed.py
"""

import time

from scoop import futures


def slow_square(x):
    time.sleep(0.01 * (x % 4))  # uneven durations, so later inputs can finish first
    return x * x


if __name__ == "__main__":
    inputs = range(20)
    expected = [x * x for x in inputs]

    received = list(futures.map_as_completed(slow_square, inputs))
    assert sorted(received) == expected
    print(f"map_as_completed: {len(received)} results, in order of completion: {received}")

    pending = [futures.submit(slow_square, x) for x in inputs]
    finished = [f.result() for f in futures.as_completed(pending)]
    assert sorted(finished) == expected
    print(f"as_completed: {len(finished)} futures, sum = {sum(finished)}")
