"""``alignkit rollout --infer_backend transformers``: a rollout server for ``--use_vllm --vllm_mode server`` runs
that needs no vLLM (and no GPU): transformers' ``generate`` on the server's own copy of the policy.

    alignkit rollout --infer_backend transformers --model Qwen/Qwen2.5-0.5B-Instruct --port 8000
    alignkit rlhf --rlhf_type grpo ... --use_vllm true --vllm_mode server --vllm_server_host 127.0.0.1 \\
        --vllm_server_port 8000 [--async_generate true]

The protocol is alignkit's own (alignkit/generation/rollout_client.py is its client): TRL's vLLM server moves
weights over NCCL, which needs CUDA. Completions are drawn exactly as the trainer's own generator draws them
(the same ``HFGenerator``, per-prompt seeds included), so a run served here samples what the same run samples
in-process; with each completion come the server's log-probs of its tokens, the behaviour policy's
(``--async_generate`` trains on them one step late).

    GET  /health/           {"status": "ok", "backend": "transformers", "model": ...}
    POST /generate/         token-id prompts, seeds, sampling → completion ids and their log-probs
    POST /update_weights/   a safetensors file of named tensors (the trainer's merged policy) → loaded
    POST /get_engine_type/  ms-swift's route: the multi-turn scheduler the trainer should drive, if any
"""

from __future__ import annotations

import asyncio
import logging
import threading

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from safetensors.torch import load as load_safetensors

from alignkit.errors import AlignkitError
from alignkit.generation import engine_info

logger = logging.getLogger("alignkit")

BACKEND = "transformers"


def generate(model, request: dict) -> dict:
    """One /generate/ request on ``model``: raw completion ids per prompt and, with ``logprobs``, each completion's
    per-token log-probs under softmax(logits / temperature) up to its stop token (what the trainer computes for
    its own samples: alignkit/algorithms/rollout.py ``batched_logprobs``)."""
    from alignkit.algorithms.rollout import HFGenerator, batched_logprobs, make_rollout

    prompts = request["prompts"]
    temperature = float(request["temperature"])
    generator = HFGenerator(model, int(request["pad_id"]), list(request["stop_token_ids"]), int(request["max_tokens"]),
                            temperature, batch_size=int(request.get("batch_size") or len(prompts) or 1),
                            top_p=float(request["top_p"]), top_k=int(request["top_k"]), min_p=float(request["min_p"]),
                            repetition_penalty=float(request["repetition_penalty"]))
    completions = generator(prompts, greedy=bool(request.get("greedy")), seeds=request.get("seeds"))
    logprobs = None
    if request.get("logprobs") and prompts:
        rollout = make_rollout(prompts, completions, pad_id=generator.pad_id, stop_ids=generator.stop_ids,
                               max_new_tokens=generator.max_new_tokens)
        experience = {k: v.to(next(model.parameters()).device) for k, v in rollout.as_dict().items()}
        values, _ = batched_logprobs(model, experience, temperature=temperature if temperature > 0 else 1.0,
                                     batch_size=generator.batch_size)
        lengths = rollout.completion_mask.sum(-1).tolist()
        logprobs = [row[:length] for row, length in zip(values.float().cpu().tolist(), lengths)]
    return {"completion_ids": completions, "logprobs": logprobs}


def load_weights(model, tensors: dict[str, torch.Tensor]) -> int:
    """Copy the named tensors into ``model`` (names as in its own state dict); unknown names or shapes stop."""
    state = model.state_dict()
    unknown = sorted(set(tensors) - set(state))
    if unknown:
        raise AlignkitError(f"/update_weights/: {len(unknown)} tensor(s) the served model does not have, e.g. "
                            f"{unknown[:3]}")
    for name, tensor in tensors.items():
        if state[name].shape != tensor.shape:
            raise AlignkitError(f"/update_weights/: {name} has shape {tuple(tensor.shape)}, the served model's "
                                f"{tuple(state[name].shape)}")
    with torch.no_grad():
        for name, tensor in tensors.items():
            state[name].copy_(tensor.to(state[name].dtype))
    return len(tensors)


def create_rollout_app(model, served_name: str, engine: dict | None = None):
    """The FastAPI app. One lock orders generations and weight updates: a completion is drawn from one version of
    the weights, and a push waits for the generation in progress. ``engine``: the /get_engine_type/ answer
    (alignkit/generation/engine_info.py; None: one turn per request, no scheduler)."""
    app = FastAPI(title="alignkit rollout (transformers)")
    lock = threading.Lock()
    model.eval()

    @app.exception_handler(AlignkitError)
    async def refused(_request, error: AlignkitError):
        return JSONResponse(status_code=400, content={"error": str(error)})

    @app.get("/health/")
    def health():
        return {"status": "ok", "backend": BACKEND, "model": served_name}

    @app.api_route(engine_info.ROUTE, methods=["GET", "POST"])
    def engine_type():
        return engine or {"engine_type": BACKEND, "enable_multi_turn": False, "use_gym_env": False,
                          "enable_lora": False}

    @app.post("/generate/")
    def generate_endpoint(request: dict):  # sync endpoint: FastAPI runs it in its thread pool
        missing = sorted({"prompts", "pad_id", "stop_token_ids", "max_tokens", "temperature", "top_p", "top_k",
                          "min_p", "repetition_penalty"} - set(request))
        if missing:
            raise AlignkitError(f"/generate/: missing field(s) {', '.join(missing)}")
        with lock, torch.no_grad():
            return generate(model, request)

    @app.post("/update_weights/")
    async def update_weights(request: Request):
        tensors = load_safetensors(await request.body())

        def load() -> int:
            with lock:
                return load_weights(model, tensors)

        return {"updated": await asyncio.to_thread(load)}

    return app


def run_transformers_rollout(args) -> int:
    """Load --model and serve it until interrupted."""
    import uvicorn

    from alignkit.models.load import load_causal_lm, resolve_model_path

    dtypes = {"auto": torch.float32, "float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
              "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    model = load_causal_lm(resolve_model_path(args.model), args.model_revision, dtypes[args.dtype],
                           trust_remote_code=args.trust_remote_code)
    if torch.cuda.is_available():
        model.to("cuda")
    app = create_rollout_app(model, args.model, engine_info.describe(args, BACKEND))
    logger.info("Rollout server (transformers) for %s on http://%s:%d", args.model, args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
