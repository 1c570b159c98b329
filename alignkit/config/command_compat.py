"""The compatibility table of `swift infer|deploy|app|export` flags (the rest of docs/compat.md, after the
training flags): which of ms-swift's flags each alignkit command accepts, and what stops the others."""

from __future__ import annotations

import dataclasses

# ms-swift 4's flags of these commands that its own examples and users reach for (not all of them).
SWIFT_COMMAND_FLAGS: dict[str, tuple[str, ...]] = {
    "infer": ("model", "adapters", "ckpt_dir", "infer_backend", "val_dataset", "dataset", "split_dataset_ratio",
              "load_data_args", "result_path", "write_batch_size", "max_batch_size", "max_new_tokens", "temperature",
              "top_p", "top_k", "repetition_penalty", "stop_words", "seed", "stream", "system", "max_length",
              "truncation_strategy", "torch_dtype", "device_map", "trust_remote_code", "vllm_gpu_memory_utilization",
              "vllm_max_model_len", "vllm_tensor_parallel_size", "vllm_enforce_eager", "vllm_enable_prefix_caching",
              "vllm_max_num_seqs", "vllm_limit_mm_per_prompt", "sglang_tp_size", "sglang_context_length",
              "lmdeploy_tp", "lmdeploy_session_len", "attn_impl", "enable_thinking", "use_chat_template", "metric",
              "task_type"),
    "deploy": ("model", "adapters", "ckpt_dir", "served_model_name", "host", "port", "api_key", "infer_backend",
               "max_new_tokens", "temperature", "top_p", "max_batch_size", "max_length", "truncation_strategy",
               "torch_dtype", "device_map", "trust_remote_code", "vllm_gpu_memory_utilization", "vllm_max_model_len",
               "vllm_tensor_parallel_size", "vllm_data_parallel_size", "vllm_enforce_eager",
               "vllm_enable_prefix_caching", "vllm_max_num_seqs", "vllm_limit_mm_per_prompt", "sglang_tp_size",
               "sglang_context_length", "agent_template", "task_type", "num_labels", "enable_thinking"),
    "app": ("model", "adapters", "ckpt_dir", "system", "max_new_tokens", "temperature", "top_p", "server_name",
            "server_port", "share", "stream", "lang", "infer_backend", "trust_remote_code", "base_url",
            "vllm_gpu_memory_utilization", "vllm_max_model_len", "vllm_limit_mm_per_prompt", "sglang_context_length"),
    "export": ("model", "adapters", "ckpt_dir", "output_dir", "merge_lora", "quant_method", "quant_bits", "dataset",
               "quant_n_samples", "quant_batch_size", "group_size", "max_length", "truncation_strategy",
               "bnb_4bit_quant_type", "bnb_4bit_use_double_quant", "bnb_4bit_compute_dtype", "to_ollama",
               "push_to_hub", "hub_model_id", "hub_token", "hub_private_repo", "commit_message", "use_hf",
               "to_cached_dataset", "torch_dtype", "device_map", "task_type", "load_data_args",
               "split_dataset_ratio", "dataset_num_proc", "num_labels"),
}

# Accepted flags with a value alignkit refuses before loading (alignkit/config/command_checks.py).
REFUSED_VALUES = {
    ("deploy", "infer_backend"): "vllm and sglang serve through their own OpenAI servers (`vllm serve`, "
                                 "sglang.launch_server; their package and a CUDA GPU); lmdeploy refused",
    ("app", "infer_backend"): "vllm and sglang: their own server on a loopback port, the page its client; lmdeploy "
                              "refused",
    ("deploy", "task_type"): "embedding, seq_cls, reranker with --infer_backend vllm (embedding also sglang); "
                             "prm (step scores) with transformers; otherwise causal_lm and alignkit reward models",
    ("infer", "task_type"): "causal_lm and prm (a process reward model's step scores); the others refused",
    ("deploy", "num_labels"): "only with --infer_backend vllm --task_type seq_cls",
    ("infer", "attn_impl"): "transformers backend only",
    ("infer", "metric"): "acc; rouge refused",
    ("export", "split_dataset_ratio"): "only with --to_cached_dataset (refused)",
    ("export", "dataset_num_proc"): "only with --to_cached_dataset (refused)",
    ("export", "num_labels"): "only with --to_cached_dataset (refused)",
    ("export", "load_data_args"): "alias of --load_dataset_config: gptq/awq calibration data from the run's args.json",
    ("export", "use_hf"): "--push_to_hub needs --use_hf true (the Hugging Face Hub; ModelScope is not supported)",
    ("export", "to_cached_dataset"): "true is refused: alignkit caches tokenised datasets itself (`alignkit cache`)",
    ("export", "quant_method"): "gptq, gptq_v2, awq and fp8 need a CUDA GPU (a clear error on CPU)",
    ("infer", "infer_backend"): "vllm needs a CUDA GPU; sglang and lmdeploy their packages",
}


def command_flag_status(command: str, name: str) -> tuple[str, str]:
    from alignkit.config.commands import AppArguments, DeployArguments, ExportArguments, InferArguments

    classes = {"infer": InferArguments, "deploy": DeployArguments, "app": AppArguments, "export": ExportArguments}
    for field in dataclasses.fields(classes[command]):
        if name == field.name or f"--{name}" in field.metadata.get("aliases", ()):
            note = "" if name == field.name else f"alias of --{field.name}"
            refused = REFUSED_VALUES.get((command, field.name))
            return "same", "; ".join(x for x in (note, refused) if x)
    return "unknown", "not accepted: alignkit stops with `unknown flag`"


def render_command_sections() -> list[str]:
    rows = ["# `swift infer|deploy|app|export` flags in `alignkit infer|deploy|app|export`", "",
            "Measured over ms-swift's own example scripts by `python bench/serve_corpus.py <ms-swift>/examples`.", ""]
    for command, names in SWIFT_COMMAND_FLAGS.items():
        rows += [f"## {command}", "", "| flag | status | note |", "|---|---|---|"]
        rows += [f"| `--{name}` | {state} | {note} |" for name in names
                 for state, note in [command_flag_status(command, name)]]
        rows.append("")
    return rows
