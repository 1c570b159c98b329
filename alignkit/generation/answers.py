"""Batched generation with transformers' KV cache, stopping at the template's end-of-turn token."""

from __future__ import annotations

import sys
import threading

import torch

from alignkit.data.rows import Message
from alignkit.data.template import ChatEncoder
from alignkit.models.placement import input_device


def generate_answers(
    model,
    encoder: ChatEncoder,
    prompts: list[list[Message]],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    repetition_penalty: float = 1.0,
) -> list[str]:
    """Answer each prompt; prompts are left-padded so that all answers start at the same position."""
    tokenizer = encoder.tokenizer
    encoded = [encoder.encode_prompt(p) for p in prompts]
    length = max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), length), tokenizer.pad_token_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(encoded), length), dtype=torch.long)  # (B, T)
    for i, ids in enumerate(encoded):
        input_ids[i, length - len(ids) :] = torch.tensor(ids)
        attention_mask[i, length - len(ids) :] = 1
    device = input_device(model)
    output = model.generate(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        **{**sampling_kwargs(tokenizer, max_new_tokens, temperature, top_p, top_k, repetition_penalty),
           "eos_token_id": encoder.stop_ids},
    )  # (B, T + new)
    return [tokenizer.decode(row[length:], skip_special_tokens=True) for row in output]


def sampling_kwargs(tokenizer, max_new_tokens, temperature, top_p, top_k, repetition_penalty) -> dict:
    kwargs = {
        "max_new_tokens": max_new_tokens,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "repetition_penalty": repetition_penalty,
        "do_sample": temperature > 0,
    }
    if temperature > 0:
        kwargs.update(temperature=temperature, top_p=top_p, top_k=top_k or None)
    else:  # greedy: unset the model's sampling defaults so transformers does not warn about them
        kwargs.update(temperature=None, top_p=None, top_k=None)
    return kwargs


def stream_answer(model, tokenizer, generate_kwargs: dict, *, stream: bool) -> str:
    """Run ``model.generate(**generate_kwargs)`` in a thread, printing the answer as it comes (``stream``) or
    whole at the end. Returns the answer."""
    from transformers import TextIteratorStreamer

    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    thread = threading.Thread(target=model.generate, kwargs={**generate_kwargs, "streamer": streamer})
    thread.start()
    print(">>> ", end="", flush=True)
    pieces = []
    for piece in streamer:
        pieces.append(piece)
        if stream:
            print(piece, end="", flush=True)
    thread.join()
    answer = "".join(pieces)
    print("" if stream else answer)
    sys.stdout.flush()
    return answer
