"""Dataset-level packing (``--packing``): tokenised rows grouped into packs of at most ``--packing_length``
tokens, each pack then taking the place of one row, as ms-swift's ``PackingDataset`` does. A run has fewer,
fuller rows, so fewer steps per epoch; ``--per_device_train_batch_size`` counts packs.

A pack never mixes its rows: the forward lays each pack out as one row with position ids restarting per
sequence and a block-diagonal causal mask (``alignkit.models.packing``), so every sequence sees only its own
tokens and its labels stay exactly as encoded. A pair's budget is its chosen plus its rejected tokens; a
ranking group's (generative reranker), all its conversations' tokens.

Worked example (lengths 700, 500, 400, 300, 100; ``packing_length`` 1000; ``binpack``)::

    best-fit decreasing: 700 → pack A; 500 → pack B; 400 → B (900, the fullest that fits); 300 → A (1000);
    100 → B (1000). Two packs: A = rows of length 700 + 300, B = 500 + 400 + 100.

``binpack`` is best-fit decreasing over chunks of 1000 rows, the last pack of a chunk carried into the next,
as ms-swift runs the ``binpacking`` package; ``sequential`` keeps the row order and closes a pack when the
next row does not fit. A row longer than ``packing_length`` forms a pack of its own.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

from alignkit.data.template import Encoded

logger = logging.getLogger("alignkit")

PACKING_STRATEGIES = ("binpack", "sequential")
CHUNK_ROWS = 1000  # ms-swift's PackingDataset.PACKING_BATCH_SIZE


class Pack(NamedTuple):
    """Rows trained as one: each a (row index, encoded row) item, as the collators take them."""

    items: tuple


def sequences_of(encoded: Any) -> list[Encoded]:
    """The token sequences of an encoded row: itself, a pair's chosen and rejected (margins etc. skipped), or a
    ranking group's conversations (``EncodedGroup.sequences``: all of them, as ms-swift sums a group's lengths,
    though the collator then draws some)."""
    if isinstance(encoded, Encoded):
        return [encoded]
    sequences = []
    for part in encoded:
        if isinstance(part, Encoded):
            sequences.append(part)
        elif isinstance(part, tuple) and all(isinstance(p, Encoded) for p in part):
            sequences.extend(part)
    return sequences


def row_length(encoded: Any) -> int:
    """Tokens a row adds to a pack: all of its sequences' tokens."""
    return sum(len(s.input_ids) for s in sequences_of(encoded))


def unpacked(items: list) -> list:
    """A micro-batch's items with every pack replaced by its rows: ``[(7, Pack(((3, a), (9, b))))]`` → ``[(3, a),
    (9, b)]``. Items that are not packs pass through."""
    out = []
    for item in items:
        if isinstance(item[1], Pack):
            out.extend(item[1].items)
        else:
            out.append(item)
    return out


def row_ids_of(item) -> list[int]:
    """The dataset row ids an item stands for: a pack's rows, else the item's own id."""
    return [i for i, _ in unpacked([item])]


def _best_fit_decreasing(rows: list[tuple[int, int]], capacity: int) -> list[list[tuple[int, int]]]:
    """(position, length) rows into packs: longest first, each into the fullest pack it still fits."""
    packs: list[list[tuple[int, int]]] = []
    fill: list[int] = []
    for row in sorted(rows, key=lambda r: (-r[1], r[0])):
        best = None
        for p, used in enumerate(fill):
            if used + row[1] <= capacity and (best is None or used > fill[best]):
                best = p
        if best is None:
            packs.append([])
            fill.append(0)
            best = len(packs) - 1
        packs[best].append(row)
        fill[best] += row[1]
    return packs


def _sequential(rows: list[tuple[int, int]], capacity: int) -> list[list[tuple[int, int]]]:
    packs: list[list[tuple[int, int]]] = []
    current: list[tuple[int, int]] = []
    used = 0
    for row in rows:
        if current and used + row[1] > capacity:
            packs.append(current)
            current, used = [], 0
        current.append(row)
        used += row[1]
    if current:
        packs.append(current)
    return packs


def plan_packs(lengths: list[int], packing_length: int, strategy: str = "binpack") -> list[list[int]]:
    """Positions of the rows in each pack, for rows of ``lengths`` (see the module docstring)."""
    if strategy not in PACKING_STRATEGIES:
        raise ValueError(f"packing strategy must be one of {', '.join(PACKING_STRATEGIES)}, got {strategy!r}")
    rows = list(enumerate(lengths))
    if strategy == "sequential":
        packs = _sequential(rows, packing_length)
    else:
        packs, carried = [], []
        for start in range(0, len(rows), CHUNK_ROWS):
            chunk = carried + rows[start : start + CHUNK_ROWS]
            planned = _best_fit_decreasing(chunk, packing_length)
            last_chunk = start + CHUNK_ROWS >= len(rows)
            # The chunk's last-opened pack (its shortest rows) joins the next chunk, as ms-swift carries it over.
            carried = [] if last_chunk else planned.pop()
            packs += planned
    return [[position for position, _ in pack] for pack in packs]


def pack_rows(items: list, packing_length: int, strategy: str = "binpack") -> list[tuple[int, Pack]]:
    """Encoded items (row index, encoded row) → (pack index, Pack) items; logged with the packs' fill."""
    lengths = [row_length(encoded) for _, encoded in items]
    plan = plan_packs(lengths, packing_length, strategy)
    packs = [(p, Pack(tuple(items[i] for i in positions))) for p, positions in enumerate(plan)]
    oversized = sum(1 for n in lengths if n > packing_length)
    fill = sum(lengths) / max(1, len(plan) * packing_length)
    logger.info("Packing (--packing_strategy %s): %d rows into %d packs of at most %d tokens, %.1f%% full%s",
                strategy, len(items), len(plan), packing_length, 100 * fill,
                f"; {oversized} rows longer than --packing_length are packs of their own" if oversized else "")
    return packs
