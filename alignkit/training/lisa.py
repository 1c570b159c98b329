"""LISA (Pan et al. 2024, https://arxiv.org/abs/2403.17919), ms-swift's ``--lisa_activated_layers N
--lisa_step_interval K`` (swift/callbacks/lisa.py): full fine-tuning in which only N randomly drawn decoder layers
train at a time, drawn again every K steps; what lies outside the decoder layers (embeddings, final norm, LM head)
trains throughout.

How it stays correct:
- the optimizer is built while every layer is trainable, so each draw's layers have a place in it (ms-swift's
  callback freezes before transformers builds the optimizer from the trainable parameters, so there only the
  first draw's layers ever get updates);
- a frozen layer gets no gradient (its ``.grad`` stays None after ``zero_grad(set_to_none=True)``), and torch's
  optimizers skip such a parameter entirely: no update, no weight decay, its AdamW moments and step count kept as
  they were for when it is drawn again;
- the draw for step s depends only on ``(seed, s // K)``, so every process draws the same layers and a resumed
  run draws what the uninterrupted run drew, with nothing to checkpoint.

A step is the loop's step: one optimizer update offline, one rollout with its updates for ppo / grpo.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from alignkit.errors import AlignkitError
from alignkit.models.llama_pro import decoder_layers

logger = logging.getLogger("alignkit")


@dataclass(frozen=True)
class LisaSettings:
    activated_layers: int
    step_interval: int = 20


def lisa_settings(args) -> LisaSettings | None:
    """--lisa_activated_layers / --lisa_step_interval (RunArguments); None when LISA is off (0 layers)."""
    if not args.lisa_activated_layers:
        return None
    return LisaSettings(activated_layers=args.lisa_activated_layers, step_interval=args.lisa_step_interval)


def drawn_layers(num_layers: int, settings: LisaSettings, *, seed: int, step: int) -> list[int]:
    """The layers that train at ``step``: N of ``num_layers`` without replacement, from a generator seeded by the
    run's seed and the draw's number (step // K)."""
    draw = step // settings.step_interval
    generator = torch.Generator().manual_seed(seed * 1_000_003 + draw)
    return sorted(torch.randperm(num_layers, generator=generator)[: settings.activated_layers].tolist())


class LayerSwitch:
    """Sets which decoder layers of ``model`` train; ``at_step(s)`` at the start of each step."""

    def __init__(self, model: torch.nn.Module, settings: LisaSettings, *, seed: int):
        self.name, self.layers = decoder_layers(model)
        if not 1 <= settings.activated_layers <= len(self.layers):
            raise AlignkitError(f"--lisa_activated_layers {settings.activated_layers}: the model has "
                                f"{len(self.layers)} decoder layers ({self.name})")
        self.settings, self.seed = settings, seed
        self.active: list[int] | None = None

    def at_step(self, step: int) -> None:
        active = drawn_layers(len(self.layers), self.settings, seed=self.seed, step=step)
        if active == self.active:
            return
        for index, layer in enumerate(self.layers):
            layer.requires_grad_(index in active)
        if self.active is None:
            logger.info("LISA: %d of %d layers of %s train, drawn again every %d steps; from step %d: %s",
                        len(active), len(self.layers), self.name, self.settings.step_interval, step, active)
        else:
            logger.debug("LISA: from step %d layers %s train", step, active)
        self.active = active
