"""The arguments of a training run (``alignkit sft``, ``alignkit rlhf``): every flag declared once, with its help
text and its ms-swift aliases. From Python::

    from alignkit.config import RunArguments
    args = RunArguments(rlhf_type="dpo", dataset=["arith-pref"], max_steps=20)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from alignkit.config.options import DTYPE_CHOICES, option

# ms-swift's --tuner_type values: alignkit trains all but reft (through peft; adapter, longlora's attention,
# llamapro and dummy as ms-swift builds them).
TUNER_TYPES = ("lora", "full", "adalora", "vera", "boft", "fourierft", "bone", "lora_llm", "adapter", "longlora",
               "llamapro", "dummy", "reft")
TORCH_DTYPES = ("auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16")

LOADER_HAS_NO_WORK = (
    "batches are collated in the training process from rows tokenised before training starts, so there is no "
    "loading to spread over workers or pin"
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
        "ms-swift's model registry name. Without --model, a 2.x name (llama3-8b-instruct, yi-6b-chat, ...) is the "
        "model: its Hugging Face id (`python -m alignkit.models.registry` lists them); a 3.x family name (qwen2_5) "
        "needs --model, as in ms-swift; a local path is used as --model. Beside --model it only names the family.",
        may_differ_on_resume=True,
        differs="ms-swift renders with the registry entry's template; alignkit with the model's own chat template "
        "(or --template), and downloads the Hugging Face id where ms-swift 2.x downloads the ModelScope one")
    model_revision: str | None = option(None, "Hub revision (branch, tag or commit) of --model.")
    ref_model: str | None = option(
        None,
        "Reference model for full fine-tuning (default: a frozen copy of the starting weights; "
        "with LoRA the adapter-disabled base).",
        aliases=("--ref_model_id_or_path",), applies_to=("dpo", "kto", "ppo", "grpo",))
    ref_model_type: str | None = option(
        None, "ms-swift's registry name of the reference model, resolved like --model_type for --ref_model (the "
        "same name as --model_type: the policy's starting weights).", may_differ_on_resume=True)
    adapters: list[str] = option([], "LoRA adapter directories to load on top of --model.", nargs="*")
    dtype: str = option(
        "auto", "Compute precision with fp32 weights: auto (bf16 autocast on GPUs and CPUs with native bf16, else "
        "fp32), fp32, bf16 or fp16 autocast. --torch_dtype also loads the weights in its precision.",
        choices=DTYPE_CHOICES)
    gradient_checkpointing: bool | None = option(
        None, "Recompute activations in the backward pass to save memory (--gradient_checkpointing_kwargs: its "
        "options). Unset: on with a GPU (ms-swift's default), off on CPU.", may_differ_on_resume=True,
        differs="unset, it is on with a GPU as in ms-swift but off on a CPU, where memory is rarely the limit and it "
        "only costs time (logged once)")

    # --- ms-swift's model registry and hubs (alignkit/models/registry.py) ---
    reward_model_type: str | None = option(
        None, "ms-swift's registry name of the reward model, resolved like --model_type for --reward_model "
        "(beside --reward_model it only names the family).", applies_to=("ppo", "grpo",), may_differ_on_resume=True)
    use_hf: bool = option(
        False, "ms-swift: download from the Hugging Face Hub instead of ModelScope.", may_differ_on_resume=True,
        differs="alignkit downloads models and datasets from the Hugging Face Hub whatever the value (ms-swift's "
        "default, false, downloads from ModelScope); registry names resolve to their Hugging Face ids, and a "
        "dataset that only ModelScope holds stops with its id and how to pass a local copy")

    # --- data ---
    dataset: list[str] = option(
        [],
        "Training data: built-in names (arith-sft, arith-pref, ...) or local .jsonl/.json/.csv/.parquet files, "
        "each optionally suffixed #N to sample N rows. Default: the built-in set for the algorithm.",
        nargs="+",
    )
    val_dataset: list[str] = option([], "Held-out data, same forms as --dataset.", nargs="+", may_differ_on_resume=True)
    split_dataset_ratio: float = option(
        0.0, "Fraction of --dataset held out for evaluation when --val_dataset is empty."
    )
    dataset_shuffle: bool = option(True, "Shuffle the training data each epoch.")
    data_seed: int = option(42, "Seed for dataset sampling and splitting.")
    max_length: int | None = option(
        None, "Maximum tokens of prompt + answer (ppo, grpo: of the prompt, as ms-swift; completions add "
        "--max_completion_length). Unset: the model's own limit (its config's max_position_embeddings and kin, as "
        "ms-swift), logged.")
    max_prompt_length: int | None = option(
        None, "Maximum prompt tokens (longer prompts follow --truncation_strategy)."
    )
    truncation_strategy: str = option(
        "delete",
        "Rows that do not fit: delete (drop and count), left (cut the prompt's start), right (cut the answer's "
        "end, keeping at least one trained token), raise (stop with an error naming the row). ms-swift's split "
        "(pre-training only) is refused.",
        choices=("delete", "left", "right", "raise", "split"),
    )
    system: str | None = option(
        None, "Default system prompt, or a .txt file holding it: used for rows without a system message of their own "
        "(a row's own wins), replacing the template's default. '\\n' in the text is a newline.")
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
        "last_round (only the final assistant turn), all (SFT only: every token, prompts included); then, joined "
        "by '+', ignore_empty_think (an answer's leading empty <think>...</think> is not trained) or "
        "ignore_think_prefix (nor its leading '<think>\\n'): default+ignore_empty_think. sft: ms-swift's agent "
        "weightings react, hermes, qwen, alpha_umi weigh an answer's tool-call tokens 2x (hermes: each "
        "<tool_call>...</tool_call>; react: Action/Action Input; text after Observation: untrained), alone or "
        "after a base: last_round+hermes.",
    )
    agent_template: str | None = option(
        None, "sft: how agent rows (a tools column; tool_call and tool messages, or OpenAI tool_calls) are written "
        "as text, as ms-swift's agent templates: hermes (tools in the system prompt, <tool_call> blocks, results "
        "as a user turn of <tool_response> blocks), react_en / react_zh (a ReAct system prompt; Action / Action "
        "Input, results after Observation: inside the assistant's turn, untrained; react_grpo: react_en asking for "
        "<think> reasoning first), qwen_en / qwen_zh (+_parallel: "
        "Qwen-Agent's ✿FUNCTION✿ / ✿ARGS✿ / ✿RESULT✿, likewise).",
        choices=("hermes", "react_en", "react_zh", "react_grpo", "qwen_en", "qwen_zh", "qwen_en_parallel",
                 "qwen_zh_parallel"),
        applies_to=("sft",),
        differs="alignkit has ms-swift's hermes, react_en/react_zh/react_grpo and qwen_en/qwen_zh (+_parallel), the "
        "templates its agent examples train with and their kin, and no default: ms-swift picks the model template's "
        "own (hermes for Qwen), alignkit stops at the first agent row and asks for one; the plain turns are then "
        "rendered by the model's chat template",
    )
    dataset_num_proc: int = option(1, "Processes that tokenise the data.", may_differ_on_resume=True)
    load_from_cache_file: bool = option(
        True, "Reuse tokenised data cached under $ALIGNKIT_CACHE/tokenized (keyed by data, tokenizer, template "
        "and length settings).", may_differ_on_resume=True)

    # --- data: packing, self-cognition, streaming, templates, cached data (docs/data.md) ---
    packing: bool = option(
        False,
        "Pack tokenised rows into rows of up to --packing_length tokens (ms-swift's dataset packing): fewer, fuller "
        "rows, so fewer steps per epoch; --per_device_train_batch_size counts packs. Sequences of a pack never see "
        "each other (position ids restart, block-diagonal attention). sft, dpo, cpo, simpo, orpo, rm, sft --task_type "
        "generative_reranker (a row's conversations count together); grpo: padding-free forwards.")
    packing_length: int | None = option(
        None, "Most tokens of a pack (a pair counts both answers). Unset: --max_length.")
    packing_strategy: str = option(
        "binpack", "binpack: best-fit decreasing over chunks of 1000 rows (reorders rows); sequential: rows in order, "
        "a pack closed when the next row does not fit.", choices=("binpack", "sequential"))
    packing_num_proc: int = option(
        1, "ms-swift: processes that plan the packs.",
        no_effect="packs are planned in the training process from the rows' lengths, a fraction of a second per "
        "100,000 rows")
    model_name: list[str] = option(
        [], "Self-cognition data (swift/self-cognition): the model's name replacing {{NAME}}, in Chinese and English "
        "(one value: both).", nargs="+")
    model_author: list[str] = option(
        [], "Self-cognition data: the author replacing {{AUTHOR}}, in Chinese and English (one value: both).",
        nargs="+")
    cached_dataset: list[str] = option(
        [], "Folders written by `swift export --to_cached_dataset true` (their train/ folder), each optionally "
        "suffixed #N; read as training rows before --dataset and tokenised with this run's template.", nargs="+")
    cached_val_dataset: list[str] = option(
        [], "Held-out counterparts of --cached_dataset (their val/ folder).", nargs="+", may_differ_on_resume=True)
    val_dataset_shuffle: bool = option(False, "Shuffle the --val_dataset rows (seeded by --data_seed).",
                                       may_differ_on_resume=True)
    interleave_prob: list[float] = option(
        [], "Mix the --dataset sets by sampling each next row from set i with probability p_i (datasets' "
        "interleave_datasets) instead of concatenating them; one probability per dataset.", nargs="+")
    stopping_strategy: str = option(
        "first_exhausted", "With --interleave_prob: stop when the first set runs out, or when every set has been "
        "used whole (the others repeat).", choices=("first_exhausted", "all_exhausted"))
    streaming: bool = option(
        False, "ms-swift: read rows lazily as training runs; needs --max_steps.",
        differs="alignkit still reads, checks and tokenises every row before the first step, so that a bad row stops "
        "the run before any training and resume stays exact; --max_steps is required as in ms-swift, "
        "--split_dataset_ratio is set to 0 as in ms-swift, and the order is a full shuffle of the rows")
    shuffle_buffer_size: int = option(
        1000, "ms-swift --streaming: rows drawn from a shuffle buffer of this size.",
        no_effect="the rows are read before training, so alignkit shuffles the whole set (a buffer as large as "
        "the data)")
    use_chat_template: bool = option(
        True, "false: ms-swift's generation template for base models: BOS + query + answer + EOS as plain "
        "tokens, no system prompt or chat markers, the last round only.")
    response_prefix: str | None = option(
        None, "ms-swift: text the model's answer starts with at inference (e.g. '<think>\\n').",
        no_effect="training encodes the answers as the data holds them; ms-swift applies this prefix at inference only")
    add_non_thinking_prefix: bool = option(
        True, "ms-swift: add a hybrid-thinking template's empty think block to answers without one.",
        differs="alignkit renders conversations with the tokenizer's own chat template and adds no prefix of its "
        "own: ms-swift's default (true) puts an empty think block before answers without one for hybrid-thinking "
        "templates (Qwen3), alignkit trains them as the chat template renders them, as ms-swift does with false")
    max_pixels: int | None = option(
        None, "Vision-language models: images larger than this many pixels (H*W) are scaled down, keeping their "
        "aspect ratio, before the processor sees them.")

    # --- training loop ---
    output_dir: str = option(
        "output", "Each run gets a new versioned directory below this one.", may_differ_on_resume=True
    )
    num_train_epochs: float = option(1.0, "Epochs over the training data (ignored when --max_steps > 0).")
    max_steps: int = option(-1, "Total optimizer steps; overrides --num_train_epochs when > 0.")
    per_device_train_batch_size: int = option(
        1, "Rows (pairs for preference methods) per micro-batch.", aliases=("--batch_size",)
    )
    per_device_eval_batch_size: int = option(
        4, "Rows per evaluation batch.", aliases=("--eval_batch_size",), may_differ_on_resume=True
    )
    gradient_accumulation_steps: int = option(1, "Micro-batches per optimizer step.")
    learning_rate: float = option(1e-4, "Peak learning rate.", aliases=("--lr",))
    weight_decay: float = option(0.0, "AdamW weight decay.")
    adam_beta1: float = option(0.9, "AdamW beta1.")
    adam_beta2: float = option(0.999, "AdamW beta2.")
    adam_epsilon: float = option(1e-8, "AdamW epsilon.")
    lr_scheduler_type: str = option(
        "cosine",
        "Learning-rate schedule (transformers' get_scheduler; options in --lr_scheduler_kwargs). "
        "reduce_lr_on_plateau lowers it when --metric_for_best_model stops improving at evaluations.",
        choices=("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
                 "warmup_stable_decay"),
        differs="constant with a warm-up (--warmup_steps/--warmup_ratio) warms up first (constant_with_warmup); "
        "transformers' constant ignores the warm-up, which is never what a user who set one meant")
    warmup_ratio: float = option(0.0, "Fraction of the steps spent warming up linearly from 0.")
    warmup_steps: int = option(0, "Warm-up steps (overrides --warmup_ratio when > 0).")
    max_grad_norm: float = option(
        1.0, "Clip the gradient's global norm to this (0 disables).", aliases=("--grad_clip",)
    )
    logging_steps: int = option(5, "Log metrics every N optimizer steps.", may_differ_on_resume=True)
    eval_steps: int | None = option(
        None, "Evaluate every N steps (with --eval_strategy steps; unset: --save_steps, as ms-swift).",
        may_differ_on_resume=True)
    save_steps: int = option(
        500, "Save a checkpoint every N steps (with --save_strategy steps; the last step is always saved).",
        may_differ_on_resume=True)
    save_total_limit: int | None = option(
        None, "Keep at most this many checkpoints (the newest is always kept). Unset, 0 or negative: keep every "
        "checkpoint (transformers' rule).", may_differ_on_resume=True)
    resume_from_checkpoint: str | None = option(
        None,
        "Continue a run exactly: a checkpoint directory, a run directory (its newest complete checkpoint) or "
        "'last' (the newest complete checkpoint under --output_dir). The run goes on in the checkpoint's run "
        "directory.", may_differ_on_resume=True)
    ignore_args_mismatch: bool = option(
        False,
        "Resume even though flags that change the run (data, model, learning rate, batch sizes, seed, ...) "
        "differ from the checkpoint's; the differences are logged.", may_differ_on_resume=True)
    max_nonfinite_steps: int = option(
        10,
        "Stop after this many optimizer steps in a row with a NaN/inf loss or gradient (each such update is "
        "skipped, counted and logged with its rows).", may_differ_on_resume=True)
    seed: int = option(42, "Seed for initialisation, dropout and data order.")
    report_to: list[str] = option(
        ["tensorboard"],
        "Where metrics go besides the console and logging.jsonl (accelerate's trackers): tensorboard (<run "
        "dir>/runs), wandb (project $WANDB_PROJECT, default alignkit; WANDB_MODE=offline writes <run dir>/wandb), "
        "swanlab (--swanlab_* flags), all (those installed), none.",
        nargs="+", may_differ_on_resume=True,
        differs="tensorboard, wandb and swanlab only (others are refused by name); wandb's project defaults to "
        "alignkit where ms-swift sets WANDB_PROJECT=ms-swift")
    debug: bool = option(False, "Show full tracebacks for errors.", may_differ_on_resume=True)

    # --- when to log, evaluate, save and stop; optimizer; trackers (transformers/ms-swift semantics,
    #     docs/reliability.md; alignkit/training/cadence.py, optimizers.py, trackers.py) ---
    save_strategy: str = option(
        "steps", "When checkpoints are written: steps (every --save_steps), epoch (each epoch's end), best (when "
        "--metric_for_best_model improves) or no (never, not even at the end). Except with no, the last step is "
        "always saved (as ms-swift).", choices=("steps", "epoch", "best", "no"), may_differ_on_resume=True)
    save_only_model: bool = option(
        False, "Checkpoints hold the weights (LoRA adapter or model) and tokenizer only: no optimizer, schedule or "
        "RNG state. Smaller, but not resumable: train on from one with --adapters/--model in a new run.",
        may_differ_on_resume=True)
    eval_strategy: str | None = option(
        None, "When the held-out data is evaluated: steps (every --eval_steps), epoch or no. Unset: as "
        "--save_strategy (steps for best), as ms-swift. Except with no, the last step is evaluated.",
        aliases=("--evaluation_strategy",), choices=("steps", "epoch", "no"), may_differ_on_resume=True)
    predict_with_generate: bool = option(
        False, "sft: the held-out evaluation generates an answer for each conversation's last assistant turn "
        "(greedy, up to --max_new_tokens) and scores it against that turn with ms-swift's ROUGE-1/2/L and BLEU-4 "
        "(eval_rouge-1, eval_rouge-2, eval_rouge-l, eval_bleu-4, x 100; no loss); the answers go to the run's "
        "predict.jsonl, and --metric_for_best_model defaults to rouge-l. Needs jieba, nltk and rouge "
        "(alignkit[nlg]).", applies_to=("sft",), may_differ_on_resume=True)
    max_new_tokens: int = option(
        64, "sft --predict_with_generate: most tokens generated per held-out answer.", applies_to=("sft",),
        may_differ_on_resume=True)
    logging_strategy: str = option(
        "steps", "When training metrics are logged: steps (every --logging_steps, and the last step), epoch or no "
        "(evaluation metrics are logged either way).", choices=("steps", "epoch", "no"), may_differ_on_resume=True)
    logging_first_step: bool = option(True, "Also log the first step's metrics.", may_differ_on_resume=True)
    metric_for_best_model: str | None = option(
        None, "Held-out metric that picks the best checkpoint (the eval_ prefix optional): loss, rewards/accuracies, "
        "accuracy, reward, rouge-l, ... Unset: loss (grpo: reward; ppo: none; sft --predict_with_generate: rouge-l), "
        "as ms-swift. The best checkpoint is recorded (best_model_checkpoint, best_metric in trainer_state.json and "
        "the final log line) and --save_total_limit never deletes it.", may_differ_on_resume=True)
    greater_is_better: bool | None = option(
        None, "Whether a larger --metric_for_best_model is better. Unset: false when the metric's name contains "
        "loss, else true.", may_differ_on_resume=True)
    load_best_model_at_end: bool = option(
        False, "At the end, load the best checkpoint's weights into the model (with --save_total_limit 1 only the "
        "best checkpoint is kept). Needs --eval_strategy equal to --save_strategy.", may_differ_on_resume=True)
    early_stop_interval: int | None = option(
        None, "Stop when --metric_for_best_model has not improved for this many saves in a row (ms-swift counts "
        "saves: evaluate at every save). Needs held-out data.")
    max_epochs: int | None = option(
        None, "Stop at the end of this epoch even when --num_train_epochs or --max_steps ask for more (evaluated and "
        "saved there); the learning-rate schedule still spans the full run, as ms-swift.")
    dataloader_drop_last: bool = option(
        False, "Drop each epoch's last micro-batch (over all processes) when it is short, so steps per epoch may be "
        "fewer. ppo/grpo: drop the epoch's last short rollout instead of topping it up from the epoch's start.")
    group_by_length: bool = option(
        False, "Order each epoch so that micro-batches hold rows of similar length (transformers' length-grouped "
        "order, seeded per epoch: shuffled, cut into mega-batches, each sorted longest first); a pair counts its "
        "longer answer; ppo/grpo: prompts.")
    lr_scheduler_kwargs: str | None = option(
        None, "Options of --lr_scheduler_type as a JSON object or file: '{\"min_lr\": 1e-6}' (cosine_with_min_lr), "
        "'{\"num_cycles\": 2}', '{\"num_decay_steps\": 20}' (warmup_stable_decay), '{\"factor\": 0.5}'.")
    optim: str = option(
        "adamw_torch_fused", "Optimizer by transformers' name: adamw_torch_fused (torch's fused AdamW where the "
        "device has it, else foreach), adamw_torch, adafactor, sgd, adagrad, rmsprop, and bitsandbytes' adamw_8bit, "
        "paged_adamw_8bit, paged_adamw_32bit, lion_8bit, lion_32bit, ... (paged ones page only on GPUs).")
    optim_args: str | None = option(
        None, "Optimizer options as key=value pairs, transformers' format: 'momentum=0.9,nesterov=true' (sgd), "
        "'momentum=0.9,ns_steps=5' (--optimizer muon), 'qk_clip_tau=100,momentum=0.95' (--optimizer muonclip).")
    optimizer: str | None = option(
        None, "ms-swift's optimizer plugin, before --optim: muon (torch.optim.Muon on the 2-D hidden matrices, AdamW "
        "on embeddings, LM head and 1-D parameters, as ms-swift splits them), muonclip (ms-swift's MuonClip: Muon "
        "with QK-Clip, docs/reliability.md) or default (--optim).")
    neftune_noise_alpha: float | None = option(
        None, "NEFTune: uniform noise of scale alpha/sqrt(length x hidden size) on the input embeddings in training "
        "forwards (never in evaluation or rollouts), as transformers. The paper uses 5 to 15.")
    run_name: str | None = option(
        None, "The run's name in wandb and swanlab. Unset: the run directory (ms-swift names a run by its output "
        "directory).", may_differ_on_resume=True)
    swanlab_token: str | None = option(None, "swanlab API key (else swanlab's login or SWANLAB_API_KEY).",
                                       may_differ_on_resume=True)
    swanlab_project: str | None = option(
        None, "swanlab project.", may_differ_on_resume=True,
        differs="unset: alignkit, where ms-swift uses ms-swift")
    swanlab_workspace: str | None = option(None, "swanlab workspace (unset: the API key's user).",
                                           may_differ_on_resume=True)
    swanlab_exp_name: str | None = option(None, "swanlab experiment name (unset: --run_name).",
                                          may_differ_on_resume=True)
    swanlab_mode: str = option("cloud", "swanlab mode: cloud (upload) or local (files under <run dir>/swanlog only); "
                               "swanlab's own online, offline and disabled too.",
                               choices=("cloud", "local", "online", "offline", "disabled"), may_differ_on_resume=True)
    swanlab_notification_method: str | None = option(
        None, "Notify when the run ends or fails: dingtalk, lark, email, discord, wxwork or slack (swanlab's "
        "plugins).", may_differ_on_resume=True)
    swanlab_webhook_url: str | None = option(None, "Webhook of --swanlab_notification_method.",
                                             may_differ_on_resume=True)
    swanlab_secret: str | None = option(None, "Secret of the webhook (email: the SMTP password).",
                                        may_differ_on_resume=True)
    swanlab_sender_email: str | None = option(None, "Email notification: sender.", may_differ_on_resume=True)
    swanlab_receiver_email: str | None = option(None, "Email notification: receiver.", may_differ_on_resume=True)
    swanlab_smtp_server: str | None = option(None, "Email notification: SMTP server.", may_differ_on_resume=True)
    swanlab_smtp_port: int | None = option(None, "Email notification: SMTP port.", may_differ_on_resume=True)
    swanlab_email_language: str = option("zh", "Email notification language: zh or en.", choices=("zh", "en"),
                                         may_differ_on_resume=True)
    ddp_find_unused_parameters: bool | None = option(
        None, "DDP's find_unused_parameters (accelerate's DistributedDataParallelKwargs): true when some trained "
        "parameters get no gradient in a step. Unset: DDP's default (false).", may_differ_on_resume=True)
    ddp_timeout: int = option(
        18000000, "Seconds a collective operation may wait for the other processes (accelerate's "
        "InitProcessGroupKwargs); ms-swift's default.", may_differ_on_resume=True)

    # --- distribution (see docs/distributed.md); processes come from torchrun, accelerate or NPROC_PER_NODE ---
    deepspeed: str | None = option(
        None, "DeepSpeed ZeRO through accelerate: zero0, zero1, zero2, zero3, zero2_offload, zero3_offload (configs "
        "shipped in alignkit/ds_configs) or a path to a DeepSpeed JSON config. Needs deepspeed and a GPU."
    )
    fsdp: str | bool = option(
        False, "PyTorch FSDP through accelerate (needs GPUs): true (FSDP2, one shard unit per decoder layer), fsdp2 "
        "(ms-swift's preset, with activation checkpointing), transformers' option words ('full_shard auto_wrap', "
        "shard_grad_op, offload) or ms-swift's FSDP JSON file ({\"fsdp\": ..., \"fsdp_config\": {...}}). "
        "Checkpoints are always whole safetensors (FULL_STATE_DICT).", nargs="?", const="true",
        differs="checkpoints are always gathered into whole safetensors (FULL_STATE_DICT), where ms-swift's fsdp2 "
        "preset writes sharded state dicts; hybrid_shard and no_shard are refused")
    fsdp_config: str | None = option(
        None, "With --fsdp: transformers' fsdp_config as a JSON file or object (version, reshard_after_forward, "
        "auto_wrap_policy, transformer_layer_cls_to_wrap, min_num_params, offload_params, activation_checkpointing, "
        "cpu_ram_efficient_loading, activation_cpu_offload (ms-swift's: saved activations in CPU memory), ...; the "
        "fsdp_ prefix optional).")
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
        aliases=("--device_map_config",), may_differ_on_resume=True)
    device_max_memory: list[str] = option(
        [], "Memory --device_map may use: one size per visible GPU (20GB 24GB) or a JSON object "
        "'{\"0\": \"20GB\", \"cpu\": \"64GB\"}'. Training needs every layer on a GPU; inference may offload.",
        aliases=("--max_memory",), nargs="+", may_differ_on_resume=True)

    # --- LoRA / full ---
    train_type: str = option(
        "lora",
        "What trains: lora (peft LoRA; --use_dora, --use_rslora, --init_weights), full, or peft's other adapters: "
        "adalora, vera, boft, fourierft, bone (peft's MiSS), lora_llm (vision-language models: LoRA on the language "
        "model, the vision encoder and aligner trained in full), llamapro (LLaMA-Pro: new decoder blocks, text "
        "models), dummy (the model trains as loaded: what its loader left trainable), ms-swift's adapter (a "
        "bottleneck after each decoder MLP: --adapter_length, --adapter_act) or longlora (LoRA trained with "
        "LongLoRA's shifted sparse attention on Llama, batches padded to --max_length). ms-swift's reft stops with "
        "an error (docs/performance.md, \"Memory\").",
        aliases=("--sft_type", "--tuner_type"),
        choices=TUNER_TYPES,
        differs="bone runs as peft's MiSS (peft's successor of Bone, which it no longer has); lora_llm keeps the "
        "vision encoder and aligner it trains in full inside the adapter (peft's modules_to_save, so the "
        "adapter-disabled reference keeps their starting weights) instead of a separate vit.safetensors, and on a "
        "text model is lora; llamapro saves the whole expanded model (--llamapro_num_new_blocks); adapter trains sft "
        "and the offline preference methods of text models (its reference precomputed or --ref_model); longlora "
        "runs its shifted sparse attention through transformers' attention interface on sdpa whatever --attn_impl "
        "says (ms-swift's patch of LlamaAttention no longer fits transformers 5), for sft and the offline preference "
        "methods; reft stops with an error",
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
        "peft",
        "ms-swift compatibility: LoRA always runs on peft (swift: the same adapters); unsloth stops with an error.",
        choices=("peft", "swift", "unsloth"),
        differs="swift runs peft's adapters too (ms-swift's own implementations of the same tuners); unsloth stops "
        "with an error: Unsloth's patched models are not supported",
        may_differ_on_resume=True,
    )
    # --- model loading, quantisation and peft's tuners (docs/performance.md, "Memory") ---
    torch_dtype: str | None = option(
        None, "Load the weights in this precision and compute in it: bfloat16 / bf16, float16 / fp16 (GPU), float32. "
        "Frozen weights stay in it; trained parameters (LoRA and other adapters, or every weight in full "
        "fine-tuning) and their AdamW states are held in fp32. Unset or auto: --dtype decides (fp32 weights).",
        choices=TORCH_DTYPES,
        differs="frozen weights load in it and the compute runs in it as in ms-swift, but the trained parameters "
        "are kept in fp32 (full fine-tuning too: bf16 weights lose updates below 2^-8 of their size; DeepSpeed keeps "
        "fp32 master weights the same way); float32 computes in fp32 (ms-swift turns fp16 autocast on unless "
        "--fp16 false); unset means --dtype auto (fp32 weights, bf16 autocast where native), not config.json's "
        "dtype")
    attn_impl: str | None = option(
        None, "Attention implementation the model loads with: sdpa, eager, flex_attention, flash_attn (= "
        "flash_attention_2), flash_attention_2, flash_attention_3 (flash-attn packages and a CUDA GPU). Unset: "
        "transformers' choice (sdpa). Padding-free packing needs sdpa or eager; with another the padded path runs "
        "and the log says so.", aliases=("--attn_implementation",),
        choices=("sdpa", "eager", "flex_attention", "flash_attn", "flash_attention_2", "flash_attention_3"))
    use_liger_kernel: bool = option(
        False, "Liger's Triton kernels (RMSNorm, SwiGLU, RoPE, ...) in place of the model's own modules, for the "
        "model types Liger supports (llama, mistral, qwen2/3, gemma, phi3, ... and their vision-language models); "
        "needs a CUDA GPU and the liger-kernel package, and stops with an error naming what is missing.",
        differs="the kernels replace the model's modules as in ms-swift, but Liger's fused linear cross-entropy (and "
        "TRL's fused Liger DPO / GRPO losses) are not used: alignkit's losses take per-token log-probs from the "
        "logits; a model type Liger has no kernels for stops with an error (ms-swift then trains without them)")
    experts_impl: str | None = option(
        None, "Mixture-of-experts models: how the experts run (transformers' experts_implementation): grouped_mm, "
        "batched_mm, eager. A dense model logs once that it has no effect.",
        choices=("grouped_mm", "batched_mm", "eager"))
    router_aux_loss_coef: float = option(
        0.0, "Mixture-of-experts models: weight of the router's load-balancing loss (the model's aux_loss) added "
        "to the training loss. A dense model logs once that it has no effect.",
        differs="added to the offline methods' loss (sft, dpo, kto, ...); ppo and grpo with a mixture-of-experts "
        "model stop with an error instead of leaving it out")
    enable_dft_loss: bool = option(
        False, "sft: Dynamic Fine-Tuning (arXiv 2508.05629): each trained token's cross-entropy weighted by the "
        "model's probability of that token, held constant (no gradient through the weight), averaged over the "
        "trained tokens as ms-swift does.", applies_to=("sft",))
    rope_scaling: str | None = option(
        None, "RoPE scaling written into the model's config: linear, dynamic or yarn (the factor from "
        "--max_model_len over the model's max_position_embeddings), or a JSON object such as "
        "'{\"rope_type\": \"yarn\", \"factor\": 2.0}'.")
    max_model_len: int | None = option(
        None, "The model's context length: overrides max_position_embeddings in its config (with --rope_scaling "
        "linear|dynamic|yarn it sets the scaling factor).")
    new_special_tokens: list[str] = option(
        [], "Special tokens added to the tokenizer (or .txt files, one token per whitespace-separated word); the "
        "embeddings grow to a multiple of 128. With an adapter, --modules_to_save embed_tokens (lm_head) trains them.",
        nargs="+", differs="with an adapter it needs --modules_to_save embed_tokens (as ms-swift's own example "
        "passes): otherwise the new tokens' embeddings would stay random and be lost with the adapter")
    gradient_checkpointing_kwargs: str | None = option(
        None, "JSON object passed to gradient_checkpointing_enable, e.g. '{\"use_reentrant\": true}' (default "
        "{\"use_reentrant\": false}).", may_differ_on_resume=True)
    vit_gradient_checkpointing: bool | None = option(
        None, "Vision-language models: gradient checkpointing in the vision encoder. Unset: --gradient_checkpointing. "
        "A text model logs once that it has no effect.", may_differ_on_resume=True)
    vit_lr: float | None = option(
        None, "Vision-language models: learning rate of the vision encoder's trained parameters (default "
        "--learning_rate). A text model logs once that it has no effect.")
    aligner_lr: float | None = option(
        None, "Vision-language models: learning rate of the aligner's trained parameters (default --learning_rate). "
        "A text model logs once that it has no effect.")
    quant_method: str | None = option(
        None, "Quantise the base model for QLoRA: bnb (bitsandbytes, as it loads) or hqq (HQQ, after loading; "
        "CPU or GPU both). eetq, quanto and fp8 stop with an error.", choices=("bnb", "hqq", "eetq", "quanto", "fp8"),
        differs="bnb and hqq: eetq, quanto and fp8 stop with an error naming them")
    quant_bits: int | None = option(
        None, "Bits of --quant_method: bnb 4 (NF4 / FP4) or 8 (LLM.int8); hqq 1, 2, 3, 4 or 8. Without "
        "--quant_method the model loads unquantised (as in ms-swift) and the log says so.", choices=(1, 2, 3, 4, 8))
    hqq_axis: int | None = option(
        None, "--quant_method hqq: the axis the weights are grouped along (0 or 1; unset: 1, as transformers' "
        "HqqConfig).", choices=(0, 1))
    quantization_bit: int = option(
        0, "ms-swift 2.x's QLoRA flag: 4 or 8 loads the base quantised by bitsandbytes, the same as --quant_method "
        "bnb --quant_bits N (0: unquantised).", choices=(0, 4, 8))
    bnb_4bit_compute_dtype: str | None = option(
        None, "4-bit bnb: precision of the matmuls. Unset: bfloat16 with --torch_dtype bfloat16, else float32.",
        choices=("float32", "bfloat16", "float16", "fp32", "bf16", "fp16"))
    bnb_4bit_quant_type: str = option("nf4", "4-bit bnb: the 4-bit data type.", choices=("nf4", "fp4"))
    bnb_4bit_use_double_quant: bool = option(True, "4-bit bnb: quantise the quantisation constants too.")
    bnb_4bit_quant_storage: str | None = option(
        None, "4-bit bnb: the dtype the packed 4-bit weights are stored in (e.g. bfloat16 for FSDP). Unset: uint8.",
        choices=("uint8", "float32", "bfloat16", "float16"))
    use_dora: bool = option(False, "LoRA: DoRA (weight-decomposed LoRA: a trained magnitude per output feature).")
    use_rslora: bool = option(False, "LoRA: rank-stabilised scaling alpha / sqrt(r) instead of alpha / r.")
    init_weights: str = option(
        "true", "Adapter initialisation as peft takes it. LoRA: true (B = 0), false (random), gaussian, pissa, "
        "olora, loftq, orthogonal, lora-ga (from the gradient: --lora_ga_*); bone: true, false, bat. "
        "pissa/olora/loftq/lora-ga rewrite the base weights (peft recomputes them when it loads the adapter; a "
        "LoRA-GA checkpoint is saved converted): a live adapter-disabled reference is refused.",
        differs="pissa_niter_N stops with an error (peft draws its randomised SVD again when the adapter loads, so a "
        "checkpoint would not reload to the trained model), as do eva and corda; loftq quantises to "
        "--quant_bits (default 4) and, as peft computes it, needs a CUDA GPU; lora-ga (sft only) uses --lora_rank, "
        "--lora_alpha and the target modules (ms-swift's lora_ga package takes rank 8, alpha 8, every linear "
        "layer), and its checkpoint holds the converted rank-2r adapter ms-swift writes to converted/default")
    lora_ga_batch_size: int = option(2, "LoRA-GA: rows per batch of the gradient estimate.")
    lora_ga_iters: int = option(2, "LoRA-GA: batches the gradient is averaged over (the training set's first "
                                "rows, in order).")
    lora_ga_max_length: int = option(1024, "LoRA-GA: rows are cut to this many tokens for the gradient estimate.")
    lora_ga_direction: str = option(
        "ArB2r", "LoRA-GA: which of the gradient's first 2r singular vectors A and B take (ArB2r: A the first r, B "
        "the next r).", choices=("ArBr", "A2rBr", "ArB2r", "random"))
    lora_ga_scale: str = option(
        "stable", "LoRA-GA: scale of A and B: stable (x out^(1/4) / sqrt(gamma)), gd (/ alpha/r), unit, weightS "
        "(the weight's own singular values).", choices=("gd", "unit", "stable", "weightS"))
    lora_ga_stable_gamma: float = option(16, "LoRA-GA: gamma of the stable scale.")
    lorap_lr_ratio: float | None = option(
        None, "LoRA+: the B matrices (and 1-D trained parameters) learn at --learning_rate x this ratio, LoRA "
        "embeddings at 1e-6 (ms-swift's and peft's LoRA+ groups). Unset: off.")
    modules_to_save: list[str] = option(
        [], "Modules trained in full beside the adapter and saved in it, e.g. embed_tokens lm_head; all-embedding "
        "and all-norm name every embedding / norm layer.", nargs="+")
    lora_bias: str = option("none", "LoRA: biases that train too, as peft's bias: all (every bias of the model) "
                            "or lora_only (the adapted layers').", choices=("none", "all", "lora_only"),
                            differs="lora_only (peft's, ColossalChat's lora_train_bias lora) is an alignkit addition")
    lora_dtype: str | None = option(
        None, "Precision of the LoRA weights. Unset: fp32 (peft's default, whatever the base's precision).",
        choices=("float32", "bfloat16", "float16"))
    target_regex: str | None = option(
        None, "Modules to adapt, as one regular expression matched against full module names (replaces "
        "--lora_target_modules).")
    adalora_target_r: int = option(8, "adalora: average rank the budget is pruned to.")
    adalora_init_r: int = option(12, "adalora: initial rank of each adapted layer.")
    adalora_tinit: int = option(0, "adalora: steps of warm-up before ranks are pruned.")
    adalora_tfinal: int = option(0, "adalora: final steps that train with the budget fixed.")
    adalora_deltaT: int = option(1, "adalora: steps between two budget allocations.")
    adalora_beta1: float = option(0.85, "adalora: EMA factor of the importance sensitivity.")
    adalora_beta2: float = option(0.85, "adalora: EMA factor of the importance uncertainty.")
    adalora_orth_reg_weight: float = option(
        0.5, "adalora: weight of the orthogonality regulariser of P and Q added to the loss.")
    vera_rank: int = option(256, "vera: rank of the shared random projections.")
    vera_projection_prng_key: int = option(0, "vera: seed of the shared random projections.")
    vera_dropout: float = option(0.0, "vera: dropout on the adapter's input.")
    vera_d_initial: float = option(0.1, "vera: initial value of the trained d vector.")
    boft_block_size: int = option(4, "boft: block size of the orthogonal butterfly factors.")
    boft_block_num: int = option(0, "boft: number of blocks (set this or --boft_block_size).")
    boft_n_butterfly_factor: int = option(1, "boft: number of butterfly factors.")
    boft_dropout: float = option(0.0, "boft: multiplicative dropout on the blocks.")
    fourier_n_frequency: int = option(2000, "fourierft: spectral coefficients trained per layer.")
    fourier_scaling: float = option(300.0, "fourierft: scaling of the spectral update.")
    adapter_length: int = option(128, "adapter: width of the bottleneck (hidden -> length -> hidden).")
    adapter_act: str = option("gelu", "adapter: the bottleneck's activation (a transformers activation name).")
    reft_rank: int = option(
        4, "bone: the rank r of its blocks (ms-swift reads bone's rank from this flag; ReFT itself is not "
        "supported).")
    # --- vision-language models (docs/vision.md) ---
    freeze_vit: bool = option(True, "Vision-language models: keep the vision encoder frozen (full training and "
                              "LoRA ALL/all-linear targets).")
    freeze_aligner: bool = option(True, "Vision-language models: keep the aligner (projector between vision "
                                  "encoder and language model) frozen (full training and LoRA ALL targets).")
    freeze_llm: bool = option(False, "Vision-language models: keep the language model frozen (full training and "
                              "LoRA targets).")
    check_speedups: bool = option(
        True,
        "With --padding_free: the first packed batch also runs padded (one extra forward) and the log-probs are "
        "compared; past the dtype's rounding the run says by how much on which architecture and uses padded "
        "batches (docs/performance.md).")

    # --- preference objectives (docs/objectives.md gives every formula) ---
    rlhf_type: str = option(
        "dpo",
        "Algorithm: dpo, cpo, simpo, orpo, kto (unpaired rows with a label), rm (reward model: a scalar head "
        "trained on pairs); ppo or grpo (online RL on prompts, docs/online.md); gkd (on-policy distillation from "
        "--teacher_model on conversations, docs/online.md).",
        choices=("dpo", "cpo", "simpo", "orpo", "kto", "rm", "ppo", "grpo", "gkd"),
    )
    beta: float | None = option(
        None,
        "Strength beta (ORPO: the paper's lambda). Unset: the algorithm's default from the table DEFAULT_BETA in "
        "alignkit/config/defaults.py (0.1; simpo 2.0; grpo 0.04; gkd 0.5: the JSD's mixture weight), logged when "
        "applied. Not used by rm, nor by ppo (its KL weight is --kl_coef).",
        applies_to=("dpo", "cpo", "simpo", "orpo", "kto", "grpo", "gkd",))
    loss_type: list[str] = option(
        [],
        "Loss variant(s). dpo: one or several of sigmoid, hinge, ipo, exo_pair, nca_pair, robust, bco_pair, "
        "sppo_hard, aot, aot_unpaired (aot_pair), apo_zero, apo_down, discopop, sft, sigmoid_norm (summed with "
        "--loss_weights); cpo: sigmoid, hinge, ipo, simpo; kto: kto, apo_zero_unpaired; rm: log_sig, log_exp, "
        "hinge; grpo: grpo, bnpo, dr_grpo, dapo, cispo, sapo (docs/objectives.md); sft: cross_entropy (its only "
        "loss; ms-swift 3.x's loss_scale, cross-entropy weighted by --loss_scale, is the same here); sft "
        "--task_type embedding: infonce, cosine_similarity, contrastive, online_contrastive; "
        "reranker/generative_reranker: pointwise_reranker, listwise_reranker. Unset: sigmoid (dpo, cpo), kto (kto), "
        "log_sig (rm), grpo (grpo). simpo and orpo take none.",
        nargs="+", applies_to=("sft", "dpo", "cpo", "kto", "rm", "grpo",))
    loss_weights: list[float] = option(
        [],
        "dpo: one weight per --loss_type, the loss being their weighted sum (MPO). Unset: 1 each.",
        nargs="+",
        applies_to=("dpo",),
    )
    loss_convention: str = option(
        "swift",
        "Where ms-swift (TRL 0.x) and TRL 1.x disagree. swift (default, so ms-swift command lines keep their "
        "meaning): sigmoid with --label_smoothing is cDPO, exo_pair with label_smoothing 0 uses 1e-3, bco_pair "
        "shifts by a running mean of the rewards, --f_alpha_divergence_coef is the f-DPO paper's alpha. trl1: "
        "TRL 1.x (smoothing ignored by sigmoid, exo_pair needs it, no bco shift, coef means 1 - alpha).",
        choices=("swift", "trl1"), applies_to=("dpo",))
    rpo_alpha: float | None = option(
        None, "dpo: weight of the NLL (SFT) loss on chosen answers added to DPO (RPO). Unset: off.", applies_to=("dpo",)
    )
    label_smoothing: float = option(
        0.0,
        "epsilon, the assumed probability that a pair's label is flipped: dpo sigmoid (cDPO), robust, exo_pair, "
        "aot, aot_unpaired; cpo sigmoid; simpo.", applies_to=("dpo", "cpo", "simpo",))
    reference_free: bool = option(
        False, "dpo: compare against a uniform reference (log-probs 0), no reference model.", applies_to=("dpo",)
    )
    ld_alpha: float | None = option(
        None,
        "dpo: LD-DPO, weight in [0, 1] of the tokens beyond the shorter answer of each pair in the sequence "
        "log-probs (policy and reference). Unset: off (1.0 is plain DPO).", applies_to=("dpo",))
    discopop_tau: float = option(
        0.05, "dpo discopop: temperature tau of the logistic/exponential mixing.", applies_to=("dpo",)
    )
    f_divergence_type: str = option(
        "reverse_kl",
        "dpo: the divergence regularising the policy (f-DPO); not reverse_kl only with sigmoid, sigmoid_norm, "
        "hinge, ipo, exo_pair, robust, discopop, sft.",
        choices=("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"), applies_to=("dpo",))
    f_alpha_divergence_coef: float = option(
        1.0, "dpo: alpha of --f_divergence_type alpha_divergence (meaning per --loss_convention).", applies_to=("dpo",))
    cpo_alpha: float = option(
        1.0,
        "cpo, simpo: weight of the NLL on chosen answers (0 for pure SimPO, as in the SimPO paper).",
        applies_to=(
            "cpo",
            "simpo",
        ),
    )
    simpo_gamma: float = option(
        1.0,
        "simpo: target reward margin gamma (ms-swift's default 1.0).",
        applies_to=(
            "simpo",
            "cpo",
        ),
    )
    desirable_weight: float = option(1.0, "kto: lambda_D, weight of the losses of desirable rows.", applies_to=("kto",))
    undesirable_weight: float = option(
        1.0, "kto: lambda_U, weight of the losses of undesirable rows.", applies_to=("kto",)
    )
    center_rewards_coefficient: float | None = option(
        None,
        "rm: weight c of c*(r_chosen + r_rejected)^2, which keeps rewards centred on 0. Unset: off.",
        applies_to=("rm",),
    )

    # --- speed-ups (exact: the same numbers as the plain padded path; see docs/performance.md) ---
    padding_free: bool = option(
        True,
        "Batches run without padding: sequences packed into rows, position ids restarting per sequence, no "
        "attention across sequences. Every method (ppo/grpo: the completion log-probs); not rows with images. "
        "Needs sdpa, eager, flex or flash attention (else the padded path runs, with a warning); on a GPU, long "
        "rows run on flex_attention's block masks or flash attention's varlen kernels (docs/performance.md).",
    )
    prefix_sharing: bool = option(
        True,
        "With --padding_free: sequences that begin alike (a pair's prompt, a shared system prompt) run their "
        "common prefix once, a mask keeping each answer from seeing the others (not with flash attention, which "
        "takes no mask).",
    )
    precompute_ref_log_probs: bool = option(
        True,
        "dpo, kto: compute the reference log-probs of the rows the run will see once before training, cached on "
        "disk under a key of the reference weights, data, template, --max_length and precision; no reference "
        "model is kept. Not for vision-language models.", applies_to=("dpo", "kto",))

    # --- uploading the trained model (transformers' / ms-swift's hub flags) ---
    push_to_hub: bool = option(
        False, "After training, upload the last checkpoint (the best one with --load_best_model_at_end) to the "
        "Hugging Face Hub repository --hub_model_id (created if missing).", may_differ_on_resume=True,
        differs="one upload when training ends (ms-swift/transformers also push at each save, --hub_strategy)")
    hub_model_id: str | None = option(None, "--push_to_hub: the repository, e.g. me/my-model.",
                                      may_differ_on_resume=True)
    hub_token: str | None = option(None, "--push_to_hub: the token (default: huggingface_hub's login / $HF_TOKEN).",
                                   may_differ_on_resume=True)
    hub_private_repo: bool = option(False, "--push_to_hub: create the repository private.", may_differ_on_resume=True)
    hub_strategy: str = option(
        "end", "When --push_to_hub uploads: end (alignkit's only one; every_save, checkpoint and all_checkpoints "
        "stop with an error).", choices=("end", "every_save", "checkpoint", "all_checkpoints"),
        may_differ_on_resume=True)

    # --- ms-swift flags with no effect here, accepted so existing scripts run ---
    check_model_is_latest: bool = option(
        True, "ms-swift compatibility (no effect: alignkit never checks hubs).", may_differ_on_resume=True)
    check_model: bool = option(
        True, "ms-swift: compare the local model's files with its ModelScope hub copy and warn when they differ.",
        no_effect="alignkit never contacts a hub about a model it has loaded; the weights are used as they are on "
        "disk")

    # --- online RL: ppo, grpo (docs/online.md). A "step" is one rollout and the updates on it. ---
    reward_model: list[str] = option(
        [],
        "ppo: the reward model, a checkpoint of `alignkit rlhf --rlhf_type rm` or a sequence-classification model "
        "with one label (ms-swift's rm output); "
        "its copy becomes the value model. grpo: reward models scored besides --reward_funcs.",
        aliases=("--reward_model_id_or_path",), nargs="+", applies_to=("ppo", "grpo",))
    value_model: str | None = option(
        None, "ppo: where the value model starts: a reward-model checkpoint (its head too; ColossalChat's critic "
        "checkpoints) or a model (its backbone with a new head, as ColossalChat's Critic(--rm_pretrain)). Unset: a "
        "copy of --reward_model, as ms-swift; with --reward_funcs alone, --model's backbone with a new head. Its "
        "tokenizer must be the policy's.", applies_to=("ppo",),
        differs="an alignkit addition (ms-swift's value model is always a copy of --reward_model); the ColossalChat "
        "front-end sets it from --critic_checkpoint_path / --rm_pretrain")
    reward_adapters: list[str] = option(
        [],
        "LoRA adapters merged into --reward_model.",
        nargs="*",
        applies_to=(
            "ppo",
            "grpo",
        ),
    )
    max_completion_length: int = option(
        512,
        "ppo, grpo, gkd: most tokens sampled per completion. --response_length is ms-swift's older spelling (its "
        "PPO examples use it); when both are given, the later one on the command line counts.",
        aliases=("--response_length",),
        applies_to=("ppo", "grpo", "gkd",),
    )
    temperature: float = option(
        0.9,
        "ppo, grpo: sampling temperature of rollouts (log-probs are taken at the same temperature). gkd: the "
        "sampling temperature and the one both distributions of the JSD are softened by.",
        applies_to=("ppo", "grpo", "gkd",),
    )
    final_temperature: float | None = option(
        None,
        "ppo, grpo: anneal the rollout temperature from --temperature to this one (ColossalChat's GRPO "
        "AnnealingScheduler): after s optimizer steps it is --temperature while s <= --temperature_hold_steps, this "
        "one from s >= --temperature_annealing_steps, and --temperature - (s / --temperature_annealing_steps) x "
        "(--temperature - this one) between. Unset: a fixed --temperature.",
        applies_to=("ppo", "grpo",))
    temperature_hold_steps: int = option(
        0, "ppo, grpo with --final_temperature: optimizer steps during which --temperature is kept.",
        applies_to=("ppo", "grpo",))
    temperature_annealing_steps: int | None = option(
        None, "ppo, grpo with --final_temperature: the optimizer step from which --final_temperature is used "
        "(required with it).", applies_to=("ppo", "grpo",))
    missing_eos_penalty: float | None = option(
        None,
        "ppo, grpo: subtracted from the reward of completions cut at --max_completion_length.",
        applies_to=(
            "ppo",
            "grpo",
        ),
    )
    local_rollout_forward_batch_size: int = option(
        64, "ppo, grpo: sequences per generation and per no-grad forward in rollouts.", applies_to=("ppo", "grpo",))
    num_mini_batches: int = option(
        1,
        "ppo, grpo: optimizer steps per pass over a rollout.",
        applies_to=(
            "ppo",
            "grpo",
        ),
    )
    experience_batch_size: int | None = option(
        None,
        "ppo, grpo (ColossalChat): prompts per collect step. Unset: --per_device_train_batch_size x "
        "--gradient_accumulation_steps x --num_mini_batches completions (TRL), divided by --num_generations.",
        applies_to=(
            "ppo",
            "grpo",
        ),
    )
    num_collect_steps: int = option(
        1,
        "ppo, grpo (ColossalChat): rollouts of --experience_batch_size prompts per step.",
        applies_to=(
            "ppo",
            "grpo",
        ),
    )
    train_batch_size: int | None = option(
        None,
        "ppo, grpo (ColossalChat): completions per optimizer step (overrides --num_mini_batches).",
        applies_to=(
            "ppo",
            "grpo",
        ),
    )
    num_episodes: int | None = option(
        None,
        "ppo, grpo (ColossalChat): number of steps (rollout + updates); the same as --max_steps.",
        applies_to=(
            "ppo",
            "grpo",
        ),
    )
    use_vllm: bool = option(
        False,
        "ppo, grpo, gkd (the student's samples): sample with vLLM on the GPU, weights synced after each update.",
        applies_to=("ppo", "grpo", "gkd",),
    )
    vllm_gpu_memory_utilization: float = option(
        0.9,
        "Share of GPU memory vLLM may take with --use_vllm (each process's colocated engine: several processes on "
        "one GPU each take this share).",
        applies_to=("ppo", "grpo", "gkd",),
    )
    num_ppo_epochs: int = option(4, "ppo: passes over each rollout.", applies_to=("ppo",))
    kl_coef: float = option(0.05, "ppo: weight of the per-token KL penalty in the reward.", applies_to=("ppo",))
    cliprange: float = option(0.2, "ppo: clip range of the policy ratio.", applies_to=("ppo",))
    vf_coef: float = option(0.1, "ppo: weight of the value loss.", applies_to=("ppo",))
    cliprange_value: float = option(0.2, "ppo: clip range of the value update.", applies_to=("ppo",))
    gamma: float = option(1.0, "ppo: discount factor.", applies_to=("ppo",))
    lam: float = option(0.95, "ppo: GAE lambda.", applies_to=("ppo",))
    whiten_rewards: bool = option(
        False, "ppo: whiten the per-token rewards (scale only) before GAE.", applies_to=("ppo",)
    )
    pretrain_dataset: list[str] = option(
        [],
        "ppo (ColossalChat ptx): SFT data whose LM loss is mixed into the policy loss.",
        nargs="+",
        applies_to=("ppo",),
    )
    ptx_coef: float = option(
        0.0, "ppo: p in the policy loss (1 - p)*PPO + p*LM loss on --pretrain_dataset.", applies_to=("ppo",)
    )
    num_generations: int = option(8, "grpo: completions sampled per prompt (a group).", applies_to=("grpo",))
    num_iterations: int = option(1, "grpo: passes over each rollout.", applies_to=("grpo",))
    scale_rewards: str | None = option(
        None,
        "grpo: divide advantages by the std of the group, of the batch, or none (Dr. GRPO); true = group, "
        "false = none. Unset: group for --advantage_estimator grpo, none for rloo, batch for reinforce_plus_plus "
        "(ms-swift).",
        choices=("group", "batch", "none", "true", "false"),
        applies_to=("grpo",),
    )
    epsilon: float = option(0.2, "grpo: clip range of the policy ratio.", applies_to=("grpo",))
    epsilon_high: float | None = option(
        None, "grpo: upper clip range (DAPO's clip-higher). Unset: --epsilon.", applies_to=("grpo",)
    )
    reward_funcs: list[str] = option(
        [],
        "grpo: reward functions: accuracy, format (built-in task), ColossalChat's gsm8k_reward_fn and "
        "math_competition_reward_fn, names from --external_plugins, module:function or file.py:function. ppo: the "
        "same, scoring instead of --reward_model (ColossalChat's verifiable rewards; the value model then starts "
        "from --value_model).",
        nargs="+", applies_to=("grpo", "ppo"))
    reward_weights: list[float] = option(
        [],
        "grpo, ppo: one weight per reward (--reward_funcs, then --reward_model). Unset: 1 each.",
        nargs="+",
        applies_to=("grpo", "ppo"),
    )
    external_plugins: list[str] = option(
        [], "grpo, ppo: Python files whose functions --reward_funcs may name, or ms-swift reward plugin files "
        "(classes subclassing ORM registered in orms; `from swift.rewards import ORM, orms` works without ms-swift).",
        nargs="+", applies_to=("grpo", "ppo"))
    # --- online RL: ms-swift's GRPO family (docs/online.md, docs/objectives.md) ---
    steps_per_generation: int | None = option(
        None,
        "grpo: micro-batches (of --per_device_train_batch_size completions) each generation serves, as ms-swift: "
        "a generation samples per_device_train_batch_size x processes x steps_per_generation completions, one "
        "optimizer step per --gradient_accumulation_steps of them. Unset: --gradient_accumulation_steps.",
        applies_to=("grpo",))
    generation_batch_size: int | None = option(
        None,
        "grpo: completions per generation over all processes (ms-swift); the other way to say "
        "--steps_per_generation (it must be per_device_train_batch_size x processes x steps_per_generation).",
        applies_to=("grpo",))
    advantage_estimator: str = option(
        "grpo",
        "grpo: the advantage: grpo (reward - group mean), rloo (leave-one-out: reward - mean of the other "
        "completions of the prompt), reinforce_plus_plus (reward - group mean, scaled by the batch's std of the "
        "advantages). Sets the defaults of --scale_rewards and --kl_in_reward, as ms-swift.",
        choices=("grpo", "rloo", "reinforce_plus_plus"), applies_to=("grpo",))
    kl_in_reward: bool | None = option(
        None,
        "grpo: take beta x KL(pi_old || pi_ref) (summed over the completion's tokens) off the reward before "
        "advantages instead of adding beta x KL to the loss. Unset: false for --advantage_estimator grpo, true "
        "for rloo and reinforce_plus_plus (ms-swift).", applies_to=("grpo",))
    kl_reward_reduction: str = option(
        "sum",
        "grpo with --kl_in_reward: a completion's KL is the sum of its tokens' log pi_old - log pi_ref (ms-swift) "
        "or their mean (ColossalChat's GRPO, whose --kl_coef is then --beta).",
        choices=("sum", "mean"), applies_to=("grpo",))
    importance_sampling_level: str = option(
        "token",
        "grpo: the importance ratio: token (per token), sequence (GSPO: the geometric mean of the token ratios of "
        "the completion), sequence_token (GSPO-token: that value, each token's own gradient).",
        choices=("token", "sequence", "sequence_token"), applies_to=("grpo",))
    delta: float | None = option(
        None,
        "grpo: two-sided clipping (INTELLECT-2): the unclipped ratio is capped at delta (recommended > 1 + "
        "--epsilon). Unset: off.", applies_to=("grpo",))
    tau_pos: float = option(
        1.0, "grpo --loss_type sapo: temperature of the soft gate for positive advantages.", applies_to=("grpo",))
    tau_neg: float = option(
        1.05, "grpo --loss_type sapo: temperature of the soft gate for negative advantages.", applies_to=("grpo",))
    dynamic_sample: bool = option(
        False,
        "grpo (DAPO): replace the groups whose rewards are all equal (no learning signal) with groups of fresh "
        "training prompts, up to --max_resample_times extra generations per step.", applies_to=("grpo",))
    max_resample_times: int = option(
        3, "grpo --dynamic_sample: most extra generations per step.", applies_to=("grpo",))
    multi_turn_scheduler: str | None = option(
        None, "grpo: multi-turn rollouts driven by this ms-swift scheduler (math_tip_trick, or one a "
        "--external_plugins file registers in multi_turns): after each answer its check_finished() ends the "
        "conversation or its "
        "step() adds the environment's turn; only the model's tokens are trained (docs/online.md).",
        applies_to=("grpo",))
    max_turns: int | None = option(
        None, "grpo --multi_turn_scheduler: most model turns per trajectory. Unset: until the scheduler ends it.",
        applies_to=("grpo",))
    use_gym_env: bool | None = option(
        None, "grpo with --multi_turn_scheduler gym_scheduler: each trajectory's environment's summed step rewards "
        "(rollout_infos total_reward) are a reward column, 'gym_reward', after --reward_funcs and --reward_model "
        "(--reward_weights counts it); with none of those, the only reward. Unset: on when --gym_env is given (or "
        "the rollout server announces it).", applies_to=("grpo",))
    gym_env: str | None = option(
        None, "grpo --use_gym_env: the environment of rows without env_config.name (math_env, or one a "
        "--external_plugins file registers in envs).", applies_to=("grpo",))
    vllm_server_pass_dataset: bool = option(
        False, "ms-swift: send each row's columns to the rollout server's multi-turn scheduler.",
        no_effect="the trainer drives the multi-turn scheduler (its own --multi_turn_scheduler or the one the "
        "rollout server announces) and hands it each row's columns (data_dict) itself; the server samples turns")
    overlong_filter: bool = option(
        False, "grpo (DAPO): completions cut at --max_completion_length (no stop token) carry no loss.",
        applies_to=("grpo",))
    top_entropy_quantile: float = option(
        1.0,
        "grpo: only the tokens whose entropy is in this top quantile of the batch carry the policy loss "
        "(Beyond the 80/20 rule; 0.2 in the paper). 1.0: all tokens.", applies_to=("grpo",))
    log_entropy: bool = option(
        False, "grpo: log the mean, max and min of the completions' mean token entropy per step.",
        applies_to=("grpo",))
    cosine_min_len_value_wrong: float = option(
        -0.5, "grpo --reward_funcs cosine: reward of a wrong answer of length 0.", applies_to=("grpo",))
    cosine_max_len_value_wrong: float = option(
        0.0, "grpo --reward_funcs cosine: reward of a wrong answer of length --cosine_max_len.", applies_to=("grpo",))
    cosine_min_len_value_correct: float = option(
        1.0, "grpo --reward_funcs cosine: reward of a correct answer of length 0.", applies_to=("grpo",))
    cosine_max_len_value_correct: float = option(
        0.5, "grpo --reward_funcs cosine: reward of a correct answer of length --cosine_max_len.",
        applies_to=("grpo",))
    cosine_max_len: int | None = option(
        None, "grpo --reward_funcs cosine: L_max in tokens. Unset: --max_completion_length.", applies_to=("grpo",))
    repetition_n_grams: int = option(
        3, "grpo --reward_funcs repetition: n of the word n-grams counted.", applies_to=("grpo",))
    repetition_max_penalty: float = option(
        -1.0, "grpo --reward_funcs repetition: the reward when every n-gram is a repeat.", applies_to=("grpo",))
    soft_max_length: int | None = option(
        None, "grpo --reward_funcs soft_overlong: L_max in tokens. Unset: --max_completion_length.",
        applies_to=("grpo",))
    soft_cache_length: int | None = option(
        None, "grpo --reward_funcs soft_overlong: L_cache, the length before L_max over which the penalty grows "
        "from 0 to -1 (required by soft_overlong).", applies_to=("grpo",))
    top_k: int = option(
        -1, "ppo, grpo: sample from the k most likely tokens only; -1 or 0: no limit (log-probs in the loss are the "
        "full tempered softmax's, as ms-swift and TRL).", applies_to=("ppo", "grpo",))
    top_p: float = option(
        1.0, "ppo, grpo: sample from the smallest set of tokens whose probability reaches top_p (nucleus).",
        applies_to=("ppo", "grpo",))
    min_p: float = option(
        0.0, "ppo, grpo: drop tokens less likely than min_p x the most likely token's probability.",
        applies_to=("ppo", "grpo",))
    repetition_penalty: float = option(
        1.0, "ppo, grpo: transformers' repetition penalty in rollouts (1.0: none).", applies_to=("ppo", "grpo",))
    stop_words: list[str] = option(
        [], "ppo, grpo: strings that end a completion (kept in it, like a stop token).", nargs="+",
        applies_to=("ppo", "grpo",))
    enable_thinking: bool | None = option(
        None,
        "ppo, grpo: the chat template's thinking switch (Qwen3-style templates read enable_thinking) when rendering "
        "prompts. Unset: the template's default.", applies_to=("ppo", "grpo",),
        differs="ms-swift's template flag applies to every command; here it reaches the ppo/grpo prompts only")
    log_completions: bool = option(
        False, "grpo: log the sampled completions.", applies_to=("grpo",),
        no_effect="alignkit always writes every step's completions, rewards and advantages to completions.jsonl in "
        "the run directory and shows one on the console")
    vllm_mode: str | None = option(
        None,
        "ppo, grpo, gkd with --use_vllm: colocate (a vLLM engine in every training process, or one per group of "
        "--vllm_tensor_parallel_size processes; also what --use_vllm alone means here, where ms-swift asks for a "
        "mode) or server (rollouts from an `alignkit rollout` server, "
        "TRL's vLLM server, through TRL's VLLMClient; weights pushed after each update).",
        choices=("colocate", "server"), applies_to=("ppo", "grpo", "gkd",))
    vllm_max_model_len: int | None = option(
        None, "ppo, grpo, gkd with --use_vllm: vLLM's context length. Unset: the longest prompt allowed (gkd: "
        "--max_length) + --max_completion_length.", applies_to=("ppo", "grpo", "gkd",))
    vllm_tensor_parallel_size: int = option(
        1, "ppo, grpo, gkd with --use_vllm: tensor parallelism of the colocated engine: each group of this many "
        "consecutive processes shares one engine split across their GPUs (the processes must be a multiple of it).",
        applies_to=("ppo", "grpo", "gkd",))
    vllm_enable_prefix_caching: bool = option(
        True, "ppo, grpo, gkd with --use_vllm: vLLM's automatic prefix caching.", applies_to=("ppo", "grpo", "gkd",))
    vllm_enable_lora: bool = option(
        False, "ppo, grpo with --use_vllm: sync only the LoRA adapter into vLLM.", applies_to=("ppo", "grpo",),
        no_effect="alignkit syncs the merged LoRA weights into vLLM after each update; the samples are the same, "
        "only the sync's cost differs")
    sleep_level: int = option(
        0, "ppo, grpo, gkd with --use_vllm: ms-swift's vLLM sleep level (0, 1, 2).", choices=(0, 1, 2),
        applies_to=("ppo", "grpo", "gkd",),
        no_effect=("ms-swift's GPU memory management around its colocated vLLM engine (releasing or offloading memory "
        "while the other side runs); alignkit does not release or offload memory around generation, so the samples "
        "and updates are the same, but a run that needs this to fit may run out of GPU memory"))
    offload_model: bool = option(
        False, "ppo, grpo, gkd with --use_vllm: offload the policy to CPU during generation.",
        applies_to=("ppo", "grpo", "gkd",),
        no_effect=("ms-swift's GPU memory management around its colocated vLLM engine (releasing or offloading memory "
        "while the other side runs); alignkit does not release or offload memory around generation, so the samples "
        "and updates are the same, but a run that needs this to fit may run out of GPU memory"))
    offload_optimizer: bool = option(
        False, "ppo, grpo, gkd with --use_vllm: offload optimizer states to CPU during generation.",
        applies_to=("ppo", "grpo", "gkd",),
        no_effect=("ms-swift's GPU memory management around its colocated vLLM engine (releasing or offloading memory "
        "while the other side runs); alignkit does not release or offload memory around generation, so the samples "
        "and updates are the same, but a run that needs this to fit may run out of GPU memory"))
    move_model_batches: int | None = option(
        None, "ppo, grpo with --use_vllm: move weights to vLLM in this many batches.", applies_to=("ppo", "grpo",),
        no_effect="alignkit writes the weights into the colocated engine tensor by tensor; the samples are the same")
    async_generate: bool = option(
        False, "grpo with --vllm_mode server: sample the next step's completions on the server while this step "
        "trains; they are one step off-policy, and their π_old is the server's log-probs of them.",
        applies_to=("grpo",))
    chord_sft_dataset: list[str] = option(
        [], "grpo (CHORD): expert SFT datasets mixed into the loss, (1 - mu) x GRPO + mu x SFT, one batch per "
        "micro-batch.", nargs="+", applies_to=("grpo",))
    chord_sft_per_device_train_batch_size: int | None = option(
        None, "grpo (CHORD): SFT rows per micro-batch (unset: --per_device_train_batch_size).", applies_to=("grpo",))
    chord_enable_phi_function: bool = option(
        False, "grpo (CHORD): weigh each SFT token's loss by p(1 - p), p the policy's probability of it.",
        applies_to=("grpo",))
    chord_mu_warmup_steps: int | None = option(
        None, "grpo (CHORD): optimizer steps of mu's linear warm-up to --chord_mu_peak (unset: 0).",
        applies_to=("grpo",))
    chord_mu_decay_steps: int | None = option(
        None, "grpo (CHORD): optimizer steps of mu's cosine decay from its peak to --chord_mu_valley.",
        applies_to=("grpo",))
    chord_mu_peak: float | None = option(None, "grpo (CHORD): mu's peak.", applies_to=("grpo",))
    chord_mu_valley: float | None = option(None, "grpo (CHORD): mu after its decay.", applies_to=("grpo",))
    real_tau: float = option(
        0.5, "grpo --loss_type real: the temperature dividing each completion's mean token log-ratio.",
        applies_to=("grpo",))
    fipo_decay_rate: float = option(
        32.0, "grpo --loss_type fipo: the half-life, in tokens, of a later token's drift in a token's weight.",
        applies_to=("grpo",))
    fipo_clip_range: float | None = option(
        0.2, "grpo --loss_type fipo: the influence weight is clipped to [1 - r, 1 + r] (unset: not clipped).",
        applies_to=("grpo",))
    fipo_clip_high_only: bool = option(
        True, "grpo --loss_type fipo: clip the influence weight to [1, 1 + r] instead.", applies_to=("grpo",))
    fipo_safety_threshold: float | None = option(
        4.0, "grpo --loss_type fipo: where the advantage is negative and the ratio above this, the weight stays in "
        "[0.8, 1].", applies_to=("grpo",))
    rollout_importance_sampling_mode: str | None = option(
        None, "grpo: correct the per-token loss for the rollout engine's sampler differing from the policy, with "
        "weights from the engine's log-probs (token_truncate: min(ρ, C); token_mask: ρ where ρ ≤ C; sequence_*: "
        "the same on each completion's geometric-mean ρ).",
        choices=("token_truncate", "token_mask", "sequence_truncate", "sequence_mask"), applies_to=("grpo",))
    rollout_importance_sampling_threshold: float = option(
        2.0, "grpo: C of --rollout_importance_sampling_mode.", applies_to=("grpo",))
    log_rollout_offpolicy_metrics: bool = option(
        False, "grpo: log the rollout engine's gap to the policy (KL, perplexities, χ²) from its log-probs.",
        applies_to=("grpo",))
    off_policy_sequence_mask_delta: float | None = option(
        None, "grpo: drop from the loss the completions with a negative advantage whose mean log(π_rollout / π_θ) "
        "exceeds δ (DeepSeek-V3.2; π_old when the engine sends no log-probs).", applies_to=("grpo",))
    vllm_server_host: list[str] = option(
        [], "ppo, grpo, gkd with --vllm_mode server: the host of each `alignkit rollout` server (TRL's vLLM "
        "server); with several, each request's prompts are split over them.",
        nargs="+", applies_to=("ppo", "grpo", "gkd",))
    vllm_server_port: list[int] = option(
        [8000], "ppo, grpo with --vllm_mode server: the port of each host, in order.", nargs="+",
        applies_to=("ppo", "grpo", "gkd",))
    vllm_server_base_url: list[str] = option(
        [], "ppo, grpo with --vllm_mode server: each server's URL, instead of hosts and ports.", nargs="+",
        applies_to=("ppo", "grpo", "gkd",))
    vllm_server_group_port: list[int] = option(
        [], "ppo, grpo with --vllm_mode server: the port of each vLLM server's weight-sync (NCCL) group "
        "(default 51216, 51217, ...).", nargs="+", applies_to=("ppo", "grpo", "gkd",))
    vllm_server_timeout: float = option(
        240.0, "ppo, grpo with --vllm_mode server: seconds to wait for the server at start.",
        applies_to=("ppo", "grpo", "gkd",))
    # gkd: on-policy distillation (alignkit/algorithms/gkd.py), ms-swift's RLHFArguments/TeacherModelArguments
    teacher_model: str | None = option(
        None, "gkd, grpo: the teacher, loaded frozen (a local directory or hub id); needs the student's tokenizer. "
        "grpo (ms-swift's OPD-RL): each token's advantage gains --teacher_kl_coef × (log π_teacher − log π_old).",
        applies_to=("gkd", "grpo"))
    teacher_model_type: str | None = option(
        None, "gkd, grpo: ms-swift's registry name of the teacher, resolved like --model_type for --teacher_model.",
        applies_to=("gkd", "grpo"), may_differ_on_resume=True)
    teacher_model_revision: str | None = option(
        None, "gkd, grpo: hub revision of --teacher_model.", applies_to=("gkd", "grpo"))
    teacher_kl_coef: float = option(
        1.0, "grpo with --teacher_model: the weight of the teacher's per-token log-ratio in the advantages.",
        applies_to=("grpo",))
    teacher_deepspeed: str | None = option(
        None, "gkd: the DeepSpeed config the frozen teacher is prepared with (a --deepspeed preset name or JSON "
        "file, its optimizer left out): zero3 shards the teacher's weights across the processes, zero3_offload keeps "
        "them in CPU memory; ZeRO-0/1/2 shard only what a frozen model lacks (optimizer state, gradients), so with "
        "them, and with zero3 on one process, the teacher stays a plain frozen model (logged).",
        applies_to=("gkd", "grpo"))
    offload_teacher_model: bool = option(
        False, "gkd: keep the teacher on the CPU, moved to the device for its forwards only.", applies_to=("gkd",),
        may_differ_on_resume=True)
    lmbda: float = option(
        0.5, "gkd: the probability that a step trains on the student's own samples of its prompts (drawn once per "
        "step from --seed + the step, as ms-swift); otherwise the dataset's answers (or, with --seq_kd, the "
        "teacher's samples).", applies_to=("gkd",))
    seq_kd: bool = option(
        False, "gkd: steps not on the student's samples train on the teacher's samples of the prompts (sequence-level "
        "KD) instead of the dataset's answers.", applies_to=("gkd",),
        differs="ms-swift 4.x deprecated --seq_kd and raises on true; alignkit does what TRL's GKDTrainer and earlier "
        "ms-swift did with it")
    sft_alpha: float = option(
        0.0, "gkd: adds sft_alpha x the student's cross-entropy on the completion, on steps that are not on the "
        "student's own samples.", applies_to=("gkd",))

    # --- task type and per-method defaults (docs/objectives.md) ---
    task_type: str | None = option(
        None,
        "What the model learns: causal_lm (generation: sft, rlhf); seq_cls (alignkit sft: a classification or "
        "regression head on the last token, trained on rows with messages and a label); embedding (the last "
        "token's normalised hidden state, --loss_type infonce | cosine_similarity | contrastive | "
        "online_contrastive); reranker (a one-label head) or generative_reranker (logit yes − logit no), "
        "--loss_type pointwise_reranker | listwise_reranker; the last three on rows with messages, "
        "positive_messages and negative_messages (docs/objectives.md). Unset: seq_cls when --num_labels is given, "
        "else causal_lm (ms-swift's rule). prm is refused.",
        choices=("causal_lm", "seq_cls", "embedding", "reranker", "generative_reranker", "prm"))
    num_labels: int | None = option(
        None, "seq_cls: the number of classes (outputs of the head); 1 for regression.")
    problem_type: str | None = option(
        None,
        "seq_cls: the loss, as transformers' sequence-classification models compute it: single_label_classification "
        "(cross-entropy; a row's label is a class index), multi_label_classification (binary cross-entropy with "
        "logits; a row's label lists its classes), regression (mean squared error; a number, or --num_labels "
        "numbers). Unset: regression with --num_labels 1, else single_label_classification.",
        choices=("single_label_classification", "multi_label_classification", "regression"))
    value_head_init: str = option(
        "ziegler", "rm: the new value head's start: ziegler (bias-free, weights of variance 1/(d+1), Ziegler et al.) "
        "or colossalchat (ColossalChat's RewardModel: a bias, weights of std 1/(d+1); `alignkit colossal "
        "train_rm` sets it).", choices=("ziegler", "colossalchat"), applies_to=("rm",))
    disable_dropout: bool | None = option(
        None,
        "Set every dropout module's probability to 0 (the model's and LoRA's), as TRL's disable_dropout. Unset: on "
        "for dpo, kto, cpo, simpo, orpo, rm, ppo and grpo (TRL's and ms-swift's default for preference training), "
        "off for sft. ppo and grpo always run without dropout.")

    # --- GaLore (alignkit/training/galore.py) ---
    use_galore: bool = option(
        False, "Full fine-tuning with GaLore (galore-torch): the gradients of the target weights are projected to "
        "rank --galore_rank, where the optimizer keeps its states (less optimizer memory), as ms-swift's "
        "--use_galore. --optim adamw_torch(_fused), adafactor or an 8-bit AdamW.")
    galore_target_modules: list[str] | None = option(
        None, "GaLore: the linear modules whose name contains one of these. Unset: every linear layer but the "
        "LM head (ms-swift's find_all_linears).", nargs="+")
    galore_rank: int = option(128, "GaLore: rank of the gradient projection.")
    galore_update_proj_gap: int = option(50, "GaLore: steps between recomputing the projection (an SVD).")
    galore_scale: float = option(1.0, "GaLore: scale of the projected-back update.")
    galore_proj_type: str = option("std", "GaLore: which side is projected.",
                                   choices=("std", "reverse_std", "right", "left", "full"))
    galore_optim_per_parameter: bool = option(
        False, "GaLore: one optimizer per parameter, as ms-swift (here one parameter group each); as in ms-swift "
        "the projection gap is doubled and the learning-rate schedule runs over twice the steps.")
    galore_with_embedding: bool = option(
        False, "GaLore: also project the embedding matrix (with --galore_target_modules unset).")

    # --- LISA (alignkit/training/lisa.py) and LLaMA-Pro (alignkit/models/llama_pro.py) ---
    lisa_activated_layers: int = option(
        0, "LISA: with --tuner_type full, only this many randomly drawn decoder layers train at a time (the "
        "embeddings, final norm and LM head train throughout); 0: off. Text models.",
        differs="every draw's layers get updates: the optimizer holds all layers (ms-swift's callback freezes them "
        "before the optimizer is built, so only its first draw's layers are ever updated); the draw follows the "
        "seed and the step, so a resumed run draws the same layers")
    lisa_step_interval: int = option(
        20, "LISA: steps between draws of the trained layers.",
        differs="the layers are drawn at steps 0, K, 2K, ... (ms-swift draws once more at step 1)")
    llamapro_num_new_blocks: int = option(
        4, "LLaMA-Pro (--tuner_type llamapro): decoder layers inserted, copies with zeroed o_proj / down_proj, so the "
        "expanded model starts identical; only they train.",
        differs="the checkpoint is the whole expanded model (loads with from_pretrained, num_hidden_layers updated), "
        "not an adapter of the new blocks to merge")
    llamapro_num_groups: int | None = option(
        None, "LLaMA-Pro: the new blocks go in this many groups, each after an equal share of the layers. Unset: "
        "--llamapro_num_new_blocks (one after every L / new_blocks layers).",
        differs="the new blocks are split over the groups (num_new_blocks / num_groups after each group, as "
        "ms-swift's documentation says); ms-swift's code inserts one block per group")

    # --- ms-swift flags with no work to do in alignkit's design (accepted, checked, logged once when set) ---
    dataloader_num_workers: int = option(
        0, "ms-swift/transformers data-loader workers.", no_effect=LOADER_HAS_NO_WORK)
    dataloader_pin_memory: bool = option(
        True, "ms-swift/transformers data-loader option.", no_effect=LOADER_HAS_NO_WORK)
    dataloader_persistent_workers: bool = option(
        False, "ms-swift/transformers data-loader option.", no_effect=LOADER_HAS_NO_WORK)
    dataloader_prefetch_factor: int | None = option(
        None, "ms-swift/transformers data-loader option.", no_effect=LOADER_HAS_NO_WORK)
    label_names: list[str] = option(
        [], "transformers Trainer: the batch keys holding labels.", nargs="+",
        no_effect="every alignkit algorithm knows its own label fields; there are none to name")
    remove_unused_columns: bool = option(
        True, "transformers Trainer: drop dataset columns the model does not take.",
        no_effect="rows are read into alignkit's own row types, so unused columns never reach the model")
    lazy_tokenize: bool | None = option(
        None, "ms-swift: tokenise rows as they are batched instead of before training.",
        no_effect="alignkit tokenises every row before the first step (a bad row stops the run before any "
        "training) and caches the result on disk, keyed by data and settings; there is no lazy mode to choose")
    use_logits_to_keep: bool | None = option(
        None, "ms-swift: compute the LM head only where the loss needs it.",
        no_effect="alignkit already computes the LM head only at trained positions (completion-only head, "
        "docs/performance.md)")
    sequence_parallel_size: int = option(
        1, "Split every sequence's tokens across groups of this many processes (Ulysses all-to-all attention "
        "through DeepSpeed's UlyssesSPAttentionHF; sft and the offline rlhf types, text models). The processes of "
        "a group take the same rows; start a multiple of N (NPROC_PER_NODE).",
        differs="Ulysses only (ms-swift adds ring attention where heads run out); packed rows need flash attention, "
        "other attention runs padded batches")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
