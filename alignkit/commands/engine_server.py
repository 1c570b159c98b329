"""`alignkit deploy|app --infer_backend vllm|sglang`: the model served by the engine's own OpenAI-compatible
server (`vllm serve`, `python -m sglang.launch_server`), as ms-swift's deploy serves through vLLM/SGLang.

ms-swift's flags are translated into the server's own (``server_command``, a pure function the tests read);
the server then runs in the foreground (deploy) or behind the chat page (app, which becomes its client).
Where the package is missing the command stops before anything starts, naming it."""

from __future__ import annotations

import importlib.util
import json
import logging
import shlex
import socket
import subprocess
import sys
import time
import urllib.request

from alignkit.errors import AlignkitError

logger = logging.getLogger("alignkit")

PACKAGES = {"vllm": "vllm", "sglang": "sglang"}
# --task_type -> vLLM's pooling conversion (vLLM >= 0.10.2: `--runner pooling --convert X`); its own server then
# answers /v1/embeddings, /classify, /score and /rerank for it.
VLLM_POOLING = {"embedding": "embed", "seq_cls": "classify", "reranker": "classify"}
VLLM_DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
               "fp16": "float16", "float16": "float16"}


def require_engine(backend: str) -> None:
    package = PACKAGES.get(backend)
    if package is None:
        raise AlignkitError(f"--infer_backend {backend}: deploy and app serve with transformers, vllm or sglang")
    if importlib.util.find_spec(package) is None:
        raise AlignkitError(f"--infer_backend {backend} serves through {package}'s own OpenAI-compatible server: "
                            f"install it (pip install {package}; a CUDA GPU), or use --infer_backend transformers")


def served_adapters(args) -> tuple[str | None, dict[str, str]]:
    """(base model path, {served name: adapter dir}) of deploy's --model/--adapters/--ckpt_dir."""
    from alignkit.commands.adapter_names import parse_adapters
    from alignkit.models.load import resolve_checkpoint, resolve_model_path

    default_dir, named = parse_adapters(list(args.adapters), args.ckpt_dir)
    model, default_adapters = resolve_checkpoint(args.model, [], default_dir)
    adapters = ({"default": default_adapters[0]} if default_adapters else {}) | named
    return resolve_model_path(model), adapters


def server_command(backend: str, args, model_path: str, adapters: dict[str, str], *, host: str, port: int,
                   served_name: str) -> list[str]:
    """The engine server's command line for ms-swift's deploy flags ``args`` (a DeployArguments or AppArguments)."""
    get = lambda name, default=None: getattr(args, name, default)  # noqa: E731  (app has fewer flags than deploy)
    task_type = get("task_type", "causal_lm")
    if backend == "sglang":
        if adapters:
            raise AlignkitError("--infer_backend sglang serves a full model: merge the adapter first "
                                "(`alignkit export --adapters DIR --merge_lora true`)")
        if task_type not in ("causal_lm", "embedding"):
            raise AlignkitError(f"--task_type {task_type} with --infer_backend sglang: serve it with --infer_backend "
                                "vllm")
        command = [sys.executable, "-m", "sglang.launch_server", "--model-path", model_path, "--host", host,
                   "--port", str(port), "--served-model-name", served_name, "--tp-size", str(get("sglang_tp_size", 1))]
        if get("sglang_context_length"):
            command += ["--context-length", str(args.sglang_context_length)]
        if get("api_key"):
            command += ["--api-key", args.api_key]
        if get("trust_remote_code"):
            command.append("--trust-remote-code")
        if get("dtype", "auto") in VLLM_DTYPES:
            command += ["--dtype", VLLM_DTYPES[args.dtype]]
        if task_type == "embedding":
            command.append("--is-embedding")
        return command
    command = ["vllm", "serve", model_path, "--host", host, "--port", str(port), "--served-model-name", served_name,
               "--gpu-memory-utilization", str(get("vllm_gpu_memory_utilization", 0.9)),
               "--tensor-parallel-size", str(get("vllm_tensor_parallel_size", 1)),
               "--data-parallel-size", str(get("vllm_data_parallel_size", 1))]
    max_model_len = get("vllm_max_model_len") or get("max_length")
    if max_model_len:
        command += ["--max-model-len", str(max_model_len)]
    if get("vllm_enforce_eager"):
        command.append("--enforce-eager")
    if get("vllm_enable_prefix_caching"):
        command.append("--enable-prefix-caching")
    if get("vllm_max_num_seqs"):
        command += ["--max-num-seqs", str(args.vllm_max_num_seqs)]
    if get("vllm_limit_mm_per_prompt"):
        command += ["--limit-mm-per-prompt", args.vllm_limit_mm_per_prompt]
    if get("dtype", "auto") in VLLM_DTYPES:
        command += ["--dtype", VLLM_DTYPES[args.dtype]]
    if get("api_key"):
        command += ["--api-key", args.api_key]
    if get("trust_remote_code"):
        command.append("--trust-remote-code")
    if task_type in VLLM_POOLING:
        command += ["--runner", "pooling", "--convert", VLLM_POOLING[task_type]]
    elif task_type != "causal_lm":
        raise AlignkitError(f"--task_type {task_type} with --infer_backend vllm: vLLM serves causal_lm, embedding, "
                            "seq_cls and reranker models")
    if get("num_labels"):
        command += ["--hf-overrides", json.dumps({"num_labels": args.num_labels})]
    # deploy's sampling defaults for requests that give none (vLLM's --override-generation-config).
    defaults = {"max_new_tokens": get("max_new_tokens"), "temperature": get("temperature"), "top_p": get("top_p")}
    command += ["--generation-config", "vllm", "--override-generation-config",
                json.dumps({k: v for k, v in defaults.items() if v is not None})]
    if get("agent_template"):  # tools rendered by the model's template, <tool_call> parsed by vLLM's hermes parser
        command += ["--enable-auto-tool-choice", "--tool-call-parser", args.agent_template]
    if get("enable_thinking") is not None:  # the chat template's switch, for requests that do not set it
        command += ["--default-chat-template-kwargs", json.dumps({"enable_thinking": args.enable_thinking})]
    if adapters:
        command += ["--enable-lora", "--lora-modules", *[f"{name}={path}" for name, path in adapters.items()]]
    return command


def run_engine_server(args) -> int:
    """deploy --infer_backend vllm|sglang: the engine's own server in the foreground, on --host/--port."""
    from pathlib import Path

    require_engine(args.infer_backend)
    model_path, adapters = served_adapters(args)
    served_name = args.served_model_name or Path(args.ckpt_dir or args.model or model_path).name
    command = server_command(args.infer_backend, args, model_path, adapters, host=args.host, port=args.port,
                             served_name=served_name)
    logger.info("Serving through %s: %s", args.infer_backend, shlex.join(command))
    return subprocess.call(command)


def start_engine_for_app(args) -> tuple[subprocess.Popen, str]:
    """app --infer_backend vllm|sglang: the engine's server on a free loopback port, and its base URL once it
    answers (the page then chats with it as with any --base_url)."""
    require_engine(args.infer_backend)
    model_path, adapters = served_adapters(args)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = server_command(args.infer_backend, args, model_path, adapters, host="127.0.0.1", port=port,
                             served_name="default")
    logger.info("Starting %s for the page: %s", args.infer_backend, shlex.join(command))
    process = subprocess.Popen(command)
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 1800  # a large model loads (and compiles) for minutes
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AlignkitError(f"the {args.infer_backend} server stopped (exit status {process.returncode}); "
                                "its log is above")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)  # noqa: S310  (loopback; no key)
            return process, base_url
        except OSError:
            time.sleep(2)
    process.terminate()
    raise AlignkitError(f"the {args.infer_backend} server did not answer within 30 minutes")
