"""``alignkit rollout``: ms-swift's ``swift rollout`` flags (swift/arguments/deploy_args.py RolloutArguments),
served by TRL's vLLM server (``trl vllm-serve``, trl/scripts/vllm_serve.py) for ``--vllm_mode server``."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from alignkit.config.options import option
from alignkit.errors import AlignkitError

NO_GYM = ("a gym environment is driven by a multi-turn scheduler: add --multi_turn_scheduler gym_scheduler (or a "
          "scheduler a plugin file builds on it)")


def check_server_packages(what: str) -> None:
    """vLLM and TRL are what the rollout server and its client are; say so before anything else runs."""
    missing = [name for name in ("vllm", "trl") if importlib.util.find_spec(name) is None]
    if missing:
        raise AlignkitError(f"{what} runs on TRL's vLLM server and client, which need {' and '.join(missing)} "
                            f"(`pip install trl[vllm]`; vLLM needs a CUDA GPU)")


@dataclass
class RolloutArguments:
    model: str | None = option(None, "The model served (a local directory or hub id): the policy's starting weights.",
                               aliases=("--model_id_or_path",))
    model_revision: str | None = option(None, "Hub revision of --model.")
    infer_backend: str = option(
        "vllm", "vllm: TRL's vLLM server (a CUDA GPU); transformers: alignkit's own server on transformers' generate "
        "(any device, CPU included), the samples and per-prompt seeds of in-process generation.",
        choices=("vllm", "transformers"))
    host: str = option("0.0.0.0", "Address to listen on (ms-swift's default 0.0.0.0).")
    port: int = option(8000, "Port to listen on.")
    vllm_tensor_parallel_size: int = option(1, "vLLM tensor parallelism (GPUs per model copy).")
    vllm_data_parallel_size: int = option(
        1, "vLLM data parallelism (model copies). --data_parallel_size: ms-swift 3.x's name of the same flag, which "
        "its GRPO examples still use.", aliases=("--data_parallel_size",))
    vllm_gpu_memory_utilization: float = option(0.9, "Fraction of each GPU's memory vLLM may use.")
    vllm_max_model_len: int | None = option(None, "vLLM's context length (unset: the model's).")
    vllm_enable_prefix_caching: bool = option(True, "vLLM's automatic prefix caching.")
    vllm_enforce_eager: bool = option(False, "Run vLLM without CUDA graphs.")
    dtype: str = option("auto", "Weights' precision in vLLM (auto, float16, bfloat16, float32).",
                        aliases=("--torch_dtype",), choices=("auto", "float16", "bfloat16", "float32", "fp16", "bf16",
                                                             "fp32"))
    log_level: str = option("info", "The server's log level.",
                            choices=("critical", "error", "warning", "info", "debug", "trace"))
    trust_remote_code: bool = option(False, "Let vLLM run the model repository's own code.")
    vllm_use_async_engine: bool | None = option(
        None, "ms-swift: serve with vLLM's asynchronous engine.",
        no_effect="vLLM's OpenAI server (what `trl vllm-serve` runs) always uses its asynchronous engine")
    vllm_enable_lora: bool = option(
        False, "ms-swift: receive only LoRA adapters from the trainer.",
        no_effect="the trainer sends the merged weights after each update; the samples are the same, only the "
        "sync's size differs")
    external_plugins: list[str] = option(
        [], "ms-swift: plugin files for the server's multi-turn scheduler (--multi_turn_scheduler); the trainer loads "
        "them too (it drives the turns). Reward plugins are the trainer's own --external_plugins.", nargs="+")
    enable_thinking: bool | None = option(
        None, "ms-swift: the chat template's thinking switch.",
        no_effect="the trainer renders the prompts (its own --enable_thinking) and sends token ids")
    max_length: int | None = option(
        None, "ms-swift: the template's length limit for the requests it encodes.",
        no_effect="the trainer sends token ids already cut to its own --max_length; the server's limit is "
        "--vllm_max_model_len")
    multi_turn_scheduler: str | None = option(
        None, "ms-swift: the multi-turn scheduler of the rollouts (a built-in, or registered by --external_plugins). "
        "Announced at /get_engine_type/: a trainer without one of its own adopts it and drives the turns, each "
        "sampled here.")
    max_turns: int | None = option(
        None, "ms-swift: most model turns of a multi-turn rollout (with --multi_turn_scheduler; the trainer adopts "
        "it).")
    use_gym_env: bool | None = option(
        None, "ms-swift: the environments' total_reward is a reward (with --multi_turn_scheduler gym_scheduler); "
        "announced, and a trainer that does not set its own --use_gym_env adopts it. Unset: on with --gym_env.")
    gym_env: str | None = option(
        None, "ms-swift: the gym environment of rows without env_config.name (math_env, or one --external_plugins "
        "registers); announced to the trainer, which runs the environments.")
