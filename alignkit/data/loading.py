"""Load datasets named on the command line into canonical rows: files, built-ins, the Hub; sample, mix, split.

A dataset spec is what ``--dataset`` takes, as in ms-swift:

* a built-in name, optionally with its split: ``arith-pref``, ``arith-pref:test``;
* a local file: ``data/pairs.jsonl`` (also ``.json``, ``.csv``, ``.parquet``);
* a Hub dataset id, optionally with a subset: ``org/name``, ``org/name:subset``;

each optionally suffixed ``#N`` to sample N rows (``arith-pref#500``). Example::

    train, val = load_datasets(["arith-pref#500", "pairs.jsonl"], [], "preference",
                               split_dataset_ratio=0.1, seed=42)
    # train: 500 built-in rows + 90% of pairs.jsonl, shuffled; val: arith-pref:test + 10% of pairs.jsonl
"""

from __future__ import annotations

import codecs
import io
import json
import logging
import math
import random
import re
from pathlib import Path
from typing import Any

from alignkit.data.builtin import BUILTIN_DATASETS
from alignkit.data.formats import KINDS, convert, detect_format
from alignkit.data.rows import ConversationRow, PreferenceRow, PromptRow, Row, RowSource, UnpairedRow
from alignkit.errors import AlignkitError, DataError

logger = logging.getLogger("alignkit")

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
ROW_TYPES = {
    "sft": ConversationRow,
    "preference": PreferenceRow,
    "unpaired": UnpairedRow,
    "prompt": PromptRow,
}

Record = tuple[int, dict[str, Any]]
"""A 1-based row number (the line number in JSON lines) and the record's columns."""


# --------------------------------------------------------------------------------------------- files


def read_records(path: Path, file: str) -> list[Record]:
    """The records of a local file; ``file`` is the name errors show (the path as the user wrote it)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return list(enumerate(pq.read_table(path).to_pylist(), start=1))
        except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for files that are not Parquet
            raise DataError(f"cannot read the Parquet file: {exc}", file=file) from exc
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read the file: {exc.strerror or exc}", file=file) from exc
    text = _decode(data, file, line_is_row=suffix not in (".csv", ".json"))
    if suffix == ".csv":
        return _read_csv(text, file)
    if suffix == ".json" and text.lstrip().startswith("["):
        return _read_json_array(text, file)
    # JSON lines; a .json file that is not one array is read as JSON lines too, as `datasets` does.
    return _read_json_lines(text, file)


def _decode(data: bytes, file: str, *, line_is_row: bool) -> str:
    """UTF-8 text (a leading byte-order mark is dropped); otherwise an error naming the line of the first bad byte."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        where = "" if line_is_row else f" at line {line}"
        hint = ""
        if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            hint = "; the file starts with a UTF-16/UTF-32 byte-order mark: save it as UTF-8"
        raise DataError(
            f"not UTF-8 text: byte 0x{data[exc.start]:02x}{where} ({exc.reason}){hint}",
            file=file, row=line if line_is_row else None,
        ) from exc


# A JSON escape of a UTF-16 surrogate: valid JSON, but alone it is no character and cannot be encoded.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _parse_json(text: str, file: str, row: int | None) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"column {exc.colno}" if row is not None else f"line {exc.lineno}, column {exc.colno}"
        raise DataError(f"invalid JSON: {exc.msg} ({where})", file=file, row=row) from exc
    except RecursionError as exc:
        raise DataError("invalid JSON: nested too deeply", file=file, row=row) from exc
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise DataError(f"invalid JSON: {exc}", file=file, row=row) from exc
    return value


def _check_text(record: Any, raw: str, file: str, row: int) -> None:
    if _SURROGATE_ESCAPE.search(raw):
        try:
            json.dumps(record, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise DataError(
                f"invalid text: the escape \\u{ord(exc.object[exc.start]):04x} is half of a UTF-16 surrogate pair",
                file=file, row=row,
            ) from exc


def _read_json_lines(text: str, file: str) -> list[Record]:
    records = []
    # split("\n"), not splitlines(): JSON strings may hold U+2028 or U+0085, which splitlines() breaks at.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        record = _object(_parse_json(line, file, number), file, number)
        _check_text(record, line, file, number)
        records.append((number, record))
    return records


def _read_json_array(text: str, file: str) -> list[Record]:
    data = _parse_json(text, file, None)
    records = [(number, _object(record, file, number)) for number, record in enumerate(data, start=1)]
    if _SURROGATE_ESCAPE.search(text):
        for number, record in records:
            _check_text(record, text, file, number)
    return records


def _object(record: Any, file: str, number: int) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise DataError(f"expected a JSON object, got {type(record).__name__}", file=file, row=number)
    return record


def _read_csv(text: str, file: str) -> list[Record]:
    import pandas as pd

    # na_filter=False keeps an empty cell as "" (an "empty" error later) instead of NaN.
    try:
        frame = pd.read_csv(io.StringIO(text), na_filter=False)
    except pd.errors.EmptyDataError:
        return []
    except (pd.errors.ParserError, ValueError) as exc:
        raise DataError(f"invalid CSV: {exc}", file=file) from exc
    return list(enumerate(frame.to_dict(orient="records"), start=1))


def rows_from_records(records: list[Record], kind: str, file: str) -> list[Row]:
    """Detect the format from the columns of all records (logged) and convert every record."""
    if not records:
        raise DataError("the file holds no rows", file=file)
    columns = list(dict.fromkeys(column for _, record in records for column in record))
    fmt = detect_format(columns, kind, file)
    logger.info("%s: %d rows in format '%s'", file, len(records), fmt.name)
    return [row for number, record in records for row in convert(record, fmt, kind, RowSource(file, number))]


# --------------------------------------------------------------------------------------------- specs


def _split_sample(spec: str) -> tuple[str, int | None]:
    """``"name#500"`` -> ``("name", 500)``; ``"name"`` -> ``("name", None)``."""
    name, hash_, count = spec.rpartition("#")
    if not hash_:
        return spec, None
    if not count.isdigit() or int(count) == 0:
        raise AlignkitError(
            f"dataset '{spec}': expected '<dataset>#<number of rows>' with a positive number after '#'"
        )
    return name, int(count)


def sample_rows(rows: list[Row], n: int, rng: random.Random) -> list[Row]:
    """N rows: a random subset when N fits; otherwise every row N // len times plus a random remainder.

    Like ms-swift, oversampling repeats the whole set before drawing, so no row is left out.
    The result keeps the original order (mixing shuffles later).
    """
    repeats, remainder = divmod(n, len(rows))
    picked = sorted(rng.sample(range(len(rows)), remainder))
    return rows * repeats + [rows[i] for i in picked]


def load_dataset_spec(spec: str, kind: str, *, seed: int) -> list[Row]:
    """The rows of one dataset spec (see the module docstring), as canonical rows of ``kind``.

    ``kind`` is "sft" (ConversationRow), "preference" (PreferenceRow), "unpaired" (UnpairedRow) or
    "prompt" (PromptRow). ``seed`` seeds both the built-in problems and ``#N`` sampling.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    name, n = (spec, None) if Path(spec).is_file() else _split_sample(spec)
    rows = _load(name, kind, seed)
    if n is None:
        return rows
    # Seeded by the spec too, so two datasets of the same size do not draw the same row numbers.
    sampled = sample_rows(rows, n, random.Random(f"{seed}:{name}"))
    logger.info("%s: sampled %d of %d rows", name, n, len(rows))
    return sampled


def _load(name: str, kind: str, seed: int) -> list[Row]:
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix.lower() not in FILE_SUFFIXES:
            raise AlignkitError(
                f"dataset file '{name}': unsupported type; expected one of {', '.join(FILE_SUFFIXES)}"
            )
        return rows_from_records(read_records(path, name), kind, name)
    base, _, split = name.partition(":")
    if base in BUILTIN_DATASETS:
        return _load_builtin(base, split or "train", kind, seed)
    if path.is_dir():
        raise AlignkitError(f"dataset '{name}' is a directory; pass a file ({', '.join(FILE_SUFFIXES)})")
    if path.suffix.lower() in FILE_SUFFIXES or name.startswith((".", "/", "~")):
        raise AlignkitError(f"dataset file '{name}' not found")
    return _load_hub(name, kind)


def _load_builtin(name: str, split: str, kind: str, seed: int) -> list[Row]:
    rows = BUILTIN_DATASETS[name](split, data_seed=seed)
    if not isinstance(rows[0], ROW_TYPES[kind]):
        fitting = [
            n
            for n, build in BUILTIN_DATASETS.items()
            if isinstance(build("test", data_seed=0)[0], ROW_TYPES[kind])
        ]
        raise AlignkitError(
            f"built-in dataset '{name}' holds {type(rows[0]).__name__}s, but {kind} data must be "
            f"{ROW_TYPES[kind].__name__}s: use {' or '.join(fitting)}"
        )
    logger.info("builtin:%s: %d rows (split '%s', data_seed %d)", name, len(rows), split, seed)
    return rows


def _load_hub(name: str, kind: str) -> list[Row]:
    import datasets

    repo, _, subset = name.partition(":")
    try:
        data = datasets.load_dataset(repo, subset or None, split="train")
    except Exception as exc:  # offline, no such dataset, no such subset: the user's fix is the same
        builtins = ", ".join(BUILTIN_DATASETS)
        raise AlignkitError(
            f"cannot load dataset '{name}' from the Hugging Face Hub ({type(exc).__name__}: {exc}); "
            f"the Hub is unreachable or has no such dataset. Pass a local file path "
            f"({', '.join(FILE_SUFFIXES)}) or a built-in dataset ({builtins})"
        ) from exc
    return rows_from_records(list(enumerate(data.to_list(), start=1)), kind, f"hub:{name}")


# ------------------------------------------------------------------------------------ mix and split


def split_rows(rows: list[Row], ratio: float, rng: random.Random) -> tuple[list[Row], list[Row]]:
    """A random ``ceil(ratio * len)`` rows as validation (as ``datasets.train_test_split``), at least one
    row left for training; both parts keep the original order."""
    n_val = min(math.ceil(ratio * len(rows)), len(rows) - 1)
    val_index = set(rng.sample(range(len(rows)), n_val))
    train = [row for i, row in enumerate(rows) if i not in val_index]
    return train, [rows[i] for i in sorted(val_index)]


def _held_out(spec: str) -> str | None:
    """``"arith-pref#500"`` -> ``"arith-pref:test"``: a built-in named without a split has a held-out one."""
    name = spec.split("#")[0]
    return f"{name}:test" if name in BUILTIN_DATASETS else None


def load_datasets(
    specs: list[str],
    val_specs: list[str],
    kind: str,
    *,
    split_dataset_ratio: float,
    seed: int,
    shuffle: bool = True,
) -> tuple[list[Row], list[Row]]:
    """Training and validation rows from ``--dataset`` and ``--val_dataset`` (ms-swift semantics).

    With ``val_specs``, validation is exactly those. Without, each built-in named without a split
    contributes its held-out ``test`` split, and every other dataset gives ``split_dataset_ratio`` of
    its rows (none when the ratio is 0). Training rows are mixed and, with ``shuffle``, shuffled with
    ``seed``; validation rows keep their order.
    """
    if not specs:
        raise AlignkitError("no training dataset: pass --dataset (a built-in name, a file or a Hub dataset)")
    if not 0 <= split_dataset_ratio < 1:
        raise AlignkitError(f"--split_dataset_ratio must be in [0, 1), got {split_dataset_ratio}")
    train: list[Row] = []
    val: list[Row] = []
    for spec in specs:
        rows = load_dataset_spec(spec, kind, seed=seed)
        held_out = None if val_specs else _held_out(spec)
        if held_out:
            val += load_dataset_spec(held_out, kind, seed=seed)
        elif not val_specs and split_dataset_ratio > 0:
            rows, split_off = split_rows(rows, split_dataset_ratio, random.Random(f"{seed}:split:{spec}"))
            val += split_off
        train += rows
    for spec in val_specs:
        val += load_dataset_spec(spec, kind, seed=seed)
    if shuffle:
        random.Random(seed).shuffle(train)
    logger.info("%d training rows, %d validation rows (%s data)", len(train), len(val), kind)
    return train, val
