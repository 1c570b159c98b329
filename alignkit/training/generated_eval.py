"""``sft --predict_with_generate true``: the held-out evaluation generates answers and scores them with ms-swift's
ROUGE/BLEU (``alignkit.generation.text_metrics``) instead of the loss, as ms-swift's ``Seq2SeqTrainer`` does.

Each held-out conversation loses its last assistant turn, which becomes the reference (ms-swift's
``InferRequest.remove_response``); the rest is the prompt. The main process answers the prompts greedily
(ms-swift's sft default ``--temperature 0``), --per_device_eval_batch_size at a time, up to --max_new_tokens
each, and the evaluation reports ``eval_rouge-1``, ``eval_rouge-2``, ``eval_rouge-l``, ``eval_bleu-4`` (no loss,
as in ms-swift); --metric_for_best_model defaults to rouge-l. Every answer is appended to the run directory's
``predict.jsonl`` with its reference, prompt and step. Example::

    held-out row  [user "What is 2 + 3?", assistant "5"]  ->  prompt [user "What is 2 + 3?"], reference "5"
    answer "5"  ->  {"eval_rouge-1": 100.0, "eval_rouge-2": 0.0 (one word has no bigram), "eval_rouge-l": 100.0,
                     "eval_bleu-4": 35.355339 (p2..p4 = 0/0 smoothed to 1/2, 1/4, 1/8: (1/64)^(1/4))}
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from alignkit.config.run import RunArguments
from alignkit.data.rows import ConversationRow, Message, PromptRow
from alignkit.data.template import ChatEncoder, Truncated
from alignkit.errors import AlignkitError
from alignkit.generation.answers import generate
from alignkit.generation.text_metrics import check_available, rouge_bleu

logger = logging.getLogger("alignkit")

PREDICTIONS_FILE = "predict.jsonl"


def check_generated_eval(args: RunArguments, method: str) -> None:
    """--predict_with_generate's needs, checked before anything loads: a causal LM's sft, greedy answers, the
    metrics' packages."""
    if not args.predict_with_generate or method != "sft":
        return
    if args.task_type not in (None, "causal_lm") or args.num_labels is not None:
        raise AlignkitError(f"--predict_with_generate generates answers of a causal LM; --task_type "
                            f"{args.task_type or 'seq_cls'} scores sequences instead (drop the flag)")
    if args.temperature not in (0.0, RunArguments.temperature):
        raise AlignkitError(f"--temperature {args.temperature} with --predict_with_generate: alignkit's generated "
                            "evaluation decodes greedily (ms-swift's sft default, --temperature 0)")
    if args.max_new_tokens < 1:
        raise AlignkitError(f"--max_new_tokens {args.max_new_tokens}: expected a positive integer")
    check_available()


@dataclass
class HeldOutPrompts:
    prompts: list[list[int]]  # token ids, ending with the assistant header
    references: list[str]  # each conversation's last assistant turn
    conversations: list[list[Message]]  # the prompts' messages, for predict.jsonl


def held_out_prompts(encoder: ChatEncoder, rows: list) -> HeldOutPrompts:
    """Each held-out conversation split into its prompt and its last assistant turn (module docstring). A prompt
    over --max_length is cut or dropped as --truncation_strategy says for prompts."""
    held = HeldOutPrompts([], [], [])
    dropped = 0
    for row in rows:
        if not isinstance(row, ConversationRow) or row.messages[-1]["role"] != "assistant":
            where = f" ({row.source.file}, row {row.source.row})" if getattr(row, "source", None) else ""
            raise AlignkitError(f"--predict_with_generate: a held-out row{where} does not end with an assistant "
                                "turn, so it has no reference answer to score a generated one against")
        prompt = row.messages[:-1]
        try:
            ids = encoder.encode_prompt_row(PromptRow(prompt, source=row.source)).input_ids
        except Truncated:
            dropped += 1
            continue
        held.prompts.append(ids)
        held.references.append(row.messages[-1]["content"])
        held.conversations.append(prompt)
    if dropped:
        logger.warning("--predict_with_generate: %d held-out prompts over --max_length are not evaluated", dropped)
    return held


@dataclass
class GeneratedEvaluation:
    """The held-out evaluation of ``alignkit.training.loop.train`` for --predict_with_generate."""

    held_out: HeldOutPrompts
    encoder: ChatEncoder
    max_new_tokens: int
    batch_size: int

    def __call__(self, runner) -> dict[str, float]:
        """``eval_``-prefixed ROUGE/BLEU on the main process (the others wait and get an empty dict, which they
        never log), the answers appended to ``predict.jsonl``."""
        metrics: dict[str, float] = {}
        if runner.main:
            model = runner.unwrapped
            model.eval()
            answers = []
            for start in range(0, len(self.held_out.prompts), self.batch_size):
                with runner.accelerator.autocast():
                    answers += generate(model, self.encoder, self.held_out.prompts[start : start + self.batch_size],
                                        max_new_tokens=self.max_new_tokens)
            model.train()
            metrics = {f"eval_{key}": value for key, value in rouge_bleu(answers, self.held_out.references).items()}
            step = runner.state.global_step
            with open(runner.run_dir / PREDICTIONS_FILE, "a") as out:
                for answer, reference, messages in zip(answers, self.held_out.references,
                                                       self.held_out.conversations):
                    out.write(json.dumps({"step": step, "response": answer, "labels": reference,
                                          "messages": messages}, ensure_ascii=False) + "\n")
        runner.accelerator.wait_for_everyone()
        return metrics
