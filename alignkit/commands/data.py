"""`alignkit data`: what the loss will see. For each dataset: the detected format, row counts, token-length
statistics, and a few rows rendered through the chat template with their trained tokens highlighted.

    alignkit data --dataset pairs.jsonl --model path/to/model --num_examples 2

Trained tokens are shown in green on a terminal and between ``[[`` and ``]]`` otherwise.
"""

from __future__ import annotations

import statistics
import sys

from alignkit.config.commands import DataArguments
from alignkit.data.chat_templates import resolve_template
from alignkit.data.encode import encode_rows
from alignkit.data.loading import FileReport, load_dataset_spec, parse_columns
from alignkit.data.rows import PreferenceRow, Row
from alignkit.data.template import IGNORE_INDEX, ChatEncoder, Encoded
from alignkit.data.validate import kto_balance
from alignkit.errors import AlignkitError
from alignkit.models.load import load_tokenizer, resolve_model_path

SEQUENCE_NAMES = {True: ("chosen", "rejected"), False: ("sequence",)}


def run_data(args: DataArguments) -> int:
    if not args.dataset:
        raise AlignkitError("pass --dataset (files, folders, built-in names or Hub ids) to inspect")
    model_path = resolve_model_path(args.model)
    tokenizer = load_tokenizer(model_path)
    template = resolve_template(tokenizer, template=args.template, template_config=args.template_config)
    encoder = ChatEncoder(
        tokenizer, max_length=args.max_length, max_prompt_length=args.max_prompt_length,
        truncation_strategy=args.truncation_strategy, system=args.system, template=template,
        loss_scale=args.loss_scale, agent_template=args.agent_template,
    )
    columns = parse_columns(args.columns)
    marks = ("\x1b[1;32m", "\x1b[0m") if sys.stdout.isatty() else ("[[", "]]")
    print(f"model: {model_path}   template: {describe(template.name)}   --loss_scale {args.loss_scale}   "
          f"--max_length {args.max_length}")
    print(f"trained tokens are shown {marks[0]}like this{marks[1]}")
    for spec in args.dataset:
        report: list[FileReport] = []
        rows = load_dataset_spec(spec, None if args.kind == "auto" else args.kind, seed=args.data_seed,
                                 columns=columns, check_dataset_strategy=args.check_dataset_strategy, report=report,
                                 model_name=args.model_name, model_author=args.model_author)
        print(f"\n== {spec}")
        for file in report:
            print(format_report(file))
        if not report:
            print(f"  {len(rows)} {type(rows[0]).__name__}s (built-in)")
        desirable, undesirable = kto_balance(rows)
        if desirable + undesirable:
            print(f"  KTO labels: {desirable} desirable, {undesirable} undesirable")
        items, dropped = encode_rows(encoder, rows)
        print(f"  tokenised: {len(items)} rows, {dropped} dropped as longer than --max_length {args.max_length} "
              f"(--truncation_strategy {args.truncation_strategy})")
        for line in length_table(items):
            print("  " + line)
        for index, encoded in items[: args.num_examples]:
            print_example(rows[index], encoded, tokenizer, marks)
    return 0


def describe(template_name: str) -> str:
    return "the tokenizer's own" if template_name == "tokenizer" else template_name


def format_report(file: FileReport) -> str:
    parts = [f"  {file.file}: format '{file.format}' → {file.rows} {file.kind} rows from {file.records} records"]
    if file.renamed:
        parts.append("columns renamed " + ", ".join(f"{a} → {b}" for a, b in file.renamed.items()))
    if file.invalid:
        parts.append(f"{file.invalid} invalid rows dropped")
    if file.identical_pairs:
        parts.append(f"{file.identical_pairs} pairs with identical answers")
    return "; ".join(parts)


def prompt_length(encoded: Encoded) -> int:
    return next((i for i, label in enumerate(encoded.labels) if label != IGNORE_INDEX), len(encoded.labels))


def stats(values: list[int]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return (f"min {ordered[0]:>5}  mean {statistics.fmean(ordered):>7.1f}  median {statistics.median(ordered):>6g}  "
            f"p95 {p95:>5}  max {ordered[-1]:>5}")


def length_table(items: list) -> list[str]:
    """Token counts per sequence kind: whole sequence, prompt (before the first trained token) and trained."""
    if not items:
        return []
    paired = isinstance(items[0][1], tuple)
    lines = []
    for position, name in enumerate(SEQUENCE_NAMES[paired]):
        sequences = [encoded[position] if paired else encoded for _, encoded in items]
        lines.append(f"{name + ' tokens':<18} {stats([len(s.input_ids) for s in sequences])}")
        if position == 0:
            lines.append(f"{'prompt tokens':<18} {stats([prompt_length(s) for s in sequences])}")
        lines.append(f"{name + ' trained':<18} {stats([s.num_trained for s in sequences])}")
    return lines


def highlighted(tokenizer, encoded: Encoded, marks: tuple[str, str]) -> str:
    """The sequence as text, each run of trained tokens wrapped in ``marks``."""
    pieces, run, trained = [], [], None
    for token, label in zip(encoded.input_ids, encoded.labels):
        is_trained = label != IGNORE_INDEX
        if run and is_trained != trained:
            pieces.append(_piece(tokenizer, run, trained, marks))
            run = []
        run.append(token)
        trained = is_trained
    if run:
        pieces.append(_piece(tokenizer, run, trained, marks))
    return "".join(pieces)


def _piece(tokenizer, ids: list[int], trained: bool, marks: tuple[str, str]) -> str:
    text = tokenizer.decode(ids, skip_special_tokens=False)
    return f"{marks[0]}{text}{marks[1]}" if trained else text


def print_example(row: Row, encoded, tokenizer, marks: tuple[str, str]) -> None:
    where = f"{row.source.file}, row {row.source.row}" if row.source else "row"
    sequences = encoded if isinstance(encoded, tuple) else (encoded,)
    for name, sequence in zip(SEQUENCE_NAMES[isinstance(row, PreferenceRow)], sequences):
        print(f"\n-- {where} ({name}: {len(sequence.input_ids)} tokens, {sequence.num_trained} trained)")
        print(highlighted(tokenizer, sequence, marks))
