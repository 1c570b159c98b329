"""ColossalChat's reward-model and critic checkpoints, read as alignkit's reward and value models.

ColossalChat's ``RewardModel`` and ``Critic`` (coati/models) are a transformers ``AutoModel`` in ``.model``
plus ``value_head = nn.Linear(d_model, 1)`` (with a bias); ``train_rm.py`` saves the module's state dict
with ``booster.save_model(model, save_dir/modeling, shard=True)``: weight files (``pytorch_model*.bin`` or
``model*.safetensors``, an index when sharded) whose keys are ``model.<backbone key>``, ``value_head.weight``
and ``value_head.bias``, and no config.json or tokenizer (the module is not a PreTrainedModel). Its
``RewardModel`` scores a sequence at its last attended token; its ``Critic`` gives a value at every token.

The backbone's config comes from the checkpoint directory, or (ColossalChat's ``--rm_pretrain``) from
``config_from``, the model the checkpoint was trained from.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from alignkit.errors import AlignkitError

BACKBONE_PREFIX = "model."  # RewardModel.model / Critic.model
HEAD_KEYS = ("value_head.weight", "value_head.bias")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")


def weight_files(directory: Path) -> list[Path]:
    """The weight files of a saved state dict: the index's shards, or the single file."""
    for name in INDEX_FILES:
        index = directory / name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [directory / shard for shard in shards]
    return [directory / name for name in SINGLE_FILES if (directory / name).is_file()][:1]


def state_dict_keys(directory: Path) -> set[str]:
    """The tensor names stored in ``directory``'s weights, read without loading the tensors where possible."""
    for name in INDEX_FILES:
        if (directory / name).is_file():
            return set(json.loads((directory / name).read_text())["weight_map"])
    keys: set[str] = set()
    for path in weight_files(directory):
        keys.update(_read(path, keys_only=True))
    return keys


def is_colossal_scalar_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a ColossalChat reward-model or critic checkpoint (value_head.* in its state dict)."""
    directory = Path(path)
    return directory.is_dir() and bool(weight_files(directory)) and HEAD_KEYS[0] in state_dict_keys(directory)


def load_colossal_scalar(path: str | Path, *, config_from: str | None = None) -> tuple[nn.Module, nn.Linear]:
    """(backbone, head) of a ColossalChat RewardModel/Critic checkpoint, in fp32. The backbone is built from
    ``path``'s config.json, else ``config_from``'s, and every ``model.*`` tensor must fill it (strict, as
    ColossalChat's booster.load_model)."""
    from transformers import AutoConfig, AutoModel

    directory = Path(path)
    source = directory if (directory / "config.json").is_file() else config_from
    if source is None:
        raise AlignkitError(f"{path}: a ColossalChat reward-model checkpoint holds no config.json; name the model it "
                            "was trained from (ColossalChat's --rm_pretrain) so its architecture is known")
    state = {}
    for file in weight_files(directory):
        state.update(_read(file, keys_only=False))
    if HEAD_KEYS[0] not in state:
        raise AlignkitError(f"{path}: no value_head.weight in its state dict, so it is not a ColossalChat reward model")
    backbone_state = {key[len(BACKBONE_PREFIX):]: value for key, value in state.items()
                      if key.startswith(BACKBONE_PREFIX)}
    stray = sorted(key for key in state if key not in HEAD_KEYS and not key.startswith(BACKBONE_PREFIX))
    if stray:
        raise AlignkitError(f"{path}: tensors outside ColossalChat's model.* / value_head.*: {', '.join(stray[:5])}")
    unmerged = sorted(key for key in backbone_state if ".lora_A" in key or ".lora_B" in key)
    if unmerged:
        raise AlignkitError(f"{path}: unmerged LoRA weights ({unmerged[0]}, ...): an intermediate checkpoint of a "
                            "LoRA run; use the run's final save_dir/modeling, where ColossalChat merges them")
    config = AutoConfig.from_pretrained(str(source))
    backbone = AutoModel.from_config(config).float()
    missing, unexpected = backbone.load_state_dict(backbone_state, strict=False)
    if missing or unexpected:
        raise AlignkitError(f"{path}: its backbone does not match {source}'s architecture (missing "
                            f"{missing[:3]}, unexpected {unexpected[:3]}); --rm_pretrain must be the model it was "
                            "trained from")
    weight, bias = state[HEAD_KEYS[0]].float(), state.get(HEAD_KEYS[1])
    from alignkit.models.reward_model import linear_head

    return backbone.float(), linear_head(weight.reshape(1, -1), None if bias is None else bias.float().reshape(1))


def _read(path: Path, *, keys_only: bool) -> dict:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return {key: None if keys_only else handle.get_tensor(key) for key in handle.keys()}
    return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
