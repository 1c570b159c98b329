"""Mixing several datasets by probability (``--interleave_prob``, ``--stopping_strategy``), as ms-swift does with
``datasets.interleave_datasets``: each next row is drawn from set i with probability p_i, in that set's order.

``first_exhausted`` stops when a set has no rows left; ``all_exhausted`` goes on, restarting each set that runs
out, until every set has been used whole at least once (oversampling the smaller ones). Example::

    interleave_rows([[a1, a2, a3], [b1]], [0.5, 0.5], seed=0, stopping_strategy="first_exhausted")
    # e.g. [a1, b1]: b ran out after its one row
"""

from __future__ import annotations

from alignkit.data.rows import Row
from alignkit.errors import AlignkitError

STOPPING_STRATEGIES = ("first_exhausted", "all_exhausted")


def interleave_rows(sets: list[list[Row]], probabilities: list[float], *, seed: int,
                    stopping_strategy: str = "first_exhausted") -> list[Row]:
    """The rows of ``sets`` interleaved by ``probabilities`` (one per set; they are normalised as datasets
    requires them to sum to 1). The draw is datasets' own, seeded with ``seed``."""
    import datasets

    if len(probabilities) != len(sets):
        raise AlignkitError(f"--interleave_prob: {len(probabilities)} probabilities for {len(sets)} datasets; give "
                            "one per --dataset")
    if any(not p >= 0 for p in probabilities) or sum(probabilities) <= 0:
        raise AlignkitError(f"--interleave_prob {' '.join(map(str, probabilities))}: expected non-negative numbers "
                            "with a positive sum")
    if stopping_strategy not in STOPPING_STRATEGIES:
        raise AlignkitError(f"--stopping_strategy {stopping_strategy}: expected one of "
                            f"{', '.join(STOPPING_STRATEGIES)}")
    total = sum(probabilities)
    # Interleave row positions, not rows: datasets decides the order, alignkit keeps its own row objects.
    offsets = [sum(len(s) for s in sets[:i]) for i in range(len(sets))]
    indexed = [datasets.Dataset.from_dict({"i": list(range(offset, offset + len(s)))})
               for offset, s in zip(offsets, sets)]
    mixed = datasets.interleave_datasets(indexed, probabilities=[p / total for p in probabilities], seed=seed,
                                         stopping_strategy=stopping_strategy)
    flat = [row for s in sets for row in s]
    return [flat[i] for i in mixed["i"]]
