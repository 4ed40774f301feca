"""Shared constants: define a value once in the root, read it in every worker.

``shared.setConst`` sends the constants to every worker before the futures
submitted after it; ``shared.getConst`` reads them there. Reading a name that
was never defined raises ``ConstantNotFound`` unless a ``default`` is given.

Run with:  python -m scoop -n 2 examples/shared_constants.py
"""

from scoop import futures, shared
from scoop_core.errors import ConstantNotFound


def add_offset(value):
    return value + shared.getConst("offset")


def scaled(value):
    # "scale" is never defined, so every worker falls back to the default.
    return value * shared.getConst("scale", default=1)


if __name__ == "__main__":
    shared.setConst(offset=5)

    offsets = list(futures.map(add_offset, range(10)))
    assert offsets == [v + 5 for v in range(10)]
    print(f"with offset: {offsets}")

    scales = list(futures.map(scaled, range(10)))
    assert scales == list(range(10))
    print(f"with default scale: {scales}")

    try:
        shared.getConst("scale")
    except ConstantNotFound:
        print("getConst('scale') without a default: ConstantNotFound")
    else:
        raise AssertionError("getConst of an undefined constant should raise")
