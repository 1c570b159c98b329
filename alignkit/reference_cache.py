"""Reference log-probs computed once, before training, and cached on disk.

The reference policy never changes, so its log-probs of every training and held-out sequence can be
computed in one no-grad pass. Training then runs no reference forward at all, and full fine-tuning keeps
no frozen copy of the model in memory.

The cache file is named by a hash of everything the numbers depend on: the reference weights (hashed
from memory, not from a path), the token ids and labels of every sequence (which carry the data, the
chat template and --max_length), the chat template and --max_length themselves, and the precision.
Anything else is a different file, so a stale cache is never picked up; a file whose recorded key differs
from its name, or a sequence missing from the table, stops the run with an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from pathlib import Path

import torch

from alignkit.builtin_model import cache_root
from alignkit.data.collate import Batch
from alignkit.errors import AlignkitError
from alignkit.logprobs import forward_logps
from alignkit.packing import packed_forward_logps, supports_packing

logger = logging.getLogger("alignkit")

FORMAT = 1


def model_fingerprint(model) -> str:
    """Hash of every parameter and buffer (names, dtypes, shapes and bytes): the weights, not their path."""
    digest = hashlib.blake2b(digest_size=20)
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        if tensor.numel():
            digest.update(tensor.view(torch.uint8).numpy())  # the buffer itself, not a copy
    return digest.hexdigest()


def sequence_digests(batch: Batch) -> list[bytes]:
    """One 16-byte digest per sequence of the batch, of its unpadded ids and labels."""
    out = []
    for ids, labels, mask in zip(batch.input_ids.cpu(), batch.labels.cpu(), batch.attention_mask.cpu()):
        n = int(mask.sum())
        out.append(hashlib.blake2b(ids[:n].numpy().tobytes() + labels[:n].numpy().tobytes(), digest_size=16).digest())
    return out


class CachedReference:
    """The ``Reference`` interface, answered from a table of precomputed log-probs."""

    def __init__(self, table: dict[bytes, tuple[float, int]], path: Path):
        self.table = table
        self.path = path

    def logps(self, policy, batch: Batch, *, average: bool = False):
        values = []
        for digest in sequence_digests(batch):
            if digest not in self.table:
                raise AlignkitError(
                    f"a sequence of rows {batch.row_ids} has no precomputed reference log-prob in {self.path}; "
                    "rerun with --precompute_ref_log_probs false"
                )
            values.append(self.table[digest])
        device = batch.input_ids.device
        logps = torch.tensor([v[0] for v in values], dtype=torch.float32, device=device)  # (N,)
        counts = torch.tensor([v[1] for v in values], dtype=torch.long, device=device)  # (N,)
        return (logps / counts.clamp(min=1) if average else logps), counts


def visited_batches(num_rows: int, config) -> list[list[int]]:
    """The training micro-batches a run with this LoopConfig will see, in the loop's own data order
    (``trainer.epoch_batches``), each row in the first batch that holds it: a run of 50 steps over 2000
    rows precomputes 50 batches, not 2000 rows. Precomputing in the loop's own batches keeps bf16
    rounding alike for policy and reference, so the first step's loss is exactly ln 2 as on the plain path."""
    from alignkit.trainer import epoch_batches, total_steps

    per_epoch = math.ceil(num_rows / config.batch_size)
    steps, step, epoch, seen, out = total_steps(per_epoch, config), 0, 0, set(), []
    while step < steps and len(seen) < num_rows:
        batches = epoch_batches(num_rows, config.batch_size, seed=config.seed, epoch=epoch, shuffle=config.shuffle)
        for start in range(0, len(batches), config.gradient_accumulation_steps):
            if step == steps:
                break
            for batch in batches[start : start + config.gradient_accumulation_steps]:
                new = [i for i in batch if i not in seen]
                if new:
                    out.append(new)
                    seen.update(new)
            step += 1
        epoch += 1
    return out


def cache_key(*, model: str, sequences: list[bytes], template: str, max_length: int, precision: str) -> dict:
    data = hashlib.blake2b(b"".join(sorted(set(sequences))), digest_size=20).hexdigest()
    template_hash = hashlib.blake2b(template.encode(), digest_size=20).hexdigest()
    return {"format": FORMAT, "model": model, "data": data, "template": template_hash,
            "max_length": max_length, "precision": precision}


def precompute_reference(
    model,
    batches: list[list],
    collate,
    *,
    template: str,
    max_length: int,
    precision: str,
    cache_dir: Path | None = None,
) -> CachedReference:
    """Reference log-probs of every pair in ``batches`` (lists of (row_id, (chosen, rejected)) items), from the disk
    cache when its key matches, else computed with ``model`` (the reference) and saved."""
    batches = [collate(items) for items in batches]
    digests = [d for batch in batches for d in sequence_digests(batch)]
    started = time.perf_counter()
    key = cache_key(model=model_fingerprint(model), sequences=digests, template=template,
                    max_length=max_length, precision=precision)
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    path = (cache_dir or cache_root() / "ref_logps") / f"{name}.pt"
    if path.is_file():
        stored = torch.load(path, weights_only=True)
        if stored["key"] != key:
            raise AlignkitError(f"reference log-prob cache {path} was written for another key: {stored['key']} != {key}; delete it")
        table = dict(zip(stored["digests"], zip(stored["logps"].tolist(), stored["counts"].tolist())))
        missing = sum(d not in table for d in digests)
        if missing:
            raise AlignkitError(f"reference log-prob cache {path} lacks {missing} of the sequences it is keyed by; delete it")
        logger.info("Reference log-probs: %d sequences loaded from %s", len(table), path)
        return CachedReference(table, path)

    device = next(model.parameters()).device
    packing = supports_packing(model)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    was_training = model.training
    model.eval()
    logps, counts = [], []
    with torch.no_grad(), autocast:
        for batch in batches:
            batch = batch.to(device)
            if packing:
                values, lengths = packed_forward_logps(model, batch, share_prefixes=True)
            else:
                values, lengths = forward_logps(model, batch)
            logps.append(values.float().cpu())
            counts.append(lengths.cpu())
    model.train(was_training)
    logps_all, counts_all = torch.cat(logps), torch.cat(counts)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"key": key, "digests": digests, "logps": logps_all, "counts": counts_all}, tmp)
    tmp.replace(path)
    logger.info("Reference log-probs: %d sequences computed in %.1fs, cached in %s",
                len(digests), time.perf_counter() - started, path)
    return CachedReference(dict(zip(digests, zip(logps_all.tolist(), counts_all.tolist()))), path)
