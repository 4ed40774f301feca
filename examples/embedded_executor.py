"""Embedding: ``scoop_core.Executor`` inside an ordinary Python program.

No launcher needed: the Executor starts its own broker and local workers,
works as a ``concurrent.futures.Executor`` (``submit``, ``map``, ``with``)
and as an ``asyncio`` executor through ``loop.run_in_executor``. It takes
``ProcessPoolExecutor``'s arguments: here each worker runs ``setup`` once
before its first future, and is replaced by a fresh one after 20 futures.
See docs/executor.md.

Run with:  python examples/embedded_executor.py
"""

import asyncio
import os

from scoop_core import Executor


def setup(offset):
    os.environ["SQUARE_OFFSET"] = str(offset)


def square(x):
    return x * x + int(os.environ["SQUARE_OFFSET"])


async def squares_with_asyncio(executor, values):
    loop = asyncio.get_running_loop()
    return await asyncio.gather(*(loop.run_in_executor(executor, square, v) for v in values))


if __name__ == "__main__":
    expected = [v * v for v in range(10)]
    with Executor(
        max_workers=2, initializer=setup, initargs=(0,), max_tasks_per_child=20
    ) as executor:
        assert executor.submit(square, 12).result() == 144
        mapped = list(executor.map(square, range(10)))
        gathered = asyncio.run(squares_with_asyncio(executor, range(10)))

    assert mapped == expected and gathered == expected
    print(f"executor.map: {mapped}")
    print(f"run_in_executor: {gathered}")
