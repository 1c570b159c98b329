"""``--use_vllm --vllm_mode server``: rollouts sampled by running `alignkit rollout` servers, TRL's vLLM server
(through TRL's ``VLLMClient``) or alignkit's transformers one (``--infer_backend transformers``,
alignkit/commands/rollout_server.py); after each optimizer step the policy's weights are pushed to each of them.
With several servers a request's prompts are split over them in contiguous chunks (ms-swift's ``VLLMClient.infer``)
and the answers joined back in order.

Only the sampling moves to the server; the loss's log-probs are recomputed by the trained model, as with the
colocated engine (alignkit/generation/vllm.py), except with --async_generate, where the server's log-probs of
its samples are π_old. vLLM samples with its own random streams: the per-prompt seeds of the transformers path
(process-count invariance) reach only the transformers server.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, nullcontext

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


def split_evenly(n: int, parts: int) -> list[slice]:
    """``parts`` contiguous slices covering ``range(n)`` once, in order, as ms-swift's ``VLLMInferClient.infer``
    splits a request over its servers: ⌈n / parts⌉ each, so the last servers may get fewer or none.

    >>> split_evenly(5, 2)
    [slice(0, 3, None), slice(3, 5, None)]
    >>> split_evenly(4, 3)
    [slice(0, 2, None), slice(2, 4, None), slice(4, 4, None)]
    """
    size = -(-n // parts)
    return [slice(min(i * size, n), min((i + 1) * size, n)) for i in range(parts)]


def _fan_out(work, items: list) -> list:
    """``[work(item) for item in items]``, the items in parallel threads (one request per server at a time)."""
    if len(items) <= 1:
        return [work(item) for item in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        return list(pool.map(work, items))


class ServerRollout:
    """prompt ids → raw completion ids from the servers; ``sync_weights`` pushes the policy after an update.

    ``clients``: one per rollout server (a ``TransformersRolloutClient`` or TRL's ``VLLMClient``). A request's prompts
    (and their per-prompt seeds, so a transformers server's samples do not depend on how many servers there are) are
    split over the servers by ``split_evenly``, sent in parallel, and the answers joined back in prompt order.

    With several training processes only the first holds the clients (one weight-sync group per server, as TRL's
    trainers): every process's prompts are gathered there, sent in one request, and each gets its own completions back.

    ``prefetch`` (--async_generate) sends the next step's request in the background; the call that asks for the
    same prompts and seeds takes its answer. ``sync_weights`` waits for that request first, so the prefetched
    completions are always the previous weights' samples: one step off-policy, never a mix."""

    def __init__(self, policy, clients: list, *, stop_ids: list[int], max_new_tokens: int, temperature: float,
                 top_p: float = 1.0, top_k: int = -1, min_p: float = 0.0, repetition_penalty: float = 1.0,
                 pad_id: int = 0):
        self.policy, self.clients = policy, clients  # no clients on the other training processes
        self.synced_step = 0  # gkd: the optimizer steps whose weights the server holds (connect() pushes step 0's)
        self.stop_ids, self.max_new_tokens, self.temperature = stop_ids, max_new_tokens, temperature
        self.pad_id = pad_id
        self.top_p, self.top_k, self.min_p, self.repetition_penalty = top_p, top_k, min_p, repetition_penalty
        self.pending = None  # (prompts, seeds, _Request) of a prefetched request
        self._executor = None
        self.want_logprobs = False  # vLLM: return the sampled tokens' log-probs (--async_generate's π_old)

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
        if self.clients:
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
        """(completion ids, their log-probs or None) for ``prompts`` from the servers, each sent its chunk."""
        chunks = [(client, prompts[part], None if seeds is None else seeds[part])
                  for client, part in zip(self.clients, split_evenly(len(prompts), len(self.clients)))
                  if part.start < part.stop]
        answers = _fan_out(lambda chunk: self._ask(*chunk, greedy), chunks)
        completions = [ids for chunk_ids, _ in answers for ids in chunk_ids]
        logprobs = (None if any(values is None for _, values in answers)
                    else [row for _, values in answers for row in values])
        return completions, logprobs

    def _ask(self, client, prompts: list[list[int]], seeds: list[int] | None, greedy: bool):
        """(completion ids, their log-probs or None) for ``prompts`` from one server."""
        from alignkit.generation.rollout_client import TransformersRolloutClient

        if isinstance(client, TransformersRolloutClient):
            completions, logprobs = client.generate(
                prompts, seeds=seeds, greedy=greedy, pad_id=self.pad_id, stop_token_ids=self.stop_ids,
                max_tokens=self.max_new_tokens, temperature=0.0 if greedy else self.temperature, top_p=self.top_p,
                top_k=max(self.top_k, 0), min_p=self.min_p, repetition_penalty=self.repetition_penalty)
        else:
            # TRL's client spells "no top-k limit" 0 (ms-swift's and vLLM's -1); logprobs=0: the sampled token's only
            sampling = {"temperature": 0.0} if greedy else {
                "temperature": self.temperature, "top_p": self.top_p, "top_k": max(self.top_k, 0),
                "min_p": self.min_p, "repetition_penalty": self.repetition_penalty}
            answer = client.generate(prompts=prompts, n=1, max_tokens=self.max_new_tokens,
                                          logprobs=0 if self.want_logprobs else None,
                                          generation_kwargs={"stop_token_ids": self.stop_ids}, **sampling)
            completions = answer["completion_ids"]
            logprobs = ([[float(top[0]) for top in row] for row in answer["logprobs"]]
                        if self.want_logprobs and answer.get("logprobs") is not None else None)
        if len(completions) != len(prompts):
            raise AlignkitError(f"the rollout server at {client.base_url} answered {len(completions)} completions "
                                f"for {len(prompts)} prompts")
        return [list(ids) for ids in completions], logprobs

    @torch.no_grad()
    def sync_weights(self) -> None:
        """The first process pushes to every server; under DDP every process holds the same weights, under ZeRO-3
        every process takes part in gathering them. One walk of ``merged_weights`` feeds every server: each tensor
        goes to the vLLM servers as it is gathered, and into the one safetensors body the transformers servers get."""
        from alignkit.generation.rollout_client import TransformersRolloutClient, weights_body

        if self.pending is not None:  # the prefetched request is sampled with the weights it was sent under
            self.pending[2].wait()
        if not self.clients:
            if zero3_sharded(self.policy):
                for _ in merged_weights(self.policy):
                    pass
            return
        http = [c for c in self.clients if isinstance(c, TransformersRolloutClient)]
        vllm = [c for c in self.clients if not isinstance(c, TransformersRolloutClient)]
        with ExitStack() as updates:
            for client in vllm:
                updates.enter_context(client.weight_update())
            named = _sent_on(vllm, merged_weights(self.policy))
            if http:
                body = weights_body(named)
            else:
                for _ in named:
                    pass
        for client in vllm:
            client.reset_prefix_cache()  # cached prompts were computed with the old weights
        if http:
            _fan_out(lambda client: client.push_weights(body), http)


def _sent_on(vllm_clients: list, named: Iterator[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """``named``, each tensor sent to every vLLM server (over its NCCL group) as it passes."""
    for name, tensor in named:
        for client in vllm_clients:
            client.update_named_param(name, tensor)
        yield name, tensor


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


def server_addresses(args) -> list[tuple[str | None, str, int, int]]:
    """(base URL or None, host, port, weight-sync group port) of each rollout server, as ms-swift's ``VLLMClient``
    reads the flags: --vllm_server_base_url when given (hosts and ports unused), else the i-th
    --vllm_server_host with the i-th --vllm_server_port; --vllm_server_group_port one per server, by default
    51216, 51217, ... (config/online_checks.py has refused lists of different lengths)."""
    if args.vllm_server_base_url:
        servers = [(url, "0.0.0.0", 8000) for url in args.vllm_server_base_url]
    else:
        servers = [(None, host, port) for host, port in zip(args.vllm_server_host, args.vllm_server_port)]
    group_ports = args.vllm_server_group_port or [51216 + i for i in range(len(servers))]
    return [(url, host, port, group) for (url, host, port), group in zip(servers, group_ports)]


def connect(policy, args, **sampling) -> ServerRollout:
    """Clients of the servers that --vllm_server_host/--vllm_server_port (or --vllm_server_base_url) name, waiting
    up to --vllm_server_timeout seconds for each: per server, by its /health/ answer, an ``alignkit rollout
    --infer_backend transformers`` server (weights over HTTP) or TRL's vLLM server (its weight-sync group opened on
    this process's GPU)."""
    from alignkit.generation.rollout_client import BACKEND, TransformersRolloutClient, server_backend

    clients = []
    world = _world()
    if world is None or world[0] == 0:
        for url, host, port, group_port in server_addresses(args):
            base_url = url or f"http://{host}:{port}"
            if server_backend(base_url, args.vllm_server_timeout) == BACKEND:
                clients.append(TransformersRolloutClient(base_url))
                logger.info("Rollouts from the transformers rollout server at %s", base_url)
            else:
                clients.append(_vllm_client(url, host, port, group_port, args.vllm_server_timeout))
    rollout = ServerRollout(policy, clients, **sampling)
    # π_old of --async_generate, and the rollout corrections' engine log-probs (gkd's arguments have neither)
    rollout.want_logprobs = any(getattr(args, flag, None) not in (None, False) for flag in (
        "async_generate", "rollout_importance_sampling_mode", "log_rollout_offpolicy_metrics",
        "off_policy_sequence_mask_delta"))
    rollout.sync_weights()  # the servers loaded --model from disk; a resumed or adapter-started policy differs
    return rollout


def _vllm_client(base_url: str | None, host: str, port: int, group_port: int, timeout: float):
    from alignkit.config import rollout_args

    rollout_args.check_server_packages("--vllm_mode server")
    from trl.generation.vllm_client import VLLMClient

    client = VLLMClient(base_url=base_url, host=host, server_port=port, group_port=group_port,
                        connection_timeout=timeout)
    client.init_communicator(device=torch.cuda.current_device())
    logger.info("Rollouts from the vLLM server at %s", client.base_url)
    return client
