"""Padding-free packing and prefix sharing: the same sequence log-probs as ``forward_logps`` from
fewer tokens.

A padded batch of N sequences is re-laid out as a few rows without padding. With prefix sharing, the
sequences of a row form a trie: a token sequence that several of them begin with is held once, and each
token attends only to its ancestors. A preference pair holds its prompt once (arXiv 2410.20305), and
pairs that share a system prompt hold that once too::

    chosen   = [s0 s1 s2 s3 c4 c5]          row ids       = [s0 s1 s2 s3 c4 c5 r4 r5 r6]
    rejected = [s0 s1 s2 s3 r4 r5 r6]       position ids  = [ 0  1  2  3  4  5  4  5  6]

r4..r6 see s0..s3 and each other, never c4, c5. Hidden states depend only on the ids before them, so
each token's log-prob is the one the padded batch gives; the prediction of r4 comes from s3, as c4's
does. Without sharing, sequences are packed first-fit into rows no longer than the longest one. Either
way the LM head runs only on positions that predict a labelled token (``logits_to_keep`` as a boolean
mask).

This needs an attention implementation that takes a 4-D mask (sdpa or eager): see ``supports_packing``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from alignkit.data.collate import Batch
from alignkit.data.template import IGNORE_INDEX
from alignkit.models.layout_check import LayoutCheck, config_of, sequence_difference
from alignkit.models.logprobs import forward_logps

# Rows of logits turned into log-softmax at once: bounds the fp32 copy to CHUNK × vocab.
CHUNK = 1024
# With prefix sharing, rows grow to this many tokens (or the longest sequence): attention over a row is
# computed densely under the mask, which stays cheap next to the linear layers at this length.
ROW_TOKENS = 512


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
    last_rows: torch.Tensor  # (N,) the row holding each sequence's last token
    last_nodes: torch.Tensor  # (N,) that token's column: a reward head reads the hidden state there


def supports_packing(model) -> bool:
    """Packing passes a custom 4-D mask, which sdpa and eager attention take as it is."""
    return getattr(config_of(model), "_attn_implementation", None) in ("sdpa", "eager")


def _lengths(batch: Batch) -> list[int]:
    lengths = batch.attention_mask.sum(-1).tolist()
    for i, n in enumerate(lengths):
        if not bool(batch.attention_mask[i, :n].all()):
            raise ValueError("packing needs right-padded sequences (attention_mask 1…1 0…0)")
    return lengths


def _rows_first_fit(lengths: list[int]) -> list[list[int]]:
    """Sequence indices per row: first-fit decreasing into rows of the longest sequence's length."""
    capacity = max(lengths)
    rows: list[list[int]] = []
    fill: list[int] = []
    for s in sorted(range(len(lengths)), key=lambda s: -lengths[s]):
        row = next((r for r in range(len(rows)) if fill[r] + lengths[s] <= capacity), None)
        if row is None:
            rows.append([])
            fill.append(0)
            row = len(rows) - 1
        rows[row].append(s)
        fill[row] += lengths[s]
    return rows


def _rows_by_prefix(seqs: list[list[int]], capacity: int) -> list[list[int]]:
    """Sequence indices per row: in lexicographic order (so sequences with a common prefix are
    neighbours), a row is closed when the trie of its sequences would outgrow ``capacity`` nodes."""
    rows: list[list[int]] = []
    nodes, previous = 0, None
    for s in sorted(range(len(seqs)), key=lambda s: seqs[s]):
        # In sorted order the longest prefix shared with the row is the one shared with its last sequence.
        shared = _common_prefix(seqs[previous], seqs[s]) if previous is not None else 0
        if previous is None or nodes + len(seqs[s]) - shared > capacity:
            rows.append([])
            nodes, shared = 0, 0
        rows[-1].append(s)
        nodes += len(seqs[s]) - shared
        previous = s
    return rows


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def pack(batch: Batch, *, share_prefixes: bool, row_tokens: int = ROW_TOKENS) -> Packed:
    """Lay the batch out as packed rows; see the module docstring for the layout."""
    ids = batch.input_ids.tolist()
    labels = batch.labels.tolist()
    lengths = _lengths(batch)
    seqs = [ids[s][: lengths[s]] for s in range(len(ids))]
    if share_prefixes:
        rows = _rows_by_prefix(seqs, max(row_tokens, *lengths))
    else:
        rows = _rows_first_fit(lengths)

    row_ids, row_parents, paths = [], [], {}  # per row: node tokens, parent node; per sequence: (row, nodes)
    for r, members in enumerate(rows):
        tokens, parents, children = [], [], [{}]  # children[node + 1]: token → node (index 0 is the root)
        for s in members:
            node, path = -1, []
            for token in seqs[s]:
                child = children[node + 1].get(token) if share_prefixes else None
                if child is None:
                    child = len(tokens)
                    tokens.append(token)
                    parents.append(node)
                    children.append({})
                    children[node + 1][token] = child
                node = child
                path.append(node)
            paths[s] = (r, path)
        row_ids.append(tokens)
        row_parents.append(parents)

    n_rows, length = len(rows), max(len(t) for t in row_ids)
    input_ids = torch.zeros(n_rows, length, dtype=torch.long)  # (R, L)
    position_ids = torch.zeros(n_rows, length, dtype=torch.long)  # (R, L)
    # Padding positions see themselves only: a query row with no key at all would give NaN.
    mask = torch.eye(length, dtype=torch.bool).repeat(n_rows, 1, 1)  # (R, L, L)
    for r, (tokens, parents) in enumerate(zip(row_ids, row_parents)):
        input_ids[r, : len(tokens)] = torch.tensor(tokens)
        # A node sees its ancestors and itself; parents come before children, so this is causal.
        for node, parent in enumerate(parents):
            if parent >= 0:
                mask[r, node] |= mask[r, parent]
                position_ids[r, node] = position_ids[r, parent] + 1

    keep = torch.zeros(n_rows, length, dtype=torch.bool)  # (R, L)
    targets = []  # (row, node that predicts the token, token id, sequence)
    for s, (r, path) in sorted(paths.items()):
        for t in range(1, lengths[s]):
            if labels[s][t] != IGNORE_INDEX:
                targets.append((r, path[t - 1], labels[s][t], s))
                keep[r, path[t - 1]] = True
    # Index of each kept position among the kept logits, which come out in row-major order.
    kept_index = (keep.flatten().cumsum(0) - 1).view(n_rows, length)
    device = batch.input_ids.device
    return Packed(
        input_ids=input_ids.to(device),
        position_ids=position_ids.to(device),
        attention_mask=mask.unsqueeze(1).to(device),
        keep=keep.to(device),
        target_rows=torch.tensor([int(kept_index[r, n]) for r, n, _, _ in targets], dtype=torch.long, device=device),
        target_ids=torch.tensor([t for _, _, t, _ in targets], dtype=torch.long, device=device),
        target_seqs=torch.tensor([s for _, _, _, s in targets], dtype=torch.long, device=device),
        num_sequences=len(seqs),
        num_tokens=sum(len(t) for t in row_ids),
        last_rows=torch.tensor([paths[s][0] for s in range(len(seqs))], dtype=torch.long, device=device),
        last_nodes=torch.tensor([paths[s][1][-1] for s in range(len(seqs))], dtype=torch.long, device=device),
    )


def packed_attention_mask(model, packed: Packed) -> torch.Tensor:
    """The packed rows' 4-D mask as the model's attention takes it: boolean for sdpa, additive for eager."""
    mask = packed.attention_mask
    if config_of(model)._attn_implementation == "eager":  # eager adds the mask to the scores
        mask = torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, torch.finfo(torch.float32).min)
    return mask


def token_logps(logits: torch.Tensor, rows: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits)[rows, ids]`` in fp32, the log-sum-exp taken CHUNK rows at a time.

    logits (K, V), rows and ids (M,) → (M,). Each of the K rows is normalised once even when several
    targets share it (a shared prefix position predicts a token of both answers).
    """
    lse = torch.cat([chunk.float().logsumexp(-1) for chunk in logits.split(CHUNK)])  # (K,)
    return logits[rows, ids].float() - lse[rows]


def packed_forward_logps(model, batch: Batch, *, share_prefixes: bool, average: bool = False,
                         ld_alpha: float | None = None):
    """Drop-in for ``forward_logps``: (logps (N,), token counts (N,)) in the batch's order; ``average`` and
    ``ld_alpha`` (LD-DPO's per-token weights, N = 2B chosen first) as in ``alignkit.models.logprobs.sequence_logps``."""
    packed = pack(batch, share_prefixes=share_prefixes)
    logits = model(
        input_ids=packed.input_ids,
        position_ids=packed.position_ids,
        attention_mask=packed_attention_mask(model, packed),
        logits_to_keep=packed.keep,
        use_cache=False,
    ).logits  # (K, V)
    per_token = token_logps(logits, packed.target_rows, packed.target_ids)  # (M,)
    counts = torch.bincount(packed.target_seqs, minlength=packed.num_sequences)  # (N,)
    if ld_alpha is not None:
        per_token = per_token * length_desensitised_token_weights(packed.target_seqs, counts, ld_alpha)
    logps = per_token.new_zeros(packed.num_sequences).index_add(0, packed.target_seqs, per_token)  # (N,)
    return (logps / counts.clamp(min=1) if average else logps), counts


def length_desensitised_token_weights(target_seqs: torch.Tensor, counts: torch.Tensor, ld_alpha: float) -> torch.Tensor:
    """``alignkit.models.logprobs.length_desensitised_weights`` for packed targets: target_seqs (M,) sorted by sequence
    (each sequence's tokens in order), counts (N,) with N = 2B → (M,) weights, 1 up to the pair's shorter
    answer length and ``ld_alpha`` beyond."""
    if counts.shape[0] % 2:
        raise ValueError("ld_alpha needs a pair batch: chosen rows then rejected rows")
    starts = counts.cumsum(0) - counts  # (N,) index of each sequence's first target
    position = torch.arange(target_seqs.shape[0], device=target_seqs.device) - starts[target_seqs] + 1  # (M,) 1-based
    chosen, rejected = counts.chunk(2)
    shared = torch.minimum(chosen, rejected).repeat(2)  # (N,) l_p
    return torch.where(position <= shared[target_seqs], 1.0, ld_alpha)


@dataclass(frozen=True)
class Layout:
    """How an algorithm lays out its forwards: padded (the default, ``forward_logps``), packed, or packed with
    common prefixes held once. Same numbers; ``alignkit.training.run`` picks it per run and logs the choice."""

    padding_free: bool = False
    prefix_sharing: bool = False
    # The run's self-check (alignkit.models.layout_check): its first packed batch also runs padded.
    check: LayoutCheck | None = field(default=None, compare=False, repr=False)

    def logps(self, model, batch: Batch, *, average: bool = False, ld_alpha: float | None = None):
        """(logps (N,), token counts (N,)), as ``forward_logps``. Batches with extra model inputs (a
        vision-language model's pixels) and attention implementations without 4-D masks run padded."""
        if not (self.padding_free and not batch.model_inputs and supports_packing(model)):
            return forward_logps(model, batch, average=average, ld_alpha=ld_alpha)

        def packed():
            return packed_forward_logps(model, batch, share_prefixes=self.prefix_sharing, average=average,
                                        ld_alpha=ld_alpha)

        if self.check is None:
            return packed()
        return self.check.run(model, packed, lambda: forward_logps(model, batch, average=average, ld_alpha=ld_alpha),
                              lambda fast, padded: sequence_difference(fast, padded, average=average))

