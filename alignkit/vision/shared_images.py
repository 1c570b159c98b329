"""One vision forward per preference pair: chosen and rejected share the prompt's images.

A pair batch holds chosen sequences then rejected sequences; without ``rejected_images`` both halves show the
same images, so encoding them twice doubles the vision encoder's work for nothing. When every pair of a batch
shares its images, ``VisionPairCollator`` puts only the chosen half's pixel inputs in ``Batch.model_inputs``,
as ``{"shared_pixels": SharedPixels(...)}``, and a forward pre-hook on the model turns them into image
features computed once and used twice, through transformers' ``mm_encoder_outputs`` argument::

    features = model.get_image_features(**chosen_half_pixels)          # the vision tower runs on B pairs' images
    model(input_ids (2B, T), mm_encoder_outputs={"image": features + features})

The hook runs on whatever model is called (the policy, its adapter switched off, a frozen reference, the
reward model's LM), so every forward of the batch computes its own features with its own weights, gradients
included. Naive equivalent: the chosen half's pixels concatenated twice as ``pixel_values``; the tests check
that both give the same log-probs.

Families: those whose ``get_image_features(**pixels).pooler_output`` lists features in the order their image
tokens appear and whose forward takes ``mm_encoder_outputs`` (LLaVA per image, Idefics3 per sequence). Others
(Qwen2-VL, whose rotary positions also need every sequence's ``image_grid_thw``) keep the unshared path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SHARED_IMAGE_FAMILIES = ("llava", "idefics3")
KEY = "shared_pixels"


@dataclass
class SharedPixels:
    """The pixel inputs of a pair batch's chosen half; the rejected half shows the same images in the same order."""

    pixels: dict[str, torch.Tensor]

    def to(self, device) -> SharedPixels:
        return SharedPixels({k: v.to(device) for k, v in self.pixels.items()})


def shares_images(config) -> bool:
    """Whether the model family can take one pair's image features for both sequences (see the module docstring)."""
    return getattr(config, "model_type", None) in SHARED_IMAGE_FAMILIES


def enable_shared_images(model) -> bool:
    """Install the hook that turns ``shared_pixels`` into ``mm_encoder_outputs`` on a transformers model (before
    any peft or accelerate wrapper: those call it with the same keywords). Returns whether the family allows it."""
    if not shares_images(model.config):
        return False
    model.register_forward_pre_hook(_encode_shared_images, with_kwargs=True)
    return True


def _encode_shared_images(module, args, kwargs):
    shared = kwargs.pop(KEY, None)
    if shared is None:
        return None
    features = module.get_image_features(**shared.pixels, return_dict=True)
    # pooler_output: the chosen half's features in token order; the rejected half's are the same list again.
    features.pooler_output = list(features.pooler_output) * 2
    kwargs["mm_encoder_outputs"] = {"image": features}
    return args, kwargs
