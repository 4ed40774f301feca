"""nested_tree: futures that submit futures, like SCOOP's tree examples.

Every inner node of a tree (branching B = 3, depth D = 6 unless given as
argv[1] and argv[2]) submits one future per child and sums their results; a
leaf does a tiny computation. That is (B**(D+1) - 1) / (B - 1) - 1 futures
(1092 for 3 and 6), most of them waited on from inside other futures, so
this measures nested submission and the scheduling of waiting tasks.
Prints ``RESULT nested_tree <s> <checksum>``.
"""

import sys
import time

from scoop import futures


def leaf(index):
    return sum((index * k) % 7 for k in range(100))


def node(branching, depth, index):
    if depth == 0:
        return leaf(index)
    children = [
        futures.submit(node, branching, depth - 1, index * branching + k) for k in range(branching)
    ]
    return sum(child.result() for child in children)


def expected(branching, depth):
    return sum(leaf(i) for i in range(branching**depth))


def main(branching, depth):
    start = time.perf_counter()
    total = node(branching, depth, 0)
    seconds = time.perf_counter() - start
    want = expected(branching, depth)
    if total != want:
        sys.exit(f"nested_tree: got {total}, expected {want}")
    print(f"RESULT nested_tree {seconds:.6f} {total}", flush=True)


if __name__ == "__main__":
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else 3,
        int(sys.argv[2]) if len(sys.argv) > 2 else 6,
    )
