"""alignkit and ms-swift, flag by flag: which of ms-swift's ``sft``/``rlhf`` flags alignkit accepts with the
same meaning, which it accepts and has no work for (``no_effect`` in the flag's declaration), which differ on
purpose (``differs``), which it refuses and why, and which it does not know yet.

``docs/compat.md`` is generated from this module and the flag declarations (``python -m alignkit.config.compat
> docs/compat.md``); a test keeps the file equal to the output, so the table cannot drift from the code.
The flag names below are ms-swift 4.x's argument classes' fields (swift/arguments, swift/trainers,
swift/rlhf_trainers) and the transformers TrainingArguments ms-swift documents.
"""

from __future__ import annotations

import dataclasses

from alignkit.config.run import RunArguments

SWIFT_TRAINING_FLAGS: dict[str, tuple[str, ...]] = {
    "ModelArguments": (
        "model", "model_type", "model_revision", "task_type", "torch_dtype", "attn_impl", "experts_impl",
        "new_special_tokens", "num_labels", "problem_type", "rope_scaling", "device_map", "max_memory",
        "max_model_len", "local_repo_path", "init_strategy",
    ),
    "DataArguments": (
        "dataset", "val_dataset", "cached_dataset", "cached_val_dataset", "split_dataset_ratio", "data_seed",
        "dataset_num_proc", "load_from_cache_file", "dataset_shuffle", "val_dataset_shuffle", "streaming",
        "interleave_prob", "stopping_strategy", "shuffle_buffer_size", "download_mode", "columns", "strict",
        "remove_unused_columns", "disable_auto_column_mapping", "model_name", "model_author", "custom_dataset_info",
    ),
    "TemplateArguments": (
        "template", "system", "max_length", "truncation_strategy", "max_pixels", "agent_template", "norm_bbox",
        "use_chat_template", "padding_side", "padding_free", "loss_scale", "sequence_parallel_size",
        "is_binary_loss_scale", "template_backend", "response_prefix", "enable_thinking", "preserve_thinking",
        "add_non_thinking_prefix", "disable_ignore_empty_think",
    ),
    "QuantizeArguments": (
        "quant_method", "quant_bits", "hqq_axis", "bnb_4bit_compute_dtype", "bnb_4bit_quant_type",
        "bnb_4bit_use_double_quant", "bnb_4bit_quant_storage",
    ),
    "GenerationArguments": (
        "max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "num_beams", "stream", "stop_words",
        "logprobs", "top_logprobs", "structured_outputs_regex",
    ),
    "BaseArguments": (
        "tuner_backend", "tuner_type", "adapters", "external_plugins", "custom_register_path", "seed",
        "model_kwargs", "enable_npu_model_patch", "load_args", "load_data_args", "packing", "packing_length",
        "packing_num_proc", "packing_strategy", "lazy_tokenize", "use_hf", "hub_token", "ddp_timeout", "ddp_backend",
        "ignore_args_error", "use_swift_lora",
    ),
    "TunerArguments": (
        "freeze_parameters", "freeze_parameters_regex", "freeze_parameters_ratio", "trainable_parameters",
        "trainable_parameters_regex", "freeze_llm", "freeze_vit", "freeze_aligner", "target_modules", "target_regex",
        "target_parameters", "modules_to_save", "lora_rank", "lora_alpha", "lora_dropout", "lora_bias", "lora_dtype",
        "lorap_lr_ratio", "use_rslora", "use_dora", "lora_ga_batch_size", "lora_ga_iters", "lora_ga_max_length",
        "lora_ga_direction", "lora_ga_scale", "lora_ga_stable_gamma", "init_weights", "fourier_n_frequency",
        "fourier_scaling", "boft_block_size", "boft_block_num", "boft_n_butterfly_factor", "boft_dropout",
        "vera_rank", "vera_projection_prng_key", "vera_dropout", "vera_d_initial", "adapter_act", "adapter_length",
        "adalora_target_r", "adalora_init_r", "adalora_tinit", "adalora_tfinal", "adalora_deltaT", "adalora_beta1",
        "adalora_beta2", "adalora_orth_reg_weight", "llamapro_num_new_blocks", "llamapro_num_groups",
        "reft_layer_key", "reft_layers", "reft_rank", "reft_intervention_type", "reft_args",
    ),
    "SftArguments": (
        "add_version", "create_checkpoint_symlink", "output_dir", "learning_rate", "eval_strategy", "fp16", "bf16",
        "zero_hpz_partition_size", "deepspeed_autotp_size", "fsdp",
    ),
    "SwanlabArguments": (
        "swanlab_token", "swanlab_project", "swanlab_workspace", "swanlab_exp_name", "swanlab_notification_method",
        "swanlab_webhook_url", "swanlab_secret", "swanlab_sender_email", "swanlab_receiver_email",
        "swanlab_smtp_server", "swanlab_smtp_port", "swanlab_email_language", "swanlab_mode",
    ),
    "TrainArgumentsMixin": (
        "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
        "gradient_checkpointing", "vit_gradient_checkpointing", "gradient_checkpointing_kwargs",
        "logging_first_step", "logging_steps", "router_aux_loss_coef", "enable_dft_loss", "enable_channel_loss",
        "safe_serialization", "max_shard_size", "weight_decay", "adam_beta2", "lr_scheduler_type",
        "lr_scheduler_kwargs", "report_to", "dataloader_num_workers", "dataloader_persistent_workers",
        "dataloader_prefetch_factor", "use_liger_kernel", "check_model", "acc_strategy", "train_dataloader_shuffle",
        "group_by_length", "max_epochs", "aligner_lr", "vit_lr", "use_logits_to_keep", "ds3_gather_for_generation",
        "resume_only_model", "optimizer", "loss_type", "mrl_dims", "eval_metric", "callbacks", "early_stop_interval",
        "eval_use_evalscope", "eval_dataset", "eval_dataset_args", "eval_limit", "eval_generation_config",
        "extra_eval_args", "use_galore", "galore_target_modules", "galore_rank", "galore_update_proj_gap",
        "galore_scale", "galore_proj_type", "galore_optim_per_parameter", "galore_with_embedding",
        "galore_quantization", "galore_proj_quant", "galore_proj_bits", "galore_proj_group_size",
        "galore_cos_threshold", "galore_gamma_proj", "galore_queue_size", "lisa_activated_layers",
        "lisa_step_interval", "use_flash_ckpt", "logging_dir", "warmup_ratio",
    ),
    "RLHFArguments": (
        "rlhf_type", "ref_model", "ref_adapters", "ref_model_type", "ref_model_revision", "beta", "label_smoothing",
        "max_completion_length", "rpo_alpha", "ld_alpha", "discopop_tau", "loss_weights", "cpo_alpha", "simpo_gamma",
        "desirable_weight", "undesirable_weight", "center_rewards_coefficient", "sft_alpha", "lmbda", "seq_kd",
        "gkd_logits_topk",
    ),
    "RewardModelArguments": (
        "reward_model", "reward_adapters", "reward_model_type", "reward_model_revision", "reward_template",
    ),
    "TeacherModelArguments": (
        "teacher_model", "teacher_adapters", "teacher_model_type", "teacher_model_revision", "teacher_deepspeed",
        "teacher_model_server", "offload_teacher_model",
    ),
    "PPOArguments": (
        "num_ppo_epochs", "whiten_rewards", "kl_coef", "cliprange", "vf_coef", "cliprange_value", "gamma", "lam",
        "num_mini_batches", "local_rollout_forward_batch_size", "num_sample_generations", "response_length",
        "missing_eos_penalty",
    ),
    "GRPOArguments": (
        "num_generations", "reward_funcs", "reward_weights", "log_completions", "num_iterations",
    ),
    "GRPOArgumentsMixin (ms-swift 4.x)": (
        "epsilon", "epsilon_high", "delta", "cosine_min_len_value_wrong", "cosine_max_len_value_wrong",
        "cosine_min_len_value_correct", "cosine_max_len_value_correct", "cosine_max_len", "repetition_n_grams",
        "repetition_max_penalty", "reward_model_plugin", "chord_sft_dataset", "multi_turn_scheduler", "max_turns",
        "completion_length_limit_scope", "vllm_server_pass_dataset", "use_gym_env", "gym_env", "dynamic_sample",
        "max_resample_times", "overlong_filter", "soft_max_length", "soft_cache_length", "scale_rewards",
        "log_entropy", "top_entropy_quantile", "importance_sampling_level", "tau_pos", "tau_neg", "real_tau",
        "advantage_estimator", "kl_in_reward", "teacher_kl_coef", "rollout_importance_sampling_mode",
        "log_rollout_offpolicy_metrics", "off_policy_sequence_mask_delta",
    ),
    "RolloutTrainerArgumentsMixin (ms-swift 4.x)": (
        "top_k", "top_p", "min_p", "repetition_penalty", "stop_words", "use_vllm", "vllm_mode", "vllm_enable_lora",
        "vllm_server_base_url", "vllm_server_host", "vllm_server_port", "vllm_server_timeout", "async_generate",
        "structured_outputs_regex", "sleep_level", "move_model_batches", "offload_optimizer", "offload_model",
        "generation_batch_size", "steps_per_generation", "vllm_gpu_memory_utilization", "vllm_tensor_parallel_size",
        "vllm_max_model_len", "vllm_enable_prefix_caching",
    ),
    "DPOConfig": (
        "ref_adapter_name", "reference_free",
    ),
    "TrainingArguments (transformers)": (
        "output_dir", "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
        "learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm",
        "num_train_epochs", "max_steps", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_ratio", "warmup_steps",
        "logging_steps", "logging_strategy", "logging_first_step", "save_strategy", "save_steps", "save_total_limit",
        "save_only_model", "seed", "bf16", "fp16", "eval_strategy", "eval_steps", "dataloader_num_workers",
        "dataloader_drop_last", "dataloader_pin_memory", "dataloader_persistent_workers",
        "dataloader_prefetch_factor", "remove_unused_columns", "label_names", "load_best_model_at_end",
        "metric_for_best_model", "greater_is_better", "ignore_data_skip", "fsdp", "fsdp_config", "deepspeed",
        "optim", "optim_args", "group_by_length", "report_to", "ddp_find_unused_parameters", "ddp_timeout",
        "ddp_backend", "gradient_checkpointing", "gradient_checkpointing_kwargs", "neftune_noise_alpha",
        "torch_compile", "use_liger_kernel", "resume_from_checkpoint", "run_name", "disable_tqdm", "push_to_hub",
        "hub_model_id", "hub_token", "hub_strategy", "hub_private_repo", "eval_accumulation_steps",
        "predict_with_generate",
    ),
}

# Flags whose feature alignkit does not have: setting one stops the run at once with this reason (what to
# use instead, where there is something). Keyed by the flag's name without dashes.
UNSUPPORTED_FLAGS: dict[str, str] = {
    **{name: "Q-GaLore (quantized GaLore, q-galore-torch) is not supported; use --use_galore without quantization"
       for name in ("galore_quantization", "galore_proj_quant", "galore_proj_bits", "galore_proj_group_size",
                    "galore_cos_threshold", "galore_gamma_proj", "galore_queue_size")},
    **{name: "ReFT is not supported; use LoRA" for name in ("reft_layers", "reft_layer_key", "reft_intervention_type",
                                                           "reft_args")},
    **{name: "EvalScope benchmarks during training (--eval_use_evalscope with --eval_dataset gsm8k, ...) are not "
       "supported; held-out rows are scored by the method's own metrics; evaluate saved checkpoints afterwards with "
       "`alignkit eval` or EvalScope"
       for name in ("eval_use_evalscope", "eval_dataset", "eval_dataset_args", "eval_limit", "eval_generation_config",
                    "extra_eval_args")},
    **{name: "Ray is not supported; launch with torchrun, accelerate or NPROC_PER_NODE (docs/distributed.md)"
       for name in ("use_ray", "ray_exp_name", "device_groups")},
    # ms-swift's GRPO features beyond alignkit's (docs/online.md says what there is instead).
    "completion_length_limit_scope": "multi-turn rollouts limit each turn to --max_completion_length (ms-swift's "
                                     "per_round); a limit on the whole trajectory is not supported",
    "reward_model_plugin": "reward model plugins are not supported: --reward_model scores with its own head; write "
                           "other scoring as a reward function (--external_plugins)",
    "structured_outputs_regex": "guided decoding is not supported",
    "teacher_adapters": "LoRA adapters on the teacher are not supported; merge them into the teacher "
                        "(`alignkit export --merge_lora true`) and pass the merged model as --teacher_model",
    "teacher_model_server": "a teacher behind an API (top-k log-probs from a server) is not supported; pass the "
                            "teacher's weights as --teacher_model",
    "gkd_logits_topk": "GKD over the teacher's top-k logits is not supported; alignkit's JSD reads full logits",
}


def status(name: str) -> tuple[str, str]:
    """(status, note) of one ms-swift flag in alignkit: same | differs | no effect | unsupported | unknown."""
    if name in UNSUPPORTED_FLAGS:
        return "unsupported", UNSUPPORTED_FLAGS[name]
    field = _fields_by_flag().get(name)
    if field is None:
        return "unknown", "not accepted yet: alignkit stops with `unknown flag`"
    if field.metadata.get("no_effect"):
        return "no effect", field.metadata["no_effect"]
    if field.metadata.get("differs"):
        return "differs", field.metadata["differs"]
    note = "" if field.name == name else f"alias of --{field.name}"
    return "same", note


def _fields_by_flag() -> dict[str, dataclasses.Field]:
    by_flag = {}
    for field in dataclasses.fields(RunArguments):
        by_flag[field.name] = field
        for alias in field.metadata.get("aliases", ()):
            by_flag[alias.lstrip("-")] = field
    return by_flag


def render_markdown() -> str:
    rows = ["# ms-swift compatibility: `swift sft` / `swift rlhf` flags in `alignkit sft` / `alignkit rlhf`", "",
            "Generated by `python -m alignkit.config.compat > docs/compat.md` from the flag declarations "
            "(alignkit/config/run.py) and the table of refused features (alignkit/config/compat.py); "
            "tests/test_compat_doc.py keeps this file equal to that output.", "",
            "Status: **same** (the flag means what it means in ms-swift), **differs** (accepted, with a meaning "
            "or default that differs on purpose: the note says how and why), **no effect** (accepted and "
            "checked; alignkit has no work for it, and setting it logs the note once), **unsupported** (stops "
            "with the note), **unknown** (not accepted yet: stops with `unknown flag`).", ""]
    counts: dict[str, int] = {}
    for group, names in SWIFT_TRAINING_FLAGS.items():
        rows += [f"## {group}", "", "| flag | status | note |", "|---|---|---|"]
        for name in names:
            state, note = status(name)
            counts[state] = counts.get(state, 0) + 1
            rows.append(f"| `--{name}` | {state} | {note} |")
        rows.append("")
    total = sum(counts.values())
    summary = ", ".join(f"{state} {n}" for state, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    rows[6:6] = [f"In all {total} flags: {summary}.", ""]
    from alignkit.config.command_compat import render_command_sections
    from alignkit.config.seed_status import render_seed_table

    rows += render_command_sections()
    rows += render_seed_table()
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(render_markdown(), end="")
