"""Load datasets named on the command line into canonical rows: files, folders, built-ins, the Hub; sample,
mix, split.

A dataset spec is what ``--dataset`` takes, as in ms-swift:

* a built-in name, optionally with its split: ``arith-pref``, ``arith-pref:test``;
* a local file: ``data/pairs.jsonl`` (also ``.json``, ``.csv``, ``.parquet``);
* a local folder: one written by ``datasets.save_to_disk``, or a folder of such files (each detected on its own);
* a Hub dataset id, optionally with a subset: ``org/name``, ``org/name:subset``;

each optionally suffixed ``#N`` to sample N rows (``arith-pref#500``). Example::

    train, val = load_datasets(["arith-pref#500", "pairs.jsonl"], [], "preference",
                               split_dataset_ratio=0.1, seed=42)
    # train: 500 built-in rows + 90% of pairs.jsonl, shuffled; val: arith-pref:test + 10% of pairs.jsonl

Every record is checked. ``check_dataset_strategy`` "none"/"error" stops at an invalid record with an error
naming the file, row and field (and how many more are invalid); "discard"/"warning" drops invalid records
and logs how many.
"""

from __future__ import annotations

import codecs
import io
import json
import logging
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignkit.data.builtin import BUILTIN_DATASETS
from alignkit.data.fields import IMAGE_COLUMNS, has
from alignkit.data.formats import KINDS, Format, auto_columns, convert, detect_format, natural_kind
from alignkit.data.hub_datasets import SwiftDataset, find_swift_dataset
from alignkit.data.mixing import interleave_rows
from alignkit.data.rows import (
    ClassificationRow,
    ConversationRow,
    GroupRow,
    PreferenceRow,
    PromptRow,
    Row,
    RowSource,
    UnpairedRow,
)
from alignkit.data.self_cognition import is_self_cognition, self_cognition_rows
from alignkit.data.validate import log_kto_balance, warn_identical_pairs
from alignkit.errors import AlignkitError, DataError

logger = logging.getLogger("alignkit")

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
ROW_TYPES = {
    "sft": ConversationRow,
    "preference": PreferenceRow,
    "unpaired": UnpairedRow,
    "prompt": PromptRow,
    "classification": ClassificationRow,
    "embedding": GroupRow,
    "ranking": GroupRow,
}
DISCARD = ("discard", "warning")

Record = tuple[int, "dict[str, Any] | DataError"]
"""A 1-based row number (the line number in JSON lines) and the record's columns, or why it is unreadable."""


@dataclass
class LoadOptions:
    """How records become rows: the kind wanted (None: each file's natural kind), the user's column
    renaming (``--columns``), what to do with invalid rows (``--check_dataset_strategy``)."""

    kind: str | None
    columns: dict[str, str] = field(default_factory=dict)
    check_dataset_strategy: str = "none"
    model_name: list[str] = field(default_factory=list)  # self-cognition's {{NAME}} (Chinese, English)
    model_author: list[str] = field(default_factory=list)  # and {{AUTHOR}}


@dataclass
class FileReport:
    """What loading one file found, for ``alignkit data``."""

    file: str
    format: str
    kind: str
    records: int
    rows: int
    invalid: int = 0
    renamed: dict[str, str] = field(default_factory=dict)
    identical_pairs: int = 0


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


def _parse_json(text: str, file: str, row: int | None) -> Any:
    """The parsed value, or the DataError saying why ``text`` is not JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"column {exc.colno}" if row is not None else f"line {exc.lineno}, column {exc.colno}"
        return DataError(f"invalid JSON: {exc.msg} ({where})", file=file, row=row)
    except RecursionError:
        return DataError("invalid JSON: nested too deeply", file=file, row=row)
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        return DataError(f"invalid JSON: {exc}", file=file, row=row)


# A JSON escape of a UTF-16 surrogate: valid JSON, but alone it is no character and cannot be encoded.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _checked_text(record: dict[str, Any] | DataError, file: str, row: int) -> dict[str, Any] | DataError:
    """The record, or a DataError if one of its strings holds half of a surrogate pair (``"\\ud800"``)."""
    if isinstance(record, dict):
        try:
            json.dumps(record, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            return DataError(
                f"invalid text: the escape \\u{ord(exc.object[exc.start]):04x} is half of a UTF-16 surrogate pair",
                file=file, row=row,
            )
    return record


def _read_json_lines(text: str, file: str) -> list[Record]:
    records: list[Record] = []
    # split("\n"), not splitlines(): JSON strings may hold U+2028 or U+0085, which splitlines() breaks at.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        value = _parse_json(line, file, number)
        record = value if isinstance(value, DataError) else _object(value, file, number)
        if _SURROGATE_ESCAPE.search(line):
            record = _checked_text(record, file, number)
        records.append((number, record))
    return records


def _read_json_array(text: str, file: str) -> list[Record]:
    data = _parse_json(text, file, None)
    if isinstance(data, DataError):
        raise data
    records = [(number, _object(record, file, number)) for number, record in enumerate(data, start=1)]
    if _SURROGATE_ESCAPE.search(text):
        records = [(number, _checked_text(record, file, number)) for number, record in records]
    return records


def _object(record: Any, file: str, number: int) -> dict[str, Any] | DataError:
    if isinstance(record, list) and record and all(isinstance(m, dict) and "role" in m for m in record):
        return {"messages": record}  # a line that is a conversation itself (ColossalChat's lora_finetune.py data)
    if not isinstance(record, dict):
        return DataError(f"expected a JSON object, got {type(record).__name__}", file=file, row=number)
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


def parse_columns(value: str | dict | None) -> dict[str, str]:
    """``--columns '{"src": "dst"}'`` (a JSON object, or a dict from Python) -> ``{"src": "dst"}``."""
    if not value:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise AlignkitError(
                f'--columns: invalid JSON ({exc.msg}); expected an object like \'{{"src": "dst"}}\''
            ) from exc
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise AlignkitError(
            f'--columns: expected a JSON object of column names like \'{{"src": "dst"}}\', got {value!r}'
        )
    return value


def rename(records: list[Record], mapping: dict[str, str], file: str) -> list[Record]:
    """Rename columns (``{"src": "dst"}``) in every record; a renaming onto an existing column is refused."""
    out: list[Record] = []
    for number, record in records:
        if isinstance(record, dict):
            clash = next((dst for src, dst in mapping.items() if src in record and dst in record and dst != src), None)
            if clash is not None:
                raise DataError(f"renaming a column to '{clash}', which the file already has", file=file, row=number)
            record = {mapping.get(key, key): value for key, value in record.items()}
        out.append((number, record))
    return out


def _choose_format(records: list[Record], kind: str | None, file: str) -> tuple[Format, dict[str, str]]:
    """The file's format, directly or after ms-swift's automatic column renaming (see ``formats.AUTO_COLUMNS``).

    The renaming is used when it yields a format that gives ``kind`` rows and explains more of the
    file's columns than the direct match (``prompt``/``response``/``rejected_response`` is ms-swift's
    query/response preference, not TRL's prompt-only).
    """
    valid = [record for _, record in records if isinstance(record, dict)]
    columns = list(dict.fromkeys(column for record in valid for column in record))
    mapping = auto_columns(columns)
    try:
        direct: Format | None = detect_format(columns, kind, file, valid)
        failure = None
    except DataError as exc:
        direct, failure = None, exc
    if mapping:
        renamed_columns = [mapping.get(c, c) for c in columns]
        renamed = [{mapping.get(k, k): v for k, v in record.items()} for record in valid]
        try:
            mapped = detect_format(renamed_columns, kind, file, renamed)
        except DataError:
            mapped = None
        if mapped is not None and (direct is None or len(mapped.columns) > len(direct.columns)):
            return mapped, mapping
    if direct is None:
        raise failure
    return direct, {}


def rows_from_records(records: list[Record], file: str, options: LoadOptions,
                      report: list[FileReport] | None = None) -> list[Row]:
    """Detect the format from the columns of all records (logged), convert every record, apply the strategy
    for invalid ones."""
    if options.columns:
        records = rename(records, options.columns, file)
    if not any(isinstance(record, dict) for _, record in records):
        if records:  # nothing readable: report the first problem
            raise records[0][1]
        raise DataError("the file holds no rows", file=file)
    fmt, mapping = _choose_format(records, options.kind, file)
    kind = options.kind
    if kind is None:
        number, first = next((n, r) for n, r in records if isinstance(r, dict))
        kind = natural_kind(fmt, {mapping.get(k, k): v for k, v in first.items()}, RowSource(file, number))
    rows: list[Row] = []
    invalid: list[DataError] = []
    for number, record in records:
        try:
            if isinstance(record, DataError):
                raise record
            record = {mapping.get(k, k): v for k, v in record.items()} if mapping else record
            rows += convert(record, fmt, kind, RowSource(file, number))
        except DataError as exc:
            invalid.append(exc)
    renamed = ", ".join(f"{src} → {dst}" for src, dst in mapping.items())
    logger.info("%s: %d rows in format '%s'%s", file, len(records), fmt.name,
                f" (columns renamed as ms-swift does: {renamed})" if renamed else "")
    if invalid:
        _handle_invalid(invalid, len(records), file, options.check_dataset_strategy)
    if not rows:
        raise DataError("no valid rows", file=file)
    identical = warn_identical_pairs(rows, file) if kind == "preference" else 0
    with_images = sum(1 for _, r in records if isinstance(r, dict) and any(has(r, c) for c in IMAGE_COLUMNS))
    if with_images:
        logger.warning("%s: %d rows name images; their paths were checked. Images reach the model only when it is "
                       "a vision-language model (docs/vision.md); a text model ignores them", file, with_images)
    if report is not None:
        report.append(FileReport(file, fmt.name, kind, len(records), len(rows), len(invalid), mapping, identical))
    return rows


def _handle_invalid(invalid: list[DataError], total: int, file: str, strategy: str) -> None:
    first = invalid[0]
    rows = ", ".join(str(e.row) for e in invalid[:10]) + (", ..." if len(invalid) > 10 else "")
    if strategy not in DISCARD:
        if len(invalid) == 1:
            raise first
        more = f"{len(invalid)} invalid rows in this file: {rows}; --check_dataset_strategy discard drops them"
        raise DataError(f"{first.message} ({more})", file=first.file, row=first.row, field=first.field)
    logger.warning("%s: dropped %d of %d rows as invalid (--check_dataset_strategy %s): rows %s. First: %s",
                   file, len(invalid), total, strategy, rows, first)


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


def load_dataset_spec(spec: str, kind: str | None, *, seed: int, columns: dict[str, str] | None = None,
                      check_dataset_strategy: str = "none", report: list[FileReport] | None = None,
                      model_name: list[str] | None = None, model_author: list[str] | None = None) -> list[Row]:
    """The rows of one dataset spec (see the module docstring), as canonical rows of ``kind``.

    ``kind`` is "sft" (ConversationRow), "preference" (PreferenceRow), "unpaired" (UnpairedRow) or
    "prompt" (PromptRow); None takes each file's natural kind (for ``alignkit data``). ``seed`` seeds both
    the built-in problems and ``#N`` sampling.
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    options = LoadOptions(kind, dict(columns or {}), check_dataset_strategy, list(model_name or []),
                          list(model_author or []))
    name, n = (spec, None) if Path(spec).exists() else _split_sample(spec)
    rows = _load(name, options, seed, report)
    if n is None:
        return rows
    # Seeded by the spec too, so two datasets of the same size do not draw the same row numbers.
    sampled = sample_rows(rows, n, random.Random(f"{seed}:{name}"))
    logger.info("%s: sampled %d of %d rows%s", name, n, len(rows), " (with repeats)" if n > len(rows) else "")
    return sampled


def _load(name: str, options: LoadOptions, seed: int, report: list[FileReport] | None) -> list[Row]:
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix.lower() not in FILE_SUFFIXES:
            raise AlignkitError(
                f"dataset file '{name}': unsupported type; expected one of {', '.join(FILE_SUFFIXES)}"
            )
        return rows_from_records(read_records(path, name), name, options, report)
    if path.is_dir():
        return _load_folder(path, name, options, report)
    base, _, split = name.partition(":")
    if base in BUILTIN_DATASETS:
        return _load_builtin(base, split or "train", options.kind, seed)
    if is_self_cognition(name):
        if options.kind not in (None, "sft"):
            raise AlignkitError(f"dataset '{name}' holds SFT conversations; {options.kind} data needs other rows")
        rows = self_cognition_rows(name, names=options.model_name, authors=options.model_author)
        logger.info("builtin:%s: %d rows (self-cognition, --model_name %s, --model_author %s)", name, len(rows),
                    " ".join(options.model_name), " ".join(options.model_author))
        return rows
    if path.suffix.lower() in FILE_SUFFIXES or name.startswith((".", "/", "~")):
        raise AlignkitError(f"dataset file '{name}' not found")
    registered = find_swift_dataset(name)
    if registered is not None:
        return _load_swift_dataset(name, *registered, options, report)
    return _load_hub(name, options, report)


def _load_folder(path: Path, name: str, options: LoadOptions, report: list[FileReport] | None) -> list[Row]:
    """A ``datasets.save_to_disk`` folder (it has ``state.json`` or ``dataset_dict.json``), or a folder of data
    files, each detected on its own, in name order."""
    if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
        import datasets

        data = datasets.load_from_disk(str(path))
        if isinstance(data, datasets.DatasetDict):
            splits = list(data)
            split = "train" if "train" in data else splits[0] if len(splits) == 1 else None
            if split is None:
                raise AlignkitError(f"dataset folder '{name}' holds splits {', '.join(splits)} but no 'train' split")
            data = data[split]
        return rows_from_records(list(enumerate(data.to_list(), start=1)), name, options, report)
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in FILE_SUFFIXES)
    saved = sorted(p for p in path.iterdir() if (p / "state.json").is_file() or (p / "dataset_dict.json").is_file())
    if not files and saved:  # e.g. ColossalChat's arrow/ folder of part-00000/ ... save_to_disk parts
        return [row for part in saved for row in _load_folder(part, str(Path(name) / part.name), options, report)]
    if not files:
        raise AlignkitError(
            f"dataset folder '{name}' holds no {', '.join(FILE_SUFFIXES)} files and was not written by "
            "datasets.save_to_disk"
        )
    rows: list[Row] = []
    for file in files:
        shown = str(Path(name) / file.name)
        rows += rows_from_records(read_records(file, shown), shown, options, report)
    return rows


def _load_builtin(name: str, split: str, kind: str | None, seed: int) -> list[Row]:
    rows = BUILTIN_DATASETS[name](split, data_seed=seed)
    if kind is not None and not isinstance(rows[0], ROW_TYPES[kind]):
        fitting = [
            n
            for n, build in BUILTIN_DATASETS.items()
            if isinstance(build("test", data_seed=0)[0], ROW_TYPES[kind])
        ]
        instead = f"use {' or '.join(fitting)}" if fitting else "there is no built-in one: pass a file"
        raise AlignkitError(
            f"built-in dataset '{name}' holds {type(rows[0]).__name__}s, but {kind} data must be "
            f"{ROW_TYPES[kind].__name__}s: {instead}"
        )
    logger.info("builtin:%s: %d rows (split '%s', data_seed %d)", name, len(rows), split, seed)
    return rows


def _load_swift_dataset(name: str, dataset: SwiftDataset, subset: str | None, options: LoadOptions,
                        report: list[FileReport] | None) -> list[Row]:
    """An ms-swift dataset name (alignkit/data/hub_datasets.py): its Hugging Face copy, read with ms-swift's
    column mapping; one that only ModelScope holds, or a hub that cannot be reached, stops saying what to pass."""
    where = f"{dataset.modelscope_id}" + (f", subset {subset}" if subset else "")
    local = f"pass the local file ({', '.join(FILE_SUFFIXES)}) or folder with --dataset"
    if dataset.hf_id is None:
        raise AlignkitError(
            f"dataset '{name}' is ms-swift's ModelScope dataset {where}, which has no Hugging Face copy that "
            f"ms-swift names; alignkit downloads from the Hugging Face Hub only. Download it (for example `modelscope "
            f"download --dataset {dataset.modelscope_id} --local_dir DIR`) and {local}"
        )
    import datasets

    try:
        data = datasets.load_dataset(dataset.hf_id, subset, split="train")
    except Exception as exc:  # offline, no such dataset or subset: the user's fix is the same
        raise AlignkitError(
            f"cannot load dataset '{name}' (ms-swift's {where}) as '{dataset.hf_id}' from the Hugging Face Hub "
            f"({type(exc).__name__}: {exc}). If this machine is offline, download it elsewhere and {local}"
        ) from exc
    file = f"hub:{dataset.hf_id}"
    logger.info("dataset '%s': ms-swift's %s, read from the Hugging Face Hub as %s", name, where, dataset.hf_id)
    records: list[Record] = list(enumerate(data.to_list(), start=1))
    if dataset.clean is not None:
        records = [(n, _cleaned(dataset.clean, r, file, n)) for n, r in records]
    return rows_from_records(rename(records, dataset.columns, file), file, options, report)


def _cleaned(clean, record: dict[str, Any], file: str, row: int) -> dict[str, Any] | DataError:
    try:
        return clean(record)
    except KeyError as exc:  # the hub's copy lacks a column ms-swift's clean-up reads
        return DataError(f"missing column {exc}, which ms-swift's reading of this dataset needs", file=file, row=row)


def _load_hub(name: str, options: LoadOptions, report: list[FileReport] | None) -> list[Row]:
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
    return rows_from_records(list(enumerate(data.to_list(), start=1)), f"hub:{name}", options, report)


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
    columns: dict[str, str] | None = None,
    check_dataset_strategy: str = "none",
    model_name: list[str] | None = None,
    model_author: list[str] | None = None,
    interleave_prob: list[float] | None = None,
    stopping_strategy: str = "first_exhausted",
    val_shuffle: bool = False,
    cached: list[str] | None = None,
    cached_val: list[str] | None = None,
) -> tuple[list[Row], list[Row]]:
    """Training and validation rows from ``--dataset`` and ``--val_dataset`` (ms-swift semantics).

    With ``val_specs``, validation is exactly those (shuffled with ``val_shuffle``). Without, each built-in named
    without a split contributes its held-out ``test`` split, and every other dataset gives ``split_dataset_ratio``
    of its rows (none when the ratio is 0). Training rows are concatenated, or interleaved by ``interleave_prob``
    (``alignkit.data.mixing``), after the rows of ``cached`` (``--cached_dataset``) and, with ``shuffle``, shuffled
    with ``seed``; validation rows keep their order. ``model_name``/``model_author`` fill in the self-cognition set.
    """
    cached, cached_val = list(cached or []), list(cached_val or [])
    if not specs and not cached:
        raise AlignkitError("no training dataset: pass --dataset (a built-in name, a file or a Hub dataset)")
    if not 0 <= split_dataset_ratio < 1:
        raise AlignkitError(f"--split_dataset_ratio must be in [0, 1), got {split_dataset_ratio}")
    load = {"seed": seed, "columns": columns, "check_dataset_strategy": check_dataset_strategy,
            "model_name": model_name, "model_author": model_author}
    if (model_name or model_author) and not any(is_self_cognition(s.split("#")[0]) for s in specs + val_specs):
        logger.warning("--model_name/--model_author have no effect: they fill in the self-cognition set "
                       "(swift/self-cognition), which no --dataset or --val_dataset names")
    sets: list[list[Row]] = []
    val: list[Row] = []
    for spec in specs:
        rows = load_dataset_spec(spec, kind, **load)
        held_out = None if val_specs else _held_out(spec)
        if held_out:
            val += load_dataset_spec(held_out, kind, **load)
        elif not val_specs and split_dataset_ratio > 0:
            rows, split_off = split_rows(rows, split_dataset_ratio, random.Random(f"{seed}:split:{spec}"))
            val += split_off
        sets.append(rows)
    if interleave_prob:
        train = interleave_rows(sets, list(interleave_prob), seed=seed, stopping_strategy=stopping_strategy)
        logger.info("Interleaved %d datasets by --interleave_prob %s (--stopping_strategy %s): %d rows", len(sets),
                    " ".join(map(str, interleave_prob)), stopping_strategy, len(train))
    else:
        train = [row for rows in sets for row in rows]
    train = [row for spec in cached for row in load_cached_dataset(spec, kind, **load)] + train
    listed_val = [row for spec in val_specs for row in load_dataset_spec(spec, kind, **load)]
    if val_shuffle:
        random.Random(f"{seed}:val").shuffle(listed_val)
    val = [row for spec in cached_val for row in load_cached_dataset(spec, kind, **load)] + val + listed_val
    if shuffle:
        random.Random(seed).shuffle(train)
    logger.info("%d training rows, %d validation rows (%s data)", len(train), len(val), kind)
    if kind == "unpaired":
        log_kto_balance(train, "training")
    return train, val


def load_cached_dataset(spec: str, kind: str | None, *, seed: int, columns: dict[str, str] | None = None,
                        check_dataset_strategy: str = "none", model_name: list[str] | None = None,
                        model_author: list[str] | None = None) -> list[Row]:
    """A ``--cached_dataset`` folder (``name#N`` samples N rows). ms-swift's ``swift export --to_cached_dataset``
    writes its standardised rows (``messages``, ``rejected_response``, ``label``, ``images``, ...) with
    ``datasets.save_to_disk`` and adds a ``lengths`` column counted with its own tokenizer; the rows are read as
    any dataset is and tokenised with this run's tokenizer and template, ``lengths`` and columns that hold no
    value in any row dropped."""
    import datasets

    name, n = (spec, None) if Path(spec).exists() else _split_sample(spec)
    path = Path(name).expanduser()
    if not ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
        raise AlignkitError(f"--cached_dataset {spec}: '{name}' is not a folder written by `swift export "
                            "--to_cached_dataset true` (datasets.save_to_disk: no state.json)")
    data = datasets.load_from_disk(str(path))
    if isinstance(data, datasets.DatasetDict):
        raise AlignkitError(f"--cached_dataset {spec}: the folder holds splits {', '.join(data)}; pass the split's "
                            "own folder (e.g. .../train)")
    records = data.to_list()
    empty = {c for c in data.column_names if all(r.get(c) is None for r in records)} | {"lengths"}
    records = [{k: v for k, v in r.items() if k not in empty} for r in records]
    options = LoadOptions(kind, dict(columns or {}), check_dataset_strategy)
    rows = rows_from_records(list(enumerate(records, start=1)), name, options)
    if n is None:
        return rows
    return sample_rows(rows, n, random.Random(f"{seed}:{name}"))
