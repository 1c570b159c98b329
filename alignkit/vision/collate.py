"""Batching for vision-language models: the text collators' padded tokens plus the sequences' pixel inputs.

Pixel inputs are concatenated along their first dimension in the order of the sequences (chosen rows, then
rejected rows), which is how every HF image-text-to-text model pairs features with image tokens: LLaVA's
``pixel_values`` (images, C, H, W), Qwen2-VL's (patches, D) with ``image_grid_thw`` (images, 3), Idefics3's
(sequences, images, C, H, W). Where sequences hold different numbers of images (Idefics3's second dimension)
the shorter ones are padded with all-zero images, which those models skip, as their processors do.
"""

from __future__ import annotations

import torch

from alignkit.data.collate import Batch, PairCollator, UnpairedBatch, UnpairedCollator
from alignkit.vision.encode import VisionEncoded


def merge_pixels(sequences: list[VisionEncoded]) -> dict[str, torch.Tensor] | None:
    """Concatenate each pixel input over the sequences that have it (see the module docstring)."""
    keys = [k for s in sequences for k in s.pixels]
    if not keys:
        return None
    merged = {}
    for key in dict.fromkeys(keys):
        parts = [s.pixels[key] for s in sequences if key in s.pixels]
        widest = [max(p.shape[d] for p in parts) for d in range(1, parts[0].dim())]
        padded = []
        for part in parts:
            pad = [(0, w - part.shape[d + 1]) for d, w in enumerate(widest)]
            flat = [n for left_right in reversed(pad) for n in left_right]  # F.pad wants the last dim first
            padded.append(torch.nn.functional.pad(part, flat) if any(flat) else part)
        merged[key] = torch.cat(padded)
    return merged


class VisionPairCollator(PairCollator):
    """Preference rows → a (2B, T) Batch whose ``model_inputs`` hold the pixel inputs of all 2B sequences.

    Chosen and rejected each carry their own copy of the images' pixels, so one forward covers both halves.
    """

    def __call__(self, items) -> Batch:
        batch = super().__call__(items)
        batch.model_inputs = merge_pixels([pair[0] for _, pair in items] + [pair[1] for _, pair in items])
        return batch


class VisionUnpairedCollator(UnpairedCollator):
    """KTO rows → UnpairedBatch with pixel inputs; a KL pair (prompt i, completion i−1) keeps prompt i's images."""

    def __call__(self, items) -> UnpairedBatch:
        batch = super().__call__(items)
        sequences = [row.sequence for _, row in items]
        batch.completions.model_inputs = merge_pixels(sequences)
        if batch.kl is not None:
            # Images live in the prompt (split_prompt cuts before the first trained token), so prompt i's
            # pixels are exactly what the mismatched sequence i sees.
            batch.kl.model_inputs = merge_pixels(sequences)
        return batch
