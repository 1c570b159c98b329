"""`alignkit infer`: chat with a model or adapter (streaming, multi-turn), or answer a dataset's prompts.

Interactive commands: `clear` forgets the history, `exit` (or Ctrl-D) quits.
"""

from __future__ import annotations

import base64
import dataclasses
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
from alignkit.generation import data_parallel
from alignkit.generation.answers import generate, ids_of, stream_answer
from alignkit.generation.loader import Loaded, load_for_answers
from alignkit.models.process_reward import is_process_reward_model
from alignkit.vision.encode import PLACEHOLDER
from alignkit.vision.images import load_image
from alignkit.vision.model import vision_model_path

logger = logging.getLogger("alignkit")


def run_infer(args: InferArguments) -> int:
    held_out = None
    if args.load_dataset_config:
        args, held_out = with_run_data_config(args)
    if held_out is None and args.dataset:
        held_out = dataset_prompts(args)
    if args.reward_model is None and reward_checkpoint(args) is not None:  # a reward model scores, as in ms-swift
        logger.info("%s is a reward model: scoring the rows of --val_dataset instead of generating",
                    reward_checkpoint(args))
        args = dataclasses.replace(args, reward_model=reward_checkpoint(args), ckpt_dir=None, adapters=[],
                                   model=None if reward_checkpoint(args) == args.model else args.model)
    result_path = None
    if args.val_dataset or held_out is not None:
        result_path = Path(args.result_path or f"infer_result/{time.strftime('%Y%m%d-%H%M%S')}.jsonl")
        if result_path.exists():
            raise AlignkitError(f"--result_path {result_path} exists; alignkit never overwrites results")
    if args.task_type == "prm" or is_process_reward_model(args.model):  # per-step scores, as in ms-swift
        from alignkit.commands.step_scores import run_step_scores

        return run_step_scores(args, result_path, held_out)
    if args.reward_model:
        if data_parallel.world_size() > 1:
            raise AlignkitError("NPROC_PER_NODE > 1: reward-model scoring runs in one process; unset NPROC_PER_NODE")
        if result_path is None:
            raise AlignkitError("--reward_model scores the conversations of --val_dataset; pass --val_dataset")
        return score_datasets(args, result_path)
    torch.manual_seed(args.seed)
    if data_parallel.world_size() > 1:
        check_data_parallel(args, result_path)
        data_parallel.start()
    if args.infer_backend in ("vllm", "sglang", "lmdeploy"):
        return engine_infer(args, result_path, held_out)
    loaded = load_for_answers(args.model, args.adapters, args.ckpt_dir, args.dtype, device_map=args.device_map,
                              max_memory=args.device_max_memory, max_length=args.max_length, system=args.system,
                              trust_remote_code=args.trust_remote_code, attn_impl=args.attn_impl,
                              enable_thinking=args.enable_thinking, use_chat_template=args.use_chat_template)
    if result_path is None:
        return chat(loaded, args)
    rows = held_out if held_out is not None else load_prompts(args)
    return batch_infer(loaded, rows, args, result_path)


def check_data_parallel(args: InferArguments, result_path: Path | None) -> None:
    """Under NPROC_PER_NODE > 1, ms-swift's data-parallel batch inference: datasets answered with transformers."""
    if result_path is None:
        raise AlignkitError("NPROC_PER_NODE > 1 answers datasets in parallel (--val_dataset, --dataset or "
                            "--load_data_args); interactive chat runs in one process: unset NPROC_PER_NODE")
    if args.infer_backend not in ("transformers", "pt"):
        raise AlignkitError(f"NPROC_PER_NODE > 1 with --infer_backend {args.infer_backend}: data-parallel inference "
                            "runs the transformers backend; give the engine its GPUs with its own flags "
                            "(e.g. --vllm_tensor_parallel_size) in one process")
    if args.device_map or args.device_max_memory:
        raise AlignkitError("NPROC_PER_NODE > 1 puts one copy of the model on each process's GPU; --device_map "
                            "splits one copy across GPUs: use one or the other")


def engine_infer(args: InferArguments, result_path: Path | None, held_out: list[PromptRow] | None) -> int:
    """--infer_backend vllm|sglang|lmdeploy: batch inference of text prompts, rendered by alignkit's template."""
    backend = args.infer_backend
    if vision_model_path(args.model, args.adapters, args.ckpt_dir) is not None:
        raise AlignkitError(f"--infer_backend {backend} generates from text prompts only; answer a vision-language "
                            "model's prompts with --infer_backend transformers")
    if args.device_map or args.device_max_memory:
        raise AlignkitError(f"--device_map applies to --infer_backend transformers; {backend} places the model itself")
    if args.attn_impl:
        raise AlignkitError(f"--attn_impl applies to --infer_backend transformers; {backend} chooses its own kernels")
    if result_path is None:
        raise AlignkitError(f"--infer_backend {backend} answers datasets (--val_dataset); interactive chat uses "
                            "transformers")
    from alignkit.generation import external_engines
    from alignkit.models.load import load_tokenizer, resolve_checkpoint, resolve_model_path

    if backend == "vllm":
        from alignkit.generation.vllm import VllmInference

        generator = VllmInference(args)
        tokenizer = generator.tokenizer
    else:
        tokenizer = load_tokenizer(resolve_model_path(resolve_checkpoint(args.model, args.adapters, args.ckpt_dir)[0]),
                                   trust_remote_code=args.trust_remote_code)
        generator = (external_engines.SglangInference(args) if backend == "sglang"
                     else external_engines.LmdeployInference(args, tokenizer))
    encoder = ChatEncoder(tokenizer, max_length=args.max_length, system=args.system)
    if args.enable_thinking is not None:
        encoder.chat_template_kwargs = {"enable_thinking": args.enable_thinking}
    encoder.use_chat_template = args.use_chat_template
    rows = held_out if held_out is not None else load_prompts(args)
    rows = [(row, encoder.encode_prompt(row.prompt)) for row in rows]
    return write_answers(lambda chunk: generator.generate([ids for _, ids in chunk]), tokenizer, rows, args,
                         result_path)


def load_prompts(args: InferArguments) -> list[PromptRow]:
    return [row for spec in args.val_dataset for row in load_dataset_spec(spec, "prompt", seed=args.seed)]


def dataset_prompts(args: InferArguments) -> list[PromptRow]:
    """ms-swift's `infer --dataset D --split_dataset_ratio r`: the held-out share r of D, split as training
    splits it (seed --seed, training's --data_seed default 42); with r = 0 every row of D."""
    from alignkit.data.loading import load_datasets

    if args.split_dataset_ratio <= 0:
        return [row for spec in args.dataset for row in load_dataset_spec(spec, "prompt", seed=args.seed)]
    _, held_out = load_datasets(args.dataset, [], "sft", split_dataset_ratio=args.split_dataset_ratio,
                                seed=args.seed, shuffle=False)
    return [as_prompt(row) for row in held_out]


def reward_checkpoint(args: InferArguments) -> str | None:
    """The model, checkpoint or adapter of an alignkit reward model (it carries a scalar head), if infer got one."""
    from alignkit.models.reward_model import VALUE_HEAD_FILE

    for candidate in [args.ckpt_dir, *args.adapters, args.model]:
        if candidate and (Path(candidate) / VALUE_HEAD_FILE).is_file():
            return candidate
    return None


def with_run_data_config(args: InferArguments) -> tuple[InferArguments, list[PromptRow] | None]:
    """ms-swift's --load_dataset_config: the run's --system and --max_length, and its held-out rows (its
    --val_dataset, or the part of --dataset it split off), for flags left at their defaults.
    Returns the arguments and the held-out rows (None when --val_dataset is given)."""
    from alignkit.config.defaults import DEFAULT_DATASET
    from alignkit.data.loading import load_datasets

    run_dir = args.ckpt_dir or (args.adapters[0] if args.adapters else None)
    if run_dir is None or not (Path(run_dir) / "args.json").is_file():
        raise AlignkitError("--load_data_args (--load_dataset_config) true needs --ckpt_dir or --adapters, a "
                            "checkpoint of an alignkit run (with args.json)")
    run = json.loads((Path(run_dir) / "args.json").read_text())
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
            raise AlignkitError(f"{run_dir}/args.json: the run had no held-out rows; pass --val_dataset")
        rows = [as_prompt(row) for row in held_out]
    logger.info("--load_dataset_config: %s from %s/args.json", ", ".join(
        [*changes, *(["held-out rows"] if rows else [])]) or "nothing", run_dir)
    return args, rows


def as_prompt(row: ConversationRow | PreferenceRow) -> PromptRow:
    """A held-out training row as a prompt, its reference answer (the chosen one) kept as ``labels``."""
    if isinstance(row, PreferenceRow):
        return PromptRow(row.prompt, {**row.extras, "labels": row.chosen[-1]["content"]}, row.source)
    last = max(i for i, m in enumerate(row.messages) if m["role"] == "assistant")
    return PromptRow(row.messages[:last], {"labels": row.messages[last]["content"]}, row.source)


def batch_infer(loaded: Loaded, rows: list[PromptRow], args: InferArguments, result_path: Path) -> int:
    """Answer every prompt (with its images, for a vision-language model) in chunks of --max_batch_size."""
    encoded = [(row, loaded.encoder.prompt_of(row)) for row in rows]

    def answer(chunk):
        return generate(loaded.model, loaded.encoder, [prompt for _, prompt in chunk],
                        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                        top_k=args.top_k, repetition_penalty=args.repetition_penalty,
                        stop_words=tuple(args.stop_words))

    return write_answers(answer, loaded.tokenizer, encoded, args, result_path)


def write_answers(answer, tokenizer, encoded: list, args: InferArguments, result_path: Path) -> int:
    """``answer(chunk of (row, prompt)) -> answers`` for the prompts that fit --max_length (image tokens
    included; longer ones per --truncation_strategy), in chunks of --max_batch_size, written as JSONL with the
    row's other columns and flushed every --write_batch_size rows."""
    fitted = [(row, fit_prompt(prompt, args.max_length, args.truncation_strategy, index))
              for index, (row, prompt) in enumerate(encoded)]
    kept = [(row, prompt) for row, prompt in fitted if prompt is not None]
    if args.metric and any("labels" not in row.extras for row, _ in kept):
        raise AlignkitError(f"--metric {args.metric} compares answers with reference answers: the rows need a "
                            "`labels` column (or come from --load_data_args / --dataset, whose held-out rows keep "
                            "their answers)")
    if len(kept) < len(encoded):
        logger.warning("Skipped %d prompts longer than --max_length %d", len(encoded) - len(kept), args.max_length)
    start, new_tokens = time.perf_counter(), 0
    if data_parallel.world_size() > 1:  # NPROC_PER_NODE: each process answers its share; rank 0 writes them all
        mine = data_parallel.share(len(kept))
        answers = data_parallel.gather([response for i in range(mine.start, mine.stop, args.max_batch_size)
                                        for response in answer(kept[i : min(i + args.max_batch_size, mine.stop)])])
        if data_parallel.rank() != 0:
            return 0
        remaining = iter(answers)

        def answer(chunk):  # noqa: F811  (the gathered answers, in dataset order)
            return [next(remaining) for _ in chunk]
    result_path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with result_path.open("x") as out:
        for i in range(0, len(kept), args.max_batch_size):
            chunk = kept[i : i + args.max_batch_size]
            for (row, _), response in zip(chunk, answer(chunk)):
                new_tokens += len(tokenizer(response, add_special_tokens=False)["input_ids"])
                out.write(json.dumps({"messages": row.prompt, "response": response, **row.extras},
                                     default=_inline_bytes) + "\n")
                written += 1
                if args.write_batch_size > 0 and written % args.write_batch_size == 0:
                    out.flush()  # results so far are on disk, as ms-swift writes them in batches
            logger.info("%d/%d prompts answered", min(i + args.max_batch_size, len(kept)), len(kept))
    seconds = time.perf_counter() - start
    logger.info("Wrote %s: %d answers in %.1f s (%.2f answers/s, %.1f tokens/s)", result_path, len(kept), seconds,
                len(kept) / seconds, new_tokens / seconds)
    if args.metric == "acc":  # ms-swift's: the share of answers equal to their reference, over the results file
        results = [json.loads(line) for line in result_path.read_text().splitlines()]
        print(f"acc: {sum(r['response'] == r['labels'] for r in results) / max(1, len(results)):.4f} "
              f"over {len(results)} answers")
    print(f"results: {result_path}")
    return 0


def fit_prompt(prompt, max_length: int, strategy: str, index: int):
    """A prompt (ids, or a vision prompt) within ``max_length`` per --truncation_strategy; None: skip it."""
    ids = ids_of(prompt)
    if len(ids) <= max_length:
        return prompt
    if strategy == "raise":
        raise AlignkitError(f"prompt {index}: {len(ids)} tokens exceed --max_length {max_length} "
                            "(--truncation_strategy raise)")
    if strategy == "delete":
        return None
    if not isinstance(prompt, list):
        raise AlignkitError(f"prompt {index}: --truncation_strategy {strategy} would cut a prompt with images; use "
                            "delete or raise, or a larger --max_length")
    return ids[-max_length:] if strategy == "left" else ids[:max_length]


def _inline_bytes(value):
    """JSON for an image given as bytes (a parquet Image column): base64, which the loaders read back."""
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def score_datasets(args: InferArguments, result_path: Path) -> int:
    """Reward-model scores for every row of --val_dataset, as JSONL. Preference rows get both answers scored
    (``chosen_reward``, ``rejected_reward``) and the pair accuracy is reported; conversations get ``reward``."""
    from alignkit.models.scalar_model import load_reward_scorer

    scorer = load_reward_scorer(args.reward_model, model=args.model, dtype=args.dtype, max_length=args.max_length,
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


def chat(loaded: Loaded, args: InferArguments) -> int:
    """Multi-turn chat. With a vision-language model each ``<image>`` in a message asks for one image (a path,
    URL or base64)."""
    history: list[dict[str, str]] = []
    images: list = []
    hint = (f", with {PLACEHOLDER} where an image goes (you are then asked for its path or URL)"
            if loaded.vision else "")
    print(f"alignkit chat: type a message{hint}; 'clear' resets the history, 'exit' quits.")
    while True:
        try:
            text = input("<<< ")
            if text.strip() == "exit":
                return 0
            if text.strip() == "clear":
                history, images = [], []
                continue
            new_images = [load_image(input("image path or URL <<< ").strip(), None, f"image {i + 1}")
                          for i in range(text.count(PLACEHOLDER) if loaded.vision else 0)]
        except EOFError:
            print()
            return 0
        except DataError as error:  # a mistyped path: say so and keep the conversation
            print(f"error: {error}")
            continue
        history.append({"role": "user", "content": text})
        images += new_images
        answer = stream_answer(loaded.model, loaded.encoder, loaded.encode(history, images),
                               max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                               top_k=args.top_k, repetition_penalty=args.repetition_penalty, stream=args.stream,
                               stop_words=tuple(args.stop_words))
        history.append({"role": "assistant", "content": answer})
