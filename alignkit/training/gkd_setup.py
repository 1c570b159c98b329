"""``--rlhf_type gkd``'s parts for the offline loop: the algorithm from the flags, then the frozen teacher and the
student it samples from (alignkit/algorithms/gkd.py). The run itself is ``training/run.py``'s, as for sft."""

from __future__ import annotations

import dataclasses
import logging
import os
from contextlib import nullcontext
from functools import partial

import torch

from alignkit.algorithms.gkd import GKD
from alignkit.algorithms.rollout import stop_token_ids
from alignkit.config.run import RunArguments
from alignkit.errors import AlignkitError
from alignkit.models.load import load_causal_lm, load_tokenizer, resolve_model_path
from alignkit.training.distributed import process_state
from alignkit.training.model_setup import weights_dtype
from alignkit.training.zero3 import frozen_engine, whole_for_generation

logger = logging.getLogger("alignkit")


def gkd_algorithm(args: RunArguments, beta: float) -> GKD:
    """The algorithm with the flags' values; the models come later (``with_models``). The colocated vLLM
    engine's needs (the package, a GPU, processes a multiple of --vllm_tensor_parallel_size) are checked here,
    before any data or model loads."""
    if args.use_vllm and args.vllm_mode != "server":
        from alignkit.generation.vllm import check_vllm_available, engine_groups

        engine_groups(int(os.environ.get("WORLD_SIZE", "1")), args.vllm_tensor_parallel_size)
        check_vllm_available()
    return GKD(teacher=None, beta=beta, temperature=args.temperature, lmbda=args.lmbda, seq_kd=args.seq_kd,
               sft_alpha=args.sft_alpha, max_completion_length=args.max_completion_length, pad_id=0, stop_ids=[],
               seed=args.seed, offload_teacher=args.offload_teacher_model,
               generation_batch_size=args.local_rollout_forward_batch_size)


def load_teacher(args: RunArguments, student, tokenizer):
    """--teacher_model loaded frozen for distillation from ``student``'s samples (gkd; grpo's OPD-RL): the same
    vocabulary and output layer as the student, on this process's device (unless --offload_teacher_model), or a
    DeepSpeed engine with --teacher_deepspeed. Returns (teacher, the context making its weights whole for
    generate(), its path)."""
    path = resolve_model_path(args.teacher_model)
    student_vocab = tokenizer.get_vocab()
    if load_tokenizer(path, args.teacher_model_revision).get_vocab() != student_vocab:
        raise AlignkitError(f"--teacher_model {args.teacher_model}: its tokenizer differs from the student's; the "
                            "two models' log-probs are compared token by token, so the vocabularies must match")
    teacher = load_causal_lm(path, args.teacher_model_revision, weights_dtype(args))
    teacher.eval().requires_grad_(False)
    if teacher.get_output_embeddings().weight.shape[0] != student.get_output_embeddings().weight.shape[0]:
        raise AlignkitError(f"--teacher_model {args.teacher_model}: its output layer has "
                            f"{teacher.get_output_embeddings().weight.shape[0]} rows, the student's "
                            f"{student.get_output_embeddings().weight.shape[0]}; they must match")
    if not args.offload_teacher_model:
        teacher.to(process_state().device)
    whole_teacher = nullcontext
    if args.teacher_deepspeed:
        engine = teacher_engine(teacher, args)
        if engine is not None:  # forwards go through the module (its hooks gather); sampling gathers it whole
            teacher, whole_teacher = engine.module, partial(whole_for_generation, engine)
    return teacher, whole_teacher, path


def with_models(algorithm: GKD, args: RunArguments, student, encoder) -> GKD:
    """``algorithm`` with the teacher loaded frozen (on the process's device, or the CPU with
    --offload_teacher_model), the trainable student, and the template's stop ids."""
    teacher, whole_teacher, path = load_teacher(args, student, encoder.tokenizer)
    logger.info("GKD: teacher %s (frozen%s), lmbda %s, beta %s, seq_kd %s, sft_alpha %s", path,
                ", on the CPU between forwards" if args.offload_teacher_model else "", args.lmbda, algorithm.beta,
                args.seq_kd, args.sft_alpha)
    stop_ids = stop_token_ids(encoder)
    server = None
    if args.vllm_mode == "server":  # the student's samples come from an `alignkit rollout` server
        from alignkit.generation.engine_info import with_server_scheduler
        from alignkit.generation.vllm_server import connect

        with_server_scheduler(args)  # a server running a multi-turn scheduler is refused (multi-turn is grpo's)
        server = connect(student, args, stop_ids=stop_ids, max_new_tokens=args.max_completion_length,
                         temperature=args.temperature, pad_id=encoder.tokenizer.pad_token_id)
    elif args.use_vllm:  # from a colocated vLLM engine, as grpo's (one per process or tensor-parallel group)
        from alignkit.generation.vllm import VllmRollout

        context = args.vllm_max_model_len or (args.max_length or 0) + args.max_completion_length
        server = VllmRollout(student, resolve_model_path(args.model), stop_ids=stop_ids,
                             max_new_tokens=args.max_completion_length, temperature=args.temperature,
                             gpu_memory_utilization=args.vllm_gpu_memory_utilization,
                             max_model_len=context,
                             seed=args.seed, top_p=algorithm.top_p, top_k=algorithm.top_k,
                             enable_prefix_caching=args.vllm_enable_prefix_caching,
                             tensor_parallel_size=args.vllm_tensor_parallel_size)
    return dataclasses.replace(algorithm, teacher=teacher, student=student, pad_id=encoder.tokenizer.pad_token_id,
                               stop_ids=stop_ids, server=server, whole_teacher=whole_teacher)


def teacher_engine(teacher, args: RunArguments):
    """--teacher_deepspeed: the frozen teacher as a DeepSpeed inference engine (training/zero3.py), or None
    where DeepSpeed would change nothing (logged there)."""
    dtype = weights_dtype(args)
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")
    return frozen_engine(teacher, args.teacher_deepspeed, processes=process_state().num_processes,
                         precision=precision)
