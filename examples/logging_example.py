"""Logging: ``scoop.logger`` stamps each message with the time, the worker and the module.

The root and every future log a warning; the lines appear on the
launcher's standard error, each naming the process that wrote it.

Run with:  python -m scoop -n 2 examples/logging_example.py
"""

import scoop
from scoop import futures


def work(x):
    scoop.logger.warning("task %d running on %s", x, scoop.worker)
    return scoop.worker


if __name__ == "__main__":
    scoop.logger.warning("root starting, IS_ORIGIN=%s", scoop.IS_ORIGIN)
    names = list(futures.map(work, range(4)))
    assert scoop.IS_ORIGIN and all(name.startswith("worker") for name in names)
    print(f"logged from root and {len(names)} tasks on {len(set(names))} worker(s)")
