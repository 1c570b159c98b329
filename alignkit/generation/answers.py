"""Answers from a model with transformers' ``generate``: the one generate path of infer, eval, app and the demo,
for text prompts and for prompts with images alike.

A prompt is encoded by the model's encoder (``ChatEncoder.encode_prompt``: token ids; ``VisionEncoder.
encode_prompt``: ids and pixel inputs), prompts are left-padded (``data.collate.left_pad``) so that all answers
start at the same position, pixel inputs are batched as in training, and every answer stops at the ids of
``stop_ids.answer_stop_ids``. Example::

    encoder = ChatEncoder(tokenizer, max_length=512)
    generate_answers(model, encoder, [[{"role": "user", "content": "What is 2 + 3?"}]], max_new_tokens=8)  # ["5"]
    # with images: prompts encoded by a VisionEncoder
    generate(model, encoder, [encoder.encode_prompt(messages, [image])], max_new_tokens=16)  # ["Red."]
"""

from __future__ import annotations

import sys
import threading

import torch

from alignkit.data.collate import left_pad
from alignkit.data.rows import Message
from alignkit.data.template import ChatEncoder
from alignkit.generation.stop_ids import answer_stop_ids
from alignkit.models.placement import input_device
from alignkit.vision.collate import merge_pixels


def generate_answers(model, encoder: ChatEncoder, prompts: list[list[Message]], *, max_new_tokens: int,
                     temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
                     repetition_penalty: float = 1.0) -> list[str]:
    """Answer each text prompt (a list of messages)."""
    return generate(model, encoder, [encoder.encode_prompt(p) for p in prompts], max_new_tokens=max_new_tokens,
                    temperature=temperature, top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty)


@torch.no_grad()
def generate(model, encoder, prompts: list, *, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
             top_k: int = 0, repetition_penalty: float = 1.0, stop_words: tuple[str, ...] = ()) -> list[str]:
    """Answer encoded prompts in one batched ``generate``: token-id lists, or ``VisionEncoded`` prompts whose
    pixel inputs go along. An answer reaching one of ``stop_words`` ends there, cut before it."""
    tokenizer = encoder.tokenizer
    input_ids, attention_mask = left_pad([ids_of(p) for p in prompts], tokenizer.pad_token_id)  # (B, T)
    device = input_device(model)
    output = model.generate(
        input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
        **pixels_for(model, merge_pixels([pixels_of(p) or {} for p in prompts])),
        **generate_kwargs(model, encoder, max_new_tokens, temperature, top_p, top_k, repetition_penalty),
        **stop_kwargs(tokenizer, stop_words),
    )  # (B, T + new)
    return [cut_at_stop(tokenizer.decode(row[input_ids.shape[1]:], skip_special_tokens=True), stop_words)
            for row in output]


def stop_kwargs(tokenizer, stop_words) -> dict:
    """transformers' own stop strings: a row stops once its text contains one."""
    return {"stop_strings": list(stop_words), "tokenizer": tokenizer} if stop_words else {}


def cut_at_stop(text: str, stop_words) -> str:
    """The answer before its first stop word (as OpenAI's ``stop``)."""
    cut = min((i for word in stop_words if (i := text.find(word)) >= 0), default=len(text))
    return text[:cut]


def stream_answer(model, encoder, prompt, *, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                  top_k: int = 0, repetition_penalty: float = 1.0, stream: bool = True,
                  stop_words: tuple[str, ...] = ()) -> str:
    """Answer one encoded prompt (as ``generate`` takes it) in a thread, printing the answer as it comes
    (``stream``) or whole at the end. Returns the answer."""
    from transformers import TextIteratorStreamer

    tokenizer = encoder.tokenizer
    input_ids, attention_mask = left_pad([ids_of(prompt)], tokenizer.pad_token_id)  # (1, T)
    device = input_device(model)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    kwargs = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device), "streamer": streamer,
              **pixels_for(model, pixels_of(prompt)),
              **generate_kwargs(model, encoder, max_new_tokens, temperature, top_p, top_k, repetition_penalty),
              **stop_kwargs(tokenizer, stop_words)}
    thread = threading.Thread(target=model.generate, kwargs=kwargs)
    thread.start()
    print(">>> ", end="", flush=True)
    pieces = []
    for piece in streamer:
        pieces.append(piece)
        if stream:
            print(piece, end="", flush=True)
    thread.join()
    answer = cut_at_stop("".join(pieces), stop_words)  # a streamed stop word shows; the kept answer ends before it
    print("" if stream else answer)
    sys.stdout.flush()
    return answer


def ids_of(prompt) -> list[int]:
    return prompt if isinstance(prompt, list) else prompt.input_ids


def pixels_of(prompt) -> dict[str, torch.Tensor] | None:
    return None if isinstance(prompt, list) else prompt.pixels


def pixels_for(model, pixels: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """Pixel inputs on the model's device, floating ones in its dtype (a bf16 model takes bf16 pixels)."""
    parameter = next(model.parameters())
    return {k: v.to(parameter.device, parameter.dtype) if v.is_floating_point() else v.to(parameter.device)
            for k, v in (pixels or {}).items()}


def generate_kwargs(model, encoder, max_new_tokens, temperature, top_p, top_k, repetition_penalty) -> dict:
    """``generate``'s sampling settings and stop ids."""
    return {**sampling_kwargs(encoder.tokenizer, max_new_tokens, temperature, top_p, top_k, repetition_penalty),
            "eos_token_id": answer_stop_ids(model, encoder)}


# Below this a temperature decodes greedily (vLLM's _SAMPLING_EPS): dividing logits by 1e-178 gives inf, and
# the sampler NaN probabilities (a 500 that the deploy fuzz test found).
GREEDY_BELOW = 1e-5


def sampling_kwargs(tokenizer, max_new_tokens, temperature, top_p, top_k, repetition_penalty) -> dict:
    if temperature < GREEDY_BELOW:
        temperature = 0.0
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
