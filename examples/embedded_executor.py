"""Embedding: ``scoop_core.Executor`` inside an ordinary Python program.

No launcher needed: the Executor starts its own broker and local workers,
works as a ``concurrent.futures.Executor`` (``submit``, ``map``, ``with``)
and as an ``asyncio`` executor through ``loop.run_in_executor``.

Run with:  python examples/embedded_executor.py
"""

import asyncio

from scoop_core import Executor


def square(x):
    return x * x


async def squares_with_asyncio(executor, values):
    loop = asyncio.get_running_loop()
    return await asyncio.gather(*(loop.run_in_executor(executor, square, v) for v in values))


if __name__ == "__main__":
    expected = [v * v for v in range(10)]
    with Executor(workers=2) as executor:
        assert executor.submit(square, 12).result() == 144
        mapped = list(executor.map(square, range(10)))
        gathered = asyncio.run(squares_with_asyncio(executor, range(10)))

    assert mapped == expected and gathered == expected
    print(f"executor.map: {mapped}")
    print(f"run_in_executor: {gathered}")
