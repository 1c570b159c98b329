"""`alignkit infer --model <process reward model>`: per-step scores, as ms-swift's infer gives them for task_type prm.

With --val_dataset each conversation (ending with the answer to judge) is scored and written as JSONL,
``{"messages": [...], "response": [score of step 1, step 2, ...]}``: ms-swift's result rows carry the scores as
their ``response``. Without a dataset it asks, as ms-swift does, for a query and then the answer to judge, and
prints the answer's step scores as a list. Steps end with ``<extra_0>`` (alignkit.models.process_reward).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from alignkit.config.commands import InferArguments
from alignkit.data.loading import load_dataset_spec
from alignkit.errors import AlignkitError
from alignkit.generation import data_parallel
from alignkit.models.process_reward import STEP_TAG, StepScorer, load_step_scorer

logger = logging.getLogger("alignkit")


def check_step_scoring(args: InferArguments, held_out) -> None:
    """What a PRM's scoring cannot honour, refused before it loads."""
    refusals = [
        (args.adapters or args.ckpt_dir, "--adapters/--ckpt_dir: a process reward model is scored as published; "
                                         "merge an adapter first (alignkit export --merge_lora true)"),
        (args.infer_backend not in ("transformers", "pt"),
         f"--infer_backend {args.infer_backend}: process reward models are scored with --infer_backend transformers"),
        (args.reward_model, "--reward_model: --model is itself a process reward model; pass one of them"),
        (held_out is not None, "--dataset/--load_data_args: a process reward model scores whole conversations; pass "
                               "them (answers included) with --val_dataset"),
        (data_parallel.world_size() > 1, "NPROC_PER_NODE > 1: process-reward scoring runs in one process; unset "
                                         "NPROC_PER_NODE"),
    ]
    for refused, message in refusals:
        if refused:
            raise AlignkitError(message)


def run_step_scores(args: InferArguments, result_path: Path | None, held_out) -> int:
    check_step_scoring(args, held_out)
    scorer = load_step_scorer(args.model, dtype=args.dtype, system=args.system, max_length=args.max_length,
                              batch_size=args.max_batch_size, device_map=args.device_map,
                              max_memory=args.device_max_memory)
    if result_path is None:
        return judge_interactively(scorer)
    return score_dataset(scorer, args, result_path)


def score_dataset(scorer: StepScorer, args: InferArguments, result_path: Path) -> int:
    """Every conversation of --val_dataset that fits --max_length (per --truncation_strategy), scored."""
    rows = [row for spec in args.val_dataset for row in load_dataset_spec(spec, "sft", seed=args.seed)]
    encoded = [(row, fitted(scorer.encode(row.messages), args.max_length, args.truncation_strategy, i))
               for i, row in enumerate(rows)]
    kept = [(row, ids) for row, ids in encoded if ids is not None]
    if len(kept) < len(rows):
        logger.warning("Skipped %d conversations longer than --max_length %d", len(rows) - len(kept), args.max_length)
    result_path.parent.mkdir(parents=True, exist_ok=True)
    with result_path.open("x") as out:
        for start in range(0, len(kept), args.max_batch_size):
            chunk = kept[start : start + args.max_batch_size]
            for (row, _), scores in zip(chunk, scorer.score_ids([ids for _, ids in chunk])):
                out.write(json.dumps({"messages": row.messages, "response": scores}) + "\n")
    print(f"results: {result_path}")
    return 0


def fitted(ids: list[int], max_length: int, strategy: str, index: int) -> list[int] | None:
    """A conversation's ids within --max_length per --truncation_strategy (delete: None, skipped and counted; left
    keeps the end, right the beginning: the steps cut off get no score)."""
    if len(ids) <= max_length:
        return ids
    if strategy == "raise":
        raise AlignkitError(f"conversation {index}: {len(ids)} tokens exceed --max_length {max_length} "
                            "(--truncation_strategy raise)")
    if strategy == "delete":
        return None
    return ids[-max_length:] if strategy == "left" else ids[:max_length]


def judge_interactively(scorer: StepScorer) -> int:
    """ms-swift's reward-model chat: a query, then the answer to judge; the answer's step scores are printed.
    The conversation goes on (each judged answer stays in it) until `clear`."""
    print(f"alignkit PRM: type a query, then the answer to judge (end each step with {STEP_TAG}; an answer "
          "without one is one step); 'clear' resets the conversation, 'exit' quits.")
    history: list[dict] = []
    while True:
        try:
            query = input("<<< ")
            if query.strip() in ("exit", "quit"):
                return 0
            if query.strip() == "clear":
                history = []
                continue
            answer = input("response <<< ")
        except EOFError:
            print()
            return 0
        history += [{"role": "user", "content": query}, {"role": "assistant", "content": answer}]
        print(scorer.score([history])[0])
        print("-" * 50)
