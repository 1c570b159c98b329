"""`alignkit infer`: chat with a model or adapter (streaming, multi-turn), or answer a dataset's prompts.

Interactive commands: `clear` forgets the history, `exit` (or Ctrl-D) quits.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from alignkit.config.commands import InferArguments
from alignkit.data.loading import load_dataset_spec
from alignkit.data.rows import ConversationRow, PreferenceRow, PromptRow
from alignkit.data.template import ChatEncoder
from alignkit.errors import AlignkitError, DataError
from alignkit.generation.answers import generate_answers, sampling_kwargs, stream_answer
from alignkit.models.load import load_for_inference
from alignkit.models.placement import input_device, refuse_for_vision
from alignkit.vision.model import vision_model_path

logger = logging.getLogger("alignkit")


def run_infer(args: InferArguments) -> int:
    held_out = None
    if args.load_dataset_config:
        args, held_out = with_run_data_config(args)
    result_path = None
    if args.val_dataset or held_out is not None:
        result_path = Path(args.result_path or f"infer_result/{time.strftime('%Y%m%d-%H%M%S')}.jsonl")
        if result_path.exists():
            raise AlignkitError(f"--result_path {result_path} exists; alignkit never overwrites results")
    if args.reward_model:
        if result_path is None:
            raise AlignkitError("--reward_model scores the conversations of --val_dataset; pass --val_dataset")
        return score_datasets(args, result_path)
    torch.manual_seed(args.seed)
    if vision_model_path(args.model, args.adapters, args.ckpt_dir) is not None:  # prompts with images: docs/vision.md
        from alignkit.commands.infer_vision import run_vision_infer

        refuse_for_vision(args.device_map, args.device_max_memory)
        return run_vision_infer(args, result_path, held_out)
    if args.infer_backend == "vllm":
        if args.device_map or args.device_max_memory:
            raise AlignkitError("--device_map applies to --infer_backend transformers; vLLM places the model itself")
        if result_path is None:
            raise AlignkitError(
                "--infer_backend vllm answers datasets (--val_dataset); interactive chat uses transformers"
            )
        from alignkit.generation.vllm import VllmInference

        generator = VllmInference(args)
        encoder = ChatEncoder(generator.tokenizer, max_length=args.max_length, system=args.system)
        return batch_infer(generator.generate, encoder, args, result_path, held_out)
    model, tokenizer = load_for_inference(args.model, args.adapters, args.ckpt_dir, args.dtype, args.device_map,
                                          args.device_max_memory)
    encoder = ChatEncoder(tokenizer, max_length=args.max_length, system=args.system)
    if result_path is not None:
        def generate(prompts):
            return generate_answers(model, encoder, prompts, max_new_tokens=args.max_new_tokens,
                                    temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                                    repetition_penalty=args.repetition_penalty)

        return batch_infer(generate, encoder, args, result_path, held_out)
    return chat(model, encoder, args)


def with_run_data_config(args: InferArguments) -> tuple[InferArguments, list[PromptRow] | None]:
    """ms-swift's --load_dataset_config: the run's --system and --max_length, and its held-out rows (its
    --val_dataset, or the part of --dataset it split off), for flags left at their defaults.
    Returns the arguments and the held-out rows (None when --val_dataset is given)."""
    import dataclasses

    from alignkit.config.defaults import DEFAULT_DATASET
    from alignkit.data.loading import load_datasets

    if args.ckpt_dir is None or not (Path(args.ckpt_dir) / "args.json").is_file():
        raise AlignkitError(
            "--load_dataset_config true needs --ckpt_dir, a checkpoint of an alignkit run (with args.json)"
        )
    run = json.loads((Path(args.ckpt_dir) / "args.json").read_text())
    defaults = InferArguments()
    changes = {key: run[key] for key in ("system", "max_length")
               if getattr(args, key) == getattr(defaults, key) and run.get(key) is not None}
    args, rows = dataclasses.replace(args, **changes), None
    if not args.val_dataset:
        algorithm = run.get("algorithm", "sft")
        kind = "sft" if algorithm == "sft" else "preference"
        _, held_out = load_datasets(
            run.get("dataset") or [DEFAULT_DATASET[algorithm]], run.get("val_dataset") or [], kind,
            split_dataset_ratio=run.get("split_dataset_ratio", 0.0), seed=run.get("data_seed", 42), shuffle=False,
        )
        if not held_out:
            raise AlignkitError(f"{args.ckpt_dir}/args.json: the run had no held-out rows; pass --val_dataset")
        rows = [as_prompt(row) for row in held_out]
    logger.info("--load_dataset_config: %s from %s/args.json", ", ".join(
        [*changes, *(["held-out rows"] if rows else [])]) or "nothing", args.ckpt_dir)
    return args, rows


def as_prompt(row: ConversationRow | PreferenceRow) -> PromptRow:
    """A held-out training row as a prompt, its reference answer (the chosen one) kept as ``labels``."""
    if isinstance(row, PreferenceRow):
        return PromptRow(row.prompt, {**row.extras, "labels": row.chosen[-1]["content"]}, row.source)
    last = max(i for i, m in enumerate(row.messages) if m["role"] == "assistant")
    return PromptRow(row.messages[:last], {"labels": row.messages[last]["content"]}, row.source)


def batch_infer(generate, encoder: ChatEncoder, args: InferArguments, result_path: Path,
                rows: list[PromptRow] | None = None) -> int:
    """Answer every prompt with ``generate(prompts) -> answers`` in chunks of --max_batch_size, writing JSONL."""
    if rows is None:
        rows = [row for spec in args.val_dataset for row in load_dataset_spec(spec, "prompt", seed=args.seed)]
    kept = [r for r in rows if len(encoder.encode_prompt(r.prompt)) <= args.max_length]
    if len(kept) < len(rows):
        logger.warning("Skipped %d prompts longer than --max_length %d", len(rows) - len(kept), args.max_length)
    result_path.parent.mkdir(parents=True, exist_ok=True)
    start, new_tokens = time.perf_counter(), 0
    with result_path.open("x") as out:
        for i in range(0, len(kept), args.max_batch_size):
            chunk = kept[i : i + args.max_batch_size]
            answers = generate([r.prompt for r in chunk])
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
    from alignkit.models.reward_model import load_reward_model

    scorer = load_reward_model(args.reward_model, model=args.model, dtype=args.dtype, max_length=args.max_length,
                               system=args.system, batch_size=args.max_batch_size, device_map=args.device_map,
                               max_memory=args.device_max_memory)
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
        input_ids = torch.tensor([encoder.encode_prompt(history)], device=input_device(model))
        kwargs = sampling_kwargs(tokenizer, args.max_new_tokens, args.temperature, args.top_p, args.top_k,
                                 args.repetition_penalty)
        kwargs["eos_token_id"] = encoder.stop_ids
        answer = stream_answer(model, tokenizer, {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
                                                  **kwargs}, stream=args.stream)
        history.append({"role": "assistant", "content": answer})


