"""Dataset-level warnings: rows that parse but will not teach what the user expects.

These never stop a run; they are logged with counts and the first row numbers, so a user can look.
"""

from __future__ import annotations

import logging

from alignkit.data.rows import ClassificationRow, PreferenceRow, Row, UnpairedRow
from alignkit.errors import DataError

logger = logging.getLogger("alignkit")

# KTO paper (https://arxiv.org/abs/2402.01306), Eq. 9 and §4.2: with equal weights, desirable examples
# should be between 1x and 4/3x the undesirable ones.
KTO_RATIO_RANGE = (1.0, 4 / 3)


def _rows_text(numbers: list[int], limit: int = 5) -> str:
    shown = ", ".join(str(n) for n in numbers[:limit])
    return shown + (", ..." if len(numbers) > limit else "")


def identical_pairs(rows: list[Row]) -> list[int]:
    """Row numbers of preference pairs whose chosen and rejected answers are the same text.

    Such a pair carries no preference: its DPO gradient is zero and it only dilutes the batch.
    """
    return [
        row.source.row if row.source else i + 1
        for i, row in enumerate(rows)
        if isinstance(row, PreferenceRow) and row.chosen == row.rejected
    ]


def warn_identical_pairs(rows: list[Row], file: str) -> int:
    numbers = identical_pairs(rows)
    if numbers:
        logger.warning(
            "%s: %d of %d pairs have identical chosen and rejected answers (rows %s); they carry no preference",
            file, len(numbers), len(rows), _rows_text(numbers),
        )
    return len(numbers)


def kto_balance(rows: list[Row]) -> tuple[int, int]:
    """(desirable, undesirable) counts of unpaired rows."""
    desirable = sum(1 for row in rows if isinstance(row, UnpairedRow) and row.label)
    undesirable = sum(1 for row in rows if isinstance(row, UnpairedRow) and not row.label)
    return desirable, undesirable


def log_kto_balance(rows: list[Row], split: str) -> None:
    desirable, undesirable = kto_balance(rows)
    if not desirable + undesirable:
        return
    low, high = KTO_RATIO_RANGE
    ratio = desirable / undesirable if undesirable else float("inf")
    text = f"{split} KTO rows: {desirable} desirable, {undesirable} undesirable (ratio {ratio:.2f})"
    if not desirable or not undesirable:
        logger.warning("%s; KTO needs both desirable and undesirable examples", text)
    elif not low <= ratio <= high:
        logger.warning(
            "%s; the KTO paper recommends desirable:undesirable between %.2f and %.2f after weighting", text, low, high
        )
    else:
        logger.info(text)


def check_class_labels(rows: list[ClassificationRow], *, problem_type: str, num_labels: int) -> None:
    """Every seq_cls label fits --problem_type and --num_labels, or a DataError names the file, row and field:
    single_label_classification takes a class index in [0, num_labels); multi_label_classification a list of
    such indices (or one); regression a number when num_labels is 1, else a list of num_labels numbers."""
    for row in rows:
        label, labels = row.label, row.label if isinstance(row.label, list) else [row.label]
        indices = all(float(v).is_integer() and 0 <= v < num_labels for v in labels)
        if problem_type == "single_label_classification":
            fits, expected = not isinstance(label, list) and indices, f"a class index in [0, {num_labels})"
        elif problem_type == "multi_label_classification":
            fits, expected = indices, f"a list of class indices in [0, {num_labels})"
        elif num_labels == 1:
            fits, expected = not isinstance(label, list), "a number"
        else:
            fits, expected = isinstance(label, list) and len(label) == num_labels, f"a list of {num_labels} numbers"
        if not fits:
            where = {"file": row.source.file, "row": row.source.row} if row.source else {}
            raise DataError(f"--problem_type {problem_type} with --num_labels {num_labels} expects {expected}, got "
                            f"{label!r}", field="label", **where)
