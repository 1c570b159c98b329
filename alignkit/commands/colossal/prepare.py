"""`alignkit colossal prepare_dataset`: ColossalChat's data preparation, writing its layout.

    alignkit colossal prepare_dataset --type preference --data_input_dirs raw/ --tokenizer_dir M \\
        --conversation_template_config template.json --data_jsonl_output_dir out/jsonl \\
        --data_arrow_output_dir out/arrow --max_length 4096 --num_spliced_dataset_bins 10

Every ``.jsonl`` file of each input folder is read (any format alignkit reads, ColossalChat's raw ones
included), rendered with the template config (the tokenizer's own template when the file does not exist,
as ColossalChat, which then writes the config there), and written as ``part-0000N.jsonl`` and arrow
``part-0000N/`` folders with ColossalChat's columns (alignkit/data/prepared.py). Training then reads them
from their token ids: ``--dataset out/arrow`` (or out/jsonl, or one part).
"""

from __future__ import annotations

import json
import logging
import math
import random
from pathlib import Path
from typing import Any

from alignkit.data.template import IGNORE_INDEX, Encoded
from alignkit.errors import AlignkitError

logger = logging.getLogger("alignkit")

KINDS = {"sft": "sft", "preference": "preference", "kto": "unpaired", "prompt": "prompt"}
# ColossalChat's system message when no template config exists (prepare_dataset.py).
DEFAULT_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
                  "helpful, detailed, and polite answers to the human's questions.\n\n")


def run_prepare(colossal: dict[str, Any]) -> int:
    from alignkit.data.chat_templates import resolve_template
    from alignkit.data.encode import encode_rows
    from alignkit.data.loading import load_dataset_spec
    from alignkit.data.template import ChatEncoder
    from alignkit.models.load import load_tokenizer

    kind = KINDS[colossal["type"]]
    jsonl_dir, arrow_dir = Path(colossal["data_jsonl_output_dir"]), Path(colossal["data_arrow_output_dir"])
    for flag, folder in (("--data_jsonl_output_dir", jsonl_dir), ("--data_arrow_output_dir", arrow_dir)):
        if folder.exists():  # as ColossalChat: never mix two preparations in one folder
            raise AlignkitError(f"{flag} {folder} exists; pass a new folder")
    files = input_files(colossal["data_input_dirs"])
    tokenizer = load_tokenizer(colossal["tokenizer_dir"])
    config = Path(colossal["conversation_template_config"])
    if config.is_file():
        template, system = resolve_template(tokenizer, template_config=str(config)), None
    else:
        template, system = resolve_template(tokenizer), DEFAULT_SYSTEM
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(json.dumps({"chat_template": template.source, "system_message": DEFAULT_SYSTEM,
                                      "stop_ids": list(template.stop_ids)}, indent=4))
        logger.info("--conversation_template_config %s did not exist: the tokenizer's template with ColossalChat's "
                    "default system message, written there", config)
    encoder = ChatEncoder(tokenizer, max_length=colossal["max_length"], template=template, system=system)
    per_file = colossal["num_samples_per_datafile"]
    rows = []
    for file in files:
        loaded = load_dataset_spec(str(file), kind, seed=42)
        if per_file > 0:  # ColossalChat samples each file without repeats
            loaded = random.Random(42).sample(loaded, min(per_file, len(loaded)))
        rows += loaded
    items, dropped = encode_rows(encoder, rows)
    logger.info("%d rows prepared, %d longer than --max_length %d dropped", len(items), dropped,
                colossal["max_length"])
    records = [record_of(kind, encoded, rows[index], tokenizer) for index, encoded in items]
    write_parts(records, colossal["num_spliced_dataset_bins"], jsonl_dir, arrow_dir)
    print(f"prepared: {len(records)} rows in {jsonl_dir} and {arrow_dir}")
    return 0


def input_files(dirs: str) -> list[Path]:
    """The ``.jsonl`` files of each comma-separated folder, as ColossalChat lists them."""
    files = []
    for folder in dirs.split(","):
        path = Path(folder)
        if not path.is_dir():
            raise AlignkitError(f"--data_input_dirs: {folder} is not a folder")
        found = sorted(p for p in path.iterdir() if p.suffix == ".jsonl")
        if not found:
            raise AlignkitError(f"--data_input_dirs: {folder} holds no .jsonl files")
        files += found
    return files


def _decode_trained(tokenizer, encoded: Encoded) -> list[str]:
    """The text of each trained span (ColossalChat's ``labels_decode``), for reading only."""
    spans, current = [], []
    for label in encoded.labels + [IGNORE_INDEX]:
        if label != IGNORE_INDEX:
            current.append(label)
        elif current:
            spans.append(tokenizer.decode(current)), current.clear()
    return spans


def record_of(kind: str, encoded, row, tokenizer) -> dict[str, Any]:
    """One prepared row with ColossalChat's columns (tokenize_sft / tokenize_rlhf / tokenize_kto / tokenize_prompt)."""
    if kind == "preference":
        record = {}
        for side, sequence in zip(("chosen", "rejected"), encoded):
            record[f"{side}_input_ids"] = sequence.input_ids
            record[f"{side}_loss_mask"] = [int(label != IGNORE_INDEX) for label in sequence.labels]
            record[f"{side}_label_decode"] = _decode_trained(tokenizer, sequence)
        return record
    if kind == "unpaired":
        start = next(i for i, label in enumerate(encoded.labels) if label != IGNORE_INDEX)
        return {"prompt": encoded.input_ids[:start], "completion": encoded.input_ids[start:], "label": row.label,
                "input_id_decode": tokenizer.decode(encoded.input_ids),
                "completion_decode": tokenizer.decode(encoded.input_ids[start:])}
    category = row.extras.get("category", "None") if hasattr(row, "extras") else "None"
    if kind == "prompt":
        record = {"input_ids": encoded.input_ids, "inputs_decode": tokenizer.decode(encoded.input_ids),
                  "seq_length": len(encoded.input_ids), "seq_category": category}
        if "gt_answer" in row.extras:
            record["gt_answer"] = row.extras["gt_answer"]
        return record
    return {"input_ids": encoded.input_ids, "labels": encoded.labels,
            "inputs_decode": tokenizer.decode(encoded.input_ids), "labels_decode": _decode_trained(tokenizer, encoded),
            "seq_length": len(encoded.input_ids),
            "seq_category": category}


def write_parts(records: list[dict], bins: int, jsonl_dir: Path, arrow_dir: Path) -> None:
    """ColossalChat's split: the rows cut into ``bins`` consecutive parts of ceil(100 / bins) percent each
    (``train[0%:10%]``, ...); empty parts are skipped, as there."""
    import datasets

    if not 1 <= bins < 100000:
        raise AlignkitError(f"--num_spliced_dataset_bins {bins}: must be between 1 and 99999")
    jsonl_dir.mkdir(parents=True)
    arrow_dir.mkdir(parents=True)
    step = math.ceil(100 / bins)
    for index, start in enumerate(range(0, 100, step)):
        end = min(start + step, 100)
        part = records[round(len(records) * start / 100) : round(len(records) * end / 100)]
        if not part:
            continue
        name = f"part-{index:05d}"
        with open(jsonl_dir / f"{name}.jsonl", "w", encoding="utf-8") as out:
            for record in part:
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
        datasets.Dataset.from_list(part).save_to_disk(str(arrow_dir / name))
