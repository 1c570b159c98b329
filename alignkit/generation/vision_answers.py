"""Answers from a vision-language model: prompts with images → text, as ``alignkit.generation.answers`` does for text.

Each prompt is encoded alone by the processor (``VisionEncoder.encode_prompt``), the ids are left-padded so
that all answers start at the same position, and the pixel inputs are batched as in training
(``merge_pixels``). Example::

    prompt = encoder.encode_prompt([{"role": "user", "content": "<image>What colour?"}], [image])
    generate_vision_answers(model, encoder, [prompt], max_new_tokens=16)   # ["Red."]
"""

from __future__ import annotations

import torch

from alignkit.generation.answers import sampling_kwargs
from alignkit.generation.stop_ids import eos_token_ids
from alignkit.vision.collate import merge_pixels
from alignkit.vision.encode import VisionEncoded, VisionEncoder


def stop_ids(model, tokenizer) -> list[int]:
    """The model's end-of-sequence ids and the tokenizer's: where an answer ends."""
    return sorted(eos_token_ids(model, tokenizer))


def pixels_for(model, pixels: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """Pixel inputs on the model's device, floating ones in its dtype (a bf16 model takes bf16 pixels)."""
    parameter = next(model.parameters())
    return {k: v.to(parameter.device, parameter.dtype) if v.is_floating_point() else v.to(parameter.device)
            for k, v in (pixels or {}).items()}


def left_padded(prompts: list[VisionEncoded], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(p.input_ids) for p in prompts)
    input_ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(prompts), length), dtype=torch.long)  # (B, T)
    for i, prompt in enumerate(prompts):
        input_ids[i, length - len(prompt.input_ids) :] = torch.tensor(prompt.input_ids)
        attention_mask[i, length - len(prompt.input_ids) :] = 1
    return input_ids, attention_mask


@torch.no_grad()
def generate_vision_answers(model, encoder: VisionEncoder, prompts: list[VisionEncoded], *, max_new_tokens: int,
                            temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
                            repetition_penalty: float = 1.0) -> list[str]:
    """Answer each encoded prompt (``VisionEncoder.encode_prompt``) in one batched ``generate``."""
    tokenizer = encoder.processor.tokenizer
    input_ids, attention_mask = left_padded(prompts, tokenizer.pad_token_id)
    device = next(model.parameters()).device
    output = model.generate(
        input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
        **pixels_for(model, merge_pixels([p.pixels for p in prompts])),
        **{**sampling_kwargs(tokenizer, max_new_tokens, temperature, top_p, top_k, repetition_penalty),
           "eos_token_id": stop_ids(model, tokenizer)},
    )  # (B, T + new)
    return [tokenizer.decode(row[input_ids.shape[1]:], skip_special_tokens=True) for row in output]
