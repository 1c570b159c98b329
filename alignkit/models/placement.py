"""Single-process model parallelism (ms-swift's "MP"): one process splits a model's layers across the GPUs
it sees, with transformers' ``device_map`` and accelerate's hooks, instead of one model copy per process (DDP).

    --device_map auto | balanced | balanced_low_0 | sequential | cpu | cuda:N | '{"model.layers.0": 0, ...}' | map.json
    --device_max_memory 20GB 24GB                     one size per visible GPU (ms-swift 2.x)
    --device_max_memory '{"0": "20GB", "cpu": "64GB"}' (ms-swift 3.x's --max_memory; "cpu"/"disk" allowed)

Default, as ms-swift: a single process (no launcher) that sees several GPUs loads with "auto". The layers run
one after another, so a split buys memory, not speed. accelerate's hooks move each block's inputs to its
device and bring the model's outputs back to the device of its inputs, so callers put inputs on
``input_device(model)`` and compute losses where the logits come back.
"""

from __future__ import annotations

import atexit
import copy
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from alignkit.errors import AlignkitError

logger = logging.getLogger("alignkit")

SPLIT_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
_DEVICE = re.compile(r"^(cpu|disk|cuda(:\d+)?)$")


def parse_device_map(value: str | None) -> str | dict | None:
    """--device_map as from_pretrained takes it: a strategy, one device, or a {module: device} dict.

    >>> parse_device_map('{"model.embed_tokens": 0, "model.layers.0": "1", "lm_head": "cpu"}')
    {'model.embed_tokens': 0, 'model.layers.0': 1, 'lm_head': 'cpu'}
    """
    if value is None:
        return None
    text = value.strip()
    if text in SPLIT_STRATEGIES:
        return text
    if text.isdigit() or (_DEVICE.match(text) and text != "disk"):
        return int(text) if text.isdigit() else text
    if text.startswith("{"):
        try:
            mapping = json.loads(text)
        except ValueError as error:
            raise AlignkitError(f"--device_map: not valid JSON ({error})") from error
        return _check_mapping(mapping, "--device_map")
    path = Path(text).expanduser()
    if path.is_file():
        try:
            mapping = json.loads(path.read_text())
        except ValueError as error:
            raise AlignkitError(f"--device_map {path}: not valid JSON ({error})") from error
        return _check_mapping(mapping, f"--device_map {path}")
    raise AlignkitError(f"--device_map {value}: expected one of {', '.join(SPLIT_STRATEGIES)}, a device (cpu, cuda:N, "
                        "N), a JSON object {module: device} or a JSON file holding one")


def _check_mapping(mapping, source: str) -> dict:
    if not isinstance(mapping, dict) or not mapping:
        raise AlignkitError(f"{source}: expected a non-empty JSON object {{module name: device}}")
    checked = {}
    for name, device in mapping.items():
        text = str(device)
        if isinstance(device, bool) or not (text.isdigit() or _DEVICE.match(text)):
            raise AlignkitError(f"{source}: module {name!r} has device {device!r}; expected a GPU index, "
                                "cuda:N, cpu or disk")
        checked[name] = int(text) if text.isdigit() else text
    return checked


def parse_max_memory(values: list[str], gpus: int) -> dict | None:
    """--device_max_memory as accelerate's max_memory {GPU index | "cpu" | "disk": bytes or "20GB"}.

    >>> parse_max_memory(["20GB", "24GB"], gpus=2)
    {0: '20GB', 1: '24GB'}
    """
    from accelerate.utils import convert_file_size_to_int

    if not values:
        return None
    if len(values) == 1 and values[0].lstrip().startswith("{"):
        try:
            given = json.loads(values[0])
        except ValueError as error:
            raise AlignkitError(f"--device_max_memory: not valid JSON ({error})") from error
        if not isinstance(given, dict) or not given:
            raise AlignkitError("--device_max_memory: expected a non-empty JSON object {device: size}")
        memory = {int(k) if str(k).isdigit() else k: v for k, v in given.items()}
    else:
        if len(values) != gpus:
            raise AlignkitError(f"--device_max_memory {' '.join(values)}: one size per visible GPU, and {gpus} "
                                f"{'is' if gpus == 1 else 'are'} visible (or a JSON object such as "
                                "'{\"0\": \"20GB\", \"cpu\": \"64GB\"}')")
        memory = dict(enumerate(values))
    for device, size in memory.items():
        if not (isinstance(device, int) or device in ("cpu", "disk")):
            raise AlignkitError(f"--device_max_memory: unknown device {device!r}; expected a GPU index, cpu or disk")
        try:
            convert_file_size_to_int(size)
        except (ValueError, TypeError) as error:
            raise AlignkitError(
                f"--device_max_memory: {device}: {size!r} is not a size such as 20GB or 500MiB"
            ) from error
    return memory


def choose_device_map(device_map: str | dict | int | None, max_memory: dict | None, *, gpus: int, world_size: int,
                      engine: str | None = None) -> str | dict | int | None:
    """The device_map to load with: the user's, else "auto" when one process sees several GPUs (logged).

    A split model cannot also be replicated (DDP) or sharded (DeepSpeed, FSDP) by accelerate, so those
    combinations stop here, before any data or model is loaded."""
    if device_map is None and max_memory is not None:
        device_map = "auto"
        logger.info("--device_max_memory without --device_map: using --device_map auto")
    if device_map is not None:
        if world_size > 1:
            raise AlignkitError(
                f"--device_map splits one model across the GPUs of a single process; this is one of {world_size} "
                "data-parallel processes (torchrun, accelerate launch or NPROC_PER_NODE). Run one process (unset "
                "NPROC_PER_NODE) to split the model, or drop --device_map/--device_max_memory for data parallelism"
            )
        if engine is not None:
            raise AlignkitError(f"--device_map and {engine} both decide where the weights live; pass one of them "
                                "(DeepSpeed ZeRO-3 and FSDP shard a large model across processes instead)")
        return device_map
    if gpus > 1 and world_size == 1 and engine is None:
        logger.info("One process sees %d GPUs: splitting the model's layers across them (--device_map auto, as "
                    "ms-swift does). For data parallelism start one process per GPU: NPROC_PER_NODE=%d", gpus, gpus)
        return "auto"
    return None


def split_map(model) -> dict | None:
    """The ``hf_device_map`` of a model that accelerate dispatched with its hooks (across several devices, or
    offloaded to disk), else None. accelerate's ``prepare`` never moves a model whose map has several entries
    (``Accelerator.verify_device_map``); one offloaded to disk whole cannot be moved at all."""
    for module in model.modules():
        mapping = getattr(module, "hf_device_map", None)
        if mapping and (len(mapping) > 1 or "disk" in mapping.values()):
            return mapping
    return None


def place(model, device: torch.device):
    """``model.to(device)``, except that the layers of a split model stay where the map put them; modules
    outside the split (a reward model's value head) go to ``device``, where the split model's outputs
    come back to."""
    if split_map(model) is None:
        return model.to(device)
    if getattr(model, "hf_device_map", None) is None:
        for child in model.children():
            place(child, device)
        for tensor in [*model.parameters(recurse=False), *model.buffers(recurse=False)]:
            tensor.data = tensor.data.to(device)
    return model


def input_device(model) -> torch.device:
    """Where a model's input ids go: its input embedding's device. An offloaded embedding (weights on "meta"
    until its forward) runs on the map's first GPU, or the CPU when the map has none."""
    weight = model.get_input_embeddings().weight
    if weight.device.type != "meta":
        return weight.device
    devices = [d for d in (split_map(model) or {}).values() if d not in ("cpu", "disk")]
    return torch.device(devices[0] if devices else "cpu")


def check_trainable(model) -> None:
    """Stop when the map offloaded weights (to the CPU beside GPUs, or to disk): accelerate keeps them on
    "meta" and loads a copy for each forward, so they cannot be trained."""
    meta = [name for name, param in model.named_parameters() if param.device.type == "meta"]
    if meta:
        mapping = split_map(model) or {}
        names = sorted({key or "the whole model" for key in mapping for name in meta
                        if key == "" or name.startswith(key + ".")})
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        raise AlignkitError(
            f"--device_map offloaded {shown} to cpu/disk ({describe(mapping)}); offloaded weights "
            "cannot be trained. Give the GPUs more room (--device_max_memory), use more GPUs, or shard with "
            "NPROC_PER_NODE=N --deepspeed zero3_offload"
        )


def frozen_copy(model):
    """A deep copy of ``model``; a split model's copy is hooked again on the same map, since the copied hooks
    and accelerate's wrappers still refer to the original's modules. No weights move: the copy's already sit
    on the map's devices."""
    from accelerate import dispatch_model
    from accelerate.hooks import remove_hook_from_module

    copied = copy.deepcopy(model)
    mapping = split_map(model)
    if mapping is None:
        return copied
    remove_hook_from_module(copied, recurse=True)
    return dispatch_model(copied, device_map=mapping, force_hooks=True)


def refuse_for_vision(device_map: str | None, max_memory: list[str]) -> None:
    """Vision-language models load on one device per process; a split asked for stops with advice."""
    if device_map or max_memory:
        raise AlignkitError("--device_map is not supported for vision-language models; run one process per GPU "
                            "(NPROC_PER_NODE) or --deepspeed zero3 for a model larger than one GPU")


def check_adapter_placement(model) -> None:
    """Stop before loading a LoRA adapter onto a model whose map puts weights on cpu or disk beside other
    devices: peft then re-dispatches the whole model itself, which fails on the offloaded weights."""
    if {"cpu", "disk"} & set((split_map(model) or {}).values()):
        raise AlignkitError("--adapters on a model that --device_map offloads to cpu/disk is not supported; merge the "
                            "adapter first (alignkit export --merge_lora) or give the GPUs more room "
                            "(--device_max_memory)")


def describe(mapping: dict) -> str:
    """The map for the log, one group per device, runs of numbered layers collapsed.

    >>> describe({"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 0, "model.layers.2": 1, "lm_head": 1})
    '0: model.embed_tokens, model.layers.0-1; 1: model.layers.2, lm_head'
    """
    groups: dict = {}
    for name, device in mapping.items():
        names = groups.setdefault(device, [])
        layer = re.fullmatch(r"(.*\.)(\d+)", name)
        run = re.fullmatch(r"(.*\.)(\d+)(?:-(\d+))?", names[-1]) if names else None
        if layer and run and run[1] == layer[1] and int(run[3] or run[2]) + 1 == int(layer[2]):
            names[-1] = f"{run[1]}{run[2]}-{layer[2]}"
        else:
            names.append(name)
    return "; ".join(f"{device}: {', '.join(names)}" for device, names in groups.items())


def offload_folder() -> str:
    """A temporary directory for the weights a map sends to "disk", removed when the process exits."""
    folder = tempfile.mkdtemp(prefix="alignkit-offload-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def resolve_flags(device_map: str | None, max_memory: list[str], *, engine: str | None = None,
                  allow_default: bool = True) -> tuple[str | dict | int | None, dict | None]:
    """--device_map and --device_max_memory parsed, checked against this process's launch and engine, and
    defaulted (see ``choose_device_map``). ``allow_default=False``: no split unless asked for."""
    gpus = torch.cuda.device_count()
    parsed = parse_device_map(device_map)
    memory = parse_max_memory(max_memory, gpus)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if parsed is None and memory is None and not allow_default:
        return None, None
    return choose_device_map(parsed, memory, gpus=gpus, world_size=world_size, engine=engine), memory
