"""Checks of the non-training commands' arguments (infer, deploy, app) that need no model: a value the command
cannot honour stops it here, naming the flag, before anything is loaded. (Training: config/checks.py.)"""

from __future__ import annotations

import dataclasses
import json
import logging

from alignkit.errors import AlignkitError

logger = logging.getLogger("alignkit")

ENGINE_PREFIXES = {"vllm": "vllm_", "sglang": "sglang_", "lmdeploy": "lmdeploy_"}


def check_command_arguments(command: str, args) -> None:
    """Raise ``AlignkitError`` for a flag value ``command`` cannot honour."""
    task_type = getattr(args, "task_type", "causal_lm")
    backend = getattr(args, "infer_backend", "transformers")
    served_by_engine = command == "deploy" and (
        (backend == "vllm" and task_type in ("embedding", "seq_cls", "reranker"))
        or (backend == "sglang" and task_type == "embedding"))
    # infer: alignkit.commands.step_scores; deploy: alignkit.commands.score_server
    scored_steps = task_type == "prm" and (command == "infer" or (command == "deploy" and backend in
                                                                   ("transformers", "pt")))
    if task_type != "causal_lm" and not served_by_engine and not scored_steps:
        raise AlignkitError(
            f"--task_type {task_type}: `alignkit {command}` handles generative models (causal_lm) and alignkit's "
            "reward models (recognised by their value_head.safetensors); sequence-classification, embedding, "
            f"reranker and process-reward models are not supported by {command} yet (infer scores a process reward "
            "model's steps and deploy serves them; a seq_cls model trains with "
            "`alignkit sft --task_type seq_cls`)"
        )
    if command in ("deploy", "app") and backend == "lmdeploy":
        raise AlignkitError(
            f"`alignkit {command} --infer_backend lmdeploy`: {command} serves with transformers, vllm or sglang; "
            "serve with lmdeploy's own `lmdeploy serve api_server DIR`, or batch-infer with `alignkit infer "
            "--infer_backend lmdeploy`"
        )
    if command in ("deploy", "app"):
        check_engine_flags(command, args, backend)
    if getattr(args, "vllm_limit_mm_per_prompt", None):
        try:
            json.loads(args.vllm_limit_mm_per_prompt)
        except json.JSONDecodeError as error:
            raise AlignkitError(f"--vllm_limit_mm_per_prompt {args.vllm_limit_mm_per_prompt!r}: not a JSON object "
                                f"({error})") from None
    if command == "infer":
        check_infer(args)
    if command == "export":
        check_export(args)
    if command == "deploy" and args.max_length is not None and args.max_length < 2:
        raise AlignkitError(f"--max_length {args.max_length}: a prompt and an answer need at least 2 tokens")


def check_engine_flags(command: str, args, backend: str) -> None:
    """deploy/app: the --vllm_*/--sglang_* flags configure that engine's server; with another backend they have
    no work (ms-swift ignores them; alignkit says so once)."""
    defaults = type(args)()
    for engine, prefix in ENGINE_PREFIXES.items():
        changed = [f"--{f.name}" for f in dataclasses.fields(args)
                   if f.name.startswith(prefix) and getattr(args, f.name) != getattr(defaults, f.name)]
        if changed and backend != engine:
            logger.warning("%s: no effect with --infer_backend %s (they configure %s)", ", ".join(changed), backend,
                           engine)
    if backend in ("vllm", "sglang"):
        placed = args.device_map or args.device_max_memory
        cut = command == "deploy" and args.truncation_strategy not in ("delete", "raise")
        if placed or cut:
            raise AlignkitError(f"{'--device_map' if placed else '--truncation_strategy ' + args.truncation_strategy} "
                                f"applies to --infer_backend transformers; {backend}'s server places the model and "
                                "refuses over-long prompts itself")
    if command == "deploy" and args.num_labels is not None and not (backend == "vllm" and args.task_type == "seq_cls"):
        raise AlignkitError("--num_labels sets the classification head of --task_type seq_cls served with "
                            "--infer_backend vllm; a causal_lm has no labels")
    if command == "deploy" and args.agent_template and backend == "sglang":
        raise AlignkitError(f"--agent_template {args.agent_template} with --infer_backend sglang: serve tool calls "
                            "with --infer_backend transformers or vllm")
    if command == "deploy" and backend == "sglang" and args.enable_thinking is not None:
        raise AlignkitError("--enable_thinking with --infer_backend sglang: sglang's server takes the switch per "
                            "request (chat_template_kwargs); use --infer_backend vllm or transformers for a default")


def check_infer(args) -> None:
    if args.metric == "rouge":
        raise AlignkitError("--metric rouge: alignkit does not compute ROUGE/BLEU; --metric acc scores exact matches "
                            "with the references, or score the results file with your own tool")
    if args.dataset and args.val_dataset:
        raise AlignkitError("--dataset and --val_dataset: give one (--val_dataset answers every row; --dataset "
                            "with --split_dataset_ratio answers its held-out share)")
    if not 0 <= args.split_dataset_ratio < 1:
        raise AlignkitError(f"--split_dataset_ratio {args.split_dataset_ratio}: a share in [0, 1)")
    if args.write_batch_size == 0 or args.write_batch_size < -1:
        raise AlignkitError(f"--write_batch_size {args.write_batch_size}: a number of rows > 0, or -1 (at the end)")
    # ms-swift ignores another engine's flags; alignkit says so once rather than silently.
    defaults = type(args)()
    for engine, prefix in ENGINE_PREFIXES.items():
        changed = [f"--{f.name}" for f in dataclasses.fields(args)
                   if f.name.startswith(prefix) and getattr(args, f.name) != getattr(defaults, f.name)]
        if changed and args.infer_backend != engine:
            logger.warning("%s: no effect with --infer_backend %s (they configure %s)", ", ".join(changed),
                           args.infer_backend, engine)


def check_export(args) -> None:
    if args.to_cached_dataset:
        raise AlignkitError("--to_cached_dataset: alignkit tokenises and caches each dataset itself the first time "
                            "a run reads it (see `alignkit cache`); run training on the dataset directly")
    cache_only = [flag for flag, value, default in (("--split_dataset_ratio", args.split_dataset_ratio, 0.0),
                                                     ("--dataset_num_proc", args.dataset_num_proc, 1),
                                                     ("--num_labels", args.num_labels, None)) if value != default]
    if cache_only:
        raise AlignkitError(f"{', '.join(cache_only)}: export uses them only with --to_cached_dataset, which alignkit "
                            "does not have (it caches tokenised datasets itself on first use)")
    method = args.quant_method or ("bnb" if args.quant_bits is not None else None)
    if method in ("bnb", "gptq", "gptq_v2", "awq") and args.quant_bits is None:
        raise AlignkitError(f"--quant_method {method} needs --quant_bits 4 or 8")
    if method == "fp8" and args.quant_bits is not None:
        raise AlignkitError("--quant_method fp8 stores 8-bit floats: leave out --quant_bits")
    if method == "awq" and args.quant_bits != 4:
        raise AlignkitError("--quant_method awq writes 4-bit weights (W4A16): pass --quant_bits 4")
    if method in ("gptq", "gptq_v2", "awq") and not args.dataset and not args.load_dataset_config:
        raise AlignkitError(f"--quant_method {method} calibrates on data: pass --dataset (e.g. a few hundred rows of "
                            "the training data)")
    if args.load_dataset_config and method not in ("gptq", "gptq_v2", "awq"):
        raise AlignkitError("--load_data_args on export reads the calibration data of --quant_method gptq/gptq_v2/awq "
                            "from the run's args.json")
    if args.dataset and method not in ("gptq", "gptq_v2", "awq"):
        raise AlignkitError("--dataset on export is calibration data for --quant_method gptq/gptq_v2/awq")
    if args.push_to_hub and not args.use_hf:
        raise AlignkitError("--push_to_hub --use_hf false pushes to ModelScope in ms-swift; alignkit pushes to the "
                            "Hugging Face Hub only: pass --use_hf true")
    if args.push_to_hub and not args.hub_model_id:
        raise AlignkitError("--push_to_hub needs --hub_model_id user/name")
