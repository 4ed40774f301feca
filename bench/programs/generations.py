"""generations: an evolutionary loop, where each generation waits for a map.

G generations (G = 40 unless given as argv[1]) of a population of P = 180
individuals (argv[2]): each generation maps a cheap fitness function (a
short pure-Python loop, tens of microseconds) over the population with
``futures.map``, then selects and mutates in the root, as DEAP's
algorithms do. ``--serial`` runs the same loop with the builtin ``map``, so
the two times say how close to serial the framework gets on small batches.
The random generator is seeded, so the result is the same everywhere.
Prints ``RESULT generations <s> <checksum>``.
"""

import random

from harness import report, serial, size, timed

from scoop import futures

GENES = 40


def fitness(genome):
    score = 0
    for _ in range(5):
        for gene in genome:
            score = (score * 31 + gene) % 1000003
    return score


def evolve(generations, population, mapper):
    rng = random.Random(1)
    pop = [[rng.randrange(100) for _ in range(GENES)] for _ in range(population)]
    best = 0
    for _ in range(generations):
        scores = list(mapper(fitness, pop))
        ranked = [g for _, g in sorted(zip(scores, pop, strict=True), reverse=True)]
        best = max(best, max(scores))
        parents = ranked[: population // 2]
        pop = [
            [gene if rng.random() > 0.05 else rng.randrange(100) for gene in rng.choice(parents)]
            for _ in range(population)
        ]
    return best


if __name__ == "__main__":
    best, seconds = timed(evolve, size(1, 40), size(2, 180), map if serial() else futures.map)
    report("generations", seconds, best)
