"""Which engine shards the model: plain DDP, DeepSpeed ZeRO or FSDP2, all through accelerate.

``--deepspeed``, ``--fsdp`` and ColossalChat's ``--plugin/--tp/--pp/--sp`` resolve here to one ``Engine``;
the loop hands ``Engine.accelerator_kwargs()`` to ``Accelerator``. alignkit never shards anything itself.

    --plugin ddp          → plain DDP (the default whenever several processes run)
    --plugin zero2        → --deepspeed zero2
    --plugin zero2_cpu    → --deepspeed zero2_offload   (ZeRO-2, optimizer state in CPU memory)
    --plugin gemini       → --deepspeed zero3           (Gemini shards parameters like ZeRO-3)
    --plugin gemini_auto  → --deepspeed zero3_offload   (Gemini's auto placement ≈ ZeRO-3 + CPU offload)
    --plugin 3d, --tp/--pp/--sp > 1 → an error: no engine alignkit uses has tensor, pipeline or sequence parallelism
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from alignkit.errors import AlignkitError

DS_CONFIG_DIR = Path(__file__).parent.parent / "ds_configs"  # package data, named in --deepspeed's help
DEEPSPEED_PRESETS = ("zero0", "zero1", "zero2", "zero3", "zero2_offload", "zero3_offload")
PLUGIN_TO_DEEPSPEED = {
    "zero2": "zero2",
    "zero2_cpu": "zero2_offload",
    "gemini": "zero3",
    "gemini_auto": "zero3_offload",
}


@dataclass(frozen=True)
class Engine:
    kind: str  # "deepspeed" or "fsdp"
    source: str  # what the user asked for, for messages
    deepspeed_config: dict | None = None  # complete: no "auto" left that alignkit can fill

    def accelerator_kwargs(self) -> dict:
        """Keyword arguments for ``accelerate.Accelerator``; checks that the engine can run here."""
        check_available(self)
        from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin

        if self.kind == "deepspeed":
            return {"deepspeed_plugin": DeepSpeedPlugin(hf_ds_config=self.deepspeed_config)}
        return {"fsdp_plugin": FullyShardedDataParallelPlugin(**fsdp_options())}


def fsdp_options() -> dict:
    """FSDP2, one shard unit per decoder layer (the model's ``_no_split_modules``, as transformers names them),
    full state dicts so checkpoints stay ordinary safetensors."""
    return {"fsdp_version": 2, "auto_wrap_policy": "transformer_based_wrap", "reshard_after_forward": True,
            "state_dict_type": "FULL_STATE_DICT", "cpu_ram_efficient_loading": False}


def resolve_engine(*, deepspeed: str | None, fsdp: bool, plugin: str | None, tp: int = 1, pp: int = 1, sp: int = 1,
                   batch_size: int = 1, gradient_accumulation_steps: int = 1, max_grad_norm: float = 1.0,
                   precision: str = "fp32") -> Engine | None:
    """The engine the flags ask for, or None for plain data parallelism (DDP, or one process)."""
    for name, size in (("--tp", tp), ("--pp", pp), ("--sp", sp)):
        if size != 1:
            raise AlignkitError(
                f"{name} {size}: tensor, pipeline and sequence parallelism (ColossalAI's 3D plugin) have no equivalent "
                "in the engines alignkit uses. For models larger than one GPU use --deepspeed zero3 (or zero3_offload) "
                "or --fsdp, which shard parameters across data-parallel processes."
            )
    if plugin == "3d":
        raise AlignkitError("--plugin 3d (ColossalAI's tensor/pipeline/sequence parallelism) has no equivalent in the "
                            "engines alignkit uses; use --deepspeed zero3 or --fsdp to shard a large model")
    asked = [flag for flag, given in (("--deepspeed", deepspeed), ("--fsdp", fsdp), ("--plugin", plugin)) if given]
    if len(asked) > 1:
        raise AlignkitError(f"{' and '.join(asked)} each choose the engine; pass one of them")
    if plugin == "ddp" or not asked:
        return None
    if fsdp:
        return Engine("fsdp", "--fsdp")
    source = f"--plugin {plugin}" if plugin else f"--deepspeed {deepspeed}"
    config = load_deepspeed_config(PLUGIN_TO_DEEPSPEED[plugin] if plugin else deepspeed)
    fill_auto(config, batch_size=batch_size, gradient_accumulation_steps=gradient_accumulation_steps,
              max_grad_norm=max_grad_norm, precision=precision)
    return Engine("deepspeed", source, config)


def load_deepspeed_config(name_or_path: str) -> dict:
    """A shipped preset (zero0 ... zero3_offload) or a user's DeepSpeed JSON file."""
    path = (
        DS_CONFIG_DIR / f"{name_or_path}.json" if name_or_path in DEEPSPEED_PRESETS else Path(name_or_path).expanduser()
    )
    if not path.is_file():
        raise AlignkitError(f"--deepspeed {name_or_path}: neither a preset ({', '.join(DEEPSPEED_PRESETS)}) "
                            "nor a JSON file")
    try:
        config = json.loads(path.read_text())
    except ValueError as exc:
        raise AlignkitError(f"--deepspeed {path}: not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise AlignkitError(f"--deepspeed {path}: expected a JSON object, got {type(config).__name__}")
    stage = config.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise AlignkitError(f"--deepspeed {path}: zero_optimization.stage must be 0, 1, 2 or 3, got {stage!r}")
    return config


def fill_auto(config: dict, *, batch_size: int, gradient_accumulation_steps: int, max_grad_norm: float,
              precision: str) -> None:
    """Replace the "auto" values alignkit's flags decide; a number the user wrote that disagrees with a
    flag is an error rather than a silent choice between the two."""
    values = {
        "train_micro_batch_size_per_gpu": batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "gradient_clipping": max_grad_norm,
    }
    flags = {"train_micro_batch_size_per_gpu": "--per_device_train_batch_size",
             "gradient_accumulation_steps": "--gradient_accumulation_steps", "gradient_clipping": "--max_grad_norm"}
    for key, value in values.items():
        if config.get(key, "auto") == "auto":
            config[key] = value
        elif config[key] != value:
            raise AlignkitError(f"--deepspeed: {key} is {config[key]} in the config but {flags[key]} is {value}; "
                                f'make them agree or write "auto" in the config')
    for section, wanted in (("bf16", precision == "bf16"), ("fp16", precision == "fp16")):
        block = config.setdefault(section, {"enabled": "auto"})
        if block.get("enabled", "auto") == "auto":
            block["enabled"] = wanted
        elif bool(block["enabled"]) != wanted:
            raise AlignkitError(f"--deepspeed: {section}.enabled is {block['enabled']} in the config but --dtype "
                                f"resolved to {precision}; make them agree or write \"auto\" in the config")


def check_available(engine: Engine) -> None:
    """Fail before any data or model is loaded when the engine cannot run on this machine."""
    what = "DeepSpeed" if engine.kind == "deepspeed" else "FSDP"
    if engine.kind == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise AlignkitError(f"{engine.source}: DeepSpeed is not installed (pip install deepspeed)")
    if not torch.cuda.is_available():
        raise AlignkitError(f"{engine.source}: {what} needs GPUs and none is visible here; on CPU alignkit runs plain "
                            "data parallel (torchrun or NPROC_PER_NODE) without an engine flag")
    if int(os.environ.get("WORLD_SIZE", "1")) < 2 and engine.kind == "fsdp":
        raise AlignkitError(f"{engine.source}: FSDP shards across processes; start several (NPROC_PER_NODE=N, torchrun "
                            "or accelerate launch)")
