"""submit_many: cost of one future, submitted and collected one by one.

N calls ``futures.submit(abs, -i)`` (N = 20000 unless given as argv[1]),
then ``.result()`` of each, in order. Unlike ``map`` nothing can be batched
by the API, so this measures the per-future round trip. Prints
``RESULT submit_many <s> <checksum>``.
"""

from harness import run_sized

from scoop import futures


def submit_all(n):
    pending = [futures.submit(abs, -i) for i in range(n)]
    return [f.result() for f in pending]


if __name__ == "__main__":
    run_sized("submit_many", 20000, submit_all, lambda n: list(range(n)))
