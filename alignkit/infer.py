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
from alignkit.data.rows import PreferenceRow
from alignkit.data.template import ChatEncoder
from alignkit.errors import AlignkitError, DataError
from alignkit.generation import generate_answers, sampling_kwargs
from alignkit.model import load_for_inference

logger = logging.getLogger("alignkit")


def run_infer(args: InferArguments) -> int:
    result_path = None
    if args.val_dataset:
        result_path = Path(args.result_path or f"infer_result/{time.strftime('%Y%m%d-%H%M%S')}.jsonl")
        if result_path.exists():
            raise AlignkitError(f"--result_path {result_path} exists; alignkit never overwrites results")
    if args.reward_model:
        if result_path is None:
            raise AlignkitError("--reward_model scores the conversations of --val_dataset; pass --val_dataset")
        return score_datasets(args, result_path)
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


def score_datasets(args: InferArguments, result_path: Path) -> int:
    """Reward-model scores for every row of --val_dataset, as JSONL. Preference rows get both answers scored
    (``chosen_reward``, ``rejected_reward``) and the pair accuracy is reported; conversations get ``reward``."""
    from alignkit.reward_model import load_reward_model

    scorer = load_reward_model(args.reward_model, model=args.model, dtype=args.dtype, max_length=args.max_length,
                               system=args.system, batch_size=args.max_batch_size)
    result_path.parent.mkdir(parents=True, exist_ok=True)
    correct = pairs = 0
    with result_path.open("x") as out:
        for spec in args.val_dataset:
            rows = reward_rows(spec, args.seed)
            if isinstance(rows[0], PreferenceRow):
                chosen = scorer.score([row.prompt + row.chosen for row in rows])
                rejected = scorer.score([row.prompt + row.rejected for row in rows])
                for row, good, bad in zip(rows, chosen, rejected):
                    out.write(json.dumps({"messages": row.prompt, "chosen": row.chosen, "rejected": row.rejected,
                                          "chosen_reward": good, "rejected_reward": bad}) + "\n")
                correct += sum(good > bad for good, bad in zip(chosen, rejected))
                pairs += len(rows)
            else:
                for row, reward in zip(rows, scorer.score([row.messages for row in rows])):
                    out.write(json.dumps({"messages": row.messages, "reward": reward}) + "\n")
    if pairs:
        print(f"pair accuracy (reward of chosen > rejected): {correct / pairs:.4f} over {pairs} pairs")
    print(f"results: {result_path}")
    return 0


def reward_rows(spec: str, seed: int) -> list:
    """A dataset's rows as preference pairs when its format has them, otherwise as conversations."""
    try:
        return load_dataset_spec(spec, "preference", seed=seed)
    except AlignkitError as error:
        if isinstance(error, DataError) and error.row is not None:
            raise  # a bad row, not a format without pairs
        return load_dataset_spec(spec, "sft", seed=seed)


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
