"""Tokenised data cached on disk, so a second run over the same data starts training at once.

The key is a hash of everything that decides the token ids and labels: the canonical rows themselves
(so the files' content, ``#N`` sampling, mixing, shuffling and ``--columns`` all count), the tokenizer
(its full serialisation), the chat template (or ``--use_chat_template false``) and system prompt,
``--loss_scale``, ``--agent_template``, ``--max_length``, ``--max_prompt_length`` and ``--truncation_strategy``.
Change any of them and the cache misses. Files live in ``$ALIGNKIT_CACHE/tokenized/<key>.npz`` (default
``~/.cache/alignkit``) and hold plain integer arrays (and the per-token loss weights, when --loss_scale gives any).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

import alignkit
from alignkit.data.encode import Item, encode_rows
from alignkit.data.rows import Row
from alignkit.data.template import IGNORE_INDEX, ChatEncoder, Encoded

logger = logging.getLogger("alignkit")

CACHE_VERSION = 2  # bump when the encoding of a row changes


def tokenizer_fingerprint(tokenizer) -> str:
    if tokenizer.is_fast:
        text = tokenizer.backend_tokenizer.to_str()
    else:
        text = json.dumps(sorted(tokenizer.get_vocab().items()))
    special = json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str)
    return hashlib.sha256((type(tokenizer).__name__ + special + text).encode()).hexdigest()


def _row_tokens(row: Row) -> dict:
    """The fields of a row that reach the tokens (not its source, extras or margin)."""
    fields = dataclasses.asdict(row)
    for name in ("source", "extras", "margin"):
        fields.pop(name, None)
    return {"type": type(row).__name__, **fields}


def cache_key(encoder: ChatEncoder, rows: list[Row]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(_row_tokens(row), sort_keys=True, default=str).encode())
        digest.update(b"\n")
    settings = {
        "version": CACHE_VERSION,
        "alignkit": alignkit.__version__,
        "rows": digest.hexdigest(),
        "tokenizer": tokenizer_fingerprint(encoder.tokenizer),
        "template": [encoder.template.source, encoder.template.system_message, encoder.template.end_of_assistant],
        "system": encoder.system,
        "loss_scale": [encoder.loss_scale, *encoder.loss_scale_modifiers, encoder.loss_weighting],
        "agent_template": encoder.agent_template,
        "use_chat_template": encoder.use_chat_template,
        "max_length": encoder.max_length,
        "max_prompt_length": encoder.max_prompt_length,
        "truncation_strategy": encoder.truncation_strategy,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:32]


def cache_path(key: str) -> Path:
    return cache_root() / "tokenized" / f"{key}.npz"


def _stored_count(encoded) -> int:
    """1 for a sequence; a tuple's length (2: a pair, more: an embedding/reranker row), 0 for a one-tuple."""
    if not isinstance(encoded, tuple):
        return 1
    return len(encoded) if len(encoded) != 1 else 0


def save(path: Path, items: list[Item], dropped: int) -> None:
    sequences = [s for _, encoded in items for s in (encoded if isinstance(encoded, tuple) else (encoded,))]
    arrays = {
        "row_ids": np.array([i for i, _ in items], dtype=np.int64),
        "per_item": np.array([_stored_count(e) for _, e in items], dtype=np.int32),
        "lengths": np.array([len(s.input_ids) for s in sequences], dtype=np.int64),
        "input_ids": np.array([t for s in sequences for t in s.input_ids], dtype=np.int64),
        "labels": np.array([t for s in sequences for t in s.labels], dtype=np.int64),
        "dropped": np.array(dropped, dtype=np.int64),
    }
    if any(s.loss_scale is not None for s in sequences):  # weights where given, else 1 per trained token
        arrays["loss_scale"] = np.array([w for s in sequences for w in (
            s.loss_scale if s.loss_scale is not None else [float(t != IGNORE_INDEX) for t in s.labels])],
            dtype=np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.partial-{os.getpid()}.npz")
    with partial.open("wb") as out:
        np.savez(out, **arrays)
    os.replace(partial, path)  # a reader never sees half a file


def load(path: Path) -> tuple[list[Item], int]:
    with np.load(path, allow_pickle=False) as data:
        ends = np.cumsum(data["lengths"]).tolist()
        ids, labels = data["input_ids"].tolist(), data["labels"].tolist()
        scale = data["loss_scale"].tolist() if "loss_scale" in data.files else None
        starts = [0, *ends[:-1]]
        sequences = [Encoded(ids[a:b], labels[a:b], _weights(scale, labels, a, b)) for a, b in zip(starts, ends)]
        items: list[Item] = []
        position = 0
        for row_id, count in zip(data["row_ids"].tolist(), data["per_item"].tolist()):
            size = count or 1
            group = sequences[position : position + size]
            items.append((row_id, group[0] if count == 1 else tuple(group)))
            position += size
        return items, int(data["dropped"])


def _weights(scale: list[float] | None, labels: list[int], a: int, b: int) -> list[float] | None:
    """A cached sequence's weights, None again where each trained token weighs 1 (as the encoder gives it)."""
    if scale is None:
        return None
    weights = scale[a:b]
    return None if all(w == (t != IGNORE_INDEX) for w, t in zip(weights, labels[a:b])) else weights


def encode_dataset(encoder: ChatEncoder, rows: list[Row], split: str, *, num_proc: int = 1,
                   use_cache: bool = True) -> list[Item]:
    """Encode rows (or reuse the cached encoding), dropping and counting rows that do not fit."""
    if not rows:
        return []
    path = cache_path(cache_key(encoder, rows)) if use_cache else None
    if path is not None and path.is_file():
        items, dropped = load(path)
        logger.info("Tokenised %s rows: reused %s", split, path)
    else:
        items, dropped = encode_rows(encoder, rows, num_proc=num_proc)
        if path is not None:
            save(path, items, dropped)
            logger.info("Tokenised %s rows: cached in %s", split, path)
    if dropped:
        logger.warning("Dropped %d of %d %s rows that do not fit --max_length %d (--truncation_strategy %s)",
                       dropped, len(rows), split, encoder.max_length, encoder.truncation_strategy)
    return items


def cache_root() -> Path:
    return Path(os.environ.get("ALIGNKIT_CACHE", Path.home() / ".cache" / "alignkit"))
