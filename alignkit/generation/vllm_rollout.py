"""Rollouts with vLLM (``--use_vllm``): an engine on the training GPU, refreshed with the policy's weights.

Only the sampling moves to vLLM; log-probs for the loss are always recomputed by the trained model, so the
engine's numerics never enter the objective. After each policy update the loop calls ``sync_weights``,
which merges LoRA into the base weights (and unmerges after), streams every tensor to the engine, and
drops its prefix cache.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from alignkit.errors import AlignkitError


def check_vllm_available() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise AlignkitError("--use_vllm needs the vllm package (`pip install vllm`); without it, leave --use_vllm "
                            "off and rollouts use transformers' generate")
    if not torch.cuda.is_available():
        raise AlignkitError("--use_vllm needs a CUDA GPU; on this machine leave it off (transformers' generate is used)")


class VLLMGenerator:
    def __init__(self, policy, model_path: str, *, stop_ids: list[int], max_new_tokens: int, temperature: float,
                 gpu_memory_utilization: float, max_model_len: int, seed: int):
        check_vllm_available()
        from vllm import LLM

        # An in-process engine (as TRL's colocate mode): the weights can then be written into it directly.
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "localhost"),
                           ("MASTER_PORT", "29533")):
            os.environ.setdefault(key, value)
        self.policy = policy
        self.stop_ids = stop_ids
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.llm = LLM(model=model_path, gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                       seed=seed, distributed_executor_backend="external_launcher")
        self.sync_weights()  # --adapters or a resumed checkpoint already differ from the files on disk

    def __call__(self, prompts: list[list[int]], *, greedy: bool = False,
                 seeds: list[int] | None = None) -> list[list[int]]:
        """``seeds``: one per prompt, each completion drawn with its own (vLLM's per-request seed)."""
        from vllm import SamplingParams

        def params_for(seed):
            return SamplingParams(n=1, temperature=0.0 if greedy else self.temperature, max_tokens=self.max_new_tokens,
                                  stop_token_ids=self.stop_ids, seed=seed)

        params = [params_for(s) for s in seeds] if seeds is not None and not greedy else params_for(None)
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], sampling_params=params, use_tqdm=False)
        completions = []
        for output in outputs:
            sample = output.outputs[0]
            ids = list(sample.token_ids)
            # A completion stopped by a stop token must end with it: it is trained like any other token.
            if sample.finish_reason == "stop" and (not ids or ids[-1] not in self.stop_ids):
                ids.append(sample.stop_reason if isinstance(sample.stop_reason, int) else self.stop_ids[0])
            completions.append(ids)
        return completions

    @torch.no_grad()
    def sync_weights(self) -> None:
        engine_model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        policy = self.policy
        is_peft = hasattr(policy, "merge_adapter")
        if is_peft:
            policy.merge_adapter()
        try:
            for name, param in policy.named_parameters():
                if is_peft:
                    if "lora_" in name or "original_module" in name:
                        continue  # merged already / replaced by modules_to_save
                    name = name.removeprefix("base_model.model.").replace(".base_layer", "")
                    name = name.replace("modules_to_save.default.", "")
                engine_model.load_weights([(name, param.data)])
        finally:
            if is_peft:
                policy.unmerge_adapter()
        self.llm.reset_prefix_cache()
