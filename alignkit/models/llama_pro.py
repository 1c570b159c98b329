"""LLaMA-Pro block expansion (Wu et al. 2024, https://arxiv.org/abs/2401.02415), ms-swift's ``--tuner_type
llamapro`` (swift/tuners/llamapro.py): copies of decoder layers are inserted into the stack, each with its output
projections (attention's ``o_proj``, the MLP's ``down_proj``) set to zero, so every new block adds nothing to the
residual stream and the expanded model computes exactly what the original did; only the new blocks train.

The ``L`` original layers form ``--llamapro_num_groups`` groups of ``L / groups`` consecutive layers; after each
group come ``--llamapro_num_new_blocks / groups`` copies of the group's last layer (groups unset: one new block
after every ``L / new_blocks`` layers, as ms-swift). Example: L = 4, 2 new blocks -> layers 0 1 1' 2 3 3'.

The expanded model is an ordinary transformers model: its config says the new ``num_hidden_layers`` (and the
per-layer lists such as ``layer_types`` follow the insertion), each layer knows its new index (the KV cache is
indexed by it), and ``save_pretrained`` / ``from_pretrained`` round-trip it.

``decoder_layers`` (the stack both LLaMA-Pro and LISA work on) is ms-swift's rule: the first ``nn.ModuleList``
of the model.
"""

from __future__ import annotations

import copy
import logging

from torch import nn

from alignkit.errors import AlignkitError

logger = logging.getLogger("alignkit")

OUTPUT_PROJECTIONS = ("o_proj", "down_proj")  # the residual branches' last linear maps (ms-swift's ModelKeys)


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(name, layers) of the model's first ``nn.ModuleList``: the decoder stack of a causal LM."""
    found = next(((name, module) for name, module in model.named_modules() if isinstance(module, nn.ModuleList)),
                 None)
    if found is None:
        raise AlignkitError(f"{type(model).__name__} has no list of decoder layers (an nn.ModuleList)")
    return found


def new_block_positions(num_layers: int, num_new_blocks: int, num_groups: int | None) -> list[int]:
    """For each original layer in order, how many new blocks follow it.

    >>> new_block_positions(4, 2, None)
    [0, 1, 0, 1]
    >>> new_block_positions(8, 4, 2)
    [0, 0, 0, 2, 0, 0, 0, 2]
    """
    groups = num_groups or num_new_blocks
    if num_new_blocks < 1 or groups < 1:
        raise AlignkitError(f"--llamapro_num_new_blocks {num_new_blocks} --llamapro_num_groups {num_groups}: "
                            "expected positive integers")
    if num_layers % groups or num_new_blocks % groups:
        raise AlignkitError(f"--llamapro_num_new_blocks {num_new_blocks} --llamapro_num_groups {groups}: the "
                            f"model's {num_layers} decoder layers and the new blocks must both split evenly into "
                            f"{groups} groups")
    stride, per_group = num_layers // groups, num_new_blocks // groups
    return [per_group if (i + 1) % stride == 0 else 0 for i in range(num_layers)]


def expand_blocks(model: nn.Module, num_new_blocks: int, num_groups: int | None = None) -> list[int]:
    """Insert the new blocks into ``model`` in place, freeze every other weight, and return the new blocks'
    indices in the expanded stack."""
    name, layers = decoder_layers(model)
    after = new_block_positions(len(layers), num_new_blocks, num_groups)
    expanded, new_indices, origin = nn.ModuleList(), [], []
    for i, layer in enumerate(layers):
        expanded.append(layer)
        origin.append(i)
        for _ in range(after[i]):
            block = copy.deepcopy(layer)
            zeroed = zero_output_projections(block)
            if not zeroed:
                raise AlignkitError(f"--tuner_type llamapro: {type(layer).__name__} has no o_proj / down_proj "
                                    "projections to zero (LLaMA-Pro needs Llama-style decoder layers)")
            new_indices.append(len(expanded))
            expanded.append(block)
            origin.append(i)
    for index, layer in enumerate(expanded):
        for module in layer.modules():  # the decoder layer and its attention; the KV cache is indexed by it
            if hasattr(module, "layer_idx"):
                module.layer_idx = index
    parent, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attribute, expanded)
    update_config(model.config, len(layers), origin)
    model.requires_grad_(False)
    for index in new_indices:
        expanded[index].requires_grad_(True)
    logger.info("LLaMA-Pro: %d new blocks at layers %s of %d (output projections zeroed); only they train",
                len(new_indices), new_indices, len(expanded))
    return new_indices


def zero_output_projections(block: nn.Module) -> int:
    """Zero every weight and bias under an ``o_proj`` / ``down_proj`` (fused experts' ``down_proj`` tensors too);
    returns how many tensors were zeroed."""
    zeroed = 0
    for name, param in block.named_parameters():
        if any(part in OUTPUT_PROJECTIONS for part in name.split(".")):
            param.data.zero_()
            zeroed += 1
    return zeroed


def update_config(config, num_layers: int, origin: list[int]) -> None:
    """``num_hidden_layers`` and every per-layer list of the config (``layer_types``, ...) for the expanded stack;
    ``origin[j]``: the original layer the expanded layer j is (a copy of)."""
    text = config.get_text_config()
    for target in [config] if text is config else [config, text]:
        for key, value in list(vars(target).items()):
            if "layer" in key and isinstance(value, list) and len(value) == num_layers:
                setattr(target, key, [value[i] for i in origin])
        if getattr(target, "num_hidden_layers", None) == num_layers:
            target.num_hidden_layers = len(origin)
