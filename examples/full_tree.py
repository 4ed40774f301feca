"""Nested futures: a tree of futures, each node submitting its children.

Every inner node submits one future per child and sums their results; every
leaf returns its own value. Workers keep running other futures while a node
waits for its children, so the tree never deadlocks however deep it is.

Run with:  python -m scoop -n 2 examples/full_tree.py [depth] [branching]
(default: depth 4, branching 3, so 81 leaves)
"""

import sys

from scoop import futures


def leaf_value(index):
    return index * index


def node(depth, branching, index=0):
    """The sum of the leaf values under this node."""
    if depth == 0:
        return leaf_value(index)
    children = [
        futures.submit(node, depth - 1, branching, index * branching + child)
        for child in range(branching)
    ]
    return sum(child.result() for child in children)


if __name__ == "__main__":
    depth = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    branching = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    leaves = branching**depth

    total = node(depth, branching)

    assert total == sum(leaf_value(i) for i in range(leaves))
    print(f"tree depth={depth} branching={branching} leaves={leaves} total={total}")
