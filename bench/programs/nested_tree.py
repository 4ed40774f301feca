"""nested_tree: futures that submit futures, like SCOOP's tree examples.

Every inner node of a tree (branching B = 10, depth D = 4 unless given as
argv[1] and argv[2]) submits one future per child and sums their results; a
leaf does a tiny computation. That is (B**(D+1) - 1) / (B - 1) - 1 futures
(11,110 for 10 and 4), most of them waited on from inside other futures, so
this measures nested submission and the scheduling of waiting tasks.
Prints ``RESULT nested_tree <s> <checksum>``.
"""

from harness import check, report, size, timed

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


if __name__ == "__main__":
    branching, depth = size(1, 10), size(2, 4)
    total, seconds = timed(node, branching, depth, 0)
    want = sum(leaf(i) for i in range(branching**depth))
    check(total == want, f"nested_tree: got {total}, expected {want}")
    report("nested_tree", seconds, total)
