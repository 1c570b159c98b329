"""Which engine shards the model: plain DDP, DeepSpeed ZeRO or FSDP2, all through accelerate.

``--deepspeed``, ``--fsdp`` (with ``--fsdp_config``) and ColossalChat's ``--plugin/--tp/--pp/--sp`` resolve
here to one ``Engine``; the loop hands ``Engine.accelerator_kwargs()`` to ``Accelerator``. alignkit never
shards anything itself.

    --fsdp / --fsdp true  → FSDP2, one shard unit per decoder layer (``fsdp_options``)
    --fsdp fsdp2          → ms-swift's preset (full_shard auto_wrap, activation checkpointing)
    --fsdp "full_shard auto_wrap offload"  → transformers' option words
    --fsdp config.json    → ms-swift's FSDP file: {"fsdp": "<option words>", "fsdp_config": {...}}
    --fsdp_config F|JSON  → transformers' fsdp_config keys (the fsdp_ prefix optional), over the above

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
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from alignkit.errors import AlignkitError

logger = logging.getLogger("alignkit")

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
    fsdp_plugin_options: dict | None = None  # FullyShardedDataParallelPlugin's arguments; None: fsdp_options()
    # ms-swift's fsdp_config activation_cpu_offload without activation_checkpointing: saved-tensor hooks on the
    # FSDP units (alignkit.training.activation_offload); with it, accelerate's activation_checkpointing_offload.
    activation_cpu_offload: bool = False

    def accelerator_kwargs(self) -> dict:
        """Keyword arguments for ``accelerate.Accelerator``; checks that the engine can run here."""
        check_available(self)
        from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin

        if self.kind == "deepspeed":
            return {"deepspeed_plugin": DeepSpeedPlugin(hf_ds_config=self.deepspeed_config)}
        return {"fsdp_plugin": FullyShardedDataParallelPlugin(**(self.fsdp_plugin_options or fsdp_options()))}


def fsdp_options() -> dict:
    """FSDP2, one shard unit per decoder layer (the model's ``_no_split_modules``, as transformers names them),
    full state dicts so checkpoints stay ordinary safetensors."""
    return {"fsdp_version": 2, "auto_wrap_policy": "transformer_based_wrap", "reshard_after_forward": True,
            "state_dict_type": "FULL_STATE_DICT", "cpu_ram_efficient_loading": False}


def resolve_engine(*, deepspeed: str | None, fsdp: bool | str | None, plugin: str | None, tp: int = 1, pp: int = 1,
                   sp: int = 1, batch_size: int = 1, gradient_accumulation_steps: int = 1, max_grad_norm: float = 1.0,
                   precision: str = "fp32", fsdp_config: str | None = None) -> Engine | None:
    """The engine the flags ask for, or None for plain data parallelism (DDP, or one process)."""
    fsdp = fsdp_asked(fsdp)
    if fsdp_config and not fsdp:
        raise AlignkitError("--fsdp_config configures --fsdp, which is not set; add --fsdp true (or drop it)")
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
        if fsdp is True and not fsdp_config:
            return Engine("fsdp", "--fsdp")
        source = "--fsdp" + ("" if fsdp is True else f" {fsdp}") + (f" --fsdp_config {fsdp_config}" if fsdp_config
                                                                    else "")
        options, offload_hooks = resolve_fsdp(fsdp, fsdp_config)
        return Engine("fsdp", source, fsdp_plugin_options=options, activation_cpu_offload=offload_hooks)
    source = f"--plugin {plugin}" if plugin else f"--deepspeed {deepspeed}"
    config = load_deepspeed_config(PLUGIN_TO_DEEPSPEED[plugin] if plugin else deepspeed)
    fill_auto(config, batch_size=batch_size, gradient_accumulation_steps=gradient_accumulation_steps,
              max_grad_norm=max_grad_norm, precision=precision)
    return Engine("deepspeed", source, config)


def fsdp_asked(value: bool | str | None) -> bool | str:
    """``--fsdp``'s value: False (off), True (on, alignkit's options) or the text to resolve."""
    if value is None or isinstance(value, bool):
        return bool(value)
    text = value.strip()
    if text.lower() in ("", "false", "0", "no", "off"):
        return False
    return True if text.lower() in ("true", "1", "yes", "on") else text


# ms-swift's swift/config/fsdp2.json (its documentation keys left out).
FSDP_PRESETS = {"fsdp2": {"fsdp": "full_shard auto_wrap", "fsdp_config": {
    "fsdp_version": 2, "reshard_after_forward": True, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
    "cpu_ram_efficient_loading": True, "state_dict_type": "SHARDED_STATE_DICT", "activation_checkpointing": True}}}
FSDP_WORDS = ("full_shard", "shard_grad_op", "offload", "auto_wrap")
# transformers' fsdp_config keys (without "fsdp_") -> FullyShardedDataParallelPlugin's; values passed as given.
FSDP_CONFIG_KEYS = {
    "version": "fsdp_version", "reshard_after_forward": "reshard_after_forward", "auto_wrap_policy": "auto_wrap_policy",
    "transformer_layer_cls_to_wrap": "transformer_cls_names_to_wrap", "min_num_params": "min_num_params",
    "cpu_ram_efficient_loading": "cpu_ram_efficient_loading", "activation_checkpointing": "activation_checkpointing",
    "offload_params": "cpu_offload", "cpu_offload": "cpu_offload", "backward_prefetch": "backward_prefetch",
    "forward_prefetch": "forward_prefetch", "limit_all_gathers": "limit_all_gathers",
    "use_orig_params": "use_orig_params", "sync_module_states": "sync_module_states",
    "state_dict_type": "state_dict_type",
}


def resolve_fsdp(fsdp: bool | str, fsdp_config: str | None) -> tuple[dict, bool]:
    """FullyShardedDataParallelPlugin's arguments for ``--fsdp`` (true, a preset, option words or an ms-swift
    FSDP file) and ``--fsdp_config``, and whether alignkit's activation offload hooks run (ms-swift's
    ``activation_cpu_offload`` without ``activation_checkpointing``; with it, accelerate offloads each checkpointed
    layer's input). Checkpoints stay whole safetensors written by the main process, so the state dict is always
    gathered (FULL_STATE_DICT); a config asking for another says so in the log."""
    words, config = "full_shard auto_wrap", {}
    if fsdp is not True:
        if fsdp in FSDP_PRESETS:
            words, config = FSDP_PRESETS[fsdp]["fsdp"], dict(FSDP_PRESETS[fsdp]["fsdp_config"])
        elif fsdp.lstrip().startswith("{") or fsdp.endswith(".json") or Path(fsdp).expanduser().is_file():
            whole = read_json_option("--fsdp", fsdp)
            words, config = whole.get("fsdp", words), dict(whole.get("fsdp_config") or {})
        else:
            words = fsdp
    if fsdp_config:
        config.update(read_json_option("--fsdp_config", fsdp_config))
    options = {**fsdp_options(), **fsdp_word_options(words)}
    offload_activations = False
    for key, value in config.items():
        name = key.removeprefix("fsdp_")
        if key.startswith("_"):
            continue  # ms-swift's documentation keys
        if name == "activation_cpu_offload":
            offload_activations = bool(value)
            continue
        if name not in FSDP_CONFIG_KEYS:
            raise AlignkitError(f"--fsdp_config: {key} is not an FSDP setting alignkit passes to accelerate; it takes "
                                f"{', '.join(FSDP_CONFIG_KEYS)}, activation_cpu_offload (each optionally prefixed "
                                "fsdp_)")
        options[FSDP_CONFIG_KEYS[name]] = value.lower() if name == "auto_wrap_policy" else value
    if options.get("min_num_params") and "auto_wrap_policy" not in {k.removeprefix("fsdp_") for k in config}:
        options["auto_wrap_policy"] = "size_based_wrap"
    if str(options["state_dict_type"]).upper() != "FULL_STATE_DICT":
        logger.info("FSDP state_dict_type %s: alignkit writes every checkpoint as whole safetensors from the main "
                    "process, so it gathers the full state dict (FULL_STATE_DICT)", options["state_dict_type"])
        options["state_dict_type"] = "FULL_STATE_DICT"
    if offload_activations and options.get("activation_checkpointing"):
        options["activation_checkpointing_offload"] = True  # only the checkpointed inputs are saved: offload them
        return options, False
    return options, offload_activations


def fsdp_word_options(words: str) -> dict:
    """transformers' ``--fsdp`` option words: full_shard (reshard parameters after forward, ZeRO-3-like),
    shard_grad_op (keep them, ZeRO-2-like), offload (parameters and gradients in CPU memory), auto_wrap (one
    shard unit per decoder layer; without it the whole model is one unit)."""
    given = words.replace(",", " ").split()
    refused = [w for w in given if w not in FSDP_WORDS]
    if refused:
        hint = (" (hybrid sharding needs a 2-D device mesh alignkit does not build; no_shard is plain data "
                "parallelism: omit --fsdp)") if any(w.startswith(("hybrid", "no_shard")) for w in refused) else ""
        raise AlignkitError(f"--fsdp {words}: {' '.join(refused)} not supported{hint}; alignkit takes "
                            f"{', '.join(FSDP_WORDS)}, fsdp2, true or an ms-swift FSDP JSON file")
    return {"reshard_after_forward": "shard_grad_op" not in given, "cpu_offload": "offload" in given,
            "auto_wrap_policy": "transformer_based_wrap" if "auto_wrap" in given else "no_wrap"}


def read_json_option(flag: str, value: str) -> dict:
    """A JSON object given inline or as a file."""
    path = Path(value).expanduser()
    try:
        data = json.loads(path.read_text() if path.is_file() else value)
    except (ValueError, OSError) as exc:
        raise AlignkitError(f"{flag} {value}: neither a JSON file nor a JSON object ({exc})") from exc
    if not isinstance(data, dict):
        raise AlignkitError(f"{flag} {value}: expected a JSON object, got {type(data).__name__}")
    return data


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
