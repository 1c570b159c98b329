"""Batching for vision-language models: the text collators' padded tokens plus the sequences' pixel inputs.

Pixel inputs are concatenated along their first dimension in the order of the sequences (chosen rows, then
rejected rows), which is how every HF image-text-to-text model pairs features with image tokens: LLaVA's
``pixel_values`` (images, C, H, W), Qwen2-VL's (patches, D) with ``image_grid_thw`` (images, 3), Idefics3's
(sequences, images, C, H, W). Where sequences hold different numbers of images (Idefics3's second dimension)
the shorter ones are padded with all-zero images, which those models skip, as their processors do.

When every pair of a batch shows the same images to chosen and rejected (no ``rejected_images``) and the model
family allows it, only the chosen half's pixels are batched and the vision encoder runs once per pair
(alignkit/vision/shared_images.py).
"""

from __future__ import annotations

import torch

from alignkit.data.collate import Batch, PairCollator, UnpairedBatch, UnpairedCollator
from alignkit.vision.shared_images import KEY, SharedPixels


def merge_pixels(pixels: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor] | None:
    """Concatenate each pixel input over the sequences that have it (one dict per sequence; see the module
    docstring)."""
    keys = [k for p in pixels for k in p]
    if not keys:
        return None
    merged = {}
    for key in dict.fromkeys(keys):
        parts = [p[key] for p in pixels if key in p]
        widest = [max(p.shape[d] for p in parts) for d in range(1, parts[0].dim())]
        padded = []
        for part in parts:
            pad = [(0, w - part.shape[d + 1]) for d, w in enumerate(widest)]
            flat = [n for left_right in reversed(pad) for n in left_right]  # F.pad wants the last dim first
            padded.append(torch.nn.functional.pad(part, flat) if any(flat) else part)
        merged[key] = torch.cat(padded)
    return merged


def same_pixels(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class VisionPairCollator(PairCollator):
    """Preference rows → a (2B, T) Batch whose ``model_inputs`` hold the pixel inputs of all 2B sequences, or
    with ``share_images`` (a family that allows it) and every pair showing chosen and rejected the same images,
    ``{"shared_pixels": SharedPixels(the chosen half's pixel inputs)}``."""

    def __init__(self, pad_id: int, *, share_images: bool = False, **kwargs):
        super().__init__(pad_id, **kwargs)
        self.share_images = share_images

    def __call__(self, items) -> Batch:
        batch = super().__call__(items)
        chosen, rejected = [pair[0].pixels for _, pair in items], [pair[1].pixels for _, pair in items]
        if self.share_images and all(same_pixels(c, r) for c, r in zip(chosen, rejected)):
            half = merge_pixels(chosen)
            batch.model_inputs = None if half is None else {KEY: SharedPixels(half)}
        else:
            batch.model_inputs = merge_pixels(chosen + rejected)
        return batch


class VisionUnpairedCollator(UnpairedCollator):
    """KTO rows → UnpairedBatch with pixel inputs. A mismatched KL row (``kl_rows``: prompt i, completion i−1)
    carries prompt i's images, so it batches the same way."""

    def __call__(self, items) -> UnpairedBatch:
        batch = super().__call__(items)
        batch.completions.model_inputs = merge_pixels([row.sequence.pixels for _, row in items])
        return batch
