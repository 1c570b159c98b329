"""`alignkit infer` on a vision-language model: a dataset's prompts with their images, or an interactive chat in
which each ``<image>`` typed asks for an image path or URL (as ms-swift's chat does).

    alignkit infer --ckpt_dir output/v0-.../checkpoint-50 --val_dataset questions.jsonl   # rows with `images`
    alignkit infer --model ./llava-tiny                                                    # chat

Rows take images as training does (docs/vision.md): ms-swift's ``images`` or TRL's ``image``/``images``, with
``<image>`` placeholders or the images put first in the first user turn. Results are JSONL like the text path's
(``messages``, ``response`` and the row's other columns, its images as given; inline bytes as base64).
"""

from __future__ import annotations

import base64
import json
import logging
import time
from pathlib import Path

from alignkit.config.commands import InferArguments
from alignkit.data.loading import load_dataset_spec
from alignkit.data.rows import PromptRow
from alignkit.errors import AlignkitError, DataError
from alignkit.generation.answers import sampling_kwargs
from alignkit.generation.vision_answers import generate_vision_answers, left_padded, pixels_for, stop_ids
from alignkit.vision.encode import PLACEHOLDER, VisionEncoder, image_token_id
from alignkit.vision.images import load_image
from alignkit.vision.model import load_vision_for_inference

logger = logging.getLogger("alignkit")


def run_vision_infer(args: InferArguments, result_path: Path | None, held_out: list[PromptRow] | None) -> int:
    if args.infer_backend == "vllm":
        raise AlignkitError("--infer_backend vllm generates from text prompts only; answer a vision-language model's "
                            "prompts with --infer_backend transformers")
    model, processor = load_vision_for_inference(args.model, args.adapters, args.ckpt_dir, args.dtype)
    encoder = VisionEncoder(processor, image_token_id(processor, model.config), max_length=args.max_length,
                            system=args.system)
    if result_path is None:
        return vision_chat(model, encoder, args)
    rows = held_out if held_out is not None else [
        row for spec in args.val_dataset for row in load_dataset_spec(spec, "prompt", seed=args.seed)]
    return vision_batch_infer(model, encoder, rows, args, result_path)


def vision_batch_infer(model, encoder: VisionEncoder, rows: list[PromptRow], args: InferArguments,
                       result_path: Path) -> int:
    """Answer every prompt with its images in chunks of --max_batch_size, writing JSONL."""
    encoded = []
    for row in rows:
        images, _ = encoder.row_images(row.extras, row.source)
        prompt = encoder.encode_prompt(row.prompt, images, row.source)
        if len(prompt.input_ids) <= args.max_length:  # image tokens included
            encoded.append((row, prompt))
    if len(encoded) < len(rows):
        logger.warning("Skipped %d prompts longer than --max_length %d (image tokens included)",
                       len(rows) - len(encoded), args.max_length)
    tokenizer = encoder.processor.tokenizer
    result_path.parent.mkdir(parents=True, exist_ok=True)
    start, new_tokens = time.perf_counter(), 0
    with result_path.open("x") as out:
        for i in range(0, len(encoded), args.max_batch_size):
            chunk = encoded[i : i + args.max_batch_size]
            answers = generate_vision_answers(
                model, encoder, [prompt for _, prompt in chunk], max_new_tokens=args.max_new_tokens,
                temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                repetition_penalty=args.repetition_penalty)
            for (row, _), answer in zip(chunk, answers):
                new_tokens += len(tokenizer(answer, add_special_tokens=False)["input_ids"])
                out.write(json.dumps({"messages": row.prompt, "response": answer, **row.extras},
                                     default=_inline_bytes) + "\n")
            logger.info("%d/%d prompts answered", min(i + args.max_batch_size, len(encoded)), len(encoded))
    seconds = time.perf_counter() - start
    logger.info("Wrote %s: %d answers in %.1f s (%.1f tokens/s)", result_path, len(encoded), seconds,
                new_tokens / seconds)
    print(f"results: {result_path}")
    return 0


def _inline_bytes(value):
    """JSON for an image given as bytes (a parquet Image column): base64, which the loaders read back."""
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def vision_chat(model, encoder: VisionEncoder, args: InferArguments) -> int:
    """Multi-turn chat; each ``<image>`` in a message asks for one image (a path, URL or base64)."""
    from alignkit.generation.answers import stream_answer

    tokenizer = encoder.processor.tokenizer
    history: list[dict[str, str]] = []
    images: list = []
    print(f"alignkit chat: type a message, with {PLACEHOLDER} where an image goes (you are then asked for its path "
          "or URL); 'clear' resets the history, 'exit' quits.")
    while True:
        try:
            text = input("<<< ")
            if text.strip() == "exit":
                return 0
            if text.strip() == "clear":
                history, images = [], []
                continue
            new_images = [load_image(input("image path or URL <<< ").strip(), None, f"image {i + 1}")
                          for i in range(text.count(PLACEHOLDER))]
        except EOFError:
            print()
            return 0
        except DataError as error:  # a mistyped path: say so and keep the conversation
            print(f"error: {error}")
            continue
        history.append({"role": "user", "content": text})
        images += new_images
        prompt = encoder.encode_prompt(history, images)
        input_ids, attention_mask = left_padded([prompt], tokenizer.pad_token_id)
        device = next(model.parameters()).device
        kwargs = sampling_kwargs(tokenizer, args.max_new_tokens, args.temperature, args.top_p, args.top_k,
                                 args.repetition_penalty)
        kwargs["eos_token_id"] = stop_ids(model, tokenizer)
        answer = stream_answer(model, tokenizer, {"input_ids": input_ids.to(device),
                                                  "attention_mask": attention_mask.to(device),
                                                  **pixels_for(model, prompt.pixels), **kwargs}, stream=args.stream)
        history.append({"role": "assistant", "content": answer})
