"""Reference log-probs computed once, before training, and cached on disk.

The reference policy never changes, so its log-probs of every training and held-out sequence can be
computed in one no-grad pass. Training then runs no reference forward at all, and full fine-tuning keeps
no frozen copy of the model in memory.

The cache file is named by a hash of everything the numbers depend on: the reference weights (hashed
from memory, not from a path), the token ids and labels of every sequence (which carry the data, the
chat template and --max_length), the chat template and --max_length themselves, the precision, the
forward layout (padded, packed, prefix-shared: the same numbers up to rounding) and LD-DPO's alpha.
Anything else is a different file, so a stale cache is never picked up; a file whose recorded key differs
from its name, or a sequence missing from the table, stops the run with an error.

Entries are keyed by the sequence's content, never by its position in the data: a resumed run, or one
process of a data-parallel run, finds the rows it is given whatever order or shard they come in. Each
process precomputes the micro-batches it will itself run (its shard of every global batch), so ranks
write different files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from alignkit.data.cache import cache_root
from alignkit.data.collate import Batch, UnpairedBatch
from alignkit.data.template import IGNORE_INDEX
from alignkit.errors import AlignkitError
from alignkit.models.packing import Layout
from alignkit.models.placement import input_device

logger = logging.getLogger("alignkit")

FORMAT = 2


def model_fingerprint(model) -> str:
    """Hash of every parameter and buffer (names, dtypes, shapes and bytes): the weights, not their path."""
    digest = hashlib.blake2b(digest_size=20)
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        if tensor.numel():
            digest.update(tensor.view(torch.uint8).numpy())  # the buffer itself, not a copy
    return digest.hexdigest()


def sequence_digests(batch: Batch, ld_alpha: float | None = None) -> list[bytes]:
    """One 16-byte digest per sequence of the batch, of its unpadded ids and labels. With LD-DPO's
    ``ld_alpha`` a sequence's weighted log-prob also depends on its pair's shorter answer length, which is
    hashed in too."""
    labels_all = batch.labels.cpu()
    extra = [b""] * labels_all.shape[0]
    if ld_alpha is not None:
        counts = (labels_all[:, 1:] != IGNORE_INDEX).sum(-1)  # (2B,) as alignkit.models.logprobs counts them
        shared = torch.minimum(*counts.chunk(2)).repeat(2)  # (2B,)
        extra = [f"ld:{int(n)}".encode() for n in shared]
    out = []
    for ids, labels, mask, more in zip(batch.input_ids.cpu(), labels_all, batch.attention_mask.cpu(), extra):
        n = int(mask.sum())
        content = ids[:n].numpy().tobytes() + labels[:n].numpy().tobytes() + more
        out.append(hashlib.blake2b(content, digest_size=16).digest())
    return out


def sequence_batches(batch: Batch | UnpairedBatch) -> list[Batch]:
    """The batch of sequences a collated micro-batch runs through the reference: a pair batch itself; for
    KTO (rows or their mismatched KL rows) the completions."""
    return [batch.completions] if isinstance(batch, UnpairedBatch) else [batch]


class CachedReference:
    """The ``Reference`` interface, answered from a table of precomputed log-probs."""

    def __init__(self, table: dict[bytes, tuple[float, int]], path: Path):
        self.table = table
        self.path = path

    def logps(self, policy, batch: Batch, *, average: bool = False, ld_alpha: float | None = None):
        values = []
        for digest in sequence_digests(batch, ld_alpha):
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


def visited_steps(num_rows: int, config, *, world_size: int = 1,
                  lengths: tuple[int, ...] | None = None) -> Iterator[list[list[int]]]:
    """The global micro-batches of every optimizer step the loop will take under this LoopConfig, in its order
    (``data.order.DataOrder`` of global batches, with ``lengths`` under --group_by_length;
    ``gradient_accumulation_steps`` of them per step)."""
    from alignkit.data.order import DataOrder, total_steps

    global_size, accumulation = config.batch_size * world_size, config.gradient_accumulation_steps
    order = DataOrder(num_rows, global_size, config.seed, config.shuffle, config.drop_last, lengths)
    steps = total_steps(order.batches_per_epoch, config)
    step, epoch = 0, 0
    while step < steps and order.batches_per_epoch:
        batches = order.epoch(epoch)
        for start in range(0, len(batches), accumulation):
            if step == steps:
                return
            yield batches[start : start + accumulation]
            step += 1
        epoch += 1


def visited_batches(num_rows: int, config, *, world_size: int = 1, rank: int = 0,
                    lengths: tuple[int, ...] | None = None) -> list[list[int]]:
    """The training micro-batches this process will run under this LoopConfig, in the loop's own data order:
    this process's shard of each global batch of ``visited_steps`` as ``training.loop.accumulate_gradients``
    takes it, the first row when its shard is empty; each row in the first batch that holds it only, so a run
    of 50 steps over 2000 rows precomputes 50 batches, not 2000 rows (a sequence's log-prob does not depend on
    its batch-mates). Precomputing in the loop's own batches keeps bf16 rounding alike for policy and
    reference, so the first step's loss is exactly ln 2 as on the plain path."""
    size, seen, out = config.batch_size, set(), []
    for group in visited_steps(num_rows, config, world_size=world_size, lengths=lengths):
        if len(seen) == num_rows:
            break
        for global_batch in group:
            new = [i for i in global_batch[rank * size : (rank + 1) * size] or global_batch[:1] if i not in seen]
            if new:
                out.append(new)
                seen.update(new)
    return out


def cache_key(*, model: str, sequences: list[bytes], template: str, max_length: int, precision: str,
              layout: Layout, ld_alpha: float | None) -> dict:
    data = hashlib.blake2b(b"".join(sorted(set(sequences))), digest_size=20).hexdigest()
    template_hash = hashlib.blake2b(template.encode(), digest_size=20).hexdigest()
    return {"format": FORMAT, "model": model, "data": data, "template": template_hash,
            "max_length": max_length, "precision": precision, "padding_free": layout.padding_free,
            "prefix_sharing": layout.prefix_sharing, "ld_alpha": ld_alpha}


def precompute_reference(
    model,
    batches: list[list],
    collate,
    *,
    template: str,
    max_length: int,
    precision: str,
    layout: Layout | None = None,
    ld_alpha: float | None = None,
    cache_dir: Path | None = None,
) -> CachedReference:
    """Reference log-probs of every sequence of ``batches`` (lists of (row_id, encoded) items, collated by
    ``collate`` as the loop does), from the disk cache when its key matches, else computed with ``model``
    (the reference) in ``layout`` (default: packed with prefix sharing) and saved."""
    layout = layout or Layout(padding_free=True, prefix_sharing=True)
    batches = [part for items in batches for part in sequence_batches(collate(items))]
    digests = [d for batch in batches for d in sequence_digests(batch, ld_alpha)]
    started = time.perf_counter()
    key = cache_key(model=model_fingerprint(model), sequences=digests, template=template, max_length=max_length,
                    precision=precision, layout=layout, ld_alpha=ld_alpha)
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    path = (cache_dir or cache_root() / "ref_logps") / f"{name}.pt"
    if path.is_file():
        stored = torch.load(path, weights_only=True)
        if stored["key"] != key:
            raise AlignkitError(
                f"reference log-prob cache {path} was written for another key: {stored['key']} != {key}; delete it"
            )
        table = dict(zip(stored["digests"], zip(stored["logps"].tolist(), stored["counts"].tolist())))
        missing = sum(d not in table for d in digests)
        if missing:
            raise AlignkitError(
                f"reference log-prob cache {path} lacks {missing} of the sequences it is keyed by; delete it"
            )
        logger.info("Reference log-probs: %d sequences loaded from %s", len(table), path)
        return CachedReference(table, path)

    device = input_device(model)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    was_training = model.training
    model.eval()
    logps, counts = [], []
    with torch.no_grad(), autocast:
        for batch in batches:
            values, lengths = layout.logps(model, batch.to(device), ld_alpha=ld_alpha)
            logps.append(values.float().cpu())
            counts.append(lengths.cpu())
    model.train(was_training)
    logps_all, counts_all = torch.cat(logps), torch.cat(counts)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")  # processes that share a key never share a temp file
    torch.save({"key": key, "digests": digests, "logps": logps_all, "counts": counts_all}, tmp)
    tmp.replace(path)
    logger.info("Reference log-probs: %d sequences computed in %.1fs, cached in %s",
                len(digests), time.perf_counter() - started, path)
    return CachedReference(dict(zip(digests, zip(logps_all.tolist(), counts_all.tolist()))), path)
