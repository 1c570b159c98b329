"""`alignkit deploy` of a reward model or a process reward model: ms-swift's reward-model server.

    alignkit deploy --model Qwen/Qwen2.5-Math-PRM-7B --port 8000          # a PRM: one score per step
    alignkit deploy --ckpt_dir output/v0-.../checkpoint-40                  # an `rlhf --rlhf_type rm` checkpoint

As in ms-swift (examples/deploy/reward_model), ``POST /v1/chat/completions`` takes a conversation that ends with
the answer to judge and answers with a chat completion whose ``message.content`` is the score: a number for a
reward model, the list of step scores for a PRM (steps end with ``<extra_0>``; alignkit.models.process_reward).
``GET /v1/models`` lists the served name. Bad requests get OpenAI-shaped 4xx errors, never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from pathlib import Path

from fastapi import FastAPI

from alignkit.commands.openai_api import ChatCompletionRequest, RequestError, guard_openai_app
from alignkit.config.commands import DeployArguments
from alignkit.errors import AlignkitError
from alignkit.models.process_reward import is_process_reward_model

logger = logging.getLogger("alignkit")


def scored_model(args: DeployArguments) -> str | None:
    """What deploy serves as scores: the PRM (--model, or --task_type prm) or the reward-model checkpoint (its
    value_head.safetensors beside the model or --ckpt_dir); None for a generative model."""
    from alignkit.models.reward_model import VALUE_HEAD_FILE

    if args.task_type == "prm" or is_process_reward_model(args.model):
        return args.model
    for candidate in (args.ckpt_dir, args.model):
        if candidate and (Path(candidate) / VALUE_HEAD_FILE).is_file():
            return candidate
    return None


def conversation(request: ChatCompletionRequest) -> list[dict]:
    """The request's messages as text; the last one is the assistant answer being judged."""
    messages = []
    for i, message in enumerate(request.messages):
        if isinstance(message.content, list):
            if any(part.type != "text" for part in message.content):
                raise RequestError(400, f"messages[{i}].content: a reward model scores text only",
                                   param=f"messages[{i}].content")
            text = "".join(part.text for part in message.content)
        else:
            text = message.content or ""
        messages.append({"role": "system" if message.role == "developer" else message.role, "content": text})
    if messages[-1]["role"] != "assistant":
        raise RequestError(400, "messages: a reward model scores an answer; end the messages with the assistant "
                           "message to judge", param="messages")
    return messages


def create_score_app(score, served_name: str, *, api_key: str | None) -> FastAPI:
    """``score(conversation) -> float | list[float]`` behind ms-swift's reward-server API."""
    app = FastAPI(title="alignkit scores", docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    lock = threading.Lock()  # one forward at a time: the model is not shared between threads
    guard_openai_app(app, api_key)

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [{"id": served_name, "object": "model", "created": int(time.time()),
                                            "owned_by": "alignkit"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: ChatCompletionRequest):
        if request.model != served_name:
            raise RequestError(404, f"the model '{request.model}' does not exist; served: {served_name}",
                               param="model", code="model_not_found")
        if request.stream:
            raise RequestError(400, "stream: a reward model's score comes whole; leave stream out", param="stream")
        messages = conversation(request)

        def scored():
            with lock:
                return score(messages)

        try:
            value = await asyncio.to_thread(scored)
        except AlignkitError as error:  # e.g. a conversation longer than the model's context
            raise RequestError(400, str(error), param="messages") from error
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": served_name, "choices": [{"index": 0, "message": {"role": "assistant", "content": value},
                                                   "finish_reason": "stop", "logprobs": None}]}

    return app


def run_score_server(args: DeployArguments, path: str) -> int:
    import uvicorn

    refused = [flag for flag, value in (("--adapters", args.adapters), ("--agent_template", args.agent_template),
                                        ("--enable_thinking", args.enable_thinking)) if value]
    if refused:
        raise AlignkitError(f"{', '.join(refused)}: {path} is served as a reward model (scores, no generation)")
    max_length = args.max_length or 4096
    if args.task_type == "prm" or is_process_reward_model(args.model):
        from alignkit.models.process_reward import load_step_scorer

        scorer = load_step_scorer(path, dtype=args.dtype, max_length=max_length, batch_size=1,
                                  device_map=args.device_map, max_memory=args.device_max_memory)

        def score(messages):
            ids = scorer.encode(messages)
            if len(ids) > max_length:
                raise AlignkitError(f"the conversation has {len(ids)} tokens, more than --max_length {max_length}")
            return scorer.score_ids([ids])[0]
    else:
        from alignkit.models.scalar_model import load_reward_scorer

        scorer = load_reward_scorer(path, model=None if path == args.model else args.model, dtype=args.dtype,
                                    max_length=max_length, batch_size=1,
                                    device_map=args.device_map, max_memory=args.device_max_memory)

        def score(messages):
            return scorer.score([messages])[0]
    served_name = args.served_model_name or Path(path).name
    app = create_score_app(score, served_name, api_key=args.api_key)
    logger.info("Serving the scores of %s on http://%s:%d/v1%s", served_name, args.host, args.port,
                " (API key required)" if args.api_key else "")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
