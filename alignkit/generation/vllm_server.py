"""``--use_vllm --vllm_mode server``: rollouts sampled by a running `alignkit rollout` server, TRL's vLLM server
(through TRL's ``VLLMClient``) or alignkit's transformers one (``--infer_backend transformers``,
alignkit/commands/rollout_server.py); after each optimizer step the policy's weights are pushed to it.

Only the sampling moves to the server; the loss's log-probs are recomputed by the trained model, as with the
colocated engine (alignkit/generation/vllm.py), except with --async_generate, where the server's log-probs of
its samples are π_old. vLLM samples with its own random streams: the per-prompt seeds of the transformers path
(process-count invariance) reach only the transformers server.
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


class Completions(list):
    """Raw completion ids per prompt, with the sampling policy's log-probs of their tokens when the server sent
    them (``logprobs``; None otherwise): what --async_generate takes as π_old."""

    logprobs: list[list[float]] | None = None


class ServerRollout:
    """prompt ids → raw completion ids from the server; ``sync_weights`` pushes the policy after an update.

    With several training processes only the first holds the client (one weight-sync group, as TRL's trainers):
    every process's prompts are gathered there, sent in one request, and each gets its own completions back.

    ``prefetch`` (--async_generate) sends the next step's request in the background; the call that asks for the
    same prompts and seeds takes its answer. ``sync_weights`` waits for that request first, so the prefetched
    completions are always the previous weights' samples: one step off-policy, never a mix."""

    def __init__(self, policy, client, *, stop_ids: list[int], max_new_tokens: int, temperature: float,
                 top_p: float = 1.0, top_k: int = -1, min_p: float = 0.0, repetition_penalty: float = 1.0,
                 pad_id: int = 0):
        self.policy, self.client = policy, client
        self.synced_step = 0  # gkd: the optimizer steps whose weights the server holds (connect() pushes step 0's)
        self.stop_ids, self.max_new_tokens, self.temperature = stop_ids, max_new_tokens, temperature
        self.pad_id = pad_id
        self.top_p, self.top_k, self.min_p, self.repetition_penalty = top_p, top_k, min_p, repetition_penalty
        self.pending = None  # (prompts, seeds, _Request) of a prefetched request
        self._executor = None
        self.want_logprobs = False  # vLLM: return the sampled tokens' log-probs (--async_generate's π_old)

    @property
    def transformers_backend(self) -> bool:
        from alignkit.generation.rollout_client import TransformersRolloutClient

        return isinstance(self.client, TransformersRolloutClient)

    def __call__(self, prompts: list[list[int]], *, greedy: bool = False,
                 seeds: list[int] | None = None) -> Completions:
        if self.pending is not None:
            pending_prompts, pending_seeds, request = self.pending
            self.pending = None
            if (greedy, pending_prompts, pending_seeds) != (False, prompts, seeds):
                raise AlignkitError("--async_generate: the step asked for other prompts than the ones prefetched")
            return request.share()
        return self._submit(prompts, seeds, greedy, background=False).share()

    def prefetch(self, prompts: list[list[int]], *, seeds: list[int] | None = None) -> None:
        """Start sampling the next step's completions now, with the weights the server holds."""
        self.pending = (prompts, seeds, self._submit(prompts, seeds, False, background=True))

    def _submit(self, prompts, seeds, greedy: bool, *, background: bool) -> _Request:
        """Gather every process's request (a collective, on the calling thread) and send it from the first process,
        in a background thread when ``background``."""
        world = _world()
        everyone = [(prompts, seeds)] if world is None else _gather((prompts, seeds), world)
        request = _Request(everyone, world)
        if self.client is not None:
            flat = [p for share, _ in everyone for p in share]
            flat_seeds = None if any(s is None for _, s in everyone) else [x for _, s in everyone for x in s]
            if background:
                from concurrent.futures import ThreadPoolExecutor

                self._executor = self._executor or ThreadPoolExecutor(max_workers=1)
                request.future = self._executor.submit(self._request, flat, flat_seeds, greedy)
            else:
                request.result = self._request(flat, flat_seeds, greedy)
        return request

    def _request(self, prompts: list[list[int]], seeds: list[int] | None, greedy: bool):
        """(completion ids, their log-probs or None) for ``prompts`` from the server."""
        if self.transformers_backend:
            completions, logprobs = self.client.generate(
                prompts, seeds=seeds, greedy=greedy, pad_id=self.pad_id, stop_token_ids=self.stop_ids,
                max_tokens=self.max_new_tokens, temperature=0.0 if greedy else self.temperature, top_p=self.top_p,
                top_k=max(self.top_k, 0), min_p=self.min_p, repetition_penalty=self.repetition_penalty)
        else:
            # TRL's client spells "no top-k limit" 0 (ms-swift's and vLLM's -1); logprobs=0: the sampled token's only
            sampling = {"temperature": 0.0} if greedy else {
                "temperature": self.temperature, "top_p": self.top_p, "top_k": max(self.top_k, 0),
                "min_p": self.min_p, "repetition_penalty": self.repetition_penalty}
            answer = self.client.generate(prompts=prompts, n=1, max_tokens=self.max_new_tokens,
                                          logprobs=0 if self.want_logprobs else None,
                                          generation_kwargs={"stop_token_ids": self.stop_ids}, **sampling)
            completions = answer["completion_ids"]
            logprobs = ([[float(top[0]) for top in row] for row in answer["logprobs"]]
                        if self.want_logprobs and answer.get("logprobs") is not None else None)
        if len(completions) != len(prompts):
            raise AlignkitError(f"the rollout server answered {len(completions)} completions for {len(prompts)} "
                                "prompts")
        return [list(ids) for ids in completions], logprobs

    @torch.no_grad()
    def sync_weights(self) -> None:
        """The first process pushes; under DDP every process holds the same weights, under ZeRO-3 every process
        takes part in gathering them."""
        if self.pending is not None:  # the prefetched request is sampled with the weights it was sent under
            self.pending[2].wait()
        if self.client is None:
            if zero3_sharded(self.policy):
                for _ in merged_weights(self.policy):
                    pass
            return
        if self.transformers_backend:
            self.client.push_weights(merged_weights(self.policy))
            return
        with self.client.weight_update():
            for name, tensor in merged_weights(self.policy):
                self.client.update_named_param(name, tensor)
        self.client.reset_prefix_cache()  # cached prompts were computed with the old weights


class _Request:
    """A generation request of every process: the first process's server answer (now, or from a background
    thread) split back into each process's completions."""

    def __init__(self, everyone: list, world: tuple[int, int] | None):
        self.everyone, self.world = everyone, world
        self.future = None
        self.result = None  # (completion ids, log-probs or None) of all processes' prompts, on the first process

    def wait(self) -> None:
        if self.future is not None:
            self.result, self.future = self.future.result(), None

    def share(self) -> Completions:
        """This process's completions (a collective with several processes: every process calls it)."""
        self.wait()
        answers = None
        if self.result is not None:
            completions, logprobs = self.result
            answers, start = [], 0
            for share, _ in self.everyone:
                answers.append((completions[start : start + len(share)],
                                None if logprobs is None else logprobs[start : start + len(share)]))
                start += len(share)
        mine = answers[0] if self.world is None else _scatter(answers, self.world)
        out = Completions(mine[0])
        out.logprobs = mine[1]
        return out


def _world() -> tuple[int, int] | None:
    """(rank, processes) when several processes train, else None."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if torch.distributed.get_world_size() > 1:
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return None


def _gather(request, world: tuple[int, int]) -> list:
    shares: list = [None] * world[1]
    torch.distributed.all_gather_object(shares, request)
    return shares


def _scatter(answers: list | None, world: tuple[int, int]):
    """The first process's per-process answers → this process's."""
    box = [answers]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0][world[0]]


def connect(policy, args, **sampling) -> ServerRollout:
    """A client of the server that --vllm_server_host/--vllm_server_port (or --vllm_server_base_url) name, waiting
    up to --vllm_server_timeout seconds for it: an ``alignkit rollout --infer_backend transformers`` server (weights
    over HTTP), else TRL's vLLM server (its weight-sync group opened on this process's GPU)."""
    from alignkit.generation.rollout_client import BACKEND, TransformersRolloutClient, server_backend

    client = None
    world = _world()
    if world is None or world[0] == 0:
        host = args.vllm_server_host[0] if args.vllm_server_host else "0.0.0.0"
        base_url = (args.vllm_server_base_url[0] if args.vllm_server_base_url
                    else f"http://{host}:{args.vllm_server_port[0]}")
        if server_backend(base_url, args.vllm_server_timeout) == BACKEND:
            client = TransformersRolloutClient(base_url)
            logger.info("Rollouts from the transformers rollout server at %s", base_url)
        else:
            client = _vllm_client(args)
    rollout = ServerRollout(policy, client, **sampling)
    # π_old of --async_generate, and the rollout corrections' engine log-probs (gkd's arguments have neither)
    rollout.want_logprobs = any(getattr(args, flag, None) not in (None, False) for flag in (
        "async_generate", "rollout_importance_sampling_mode", "log_rollout_offpolicy_metrics",
        "off_policy_sequence_mask_delta"))
    rollout.sync_weights()  # the server loaded --model from disk; a resumed or adapter-started policy differs
    return rollout


def _vllm_client(args):
    from alignkit.config import rollout_args

    rollout_args.check_server_packages("--vllm_mode server")
    from trl.generation.vllm_client import VLLMClient

    base_url = args.vllm_server_base_url[0] if args.vllm_server_base_url else None
    host = args.vllm_server_host[0] if args.vllm_server_host else None
    client = VLLMClient(base_url=base_url, host=host or "0.0.0.0", server_port=args.vllm_server_port[0],
                        group_port=args.vllm_server_group_port[0] if args.vllm_server_group_port else 51216,
                        connection_timeout=args.vllm_server_timeout)
    client.init_communicator(device=torch.cuda.current_device())
    logger.info("Rollouts from the vLLM server at %s", client.base_url)
    return client
