"""`alignkit infer`: chat with a model or adapter (streaming, multi-turn), or answer a dataset's prompts.

Interactive commands: `clear` forgets the history, `exit` (or Ctrl-D) quits.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from pathlib import Path

import torch

from alignkit.config import InferArguments
from alignkit.data.loading import load_dataset_spec
from alignkit.data.template import ChatEncoder
from alignkit.errors import AlignkitError
from alignkit.generation import generate_answers, sampling_kwargs
from alignkit.model import load_for_inference

logger = logging.getLogger("alignkit")


def run_infer(args: InferArguments) -> int:
    result_path = None
    if args.val_dataset:
        result_path = Path(args.result_path or f"infer_result/{time.strftime('%Y%m%d-%H%M%S')}.jsonl")
        if result_path.exists():
            raise AlignkitError(f"--result_path {result_path} exists; alignkit never overwrites results")
    torch.manual_seed(args.seed)
    model, tokenizer = load_for_inference(args.model, args.adapters, args.ckpt_dir, args.dtype)
    encoder = ChatEncoder(tokenizer, max_length=args.max_length, system=args.system)
    if result_path is not None:
        return batch_infer(model, encoder, args, result_path)
    return chat(model, encoder, args)


def batch_infer(model, encoder: ChatEncoder, args: InferArguments, result_path: Path) -> int:
    rows = [row for spec in args.val_dataset for row in load_dataset_spec(spec, "prompt", seed=args.seed)]
    kept = [r for r in rows if len(encoder.encode_prompt(r.prompt)) <= args.max_length]
    if len(kept) < len(rows):
        logger.warning("Skipped %d prompts longer than --max_length %d", len(rows) - len(kept), args.max_length)
    result_path.parent.mkdir(parents=True, exist_ok=True)
    start, new_tokens = time.perf_counter(), 0
    with result_path.open("x") as out:
        for i in range(0, len(kept), args.max_batch_size):
            chunk = kept[i : i + args.max_batch_size]
            answers = generate_answers(
                model, encoder, [r.prompt for r in chunk], max_new_tokens=args.max_new_tokens,
                temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                repetition_penalty=args.repetition_penalty,
            )
            for row, answer in zip(chunk, answers):
                new_tokens += len(encoder.tokenizer(answer, add_special_tokens=False)["input_ids"])
                out.write(json.dumps({"messages": row.prompt, "response": answer, **row.extras}) + "\n")
            logger.info("%d/%d prompts answered", min(i + args.max_batch_size, len(kept)), len(kept))
    seconds = time.perf_counter() - start
    logger.info("Wrote %s: %d answers in %.1f s (%.2f answers/s, %.1f tokens/s)", result_path, len(kept), seconds,
                len(kept) / seconds, new_tokens / seconds)
    print(f"results: {result_path}")
    return 0


def chat(model, encoder: ChatEncoder, args: InferArguments) -> int:
    from transformers import TextIteratorStreamer

    tokenizer = encoder.tokenizer
    history: list[dict[str, str]] = []
    print("alignkit chat: type a message; 'clear' resets the history, 'exit' quits.")
    while True:
        try:
            text = input("<<< ")
        except EOFError:
            print()
            return 0
        if text.strip() == "exit":
            return 0
        if text.strip() == "clear":
            history = []
            continue
        history.append({"role": "user", "content": text})
        input_ids = torch.tensor([encoder.encode_prompt(history)], device=next(model.parameters()).device)
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = sampling_kwargs(tokenizer, args.max_new_tokens, args.temperature, args.top_p, args.top_k,
                                 args.repetition_penalty)
        kwargs["eos_token_id"] = encoder.stop_ids
        thread = threading.Thread(
            target=model.generate,
            kwargs={"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "streamer": streamer, **kwargs},
        )
        thread.start()
        print(">>> ", end="", flush=True)
        pieces = []
        for piece in streamer:
            pieces.append(piece)
            if args.stream:
                print(piece, end="", flush=True)
        thread.join()
        answer = "".join(pieces)
        print("" if args.stream else answer)
        history.append({"role": "assistant", "content": answer})
        sys.stdout.flush()
