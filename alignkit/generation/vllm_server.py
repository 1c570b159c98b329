"""``--use_vllm --vllm_mode server``: rollouts sampled by a running `alignkit rollout` server (TRL's vLLM server),
through TRL's ``VLLMClient``; after each optimizer step the policy's weights are pushed to it.

Only the sampling moves to the server; the loss's log-probs are recomputed by the trained model, as with the
colocated engine (alignkit/generation/vllm.py). The server samples with vLLM's own random streams: the
per-prompt seeds of the transformers path (process-count invariance) do not reach it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext

import torch

from alignkit.errors import AlignkitError

logger = logging.getLogger("alignkit")


def merged_weights(policy) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's weights under the base model's names, LoRA merged in (unmerged again when done): what a
    server is sent, and what ``VllmRollout.sync_weights`` writes into an in-process engine.

    Under DeepSpeed ZeRO-3 each process holds a shard of every parameter: the weights are gathered (a collective,
    so every process must walk this generator to its end) one parameter at a time, bounding the memory to one
    whole tensor, or all at once with LoRA, whose merge needs the whole base weights (TRL's _move_model_to_vllm).
    A yielded tensor is whole until the next one is asked for."""
    is_peft = hasattr(policy, "merge_adapter")
    params = list(policy.named_parameters())
    with _gathered([p for _, p in params] if is_peft else []):
        if is_peft:
            policy.merge_adapter()
        try:
            for name, param in params:
                if is_peft:
                    if "lora_" in name or "original_module" in name:
                        continue  # merged already / replaced by modules_to_save
                    name = name.removeprefix("base_model.model.").replace(".base_layer", "")
                    name = name.replace("modules_to_save.default.", "")
                with _gathered([] if is_peft else [param]):
                    yield name, param.data
        finally:
            if is_peft:
                policy.unmerge_adapter()


def zero3_sharded(model) -> bool:
    """DeepSpeed ZeRO-3 has partitioned the model's parameters (it marks each with a ``ds_id``)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def _gathered(params: list) -> AbstractContextManager:
    """DeepSpeed's gather of ``params`` where ZeRO-3 partitioned them (read-only: the shards stay as they were)."""
    if not any(hasattr(p, "ds_id") for p in params):
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params)


class ServerRollout:
    """prompt ids → raw completion ids from the server; ``sync_weights`` pushes the policy after an update.

    With several training processes only the first holds the client (one weight-sync group, as TRL's trainers):
    every process's prompts are gathered there, sent in one request, and each gets its own completions back."""

    def __init__(self, policy, client, *, stop_ids: list[int], max_new_tokens: int, temperature: float,
                 top_p: float = 1.0, top_k: int = -1, min_p: float = 0.0, repetition_penalty: float = 1.0):
        self.policy, self.client = policy, client
        self.synced_step = 0  # gkd: the optimizer steps whose weights the server holds (connect() pushes step 0's)
        self.stop_ids, self.max_new_tokens, self.temperature = stop_ids, max_new_tokens, temperature
        # TRL's client spells "no top-k limit" 0 (ms-swift's and vLLM's -1)
        self.filters = {"top_p": top_p, "top_k": max(top_k, 0), "min_p": min_p,
                        "repetition_penalty": repetition_penalty}

    def __call__(self, prompts: list[list[int]], *, greedy: bool = False,
                 seeds: list[int] | None = None) -> list[list[int]]:
        sampling = {"temperature": 0.0} if greedy else {"temperature": self.temperature, **self.filters}
        world = _world()
        everyone = [prompts] if world is None else _gather(prompts, world)
        answers = None
        if self.client is not None:
            flat = [p for share in everyone for p in share]
            completions = self.client.generate(prompts=flat, n=1, max_tokens=self.max_new_tokens, logprobs=None,
                                               generation_kwargs={"stop_token_ids": self.stop_ids},
                                               **sampling)["completion_ids"]
            if len(completions) != len(flat):
                raise AlignkitError(f"the rollout server answered {len(completions)} completions for {len(flat)} "
                                    "prompts")
            answers, start = [], 0
            for share in everyone:
                answers.append([list(ids) for ids in completions[start : start + len(share)]])
                start += len(share)
        return answers[0] if world is None else _scatter(answers, world)

    @torch.no_grad()
    def sync_weights(self) -> None:
        """The first process pushes; under DDP every process holds the same weights, under ZeRO-3 every process
        takes part in gathering them."""
        if self.client is None:
            if zero3_sharded(self.policy):
                for _ in merged_weights(self.policy):
                    pass
            return
        with self.client.weight_update():
            for name, tensor in merged_weights(self.policy):
                self.client.update_named_param(name, tensor)
        self.client.reset_prefix_cache()  # cached prompts were computed with the old weights


def _world() -> tuple[int, int] | None:
    """(rank, processes) when several processes train, else None."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if torch.distributed.get_world_size() > 1:
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return None


def _gather(prompts: list[list[int]], world: tuple[int, int]) -> list[list[list[int]]]:
    shares: list = [None] * world[1]
    torch.distributed.all_gather_object(shares, prompts)
    return shares


def _scatter(answers: list | None, world: tuple[int, int]) -> list[list[int]]:
    """The first process's per-process answers → this process's."""
    box = [answers]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0][world[0]]


def connect(policy, args, **sampling) -> ServerRollout:
    """A client of the server that --vllm_server_host/--vllm_server_port (or --vllm_server_base_url) name, its
    weight-sync group opened on this process's GPU, waiting up to --vllm_server_timeout seconds for it."""
    from alignkit.config import rollout_args

    rollout_args.check_server_packages("--vllm_mode server")
    from trl.generation.vllm_client import VLLMClient

    client = None
    world = _world()
    if world is None or world[0] == 0:
        base_url = args.vllm_server_base_url[0] if args.vllm_server_base_url else None
        host = args.vllm_server_host[0] if args.vllm_server_host else None
        client = VLLMClient(base_url=base_url, host=host or "0.0.0.0", server_port=args.vllm_server_port[0],
                            group_port=args.vllm_server_group_port[0] if args.vllm_server_group_port else 51216,
                            connection_timeout=args.vllm_server_timeout)
        client.init_communicator(device=torch.cuda.current_device())
        logger.info("Rollouts from the vLLM server at %s", client.base_url)
    rollout = ServerRollout(policy, client, **sampling)
    rollout.sync_weights()  # the server loaded --model from disk; a resumed or adapter-started policy differs
    return rollout
