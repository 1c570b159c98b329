"""Typed run configuration. Every flag is declared once here, with its help text and its ms-swift aliases.

The CLI (``alignkit.cli``) turns these dataclasses into argparse options; the Python API builds them
directly::

    from alignkit.config.arguments import RunArguments
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


DTYPE_CHOICES = ("auto", "fp32", "float32", "bf16", "bfloat16", "fp16", "float16")


def dtype_option(help: str = "Precision (auto, fp32, bf16)."):
    """--dtype (ms-swift's --torch_dtype), default auto; every command that loads a model has one."""
    return option("auto", help, aliases=("--torch_dtype",), choices=DTYPE_CHOICES)


def inference_device_map_option():
    """--device_map for the commands that only run the model (infer, eval, deploy, app)."""
    return option(
        None, "Split the model across the visible GPUs (see training's --device_map); default: auto with several GPUs.",
        aliases=("--device_map_config",),
    )


def inference_device_max_memory_option():
    return option(
        [], "Memory --device_map may use: one size per GPU or a JSON object (cpu/disk entries offload).",
        aliases=("--max_memory",), nargs="+",
    )


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
    dtype: str = dtype_option(
        "Compute precision: auto (bf16 autocast on GPUs and CPUs with native bf16, else fp32), fp32, bf16, fp16."
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
        "Invalid rows: none/error stop with an error naming the file, row and field (and how many more "
        "rows are invalid); discard/warning drop them and report the count.",
        choices=("none", "error", "discard", "warning"),
    )
    columns: str | None = option(
        None,
        "Rename dataset columns before the format is detected, as a JSON object: "
        "'{\"question\": \"query\", \"kto_tag\": \"label\"}'.",
    )
    template: str | None = option(
        None,
        "Built-in chat template instead of the tokenizer's own: chatml, llama3, qwen or default. A tokenizer "
        "without a template (a base model) gets chatml.",
        choices=("chatml", "llama3", "qwen", "default"),
    )
    template_config: str | None = option(
        None,
        "ColossalChat-style template config JSON (chat_template, system_message, end_of_assistant, stop_ids).",
        aliases=("--conversation_template_config",),
    )
    loss_scale: str = option(
        "default",
        "Which tokens are trained: default (SFT: every assistant turn; preference/KTO: the final answer), "
        "last_round (only the final assistant turn), all (SFT only: every token, prompts included).",
        choices=("default", "last_round", "all"),
    )
    dataset_num_proc: int = option(1, "Processes that tokenise the data.")
    load_from_cache_file: bool = option(
        True, "Reuse tokenised data cached under $ALIGNKIT_CACHE/tokenized (keyed by data, tokenizer, template "
        "and length settings)."
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
    resume_from_checkpoint: str | None = option(
        None,
        "Continue a run exactly: a checkpoint directory, a run directory (its newest complete checkpoint) or "
        "'last' (the newest complete checkpoint under --output_dir). The run goes on in the checkpoint's run "
        "directory.",
    )
    ignore_args_mismatch: bool = option(
        False,
        "Resume even though flags that change the run (data, model, learning rate, batch sizes, seed, ...) "
        "differ from the checkpoint's; the differences are logged.",
    )
    max_nonfinite_steps: int = option(
        10,
        "Stop after this many optimizer steps in a row with a NaN/inf loss or gradient (each such update is "
        "skipped, counted and logged with its rows).",
    )
    seed: int = option(42, "Seed for initialisation, dropout and data order.")
    report_to: list[str] = option(
        ["tensorboard"],
        "Where metrics go besides the console and logging.jsonl: tensorboard or none.",
        nargs="+",
    )
    debug: bool = option(False, "Show full tracebacks for errors.")

    # --- distribution (see docs/distributed.md); processes come from torchrun, accelerate or NPROC_PER_NODE ---
    deepspeed: str | None = option(
        None, "DeepSpeed ZeRO through accelerate: zero0, zero1, zero2, zero3, zero2_offload, zero3_offload (configs "
        "shipped in alignkit/ds_configs) or a path to a DeepSpeed JSON config. Needs deepspeed and a GPU."
    )
    fsdp: bool = option(False, "PyTorch FSDP2 through accelerate, wrapping each transformer decoder layer. Needs GPUs.")
    plugin: str | None = option(
        None, "ColossalChat's engine names, mapped onto the above: ddp (plain data parallel), zero2, zero2_cpu "
        "(ZeRO-2 + CPU offload), gemini (ZeRO-3), gemini_auto (ZeRO-3 + CPU offload); 3d has no equivalent.",
        choices=("ddp", "zero2", "zero2_cpu", "gemini", "gemini_auto", "3d"),
    )
    tp: int = option(1, "ColossalChat's tensor-parallel size; only 1 is supported (no equivalent engine).")
    pp: int = option(1, "ColossalChat's pipeline-parallel size; only 1 is supported (no equivalent engine).")
    sp: int = option(1, "ColossalChat's sequence-parallel size; only 1 is supported (no equivalent engine).")
    device_map: str | None = option(
        None, "Split the model's layers across this process's GPUs (ms-swift's MP): auto, balanced, balanced_low_0, "
        "sequential, cpu, cuda:N, a JSON object {module: device} or a JSON file. Default: auto when one process (no "
        "launcher) sees several GPUs. Not with data parallelism, --deepspeed or --fsdp.",
        aliases=("--device_map_config",),
    )
    device_max_memory: list[str] = option(
        [], "Memory --device_map may use: one size per visible GPU (20GB 24GB) or a JSON object "
        "'{\"0\": \"20GB\", \"cpu\": \"64GB\"}'. Training needs every layer on a GPU; inference may offload.",
        aliases=("--max_memory",), nargs="+",
    )

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
    # --- vision-language models (docs/vision.md) ---
    freeze_vit: bool = option(True, "Vision-language models: keep the vision encoder frozen (full training and "
                              "LoRA ALL/all-linear targets).")
    freeze_aligner: bool = option(True, "Vision-language models: keep the aligner (projector between vision "
                                  "encoder and language model) frozen (full training and LoRA ALL targets).")
    freeze_llm: bool = option(False, "Vision-language models: keep the language model frozen (full training and "
                              "LoRA targets).")

    # --- preference objectives (docs/objectives.md gives every formula) ---
    rlhf_type: str = option(
        "dpo",
        "Algorithm: dpo, cpo, simpo, orpo, kto (unpaired rows with a label), rm (reward model: a scalar head "
        "trained on pairs); ppo or grpo (online RL on prompts, docs/online.md).",
        choices=("dpo", "cpo", "simpo", "orpo", "kto", "rm", "ppo", "grpo"),
    )
    beta: float | None = option(
        None,
        "Strength beta (ORPO: the paper's lambda). Unset: the algorithm's default from the table DEFAULT_BETA in "
        "alignkit/config/defaults.py (0.1; simpo 2.0; grpo 0.04), logged when applied. Not used by rm, nor by ppo "
        "(its KL weight is --kl_coef).",
    )
    loss_type: list[str] = option(
        [],
        "Loss variant(s). dpo: one or several of sigmoid, hinge, ipo, exo_pair, nca_pair, robust, bco_pair, "
        "sppo_hard, aot, aot_unpaired (aot_pair), apo_zero, apo_down, discopop, sft, sigmoid_norm (summed with "
        "--loss_weights); cpo: sigmoid, hinge, ipo, simpo; kto: kto, apo_zero_unpaired; rm: log_sig, log_exp, "
        "hinge; grpo: grpo, bnpo, dr_grpo. Unset: sigmoid (dpo, cpo), kto (kto), log_sig (rm), grpo (grpo). simpo "
        "and orpo take none.",
        nargs="+",
    )
    loss_weights: list[float] = option(
        [], "dpo: one weight per --loss_type, the loss being their weighted sum (MPO). Unset: 1 each.", nargs="+"
    )
    loss_convention: str = option(
        "swift",
        "Where ms-swift (TRL 0.x) and TRL 1.x disagree. swift (default, so ms-swift command lines keep their "
        "meaning): sigmoid with --label_smoothing is cDPO, exo_pair with label_smoothing 0 uses 1e-3, bco_pair "
        "shifts by a running mean of the rewards, --f_alpha_divergence_coef is the f-DPO paper's alpha. trl1: "
        "TRL 1.x (smoothing ignored by sigmoid, exo_pair needs it, no bco shift, coef means 1 - alpha).",
        choices=("swift", "trl1"),
    )
    rpo_alpha: float | None = option(
        None, "dpo: weight of the NLL (SFT) loss on chosen answers added to DPO (RPO). Unset: off."
    )
    label_smoothing: float = option(
        0.0,
        "epsilon, the assumed probability that a pair's label is flipped: dpo sigmoid (cDPO), robust, exo_pair, "
        "aot, aot_unpaired; cpo sigmoid; simpo.",
    )
    reference_free: bool = option(False, "dpo: compare against a uniform reference (log-probs 0), no reference model.")
    ld_alpha: float | None = option(
        None,
        "dpo: LD-DPO, weight in [0, 1] of the tokens beyond the shorter answer of each pair in the sequence "
        "log-probs (policy and reference). Unset: off (1.0 is plain DPO).",
    )
    discopop_tau: float = option(0.05, "dpo discopop: temperature tau of the logistic/exponential mixing.")
    f_divergence_type: str = option(
        "reverse_kl",
        "dpo: the divergence regularising the policy (f-DPO); not reverse_kl only with sigmoid, sigmoid_norm, "
        "hinge, ipo, exo_pair, robust, discopop, sft.",
        choices=("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"),
    )
    f_alpha_divergence_coef: float = option(
        1.0, "dpo: alpha of --f_divergence_type alpha_divergence (meaning per --loss_convention)."
    )
    cpo_alpha: float = option(
        1.0, "cpo, simpo: weight of the NLL on chosen answers (0 for pure SimPO, as in the SimPO paper)."
    )
    simpo_gamma: float = option(1.0, "simpo: target reward margin gamma (ms-swift's default 1.0).")
    desirable_weight: float = option(1.0, "kto: lambda_D, weight of the losses of desirable rows.")
    undesirable_weight: float = option(1.0, "kto: lambda_U, weight of the losses of undesirable rows.")
    center_rewards_coefficient: float | None = option(
        None, "rm: weight c of c*(r_chosen + r_rejected)^2, which keeps rewards centred on 0. Unset: off."
    )

    # --- speed-ups (exact: the same numbers as the plain padded path; see docs/performance.md) ---
    padding_free: bool = option(
        True,
        "Batches run without padding: sequences packed into rows, position ids restarting per sequence, no "
        "attention across sequences. Every method (ppo/grpo: the completion log-probs); not rows with images. Needs sdpa or eager "
        "attention (else the padded path runs, with a warning).",
    )
    prefix_sharing: bool = option(
        True,
        "With --padding_free: sequences that begin alike (a pair's prompt, a shared system prompt) run their "
        "common prefix once, a mask keeping each answer from seeing the others.",
    )
    precompute_ref_log_probs: bool = option(
        True,
        "dpo, kto: compute the reference log-probs of the rows the run will see once before training, cached on "
        "disk under a key of the reference weights, data, template, --max_length and precision; no reference "
        "model is kept. Not for vision-language models.",
    )

    # --- ms-swift flags with no effect here, accepted so existing scripts run ---
    check_model_is_latest: bool = option(
        True, "ms-swift compatibility (no effect: alignkit never checks hubs)."
    )

    # --- online RL: ppo, grpo (docs/online.md). A "step" is one rollout and the updates on it. ---
    reward_model: list[str] = option(
        [],
        "ppo: the reward model, a checkpoint of `alignkit rlhf --rlhf_type rm` or a sequence-classification model; "
        "its copy becomes the value model. grpo: reward models scored besides --reward_funcs.",
        nargs="+",
    )
    reward_adapters: list[str] = option([], "LoRA adapters merged into --reward_model.", nargs="*")
    max_completion_length: int = option(512, "ppo, grpo: most tokens sampled per completion.")
    temperature: float = option(
        0.9, "ppo, grpo: sampling temperature of rollouts (log-probs are taken at the same temperature)."
    )
    missing_eos_penalty: float | None = option(
        None, "ppo, grpo: subtracted from the reward of completions cut at --max_completion_length."
    )
    local_rollout_forward_batch_size: int = option(
        64, "ppo, grpo: sequences per generation and per no-grad forward in rollouts."
    )
    num_mini_batches: int = option(1, "ppo, grpo: optimizer steps per pass over a rollout.")
    experience_batch_size: int | None = option(
        None,
        "ppo, grpo (ColossalChat): prompts per collect step. Unset: --per_device_train_batch_size x "
        "--gradient_accumulation_steps x --num_mini_batches completions (TRL), divided by --num_generations.",
    )
    num_collect_steps: int = option(1, "ppo, grpo (ColossalChat): rollouts of --experience_batch_size prompts per step.")
    train_batch_size: int | None = option(
        None, "ppo, grpo (ColossalChat): completions per optimizer step (overrides --num_mini_batches)."
    )
    num_episodes: int | None = option(
        None, "ppo, grpo (ColossalChat): number of steps (rollout + updates); the same as --max_steps."
    )
    use_vllm: bool = option(False, "ppo, grpo: sample with vLLM on the GPU, weights synced after each update.")
    vllm_gpu_memory_utilization: float = option(0.9, "Share of GPU memory vLLM may take with --use_vllm.")
    num_ppo_epochs: int = option(4, "ppo: passes over each rollout.")
    kl_coef: float = option(0.05, "ppo: weight of the per-token KL penalty in the reward.")
    cliprange: float = option(0.2, "ppo: clip range of the policy ratio.")
    vf_coef: float = option(0.1, "ppo: weight of the value loss.")
    cliprange_value: float = option(0.2, "ppo: clip range of the value update.")
    gamma: float = option(1.0, "ppo: discount factor.")
    lam: float = option(0.95, "ppo: GAE lambda.")
    whiten_rewards: bool = option(False, "ppo: whiten the per-token rewards (scale only) before GAE.")
    pretrain_dataset: list[str] = option(
        [], "ppo (ColossalChat ptx): SFT data whose LM loss is mixed into the policy loss.", nargs="+"
    )
    ptx_coef: float = option(0.0, "ppo: p in the policy loss (1 - p)*PPO + p*LM loss on --pretrain_dataset.")
    num_generations: int = option(8, "grpo: completions sampled per prompt (a group).")
    num_iterations: int = option(1, "grpo: passes over each rollout.")
    scale_rewards: str = option(
        "group",
        "grpo: divide advantages by the std of the group, of the batch, or none (Dr. GRPO); true = group, false = none.",
        choices=("group", "batch", "none", "true", "false"),
    )
    epsilon: float = option(0.2, "grpo: clip range of the policy ratio.")
    epsilon_high: float | None = option(None, "grpo: upper clip range (DAPO's clip-higher). Unset: --epsilon.")
    reward_funcs: list[str] = option(
        [],
        "grpo: reward functions: accuracy, format (built-in task), names from --external_plugins, module:function "
        "or file.py:function.",
        nargs="+",
    )
    reward_weights: list[float] = option(
        [], "grpo: one weight per reward (--reward_funcs, then --reward_model). Unset: 1 each.", nargs="+"
    )
    external_plugins: list[str] = option([], "grpo: Python files whose functions --reward_funcs may name.", nargs="+")

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
    reward_model: str | None = option(
        None,
        "A reward-model checkpoint (alignkit rlhf --rlhf_type rm): score the conversations of --val_dataset "
        "instead of generating; preference rows get both answers scored and the pair accuracy is reported.",
    )
    max_batch_size: int = option(8, "Prompts generated together in batch inference.")
    max_length: int = option(1024, "Longest prompt in tokens; longer prompts are skipped and counted.")
    dtype: str = dtype_option()
    device_map: str | None = inference_device_map_option()
    device_max_memory: list[str] = inference_device_max_memory_option()
    seed: int = option(42, "Sampling seed.")
    infer_backend: str = option(
        "transformers", "Generation engine: transformers, or vllm (needs the vllm package and a CUDA GPU).",
        choices=("transformers", "vllm"),
    )
    load_dataset_config: bool = option(
        False, "Take --val_dataset (or the run's held-out split), --system and --max_length from the args.json "
        "of the --ckpt_dir run, for flags not given.",
    )
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
    reward_model: str | None = option(
        None, "A reward-model checkpoint (alignkit rlhf --rlhf_type rm): it scores the greedy answers of the model "
        "and of its baseline (--ref_model, else the base without adapters) to --reward_prompts; reports the win rate.",
    )
    reward_prompts: str = option("arith-prompts:test", "Prompts answered by both models for --reward_model.")
    report_path: str | None = option(
        None, "The JSON report (never overwritten; default eval_result/<time>.json); the chart goes beside it (.png)."
    )
    dtype: str = dtype_option()
    device_map: str | None = inference_device_map_option()
    device_max_memory: list[str] = inference_device_max_memory_option()
    debug: bool = option(False, "Show full tracebacks for errors.")


@dataclass
class DemoArguments:
    output_dir: str = option("output/demo", "Where the run, the report and the chart go.")
    max_steps: int = option(50, "DPO optimizer steps.")
    rpo_alpha: float = option(0.5, "Weight of the NLL on chosen answers mixed into DPO (as ms-swift's --rpo_alpha).")
    learning_rate: float = option(5e-4, "Peak learning rate (LoRA).")
    per_device_train_batch_size: int = option(4, "Pairs per step.", aliases=("--batch_size",))
    eval_limit: int = option(100, "Held-out rows used for the before/after numbers.")
    dtype: str = dtype_option()
    debug: bool = option(False, "Show full tracebacks for errors.")


@dataclass
class ExportArguments:
    model: str | None = option(None, "Base model (default: the built-in model, or the adapter's base).",
                               aliases=("--model_id_or_path",))
    adapters: list[str] = option([], "The LoRA adapter directory to merge.", nargs="*")
    ckpt_dir: str | None = option(None, "A checkpoint of an alignkit run (adapter or full model).")
    merge_lora: bool = option(False, "Merge the adapter into the base weights and write a plain HF model.")
    quant_bits: int | None = option(
        None, "Quantise the (merged) model to 4 or 8 bits with --quant_method. Runs on CPU and GPU.", choices=(4, 8)
    )
    quant_method: str = option(
        "bnb", "bnb: bitsandbytes NF4 (4 bits) / LLM.int8 (8 bits), CPU or GPU; the result loads with "
        "transformers + bitsandbytes. (ms-swift's gptq/awq need a CUDA GPU and are not available.)",
        choices=("bnb",),
    )
    output_dir: str | None = option(
        None, "Where the model is written (default <ckpt>-merged or <ckpt>-bnb-int<bits>); never overwritten."
    )
    dtype: str = dtype_option("Saved precision: auto (the base model's), fp32, bf16, fp16.")
    debug: bool = option(False, "Show full tracebacks for errors.")


@dataclass
class DeployArguments:
    model: str | None = option(None, "Base model (default: the built-in model).", aliases=("--model_id_or_path",))
    adapters: list[str] = option(
        [], "LoRA adapters: NAME=DIR serves DIR as model NAME (several allowed); a bare DIR becomes the default "
        "model, served as --served_model_name.", nargs="*",
    )
    ckpt_dir: str | None = option(None, "A checkpoint of an alignkit run (adapter or full model), the default model.")
    served_model_name: str | None = option(
        None, "Name of the default model in /v1/models and requests (default: the model or checkpoint directory's name)."
    )
    host: str = option("127.0.0.1", "Address to listen on (0.0.0.0 exposes the server to the network).")
    port: int = option(8000, "Port to listen on.")
    api_key: str | None = option(None, "Require `Authorization: Bearer KEY` on every request.")
    max_new_tokens: int = option(512, "Most tokens per answer when a request gives no max_tokens.")
    temperature: float = option(0.0, "Temperature when a request gives none; 0 decodes greedily.")
    top_p: float = option(1.0, "Nucleus sampling mass when a request gives none.")
    max_batch_size: int = option(8, "Concurrent requests generated together in one batch.")
    allowed_local_media_path: str | None = option(
        None, "A vision-language model reads image_url parts that name local files (a path or file:// URL) only "
        "inside this directory; without it only data: and http(s):// URLs are taken.",
    )
    dtype: str = dtype_option()
    device_map: str | None = inference_device_map_option()
    device_max_memory: list[str] = inference_device_max_memory_option()
    debug: bool = option(False, "Show full tracebacks for errors.")


@dataclass
class AppArguments:
    model: str | None = option(None, "Base model (default: the built-in model).", aliases=("--model_id_or_path",))
    adapters: list[str] = option([], "LoRA adapter directories to apply.", nargs="*")
    ckpt_dir: str | None = option(None, "A checkpoint of an alignkit run (adapter or full model).")
    system: str | None = option(None, "Initial system prompt (editable in the page).")
    max_new_tokens: int = option(256, "Initial most tokens per answer (editable in the page).")
    temperature: float = option(0.0, "Initial sampling temperature; 0 decodes greedily (editable in the page).")
    top_p: float = option(1.0, "Initial nucleus sampling mass (editable in the page).")
    server_name: str = option("127.0.0.1", "Address to listen on (0.0.0.0 exposes the page to the network).")
    server_port: int = option(7860, "Port to listen on.")
    share: bool = option(False, "Also publish the page through a public Gradio share link.")
    dtype: str = dtype_option()
    device_map: str | None = inference_device_map_option()
    device_max_memory: list[str] = inference_device_max_memory_option()
    debug: bool = option(False, "Show full tracebacks for errors.")


@dataclass
class CacheArguments:
    kinds: list[str] = option(
        ["tokenized", "ref_logps"], "Caches to report (and clear): tokenized, ref_logps.", nargs="+",
    )
    clear: bool = option(False, "Delete the files of --kinds (the built-in model is never deleted).")
    older_than_days: float | None = option(None, "With --clear: delete only files last written before this many days.")
    debug: bool = option(False, "Show full tracebacks for errors.")


@dataclass
class DataArguments:
    dataset: list[str] = option([], "Datasets to inspect (same forms as for training).", nargs="+")
    model: str | None = option(
        None, "Model whose tokenizer and chat template render the rows (default: the built-in model).",
        aliases=("--model_id_or_path",),
    )
    kind: str = option(
        "auto",
        "Rows to build: auto (each file's own: preference for pairs, unpaired for KTO, ...), preference, sft, "
        "unpaired or prompt.",
        choices=("auto", "preference", "sft", "unpaired", "prompt"),
    )
    num_examples: int = option(2, "Rows shown rendered, with their trained tokens highlighted.")
    columns: str | None = option(None, "Rename columns first, as a JSON object '{\"src\": \"dst\"}'.")
    template: str | None = option(None, "Built-in chat template (chatml, llama3, qwen, default).",
                                  choices=("chatml", "llama3", "qwen", "default"))
    template_config: str | None = option(None, "ColossalChat-style template config JSON.",
                                         aliases=("--conversation_template_config",))
    system: str | None = option(None, "System prompt that replaces the data's and the template's default.")
    loss_scale: str = option("default", "Which tokens are trained (default, last_round, all).",
                             choices=("default", "last_round", "all"))
    max_length: int = option(1024, "Maximum tokens of prompt + answer.")
    max_prompt_length: int | None = option(None, "Maximum prompt tokens.")
    truncation_strategy: str = option("delete", "Rows that do not fit: delete, left, right or raise.",
                                      choices=("delete", "left", "right", "raise"))
    check_dataset_strategy: str = option("none", "Invalid rows: none/error stop; discard/warning drop and count.",
                                         choices=("none", "error", "discard", "warning"))
    data_seed: int = option(42, "Seed for #N sampling and built-in data.")
    debug: bool = option(False, "Show full tracebacks for errors.")
