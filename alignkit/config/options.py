"""How a flag is declared: once, as a dataclass field carrying its help, its aliases (ms-swift's and
ColossalChat's spellings), its allowed values, and what the training code derives from it. The CLI
(``alignkit.cli``) turns the fields into argparse options."""

from __future__ import annotations

from dataclasses import field
from typing import Any


def option(default: Any = None, help: str = "", *, aliases: tuple[str, ...] = (), choices=None, nargs=None,
           const=None, applies_to: tuple[str, ...] | None = None, may_differ_on_resume: bool = False,
           no_effect: str | None = None, differs: str | None = None):
    """A dataclass field that carries its CLI help, its alias flag names and its allowed values, and what the
    training code derives from it: ``applies_to``, the methods (``sft`` or an --rlhf_type) it serves (None:
    all), so that setting it for another says once that it has no effect there; ``may_differ_on_resume``,
    whether it only changes where and how often things are written or checked, never the weights a step
    produces, so that a resumed run may change it (every other flag must match the checkpoint's); ``const``,
    the value of the bare flag when ``nargs="?"`` (``--fsdp`` alone means ``--fsdp true``).

    Where the flag comes from another tool (docs/compat.md is generated from these): ``no_effect``, why it has
    no work to do in alignkit's design (it is accepted, its value checked, and setting it logs this once);
    ``differs``, how and why its meaning or default differs from ms-swift's on purpose."""
    meta = {"help": help, "aliases": aliases, "choices": choices, "nargs": nargs, "const": const,
            "applies_to": applies_to,
            "may_differ_on_resume": may_differ_on_resume or no_effect is not None, "no_effect": no_effect,
            "differs": differs}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


DTYPE_CHOICES = ("auto", "fp32", "float32", "bf16", "bfloat16", "fp16", "float16")


def dtype_option(help: str = "Precision (auto, fp32, bf16)."):
    """--dtype (ms-swift's --torch_dtype), default auto; every command that loads a model has one."""
    return option("auto", help, aliases=("--torch_dtype",), choices=DTYPE_CHOICES)


def inference_device_map_option():
    """--device_map for the commands that only run the model (infer, eval, deploy, app)."""
    return option(
        None, "Split the model across the visible GPUs (see training's --device_map); default: auto with several GPUs.",
        aliases=("--device_map_config",),
    )


def inference_device_max_memory_option():
    return option(
        [], "Memory --device_map may use: one size per GPU or a JSON object (cpu/disk entries offload).",
        aliases=("--max_memory",), nargs="+",
    )
