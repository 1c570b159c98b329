"""LoRA-GA (Wang et al. 2024, arXiv 2407.05000): LoRA initialised from the gradient of the full weights, so that
the first steps move along the direction full fine-tuning would take. As ms-swift runs ``--init_weights lora-ga``
(through the lora_ga package, github.com/lxline/LoRA-GA, which peft's own variant differs from: peft puts the
singular values into B and scales B alone):

1. G, the gradient of the loss with respect to each adapted weight W (out x in), averaged over ``--lora_ga_iters``
   batches of ``--lora_ga_batch_size`` rows: the training set's first rows, in order, cut to
   ``--lora_ga_max_length`` tokens.
2. G ~ U S V^T (``torch.svd_lowrank``, q = 4r); A (r x in) and B (out x r) take r of its first 2r singular
   vectors each, by ``--lora_ga_direction``: ArB2r A = V^T[:r], B = U[:, r:2r]; A2rBr A = V^T[r:2r], B = U[:, :r];
   ArBr A = V^T's odd rows, B = U's even columns; random: a random split of the 2r.
3. ``--lora_ga_scale``: stable A, B x m^(1/4) / sqrt(gamma) (m = out features, gamma = ``--lora_ga_stable_gamma``);
   gd A, B / s (s = alpha / r, LoRA's scaling); unit as they are; weightS A, B x mean(sqrt(S_W[:r] / s)), the
   top singular values of W itself.
4. W <- W - s B A: the model's output is unchanged at the start.

The checkpoint's adapter is what ms-swift writes to ``converted/default``: LoRA-GA as a plain LoRA of rank 2r on the
unchanged base weights, dW = s (B A - B0 A0) = s [B | -B0] [A ; A0] (alpha doubled so s holds), so inference,
export, deploy and ``--adapters`` load it onto the model as it was. A resumed run splits it back into the trained
A, B and the starting A0, B0, and rewrites the base weights to W - s B0 A0 again.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from alignkit.data.collate import pad
from alignkit.data.template import Encoded
from alignkit.errors import AlignkitError

DIRECTIONS = ("ArBr", "A2rBr", "ArB2r", "random")
SCALES = ("gd", "unit", "stable", "weightS")
ADAPTER = "default"
START = "lora_ga_start"  # attribute of each adapted layer: its starting (A0, B0), not a parameter nor a buffer


@dataclass(frozen=True)
class LoraGaSettings:
    """ms-swift's --lora_ga_* flags, as plain values."""

    batch_size: int = 2
    iters: int = 2
    max_length: int = 1024
    direction: str = "ArB2r"
    scale: str = "stable"
    stable_gamma: float = 16


def lora_layers(model) -> list[tuple[str, nn.Module]]:
    """(name, layer) of every LoRA layer of a peft model, with its base nn.Linear."""
    from peft.tuners.lora import LoraLayer

    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, LoraLayer) and ADAPTER in module.lora_A]


def initialise(model, rows: list[Encoded], pad_id: int, settings: LoraGaSettings) -> int:
    """Step 1 to 4 on ``model`` (a peft LoRA model whose B is still 0, so the gradients are the base model's).
    Returns the number of layers initialised."""
    layers = lora_layers(model)
    for name, layer in layers:
        if not isinstance(layer.get_base_layer(), nn.Linear):
            raise AlignkitError(f"--init_weights lora-ga: {name} is a {type(layer.get_base_layer()).__name__}; "
                                "LoRA-GA initialises linear layers only (choose them with --lora_target_modules)")
    gradients = estimate_gradients(model, [layer.get_base_layer().weight for _, layer in layers], rows, pad_id,
                                   settings)
    # svd_lowrank draws a random projection: a fixed seed gives every process (and a resumed run) the same start,
    # and the run's own random streams are left as they were.
    devices = sorted({g.device.index or 0 for g in gradients if g.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(0)
        for (_, layer), gradient in zip(layers, gradients):
            start(layer, gradient, settings)
    return len(layers)


def estimate_gradients(model, weights: list[nn.Parameter], rows: list[Encoded], pad_id: int,
                       settings: LoraGaSettings) -> list[torch.Tensor]:
    """The mean over ``settings.iters`` batches of d(loss)/dW for each of ``weights`` (fp32, W's shape). The loss
    is the model's own (mean token cross-entropy of the batch), in training mode, as ms-swift estimates it."""
    needed = settings.batch_size * settings.iters
    if len(rows) < needed:
        raise AlignkitError(f"--init_weights lora-ga: --lora_ga_batch_size {settings.batch_size} x --lora_ga_iters "
                            f"{settings.iters} needs {needed} training rows; the data has {len(rows)}")
    device = weights[0].device
    was_training, grad_flags = model.training, [p.requires_grad for p in model.parameters()]
    model.train()
    model.requires_grad_(False)
    for weight in weights:
        weight.requires_grad_(True)
        weight.grad = None
    try:
        for i in range(settings.iters):
            batch = [Encoded(r.input_ids[:settings.max_length], r.labels[:settings.max_length])
                     for r in rows[i * settings.batch_size:(i + 1) * settings.batch_size]]
            input_ids, attention_mask, labels = (t.to(device) for t in pad(batch, pad_id))  # (N, T) each
            model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss.backward()
        gradients = [w.grad.float() / settings.iters for w in weights]  # the sum of the batches' gradients / iters
    finally:
        for weight in weights:
            weight.grad = None
        for param, flag in zip(model.parameters(), grad_flags):
            param.requires_grad_(flag)
        model.train(was_training)
    return gradients


def factors(gradient: torch.Tensor, weight: torch.Tensor, rank: int, scaling: float,
            settings: LoraGaSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """A (r, in) and B (out, r) from the gradient (out, in) of a weight (steps 2 and 3)."""
    out_features, in_features = gradient.shape
    if 2 * rank > min(out_features, in_features):
        raise AlignkitError(f"--init_weights lora-ga: --lora_rank {rank} takes 2r = {2 * rank} singular vectors, "
                            f"more than a {out_features} x {in_features} weight has")
    u, _, v = torch.svd_lowrank(gradient.float(), q=min(4 * rank, min(gradient.shape)), niter=4)
    vt = v.T  # (q, in)
    r = rank
    if settings.direction == "ArBr":
        a, b = vt[1:2 * r:2], u[:, 0:2 * r:2]
    elif settings.direction == "A2rBr":
        a, b = vt[r:2 * r], u[:, :r]
    elif settings.direction == "ArB2r":
        a, b = vt[:r], u[:, r:2 * r]
    else:  # random
        order = torch.randperm(2 * r)
        a, b = vt[order[:r]], u[:, order[r:]]
    if settings.scale == "gd":
        a, b = a / scaling, b / scaling
    elif settings.scale == "stable":
        factor = out_features ** 0.25 / math.sqrt(settings.stable_gamma)
        a, b = a * factor, b * factor
    elif settings.scale == "weightS":
        singular = torch.svd_lowrank(weight.float(), q=min(4 * r, min(weight.shape)), niter=4)[1] / scaling
        factor = singular[:r].sqrt().mean()
        a, b = a * factor, b * factor
    return a.contiguous(), b.contiguous()


@torch.no_grad()
def start(layer, gradient: torch.Tensor, settings: LoraGaSettings) -> None:
    """Set the layer's A and B from ``gradient`` and subtract s B A from its base weight (step 4)."""
    base = layer.get_base_layer().weight
    lora_a, lora_b = layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight
    scaling = layer.scaling[ADAPTER]
    a, b = factors(gradient, base, layer.r[ADAPTER], scaling, settings)
    a, b = a.to(lora_a.device, lora_a.dtype), b.to(lora_b.device, lora_b.dtype)
    lora_a.copy_(a)
    lora_b.copy_(b)
    offset = scaling * (b.float() @ a.float())  # (out, in), from the adapter's own precision
    base.copy_((base.float() - offset.to(base.device)).to(base.dtype))
    setattr(layer, START, (a.clone(), b.clone()))


def has_start(model) -> bool:
    """Whether ``model`` is a LoRA-GA model (its layers remember their starting A0, B0)."""
    return any(hasattr(module, START) for module in model.modules())


def converted_state(model) -> dict[str, torch.Tensor]:
    """The adapter's saved tensors, each LoRA-GA layer as rank 2r on the unchanged base: [A ; A0], [B | -B0]."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(model, adapter_name=ADAPTER)
    for name, layer in lora_layers(model):
        a0, b0 = getattr(layer, START)
        key_a, key_b = f"{name}.lora_A.weight", f"{name}.lora_B.weight"
        state[key_a] = torch.cat([state[key_a], a0.to(state[key_a])], dim=0)  # (2r, in)
        state[key_b] = torch.cat([state[key_b], -b0.to(state[key_b])], dim=1)  # (out, 2r)
    return state


def save_converted(model, directory: Path) -> None:
    """Replace the adapter peft wrote into ``directory`` with its converted form (rank 2r, alpha doubled: sqrt(2)
    times with rsLoRA, whose scaling is alpha / sqrt(r)), which any LoRA loader reads as a plain LoRA."""
    from safetensors.torch import save_file

    config = copy.deepcopy(model.peft_config[ADAPTER])
    config.r *= 2
    config.lora_alpha *= math.sqrt(2) if config.use_rslora else 2
    config.init_lora_weights = True
    config.save_pretrained(str(directory))
    state = {k: v.detach().cpu().contiguous() for k, v in converted_state(model).items()}
    save_file(state, str(Path(directory) / "adapter_model.safetensors"), metadata={"format": "pt"})
    (Path(directory) / "lora_ga.json").write_text(json.dumps({"converted_rank": config.r}) + "\n")


@torch.no_grad()
def split_converted(model, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A saved converted adapter back into ``model``'s rank-r form (resume): returns the state with each layer's A
    and B, records the saved A0, B0 as the layer's start and rewrites its base weight to W - s B0 A0 (W being
    the live base plus the live start's s B0' A0')."""
    state = dict(state)
    for name, layer in lora_layers(model):
        key_a, key_b = f"{name}.lora_A.weight", f"{name}.lora_B.weight"
        rank = layer.r[ADAPTER]
        if key_a not in state or state[key_a].shape[0] != 2 * rank:
            raise AlignkitError(f"the checkpoint's adapter is not a converted LoRA-GA adapter of rank {2 * rank} "
                                f"(no {key_a} of {2 * rank} rows); resume it with the flags that trained it")
        a_both, b_both = state[key_a], state[key_b]
        a, a0 = a_both[:rank], a_both[rank:]
        b, b0 = b_both[:, :rank], -b_both[:, rank:]
        live_a0, live_b0 = getattr(layer, START)
        a0, b0 = a0.to(live_a0), b0.to(live_b0)
        if not (torch.equal(a0, live_a0) and torch.equal(b0, live_b0)):
            scaling, base = layer.scaling[ADAPTER], layer.get_base_layer().weight
            delta = scaling * (live_b0.float() @ live_a0.float()) - scaling * (b0.float() @ a0.float())
            base.copy_((base.float() + delta.to(base.device)).to(base.dtype))
            setattr(layer, START, (a0.clone(), b0.clone()))
        state[key_a], state[key_b] = a.contiguous(), b.contiguous()
    return state
