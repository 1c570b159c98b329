"""``--sequence_parallel_size N``: Ulysses sequence parallelism through DeepSpeed's ``UlyssesSPAttentionHF``.

Each group of N processes trains on the same rows, each process running the decoder layers on 1/N of every
sequence's tokens; inside attention DeepSpeed's all-to-all trades the sequence split for a split of the heads, so
every head sees the whole sequence (arXiv 2309.14509). Activations per process shrink N-fold, which is what lets
ms-swift's 64k-512k-token examples fit.

What alignkit adds around DeepSpeed's attention (``enable``):

- the split: a forward pre-hook on the decoder stack (``model.model``) pads the sequence to a multiple of N,
  keeps this process's slice of the ids and position ids, and drops the 2-D mask (causal attention over the
  gathered sequence needs none: batches are right-padded, so padding only ever follows the real tokens);
- the gather: a forward hook all-gathers the decoder's last hidden states (differentiably) and trims the
  padding, so the LM head, a classifier's pooling and every loss in alignkit run unchanged on whole sequences;
- the data: the N processes of a group take the same rows (``data_rank``), the groups split the batch.

Gradients: every process of a group computes the same loss from the gathered states; the gather's backward sums
their gradients onto each slice, and DDP's (or ZeRO's) mean over all processes divides by N again, so the update
is the data-parallel mean over groups, as without sequence parallelism (tested against a one-process run).

Only gradient-carrying training forwards are split: evaluation, reference log-probs and other ``no_grad``
passes run whole sequences on each process (DeepSpeed's ``disable_in_eval``, extended to ``no_grad``), since they
are not run in lockstep across a group.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass

import torch

from alignkit.errors import AlignkitError

logger = logging.getLogger("alignkit")


@dataclass(frozen=True)
class SequenceGroups:
    """Where this process sits: its sequence-parallel group of ``size`` processes and its data-parallel index."""

    size: int
    rank_in_group: int
    data_rank: int
    data_processes: int
    group: object  # torch.distributed ProcessGroup of this process's sequence-parallel group


def check_sequence_parallel(size: int, world_size: int) -> None:
    """Before any model loads: the process count and the engine package."""
    if size <= 1:
        return
    if importlib.util.find_spec("deepspeed") is None:
        raise AlignkitError(f"--sequence_parallel_size {size}: Ulysses sequence parallelism runs on DeepSpeed's "
                            "UlyssesSPAttentionHF; pip install deepspeed")
    if world_size % size:
        raise AlignkitError(f"--sequence_parallel_size {size}: the {world_size} process(es) do not split into "
                            f"groups of {size}; start a multiple of {size} (NPROC_PER_NODE={size}, torchrun)")


def _splits(model) -> bool:
    return model.training and torch.is_grad_enabled()


def decoder_of(model):
    """The decoder stack under a causal LM, a sequence classifier or a peft wrapper (``model.model``)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = getattr(base, base.base_model_prefix, None)
    if decoder is None or not hasattr(decoder, "layers"):
        raise AlignkitError(f"--sequence_parallel_size: {type(base).__name__} has no decoder stack alignkit can split "
                            "(it splits text models with a `model.layers` stack)")
    return decoder


def enable(model, size: int) -> SequenceGroups:
    """Build the groups, route ``model``'s attention through DeepSpeed's Ulysses all-to-all and split / gather
    around its decoder stack. Call once per process, after the process group exists, before DDP wraps."""
    import deepspeed
    import torch.distributed as dist
    from deepspeed.runtime.sequence_parallel import parallel_state_sp as mpu
    from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    deepspeed.init_distributed(dist_backend=dist.get_backend())
    mpu.initialize_sequence_parallel(sequence_parallel_size=size)
    group = mpu.get_sequence_parallel_group()
    config = model.config.get_text_config()
    implementation = model.config._attn_implementation
    if implementation not in ALL_ATTENTION_FUNCTIONS or implementation.startswith("paged"):
        raise AlignkitError(f"--sequence_parallel_size {size} with {implementation} attention: Ulysses needs sdpa, "
                            "flash attention or flex_attention (--attn_impl)")
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    if heads % size:
        raise AlignkitError(f"--sequence_parallel_size {size}: the model's {heads} attention heads do not split "
                            f"into {size} groups")
    core = ALL_ATTENTION_FUNCTIONS[implementation]
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    by_batch: dict[int, UlyssesSPAttentionHF] = {}

    def ulysses_attention(module, query, key, value, attention_mask, *args, **kwargs):
        if not _splits(module):
            return core(module, query, key, value, attention_mask, *args, **kwargs)
        batch = query.shape[0]
        # DeepSpeed checks every shape against the batch size it was built for; micro-batches vary (an epoch's
        # last one, DPO's two rows per pair, packed rows), so there is one instance per batch size.
        if batch not in by_batch:
            by_batch[batch] = UlyssesSPAttentionHF(
                attn=core, batch_size=batch, attn_head_count=heads, attn_head_size=head_dim, kv_head_count=kv_heads,
                num_hidden_layers=config.num_hidden_layers, process_group=group, seq_length_is_variable=True,
                disable_in_eval=True)
        # The decoder dropped the 2-D mask (its causal mask would be built for the local slice only).
        return by_batch[batch](module, query, key, value, None, *args, **kwargs)

    # Replacing the implementation's entry (as DeepSpeed's register_with_transformers does) keeps transformers'
    # own branches on the implementation's name, e.g. flash attention's varlen path from position ids.
    ALL_ATTENTION_FUNCTIONS[implementation] = ulysses_attention
    decoder = decoder_of(model)
    state: dict = {}
    rank = dist.get_rank(group)
    decoder.register_forward_pre_hook(lambda m, a, k: _split(m, a, k, size, rank, state), with_kwargs=True)
    decoder.register_forward_hook(lambda m, a, k, out: _gather(m, out, size, group, state), with_kwargs=True)
    world = dist.get_world_size()
    groups = SequenceGroups(size=size, rank_in_group=rank, data_rank=dist.get_rank() // size,
                            data_processes=world // size, group=group)
    logger.info("Sequence parallelism: %d groups of %d processes (Ulysses all-to-all attention, DeepSpeed); each "
                "process runs 1/%d of every sequence's tokens", groups.data_processes, size, size)
    return groups


def _split(decoder, args, kwargs, size: int, rank: int, state: dict):
    if not _splits(decoder):
        return None
    if args:
        raise AlignkitError("--sequence_parallel_size: the decoder was called with positional inputs")
    ids, embeds = kwargs.get("input_ids"), kwargs.get("inputs_embeds")
    tokens = ids if ids is not None else embeds
    length = tokens.shape[1]
    mask = kwargs.get("attention_mask")
    if mask is not None and mask.dim() != 2:
        raise AlignkitError("--sequence_parallel_size: a packed row's attention mask cannot be split (padding-free "
                            "rows need flash attention, whose packed rows carry position ids only)")
    if mask is not None and bool((mask[:, 1:] > mask[:, :-1]).any()):
        raise AlignkitError("--sequence_parallel_size: a left-padded batch; sequence parallelism needs padding after "
                            "the tokens (causal attention over the whole row then never sees it)")
    positions = kwargs.get("position_ids")
    padded = -(-length // size) * size
    if positions is None:
        positions = torch.arange(padded, device=tokens.device).expand(tokens.shape[0], -1)
    elif padded > length:
        tail = positions[:, -1:] + torch.arange(1, padded - length + 1, device=positions.device)
        positions = torch.cat([positions, tail], dim=1)
    if padded > length:
        fill = torch.zeros((tokens.shape[0], padded - length, *tokens.shape[2:]), dtype=tokens.dtype,
                           device=tokens.device)
        tokens = torch.cat([tokens, fill], dim=1)
    chunk = padded // size
    local = slice(rank * chunk, (rank + 1) * chunk)
    state["length"] = length
    kwargs = {**kwargs, "attention_mask": None, "position_ids": positions[:, local].contiguous()}
    kwargs["input_ids" if ids is not None else "inputs_embeds"] = tokens[:, local].contiguous()
    kwargs.pop("cache_position", None)  # rebuilt by the decoder for the slice (it only shapes the dropped mask)
    return args, kwargs


def _gather(decoder, output, size: int, group, state: dict):
    if not _splits(decoder):
        return None
    from torch.distributed.nn.functional import all_gather

    length = state.pop("length")

    def whole(hidden: torch.Tensor) -> torch.Tensor:
        return torch.cat(all_gather(hidden.contiguous(), group=group), dim=1)[:, :length]

    output.last_hidden_state = whole(output.last_hidden_state)
    if getattr(output, "hidden_states", None) is not None:
        output.hidden_states = tuple(whole(h) for h in output.hidden_states)
    return output
