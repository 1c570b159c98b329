"""Padding-free packing and prompt-prefix sharing: the same sequence log-probs as ``forward_logps`` from
fewer tokens.

A padded batch of N sequences is re-laid out as a few rows without padding. With ``pairs=True`` (a
preference batch: chosen[0:B], rejected[B:2B]) each chosen/rejected pair becomes one *unit* that holds
their common prefix once::

    chosen   = [s0 s1 s2 s3 c4 c5]          unit ids       = [s0 s1 s2 s3 c4 c5 r4 r5 r6]
    rejected = [s0 s1 s2 s3 r4 r5 r6]       position ids   = [ 0  1  2  3  4  5  4  5  6]

and a mask lets every token see its own sequence only: r4..r6 attend to s0..s3 and to each other,
never to c4, c5 (the idea of arXiv 2410.20305). Hidden states depend only on the ids before them, so
each token's log-prob is the one the padded batch gives; the prediction of r4 comes from s3, shared
with c4's. Units are then packed first-fit into rows no longer than the longest unit, so attention never
costs more than in the padded batch, and the LM head runs only on the positions that predict a labelled
token (``logits_to_keep`` as a boolean mask).

This needs an attention implementation that takes a 4-D mask (sdpa or eager): see ``supports_packing``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignkit.data.collate import Batch
from alignkit.data.template import IGNORE_INDEX
from alignkit.logprobs import forward_logps

# Rows of logits turned into log-softmax at once: bounds the fp32 copy to CHUNK × vocab.
CHUNK = 1024


@dataclass
class Packed:
    input_ids: torch.Tensor  # (R, L)
    position_ids: torch.Tensor  # (R, L)
    attention_mask: torch.Tensor  # (R, 1, L, L) bool, True where a query may see a key
    keep: torch.Tensor  # (R, L) bool: positions whose logits predict a labelled token
    target_rows: torch.Tensor  # (M,) index into the kept logits (row-major order of ``keep``)
    target_ids: torch.Tensor  # (M,) the labelled token each of them predicts
    target_seqs: torch.Tensor  # (M,) which of the batch's N sequences the token belongs to
    num_sequences: int
    num_tokens: int  # tokens actually run through the model (no padding)


def supports_packing(model) -> bool:
    """Packing passes a custom 4-D mask, which sdpa and eager attention take as it is."""
    return getattr(model.config, "_attn_implementation", None) in ("sdpa", "eager")


def _lengths(batch: Batch) -> list[int]:
    lengths = batch.attention_mask.sum(-1).tolist()
    for i, n in enumerate(lengths):
        if not bool(batch.attention_mask[i, :n].all()):
            raise ValueError("packing needs right-padded sequences (attention_mask 1…1 0…0)")
    return lengths


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def pack(batch: Batch, *, pairs: bool) -> Packed:
    """Lay the batch out as packed rows; see the module docstring for the layout."""
    ids = batch.input_ids.tolist()
    labels = batch.labels.tolist()
    lengths = _lengths(batch)
    n_seq = len(ids)
    # A unit: (ids, position ids, segment of each position, sources) where segment 0 is shared and k > 0
    # belongs to the unit's k-th sequence; ``sources`` maps (sequence, source position) for each target.
    units = []
    if pairs:
        half = n_seq // 2
        groups = [(i, i + half) for i in range(half)]
    else:
        groups = [(i,) for i in range(n_seq)]
    for group in groups:
        seqs = [ids[s][: lengths[s]] for s in group]
        shared = _common_prefix(*seqs) if len(seqs) == 2 else 0
        unit_ids, positions, segments = list(seqs[0][:shared]), list(range(shared)), [0] * shared
        offsets = []
        for k, seq in enumerate(seqs, start=1):
            offsets.append(len(unit_ids) - shared)  # where this sequence's own tokens start, minus `shared`
            unit_ids += seq[shared:]
            positions += range(shared, len(seq))
            segments += [k] * (len(seq) - shared)
        targets = []  # (unit position that predicts the token, token id, sequence)
        for k, s in enumerate(group):
            for t in range(1, lengths[s]):
                if labels[s][t] != IGNORE_INDEX:
                    source = t - 1 if t - 1 < shared else t - 1 + offsets[k]
                    targets.append((source, labels[s][t], s))
        units.append((unit_ids, positions, segments, targets))

    # First-fit decreasing into rows of the longest unit's length.
    capacity = max(len(u[0]) for u in units)
    rows: list[list[int]] = []  # unit indices per row
    fill: list[int] = []
    for u in sorted(range(len(units)), key=lambda u: -len(units[u][0])):
        size = len(units[u][0])
        row = next((r for r in range(len(rows)) if fill[r] + size <= capacity), None)
        if row is None:
            rows.append([])
            fill.append(0)
            row = len(rows) - 1
        rows[row].append(u)
        fill[row] += size

    n_rows, length = len(rows), capacity
    input_ids = torch.zeros(n_rows, length, dtype=torch.long)  # (R, L)
    position_ids = torch.zeros(n_rows, length, dtype=torch.long)  # (R, L)
    # Padding positions see themselves only: a query row with no key at all would give NaN.
    mask = torch.eye(length, dtype=torch.bool).repeat(n_rows, 1, 1)  # (R, L, L)
    keep = torch.zeros(n_rows, length, dtype=torch.bool)  # (R, L)
    placed = []  # (row, start, targets)
    for r, members in enumerate(rows):
        start = 0
        for u in members:
            unit_ids, positions, segments, targets = units[u]
            n = len(unit_ids)
            input_ids[r, start : start + n] = torch.tensor(unit_ids)
            position_ids[r, start : start + n] = torch.tensor(positions)
            seg = torch.tensor(segments)
            # Causal within the unit; a sequence's own tokens see the shared prefix and themselves.
            visible = (seg[None, :] == 0) | (seg[:, None] == seg[None, :])
            mask[r, start : start + n, start : start + n] = torch.tril(visible)
            placed.append((r, start, targets))
            for source, _, _ in targets:
                keep[r, start + source] = True
            start += n
    # Index of each kept position among the kept logits, which come out in row-major order.
    kept_index = (keep.flatten().cumsum(0) - 1).view(n_rows, length)
    target_rows, target_ids, target_seqs = [], [], []
    for r, start, targets in placed:
        for source, token, s in targets:
            target_rows.append(int(kept_index[r, start + source]))
            target_ids.append(token)
            target_seqs.append(s)
    device = batch.input_ids.device
    return Packed(
        input_ids=input_ids.to(device),
        position_ids=position_ids.to(device),
        attention_mask=mask.unsqueeze(1).to(device),
        keep=keep.to(device),
        target_rows=torch.tensor(target_rows, dtype=torch.long, device=device),
        target_ids=torch.tensor(target_ids, dtype=torch.long, device=device),
        target_seqs=torch.tensor(target_seqs, dtype=torch.long, device=device),
        num_sequences=n_seq,
        num_tokens=sum(fill),
    )


def token_logps(logits: torch.Tensor, rows: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits)[rows, ids]`` in fp32, the log-sum-exp taken CHUNK rows at a time.

    logits (K, V), rows and ids (M,) → (M,). Each of the K rows is normalised once even when several
    targets share it (a shared prefix position predicts a token of both answers).
    """
    lse = torch.cat([chunk.float().logsumexp(-1) for chunk in logits.split(CHUNK)])  # (K,)
    return logits[rows, ids].float() - lse[rows]


def packed_forward_logps(model, batch: Batch, *, pairs: bool, average: bool = False):
    """Drop-in for ``forward_logps``: (logps (N,), token counts (N,)) in the batch's order."""
    packed = pack(batch, pairs=pairs)
    mask = packed.attention_mask
    if model.config._attn_implementation == "eager":  # eager adds the mask to the scores
        mask = torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, torch.finfo(torch.float32).min)
    logits = model(
        input_ids=packed.input_ids,
        position_ids=packed.position_ids,
        attention_mask=mask,
        logits_to_keep=packed.keep,
        use_cache=False,
    ).logits  # (K, V)
    per_token = token_logps(logits, packed.target_rows, packed.target_ids)  # (M,)
    logps = per_token.new_zeros(packed.num_sequences).index_add(0, packed.target_seqs, per_token)  # (N,)
    counts = torch.bincount(packed.target_seqs, minlength=packed.num_sequences)  # (N,)
    return (logps / counts.clamp(min=1) if average else logps), counts


def preference_logps(model, batch: Batch, *, padding_free: bool, prefix_sharing: bool, average: bool = False):
    """Log-probs of a preference batch (chosen[0:B], rejected[B:2B]) along the chosen path: padded
    (``forward_logps``), packed, or packed with each pair's common prefix held once. Same numbers."""
    if padding_free:
        return packed_forward_logps(model, batch, pairs=prefix_sharing, average=average)
    return forward_logps(model, batch, average=average)
