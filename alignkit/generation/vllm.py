"""vLLM, for inference and for rollouts (a CUDA GPU and the vllm package; imported only when asked for).

- ``VllmInference``: ``alignkit infer --infer_backend vllm``, batch inference. The prompts are rendered by the
  same chat template as the transformers backend and handed to vLLM as token ids, so both backends see
  identical inputs; a LoRA adapter is applied per request (LoRARequest).
- ``VllmRollout``: ``--use_vllm`` for ppo/grpo (and gkd's student), an engine on the training GPU refreshed
  with the policy's weights. Only the sampling moves to vLLM; log-probs for the loss are always recomputed by
  the trained model, so the engine's numerics never enter the objective. After each policy update the loop
  calls ``sync_weights``, which merges LoRA into the base weights (and unmerges after), streams every tensor
  to the engine, and drops its prefix cache.

With several processes every process holds its own engine (TRL's and ms-swift's colocate mode: vLLM's
``external_launcher`` backend, started inside the already launched processes). With
--vllm_tensor_parallel_size N, N consecutive ranks share one engine split across their GPUs: each call
gathers the group's prompts, all N generate them together, and each process keeps its own slice
(``generate_in_group``). Per-prompt seeds travel with their prompts, so a prompt samples the same completion
whichever process or group it lands on.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

import torch

from alignkit.config.commands import InferArguments
from alignkit.data.template import ChatEncoder
from alignkit.errors import AlignkitError
from alignkit.models.load import load_tokenizer, resolve_checkpoint, resolve_model_path

logger = logging.getLogger("alignkit")


class VllmInference:
    def __init__(self, args: InferArguments):
        try:
            import vllm
        except ModuleNotFoundError as error:
            raise AlignkitError(
                "--infer_backend vllm needs the vllm package (pip install vllm) and a CUDA GPU"
            ) from error
        if not torch.cuda.is_available():
            raise AlignkitError("--infer_backend vllm needs a CUDA GPU; use --infer_backend transformers on CPU")
        model, adapters = resolve_checkpoint(args.model, args.adapters, args.ckpt_dir)
        if len(adapters) > 1:
            raise AlignkitError("--infer_backend vllm applies one adapter; merge the others with `alignkit export`")
        model_path = resolve_model_path(model)
        self.tokenizer = load_tokenizer(model_path)
        self.encoder = ChatEncoder(self.tokenizer, max_length=args.max_length, system=args.system)
        self.lora = None
        rank = 16
        if adapters:
            from vllm.lora.request import LoRARequest

            if not (Path(adapters[0]) / "adapter_config.json").is_file():  # e.g. ms-swift's Adapter (default/)
                raise AlignkitError(f"--adapters {adapters[0]}: vLLM applies LoRA adapters only, and this is not one; "
                                    "use --infer_backend transformers")
            rank = json.loads((Path(adapters[0]) / "adapter_config.json").read_text())["r"]
            self.lora = LoRARequest("adapter", 1, adapters[0])
        dtype = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
                 "fp16": "float16", "float16": "float16"}.get(args.dtype, "auto")
        self.llm = vllm.LLM(model=model_path, dtype=dtype, seed=args.seed, enable_lora=bool(adapters),
                            max_lora_rank=max(rank, 8), trust_remote_code=args.trust_remote_code,
                            **vllm_engine_kwargs(args))
        self.params = vllm.SamplingParams(
            max_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
            top_k=args.top_k if args.top_k > 0 else -1, repetition_penalty=args.repetition_penalty,
            stop_token_ids=self.encoder.stop_ids,  # the chat template's end of turn, as the transformers backend
            stop=list(args.stop_words) or None,
        )
        logger.info("vLLM %s on %s%s", vllm.__version__, model_path, f" with adapter {adapters[0]}" if adapters else "")

    def generate(self, prompts: list[list[int]]) -> list[str]:
        """Answers to prompts given as token ids (rendered by alignkit's chat template)."""
        inputs = [{"prompt_token_ids": ids} for ids in prompts]
        outputs = self.llm.generate(inputs, self.params, lora_request=self.lora, use_tqdm=False)
        return [output.outputs[0].text for output in outputs]


def vllm_engine_kwargs(args: InferArguments) -> dict:
    """ms-swift's --vllm_* flags as ``vllm.LLM`` keyword arguments."""
    kwargs = {
        "gpu_memory_utilization": args.vllm_gpu_memory_utilization,
        "max_model_len": args.vllm_max_model_len or args.max_length + args.max_new_tokens,
        "tensor_parallel_size": args.vllm_tensor_parallel_size,
        "enforce_eager": args.vllm_enforce_eager,
        "enable_prefix_caching": args.vllm_enable_prefix_caching,
        "max_num_seqs": args.vllm_max_num_seqs,
    }
    if args.vllm_limit_mm_per_prompt:
        kwargs["limit_mm_per_prompt"] = json.loads(args.vllm_limit_mm_per_prompt)
    return kwargs


def check_vllm_available() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise AlignkitError("--use_vllm needs the vllm package (`pip install vllm`); without it, leave --use_vllm "
                            "off and rollouts use transformers' generate")
    if not torch.cuda.is_available():
        raise AlignkitError(
            "--use_vllm needs a CUDA GPU; on this machine leave it off (transformers' generate is used)"
        )


def engine_groups(world_size: int, size: int) -> list[list[int]]:
    """The ranks that share one tensor-parallel engine: ``size`` consecutive ranks each (TRL's layout, and
    vLLM's own: external_launcher splits its world into tensor-parallel groups of consecutive ranks).

    >>> engine_groups(4, 2)
    [[0, 1], [2, 3]]
    """
    if size < 1 or world_size % size:
        raise AlignkitError(f"--vllm_tensor_parallel_size {size} with {world_size} process(es): each group of "
                            f"{size} consecutive processes shares one colocated vLLM engine, so the number of "
                            f"processes (NPROC_PER_NODE × nodes) must be a multiple of {size}")
    return [list(range(start, start + size)) for start in range(0, world_size, size)]


def colocated_engine_kwargs(model_path: str, *, rank: int, tensor_parallel_size: int, seed: int,
                            gpu_memory_utilization: float, max_model_len: int,
                            enable_prefix_caching: bool, logprobs: bool = False) -> dict:
    """``vllm.LLM``'s arguments for the engine of process ``rank``. The processes of a group start it with
    one seed (--seed + the group's number): vLLM runs the same schedule on each of them, as TRL's trainer.
    ``logprobs``: the sampled tokens' log-probs are reported after temperature (vLLM's processed_logprobs), as
    the trainer computes its own (logits / T), for the rollout corrections."""
    return {"model": model_path, "tensor_parallel_size": tensor_parallel_size,
            "distributed_executor_backend": "external_launcher", "seed": seed + rank // tensor_parallel_size,
            "gpu_memory_utilization": gpu_memory_utilization, "max_model_len": max_model_len,
            "enable_prefix_caching": enable_prefix_caching,
            **({"logprobs_mode": "processed_logprobs"} if logprobs else {})}


def tensor_parallel_group(size: int):
    """This process's engine group (a torch.distributed subgroup), or None when each process has its own
    engine. Every process must call it: subgroups are made collectively."""
    if size == 1:
        return None
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    group, _ = torch.distributed.new_subgroups_by_enumeration(engine_groups(world, size))
    return group


def generate_in_group(generate, prompts: list[list[int]], seeds: list[int] | None, group) -> list[list[int]]:
    """``generate(prompts, seeds)`` on the engine this process shares with ``group`` (None: its own): the
    group's prompts (and seeds) are gathered in rank order, every member generates all of them (a
    tensor-parallel engine runs the same batch on each of its GPUs), and each keeps the completions of its
    own prompts. Members may bring different numbers of prompts, none included."""
    if group is None:
        return generate(prompts, seeds)
    shares: list = [None] * torch.distributed.get_world_size(group=group)
    torch.distributed.all_gather_object(shares, (prompts, seeds), group=group)
    everyone = [p for share, _ in shares for p in share]
    every_seed = None if any(s is None for _, s in shares) else [s for _, share in shares for s in share]
    completions = generate(everyone, every_seed)
    start = sum(len(share) for share, _ in shares[: torch.distributed.get_rank(group=group)])
    return completions[start : start + len(prompts)]


def engine_answer(sample, stop_ids: list[int], *, logprobs: bool) -> tuple[list[int], list[float] | None]:
    """One vLLM ``CompletionOutput`` → (completion ids, the sampled tokens' log-probs or None). A completion
    stopped by a stop token must end with it (it is trained like any other token); one appended here has no
    engine log-prob (left out: see rollout.behaviour_logprobs)."""
    ids = list(sample.token_ids)
    values = None
    if logprobs and sample.logprobs is not None:  # one {token id: Logprob} per sampled token
        values = [step[token].logprob for token, step in zip(ids, sample.logprobs)]
    if sample.finish_reason == "stop" and (not ids or ids[-1] not in stop_ids):
        ids.append(sample.stop_reason if isinstance(sample.stop_reason, int) else stop_ids[0])
    return ids, values


class VllmRollout:
    def __init__(self, policy, model_path: str, *, stop_ids: list[int], max_new_tokens: int, temperature: float,
                 gpu_memory_utilization: float, max_model_len: int, seed: int, top_p: float = 1.0, top_k: int = -1,
                 min_p: float = 0.0, repetition_penalty: float = 1.0, enable_prefix_caching: bool = True,
                 tensor_parallel_size: int = 1, logprobs: bool = False):
        check_vllm_available()
        from vllm import LLM

        # An in-process engine (as TRL's colocate mode): the weights can then be written into it directly. A
        # launched process has these set already; a lone one is a world of one.
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "localhost"),
                           ("MASTER_PORT", "29533")):
            os.environ.setdefault(key, value)
        self.policy = policy
        self.stop_ids = stop_ids
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.synced_step = 0  # gkd: the optimizer steps whose weights the engine holds
        # --top_p --top_k --min_p --repetition_penalty, in vLLM's spelling (top_k -1: no limit)
        self.filters = {"top_p": top_p, "top_k": top_k if top_k > 0 else -1, "min_p": min_p,
                        "repetition_penalty": repetition_penalty}
        self.group = tensor_parallel_group(tensor_parallel_size)
        self.want_logprobs = logprobs  # the rollout corrections' engine log-probs, with each completion
        self.llm = LLM(**colocated_engine_kwargs(
            model_path, rank=int(os.environ["RANK"]), tensor_parallel_size=tensor_parallel_size, seed=seed,
            gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
            enable_prefix_caching=enable_prefix_caching, logprobs=logprobs))
        self.sync_weights()  # --adapters or a resumed checkpoint already differ from the files on disk

    def __call__(self, prompts: list[list[int]], *, greedy: bool = False,
                 seeds: list[int] | None = None) -> list[list[int]]:
        """``seeds``: one per prompt, each completion drawn with its own (vLLM's per-request seed). With
        ``want_logprobs`` the answer carries the sampled tokens' log-probs (``Completions.logprobs``)."""
        from alignkit.generation.vllm_server import Completions

        answers = generate_in_group(lambda p, s: self._generate(p, greedy=greedy, seeds=s), prompts, seeds,
                                    self.group)
        out = Completions(ids for ids, _ in answers)
        out.logprobs = [values for _, values in answers] if self.want_logprobs else None
        return out

    def join_main(self) -> None:
        """While the main process evaluates alone, the others of its engine group take part in its
        generation with no prompts of their own (a tensor-parallel engine needs all its processes)."""
        if self.group is not None and 0 in torch.distributed.get_process_group_ranks(self.group):
            self([], greedy=True)

    def _generate(self, prompts: list[list[int]], *, greedy: bool,
                  seeds: list[int] | None) -> list[tuple[list[int], list[float] | None]]:
        """(completion ids, their log-probs or None) per prompt."""
        from vllm import SamplingParams

        def params_for(seed):
            return SamplingParams(n=1, temperature=0.0 if greedy else self.temperature, max_tokens=self.max_new_tokens,
                                  stop_token_ids=self.stop_ids, seed=seed, **({} if greedy else self.filters),
                                  **({"logprobs": 0} if self.want_logprobs else {}))

        params = [params_for(s) for s in seeds] if seeds is not None and not greedy else params_for(None)
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], sampling_params=params, use_tqdm=False)
        return [engine_answer(output.outputs[0], self.stop_ids, logprobs=self.want_logprobs) for output in outputs]

    @torch.no_grad()
    def sync_weights(self) -> None:
        """Every process writes the policy's weights into its own engine (a tensor-parallel engine's
        ``load_weights`` keeps each GPU's slice of the whole tensors)."""
        from alignkit.generation.vllm_server import merged_weights

        engine_model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        for name, weight in merged_weights(self.policy):
            engine_model.load_weights([(name, weight)])
        self.llm.reset_prefix_cache()
