"""ms-swift's Adapter tuner (``--tuner_type adapter``; Houlsby et al. 2019, arXiv 1902.00751), as
swift/tuners/adapter.py builds it: after every decoder layer's MLP, a bottleneck

    h <- h + W2 act(W1 h + b1) + b2        W1: (adapter_length, hidden), W2: (hidden, adapter_length)

computed in the adapter's precision (fp32) and cast back. The weights start as ms-swift's do (Xavier-uniform, biases
N(0, 1e-6)), so the model's output already moves at the start (W2 is not zero); the base model stays frozen and
only the adapters train.

Checkpoints are in ms-swift's format, which ``swift infer --adapters`` reads: ``default/adapter_config.json``
(``swift_type: ADAPTER``, ``dim``, ``target_modules`` as a regex, ``adapter_length``, ``act_layer``, ...) and
``default/adapter_model.safetensors`` whose keys are the model's own parameter names
(``model.layers.0.mlp.adapter_default.linear1.weight``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from alignkit.errors import AlignkitError

NAME = "adapter_default"  # the adapter's attribute on each MLP: ms-swift's adapter_{adapter_name}
SUBDIR = "default"
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
# A decoder layer's MLP: model.layers.N.mlp (Llama, Qwen, Mistral, Gemma ...); vision towers are left alone.
MLP_NAME = re.compile(r"(?P<prefix>(?:.*\.)?layers)\.\d+\.mlp")
VISION_PARTS = ("visual", "vision")


class BottleneckAdapter(nn.Module):
    """ms-swift's AdapterModule: x + linear2(act(linear1(x)))."""

    def __init__(self, dim: int, length: int, act: str):
        from transformers.activations import ACT2CLS

        super().__init__()
        self.linear1 = nn.Linear(dim, length)
        self.act = ACT2CLS[act]()
        self.linear2 = nn.Linear(length, dim)
        for linear in (self.linear1, self.linear2):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.normal_(linear.bias, std=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., dim)
        h = x.to(self.linear1.weight.dtype)
        return (h + self.linear2(self.act(self.linear1(h)))).to(x.dtype)


def _after_mlp(module: nn.Module, args, output):
    """Forward hook: the MLP's output (or its first element: an MoE block's (hidden, router logits)) through the
    adapter, ms-swift's hidden_pos 0."""
    adapter = getattr(module, NAME)
    if isinstance(output, tuple):
        return (adapter(output[0]), *output[1:])
    return adapter(output)


def mlp_names(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_modules()
            if MLP_NAME.fullmatch(name) and not any(part in name for part in VISION_PARTS)]


def attach(model: nn.Module, *, length: int, act: str) -> nn.Module:
    """``model`` with a bottleneck adapter after each decoder layer's MLP, everything else frozen."""
    from transformers.activations import ACT2CLS

    if act not in ACT2CLS:
        raise AlignkitError(f"--adapter_act {act}: expected one of transformers' activations: {', '.join(ACT2CLS)}")
    if length < 1:
        raise AlignkitError(f"--adapter_length {length}: expected a positive integer")
    names = mlp_names(model)
    if not names:
        raise AlignkitError("--tuner_type adapter: the model has no decoder MLPs named *.layers.N.mlp to follow with "
                            "an adapter; use --tuner_type lora")
    dim = model.config.get_text_config().hidden_size
    model.requires_grad_(False)
    for name in names:
        mlp = model.get_submodule(name)
        weight = next(mlp.parameters())
        mlp.add_module(NAME, BottleneckAdapter(dim, length, act).to(weight.device))
        mlp.register_forward_hook(_after_mlp)
    model.bottleneck_adapter_config = {  # ms-swift's AdapterConfig, as it saves it
        "swift_type": "ADAPTER", "model_key_mapping": None, "dim": dim,
        "target_modules": MLP_NAME.fullmatch(names[0]).group("prefix").replace(".", r"\.") + r"\.\d+\.mlp",
        "hidden_pos": 0, "method_name": "forward", "adapter_length": length, "act_layer": act}
    return model


def has_adapters(model: nn.Module) -> bool:
    return hasattr(model, "bottleneck_adapter_config")


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: param.detach() for name, param in model.named_parameters() if f".{NAME}." in name}


def save(model: nn.Module, directory: Path) -> None:
    """The adapters in ms-swift's checkpoint layout (``default/``) under ``directory``."""
    from safetensors.torch import save_file

    target = Path(directory) / SUBDIR
    target.mkdir(parents=True, exist_ok=True)
    (target / CONFIG_FILE).write_text(json.dumps(model.bottleneck_adapter_config, indent=2, sort_keys=True))
    state = {k: v.cpu().contiguous() for k, v in adapter_state(model).items()}
    save_file(state, str(target / WEIGHTS_FILE), metadata={"format": "pt"})
    (Path(directory) / "configuration.json").write_text("{}")  # ms-swift writes it beside its adapters


def saved_config(directory: str | Path) -> dict | None:
    """The saved ms-swift Adapter config of a checkpoint directory, or None when it holds none."""
    path = Path(directory) / SUBDIR / CONFIG_FILE
    if not path.is_file():
        return None
    config = json.loads(path.read_text())
    return config if config.get("swift_type") == "ADAPTER" else None


def load_weights(model: nn.Module, directory: str | Path) -> None:
    """Copy a checkpoint's adapter weights into ``model``'s (built with the same length and activation)."""
    from safetensors.torch import load_file

    state = load_file(str(Path(directory) / SUBDIR / WEIGHTS_FILE))
    own = adapter_state(model)
    if state.keys() != own.keys():
        missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
        raise AlignkitError(f"{directory}: its adapters do not match the model's (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]})")
    with torch.no_grad():
        for name, value in state.items():
            own[name].copy_(value)


def load(model: nn.Module, directory: str | Path, *, trainable: bool) -> nn.Module:
    """``model`` with the ms-swift Adapter checkpoint in ``directory`` attached (--adapters)."""
    config = saved_config(directory)
    model = attach(model, length=config["adapter_length"], act=config["act_layer"])
    load_weights(model, directory)
    for name, param in model.named_parameters():
        param.requires_grad_(trainable and f".{NAME}." in name)
    return model
