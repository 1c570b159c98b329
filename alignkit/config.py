"""Typed run configuration. Every flag is declared once here, with its help text and its ms-swift aliases.

The CLI (``alignkit.cli``) turns these dataclasses into argparse options; the Python API builds them
directly::

    from alignkit.config import RunArguments
    args = RunArguments(rlhf_type="dpo", dataset=["arith-pref"], max_steps=20)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


def option(default: Any = None, help: str = "", *, aliases: tuple[str, ...] = (), choices=None, nargs=None):
    """A dataclass field that carries its CLI help, its alias flag names and its allowed values."""
    meta = {"help": help, "aliases": aliases, "choices": choices, "nargs": nargs}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RunArguments:
    """Everything a training run needs. Flat, so that a flag maps to exactly one attribute."""

    # --- model ---
    model: str | None = option(
        None,
        "Model to train: a local HF directory, a hub id, or 'smollm2-135m-instruct' (the built-in default).",
        aliases=("--model_id_or_path",),
    )
    model_type: str | None = option(
        None,
        "ms-swift compatibility. A local path here is used as --model; a registry name (e.g. "
        "llama3-8b-instruct) needs --model as well, since alignkit has no model registry.",
    )
    model_revision: str | None = option(None, "Hub revision (branch, tag or commit) of --model.")
    ref_model: str | None = option(
        None,
        "Reference model for full fine-tuning (default: a frozen copy of the starting weights; "
        "with LoRA the adapter-disabled base).",
        aliases=("--ref_model_id_or_path",),
    )
    ref_model_type: str | None = option(
        None, "ms-swift compatibility, handled like --model_type for --ref_model."
    )
    adapters: list[str] = option([], "LoRA adapter directories to load on top of --model.", nargs="*")
    dtype: str = option(
        "auto",
        "Compute precision: auto (bf16 autocast on GPUs and CPUs with native bf16, else fp32), fp32, bf16, fp16.",
        aliases=("--torch_dtype",),
        choices=("auto", "fp32", "float32", "bf16", "bfloat16", "fp16", "float16"),
    )
    gradient_checkpointing: bool = option(False, "Recompute activations in the backward pass to save memory.")

    # --- data ---
    dataset: list[str] = option(
        [],
        "Training data: built-in names (arith-sft, arith-pref, ...) or local .jsonl/.json/.csv/.parquet files, "
        "each optionally suffixed #N to sample N rows. Default: the built-in set for the algorithm.",
        nargs="+",
    )
    val_dataset: list[str] = option([], "Held-out data, same forms as --dataset.", nargs="+")
    split_dataset_ratio: float = option(
        0.0, "Fraction of --dataset held out for evaluation when --val_dataset is empty."
    )
    dataset_shuffle: bool = option(True, "Shuffle the training data each epoch.")
    data_seed: int = option(42, "Seed for dataset sampling and splitting.")
    max_length: int = option(1024, "Maximum tokens of prompt + answer.")
    max_prompt_length: int | None = option(
        None, "Maximum prompt tokens (longer prompts follow --truncation_strategy)."
    )
    truncation_strategy: str = option(
        "delete",
        "Rows that do not fit: delete (drop and count), left (cut the prompt's start), right (cut the answer's "
        "end, keeping at least one trained token), raise (stop with an error naming the row).",
        choices=("delete", "left", "right", "raise"),
    )
    system: str | None = option(None, "System prompt that replaces the data's and the template's default.")
    check_dataset_strategy: str = option(
        "none",
        "ms-swift compatibility. Invalid rows: none/error stop with an error naming the row; "
        "discard/warning drop them and report the count.",
        choices=("none", "error", "discard", "warning"),
    )

    # --- training loop ---
    output_dir: str = option("output", "Each run gets a new versioned directory below this one.")
    num_train_epochs: float = option(1.0, "Epochs over the training data (ignored when --max_steps > 0).")
    max_steps: int = option(-1, "Total optimizer steps; overrides --num_train_epochs when > 0.")
    per_device_train_batch_size: int = option(
        1, "Rows (pairs for preference methods) per micro-batch.", aliases=("--batch_size",)
    )
    per_device_eval_batch_size: int = option(4, "Rows per evaluation batch.", aliases=("--eval_batch_size",))
    gradient_accumulation_steps: int = option(1, "Micro-batches per optimizer step.")
    learning_rate: float = option(1e-4, "Peak learning rate.", aliases=("--lr",))
    weight_decay: float = option(0.0, "AdamW weight decay.")
    adam_beta1: float = option(0.9, "AdamW beta1.")
    adam_beta2: float = option(0.999, "AdamW beta2.")
    adam_epsilon: float = option(1e-8, "AdamW epsilon.")
    lr_scheduler_type: str = option(
        "cosine", "Learning-rate schedule after warm-up.", choices=("linear", "cosine", "constant")
    )
    warmup_ratio: float = option(0.0, "Fraction of the steps spent warming up linearly from 0.")
    warmup_steps: int = option(0, "Warm-up steps (overrides --warmup_ratio when > 0).")
    max_grad_norm: float = option(
        1.0, "Clip the gradient's global norm to this (0 disables).", aliases=("--grad_clip",)
    )
    logging_steps: int = option(5, "Log metrics every N optimizer steps.")
    eval_steps: int | None = option(None, "Evaluate every N steps (default: only at the end).")
    save_steps: int = option(500, "Save a checkpoint every N steps (and always at the end).")
    save_total_limit: int | None = option(
        None, "Keep at most this many checkpoints (the newest is always kept)."
    )
    resume_from_checkpoint: str | None = option(None, "Checkpoint directory to resume from.")
    seed: int = option(42, "Seed for initialisation, dropout and data order.")
    report_to: list[str] = option(
        ["tensorboard"],
        "Where metrics go besides the console and logging.jsonl: tensorboard or none.",
        nargs="+",
    )
    debug: bool = option(False, "Show full tracebacks for errors.")

    # --- LoRA / full ---
    train_type: str = option(
        "lora",
        "lora (peft adapters) or full fine-tuning.",
        aliases=("--sft_type", "--tuner_type"),
        choices=("lora", "full"),
    )
    lora_rank: int = option(8, "LoRA rank r.")
    lora_alpha: int = option(32, "LoRA scaling alpha (the update is scaled by alpha / r).")
    lora_dropout: float = option(0.05, "Dropout on the LoRA input.", aliases=("--lora_dropout_p",))
    lora_target_modules: list[str] = option(
        ["all-linear"],
        "Modules to adapt: ALL / all-linear (every linear layer but the LM head), DEFAULT (attention q/k/v), "
        "or module names.",
        aliases=("--target_modules",),
        nargs="+",
    )
    tuner_backend: str = option(
        "peft", "ms-swift compatibility: LoRA always runs on peft.", choices=("peft", "swift")
    )

    # --- preference objectives ---
    rlhf_type: str = option("dpo", "Preference algorithm.", choices=("dpo",))
    beta: float | None = option(
        None, "KL strength beta (unset: the algorithm's default from the losses table)."
    )
    loss_type: list[str] = option(["sigmoid"], "DPO loss variant(s).", nargs="+")
    rpo_alpha: float | None = option(
        None, "Weight of the NLL (SFT) loss on chosen answers added to DPO (RPO)."
    )
    label_smoothing: float = option(0.0, "Conservative DPO: assumed probability that a label is flipped.")

    # --- speed-ups (exact: the same numbers as the plain padded path; see docs/performance.md) ---
    padding_free: bool = option(
        True,
        "Preference batches run without padding: sequences packed into rows, position ids restarting per "
        "sequence, no attention across sequences. Needs sdpa or eager attention (else the padded path runs).",
    )
    prefix_sharing: bool = option(
        True,
        "With --padding_free: sequences that begin alike (a pair's prompt, a shared system prompt) run their "
        "common prefix once, a mask keeping each answer from seeing the others.",
    )
    precompute_ref_log_probs: bool = option(
        True,
        "Compute the reference log-probs of the rows the run will see once before training, cached on disk under "
        "a key of the reference weights, data, template, --max_length and precision; no reference model is kept.",
    )

    # --- ms-swift flags with no effect here, accepted so existing scripts run ---
    check_model_is_latest: bool = option(
        True, "ms-swift compatibility (no effect: alignkit never checks hubs)."
    )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class InferArguments:
    model: str | None = option(None, "Base model (default: the built-in model).", aliases=("--model_id_or_path",))
    adapters: list[str] = option([], "LoRA adapter directories to apply.", nargs="*")
    ckpt_dir: str | None = option(None, "A checkpoint of an alignkit run (adapter or full model).")
    system: str | None = option(None, "System prompt.")
    max_new_tokens: int = option(256, "Most tokens generated per answer.")
    temperature: float = option(0.0, "Sampling temperature; 0 decodes greedily.")
    top_p: float = option(1.0, "Nucleus sampling mass.")
    top_k: int = option(0, "Sample among the k likeliest tokens (0: no limit).")
    repetition_penalty: float = option(1.0, "Penalty > 1 discourages repeating tokens.")
    stream: bool = option(True, "Print tokens as they are generated (interactive chat).")
    val_dataset: list[str] = option([], "Answer every prompt of these datasets and write JSONL.", nargs="+")
    result_path: str | None = option(None, "JSONL output of batch inference (never overwritten).")
    max_batch_size: int = option(8, "Prompts generated together in batch inference.")
    max_length: int = option(1024, "Longest prompt in tokens; longer prompts are skipped and counted.")
    dtype: str = option("auto", "Precision (auto, fp32, bf16).", aliases=("--torch_dtype",),
                        choices=("auto", "fp32", "float32", "bf16", "bfloat16", "fp16", "float16"))
    seed: int = option(42, "Sampling seed.")
    debug: bool = option(False, "Show full tracebacks for errors.")


@dataclass
class EvalArguments:
    model: str | None = option(None, "Base model (default: the built-in model).", aliases=("--model_id_or_path",))
    adapters: list[str] = option([], "LoRA adapter directories to apply.", nargs="*")
    ckpt_dir: str | None = option(None, "A checkpoint of an alignkit run (adapter or full model).")
    ref_model: str | None = option(None, "Reference for implicit rewards (default: the base without adapters).")
    dataset: list[str] = option(
        ["arith-pref:test"], "Preference sets for accuracy and margins ('none' to skip).", nargs="+"
    )
    task_dataset: str | None = option(
        "arith-prompts:test", "Built-in task prompts scored by greedy answer accuracy ('none' to skip)."
    )
    beta: float = option(0.1, "beta of the implicit reward beta·(log π − log π_ref).")
    max_length: int = option(1024, "Maximum tokens of prompt + answer.")
    max_new_tokens: int = option(32, "Most tokens generated per task answer.")
    batch_size: int = option(8, "Rows per forward / generation batch.")
    limit: int | None = option(None, "Evaluate at most this many rows of each set.")
    system: str | None = option(None, "System prompt.")
    report_path: str | None = option(None, "Write the JSON report here (never overwritten).")
    dtype: str = option("auto", "Precision (auto, fp32, bf16).", aliases=("--torch_dtype",),
                        choices=("auto", "fp32", "float32", "bf16", "bfloat16", "fp16", "float16"))
    debug: bool = option(False, "Show full tracebacks for errors.")


@dataclass
class DemoArguments:
    output_dir: str = option("output/demo", "Where the run, the report and the chart go.")
    max_steps: int = option(50, "DPO optimizer steps.")
    rpo_alpha: float = option(0.5, "Weight of the NLL on chosen answers mixed into DPO (as ms-swift's --rpo_alpha).")
    learning_rate: float = option(5e-4, "Peak learning rate (LoRA).")
    per_device_train_batch_size: int = option(4, "Pairs per step.", aliases=("--batch_size",))
    eval_limit: int = option(100, "Held-out rows used for the before/after numbers.")
    dtype: str = option("auto", "Precision (auto, fp32, bf16).", aliases=("--torch_dtype",),
                        choices=("auto", "fp32", "float32", "bf16", "bfloat16", "fp16", "float16"))
    debug: bool = option(False, "Show full tracebacks for errors.")
