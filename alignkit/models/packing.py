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

Nodes are laid out in the trie's depth-first order (sequences are inserted sorted), so the tokens that see a
node are the interval of its subtree: key k is seen by query q iff ``k <= q < ends[k]``. That is all the mask
needs, in O(tokens) memory; how it reaches the attention depends on the implementation (``packed_attention_mask``):

- sdpa, eager: a dense (L × L) 4-D mask, built from ``ends``; the fastest at the lengths of a CPU's rows;
- flex_attention: a block mask made from ``ends`` without any (L × L) tensor: memory grows with tokens;
- flash attention: no mask at all, position ids restarting at 0 mark the sequences (its varlen kernels take
  cu_seqlens from them); a trie's branches cannot be said this way, so prefix sharing needs one of the others.
"""

from __future__ import annotations

from collections.abc import Callable
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
# flex_attention's tile: the block mask says, per (query tile, key tile), none, some or all.
FLEX_BLOCK = 128
# Attention implementations that take a custom mask (packing and prefix sharing) or only packed position ids.
MASK_ATTENTION = ("sdpa", "eager", "flex_attention")


@dataclass
class Packed:
    input_ids: torch.Tensor  # (R, L)
    position_ids: torch.Tensor  # (R, L)
    ends: torch.Tensor  # (R, L): key k is seen by the queries k <= q < ends[k] (its subtree); padding by itself
    keep: torch.Tensor  # (R, L) bool: positions whose logits predict a labelled token
    target_rows: torch.Tensor  # (M,) index into the kept logits (row-major order of ``keep``)
    target_ids: torch.Tensor  # (M,) the labelled token each of them predicts
    target_seqs: torch.Tensor  # (M,) which of the batch's N sequences the token belongs to
    num_sequences: int
    num_tokens: int  # tokens actually run through the model (no padding)
    last_rows: torch.Tensor  # (N,) the row holding each sequence's last token
    last_nodes: torch.Tensor  # (N,) that token's column: a reward head reads the hidden state there
    shared: bool = False  # sequences share prefixes: a row is a trie, not a chain of sequences
    target_weights: torch.Tensor | None = None  # (M,) each target's loss weight (the batch's loss_scale), if any

    @property
    def attention_mask(self) -> torch.Tensor:
        """(R, 1, L, L) bool, True where a query may see a key: ``k <= q < ends[k]``."""
        index = torch.arange(self.ends.shape[1], device=self.ends.device)
        return ((index.view(1, -1, 1) >= index.view(1, 1, -1)) & (index.view(1, -1, 1) < self.ends.unsqueeze(1))
                ).unsqueeze(1)


def attention_of(model) -> str | None:
    return getattr(config_of(model), "_attn_implementation", None)


def is_flash(implementation: str | None) -> bool:
    """flash_attention_2, flash_attention_3 or a kernels-hub flash attention: varlen from position ids."""
    return implementation is not None and "flash" in implementation


def supports_packing(model) -> bool:
    """Packed rows need a custom mask (sdpa, eager, flex_attention) or position ids alone (flash attention)."""
    return attention_of(model) in MASK_ATTENTION or is_flash(attention_of(model))


def supports_prefix_sharing(model) -> bool:
    """A trie's mask needs an implementation that takes a custom mask: not flash attention's varlen."""
    return attention_of(model) in MASK_ATTENTION


def _lengths(batch: Batch) -> list[int]:
    lengths = batch.attention_mask.sum(-1).tolist()
    for i, n in enumerate(lengths):
        if not bool(batch.attention_mask[i, :n].all()):
            raise ValueError("packing needs right-padded sequences (attention_mask 1…1 0…0)")
    return lengths


def _rows_first_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """Sequence indices per row: first-fit decreasing into rows of ``capacity`` tokens (at least the longest)."""
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


def pack(batch: Batch, *, share_prefixes: bool, row_tokens: int | None = None) -> Packed:
    """Lay the batch out as packed rows; see the module docstring for the layout. ``row_tokens``: how long a
    row may grow (--packing_length: a dataset pack becomes one row); unset, ROW_TOKENS with prefix sharing
    and the longest sequence without."""
    ids = batch.input_ids.tolist()
    labels = batch.labels.tolist()
    scale = batch.loss_scale.tolist() if batch.loss_scale is not None else None
    lengths = _lengths(batch)
    seqs = [ids[s][: lengths[s]] for s in range(len(ids))]
    if share_prefixes:
        rows = _rows_by_prefix(seqs, max(row_tokens or ROW_TOKENS, *lengths))
    else:
        rows = _rows_first_fit(lengths, max(row_tokens or 0, *lengths))

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
    positions, ends = [], []
    for tokens, parents in zip(row_ids, row_parents):
        input_ids[len(positions), : len(tokens)] = torch.tensor(tokens)
        # Parents come before children, so one pass forward gives depths and one backward subtree ends.
        depth = [0] * length
        for node, parent in enumerate(parents):
            depth[node] = depth[parent] + 1 if parent >= 0 else 0
        end = list(range(1, length + 1))  # padding positions see themselves only (no key at all gives NaN)
        for node in range(len(parents) - 1, -1, -1):
            if parents[node] >= 0:
                end[parents[node]] = max(end[parents[node]], end[node])
        positions.append(depth)
        ends.append(end)
    position_ids = torch.tensor(positions, dtype=torch.long)  # (R, L)

    keep = torch.zeros(n_rows, length, dtype=torch.bool)  # (R, L)
    targets = []  # (row, node that predicts the token, token id, sequence)
    target_positions = []  # (sequence, position) of each target
    for s, (r, path) in sorted(paths.items()):
        for t in range(1, lengths[s]):
            if labels[s][t] != IGNORE_INDEX:
                targets.append((r, path[t - 1], labels[s][t], s))
                target_positions.append((s, t))
                keep[r, path[t - 1]] = True
    # Index of each kept position among the kept logits, which come out in row-major order.
    kept_index = (keep.flatten().cumsum(0) - 1).view(n_rows, length)
    device = batch.input_ids.device
    return Packed(
        input_ids=input_ids.to(device),
        position_ids=position_ids.to(device),
        ends=torch.tensor(ends, dtype=torch.long, device=device),
        keep=keep.to(device),
        target_rows=torch.tensor([int(kept_index[r, n]) for r, n, _, _ in targets], dtype=torch.long, device=device),
        target_ids=torch.tensor([t for _, _, t, _ in targets], dtype=torch.long, device=device),
        target_seqs=torch.tensor([s for _, _, _, s in targets], dtype=torch.long, device=device),
        num_sequences=len(seqs),
        num_tokens=sum(len(t) for t in row_ids),
        last_rows=torch.tensor([paths[s][0] for s in range(len(seqs))], dtype=torch.long, device=device),
        last_nodes=torch.tensor([paths[s][1][-1] for s in range(len(seqs))], dtype=torch.long, device=device),
        shared=share_prefixes,
        target_weights=None if scale is None else torch.tensor([scale[s][t] for s, t in target_positions],
                                                                device=device),
    )


def packed_attention_mask(model, packed: Packed):
    """The packed rows' mask as the model's attention takes it (see the module docstring): boolean 4-D for sdpa,
    additive for eager, a block mask for flex_attention, None for flash attention (position ids alone)."""
    implementation = attention_of(model)
    if is_flash(implementation):
        if packed.shared:
            raise ValueError(f"{implementation} cannot run prefix-shared rows: it takes no mask")
        return None
    if implementation == "flex_attention":
        return flex_block_mask(packed.ends)
    mask = packed.attention_mask
    if implementation == "eager":  # eager adds the mask to the scores
        mask = torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, torch.finfo(torch.float32).min)
    return mask


def flex_block_mask(ends: torch.Tensor):
    """flex_attention's BlockMask for ``k <= q < ends[k]`` without an (L × L) tensor: per pair of FLEX_BLOCK
    tiles, none, some or all of the keys are seen, worked out from the intervals. ends (R, L) → a mask of
    shape (R, 1, L, L); its tables are (R, 1, L/128, L/128)."""
    from torch.nn.attention.flex_attention import BlockMask

    rows, length = ends.shape
    tiles = -(-length // FLEX_BLOCK)
    index = torch.arange(tiles * FLEX_BLOCK, device=ends.device)
    # Positions past the row's end (the last tile's tail) see themselves only.
    ends = torch.cat([ends, index[length:].expand(rows, -1) + 1], dim=1)  # (R, T·B)
    tile_ends = ends.view(rows, tiles, FLEX_BLOCK)
    reach = (tile_ends.max(-1).values - 1) // FLEX_BLOCK  # (R, T): the last query tile a key tile reaches
    shortest = tile_ends.min(-1).values  # (R, T): every key of the tile is seen up to here
    query = torch.arange(tiles, device=ends.device).view(1, -1, 1)  # query tile i
    key = torch.arange(tiles, device=ends.device).view(1, 1, -1)  # key tile j
    # Key tile j is seen from query tiles j..reach[j] (keys see later queries only); wholly where j < i and
    # every key's interval covers the query tile.
    some = (key <= query) & (query <= reach.unsqueeze(1))  # (R, T, T)
    full = (key < query) & (shortest.unsqueeze(1) >= (query + 1) * FLEX_BLOCK)
    partial = some & ~full

    def tables(blocks: torch.Tensor):  # (R, T, T) bool → counts (R, 1, T), indices (R, 1, T, T), listed first
        order = torch.argsort((~blocks).to(torch.int8), dim=-1, stable=True)
        return blocks.sum(-1, dtype=torch.int32).unsqueeze(1), order.to(torch.int32).unsqueeze(1)

    def mask_mod(b, h, q, k):
        return (k <= q) & (q < ends[b, k])

    return BlockMask.from_kv_blocks(*tables(partial), *tables(full), BLOCK_SIZE=FLEX_BLOCK, mask_mod=mask_mod,
                                    seq_lengths=(length, length))


_KEEPS_BY_MASK: list[bool] = []


def keeps_by_mask() -> bool:
    """Whether this transformers takes ``logits_to_keep`` as a 2-D boolean mask of positions (its
    ``slice_logits_to_keep``, in 5.2x; 5.17 and earlier index the sequence axis with it, which fails or keeps the
    wrong positions for packed rows). Asked once, of the function itself."""
    if not _KEEPS_BY_MASK:
        try:
            from transformers.modeling_utils import slice_logits_to_keep

            hidden = torch.arange(6.0).reshape(2, 3, 1)
            kept = slice_logits_to_keep(hidden, torch.tensor([[True, False, True], [False, True, False]]))
            _KEEPS_BY_MASK.append(kept.shape == (3, 1) and kept.flatten().tolist() == [0.0, 2.0, 4.0])
        except Exception:  # absent, or a signature of another time
            _KEEPS_BY_MASK.append(False)
    return _KEEPS_BY_MASK[0]


def token_logps(logits: torch.Tensor, rows: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits)[rows, ids]`` in fp32, the log-sum-exp taken CHUNK rows at a time.

    logits (K, V), rows and ids (M,) → (M,). Each of the K rows is normalised once even when several
    targets share it (a shared prefix position predicts a token of both answers).
    """
    lse = torch.cat([chunk.float().logsumexp(-1) for chunk in logits.split(CHUNK)])  # (K,)
    return logits[rows, ids].float() - lse[rows]


def packed_forward_logps(model, batch: Batch, *, share_prefixes: bool, average: bool = False,
                         ld_alpha: float | None = None, row_tokens: int | None = None,
                         per_token: Callable | None = None):
    """Drop-in for ``forward_logps``: (logps (N,), token counts (N,)) in the batch's order; ``average``,
    ``ld_alpha`` (LD-DPO's per-token weights, N = 2B chosen first) and ``per_token`` as in
    ``alignkit.models.logprobs.sequence_logps``; ``row_tokens`` as in ``pack``."""
    packed = pack(batch, share_prefixes=share_prefixes, row_tokens=row_tokens)
    mask_keep = keeps_by_mask()
    logits = model(
        input_ids=packed.input_ids,
        position_ids=packed.position_ids,
        attention_mask=packed_attention_mask(model, packed),
        logits_to_keep=packed.keep if mask_keep else 0,
        use_cache=False,
    ).logits  # (K, V)
    if not mask_keep:  # every position's logits, then the kept ones: the same numbers, more memory
        logits = logits[packed.keep]
    targets = token_logps(logits, packed.target_rows, packed.target_ids)  # (M,)
    if per_token is not None:
        targets = per_token(targets)
    counts = torch.bincount(packed.target_seqs, minlength=packed.num_sequences)  # (N,)
    if ld_alpha is not None:
        targets = targets * length_desensitised_token_weights(packed.target_seqs, counts, ld_alpha)
    if packed.target_weights is not None:
        targets = targets * packed.target_weights
    logps = targets.new_zeros(packed.num_sequences).index_add(0, packed.target_seqs, targets)  # (N,)
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
    common prefixes held once. Same numbers; ``alignkit.training.run`` picks it per run and logs the choice.
    ``row_tokens``: with --packing, --packing_length, so each dataset pack runs as one row."""

    padding_free: bool = False
    prefix_sharing: bool = False
    row_tokens: int | None = None
    # The run's self-check (alignkit.models.layout_check): its first packed batch also runs padded.
    check: LayoutCheck | None = field(default=None, compare=False, repr=False)

    def pack(self, batch: Batch) -> Packed:
        return pack(batch, share_prefixes=self.prefix_sharing, row_tokens=self.row_tokens)

    def runs_packed(self, model, batch: Batch) -> bool:
        """Whether ``batch`` runs packed: batches with extra model inputs (a vision-language model's pixels) and
        attention implementations without 4-D masks run padded."""
        return self.padding_free and not batch.model_inputs and supports_packing(model)

    def logps(self, model, batch: Batch, *, average: bool = False, ld_alpha: float | None = None,
              per_token: Callable | None = None):
        """(logps (N,), token counts (N,)), as ``forward_logps``; padded where ``runs_packed`` says so."""
        options = {"average": average, "ld_alpha": ld_alpha, "per_token": per_token}
        if not self.runs_packed(model, batch):
            return forward_logps(model, batch, **options)

        def packed():
            return packed_forward_logps(model, batch, share_prefixes=self.prefix_sharing, row_tokens=self.row_tokens,
                                        **options)

        if self.check is None:
            return packed()
        return self.check.run(model, packed, lambda: forward_logps(model, batch, **options),
                              lambda fast, padded: sequence_difference(fast, padded, average=average))

