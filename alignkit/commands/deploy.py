"""`alignkit deploy`: an OpenAI-compatible HTTP server for a model and its LoRA adapters.

    alignkit deploy --ckpt_dir output/v0-.../checkpoint-50 --port 8000 --api_key sk-local
    alignkit deploy --model M --adapters math=ckpt-a chat=ckpt-b       # three models: M's name, math, chat

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions`` and ``POST /v1/completions``, with and
without ``"stream": true`` (server-sent events in OpenAI's chunk format, ending ``data: [DONE]``).
Concurrent requests are answered together in batches (alignkit.generation.batch_engine). A bad request gets a 4xx
with an OpenAI-style JSON error (``{"error": {"message", "type", "param", "code"}}``), never a
traceback; the server logs the traceback of any internal error.

A vision-language model (docs/vision.md) takes OpenAI's image parts in chat messages,
``{"type": "image_url", "image_url": {"url": ...}}``, where the url is a ``data:image/...;base64,`` URL, an
``http(s)://`` URL, or (only inside ``--allowed_local_media_path``) a local path or ``file://`` URL. An image
that cannot be read, or an image sent to a text-only model, gets a 400.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from alignkit.commands.adapter_names import parse_adapters  # noqa: F401  (re-exported; used below)
from alignkit.commands.openai_api import (
    ChatCompletionRequest,
    CompletionRequest,
    GenerationRequest,
    RequestError,
    TextPart,
    chat_logprobs,
    completion_logprobs,
    guard_openai_app,
    usage,
)
from alignkit.config.commands import DeployArguments
from alignkit.data.template import ChatEncoder
from alignkit.errors import AlignkitError, DataError
from alignkit.generation.batch_engine import BatchEngine, Delta, Finished, Job, SamplingParams, TokenLogprob
from alignkit.generation.tool_calls import parse_hermes, render_hermes
from alignkit.vision.encode import PLACEHOLDER, VisionEncoder

logger = logging.getLogger("alignkit")


# ---------------------------------------------------------------------------------------------- app


class Server:
    """Turns requests into engine jobs and jobs into OpenAI responses."""

    def __init__(self, engine: BatchEngine, encoder: ChatEncoder | VisionEncoder, *, models: dict[str, str | None],
                 max_length: int, defaults: DeployArguments):
        self.engine, self.encoder, self.tokenizer, self.models = engine, encoder, encoder.tokenizer, models
        self.max_length, self.defaults = max_length, defaults
        self.created = int(time.time())

    def adapter_for(self, name: str) -> str | None:
        if name not in self.models:
            raise RequestError(404, f"the model '{name}' does not exist; served: {', '.join(self.models)}",
                               param="model", code="model_not_found")
        return self.models[name]

    def submit(self, request: GenerationRequest, prompt_ids: list[int], max_tokens: int | None, loop, pixels=None,
               logprobs: int | None = None) -> list[Job]:
        """``request.n`` jobs for one prompt, each its own row of a batch."""
        adapter = self.adapter_for(request.model)
        for name, value, supported in (("presence_penalty", request.presence_penalty, 0),
                                       ("frequency_penalty", request.frequency_penalty, 0)):
            if value != supported:
                raise RequestError(400, f"{name}: only {supported} is supported, got {value}", param=name)
        prompt_ids = self.fit(prompt_ids, max_tokens or 1, pixels is not None)
        room = self.max_length - len(prompt_ids)
        if max_tokens is None:
            max_tokens = min(self.defaults.max_new_tokens, room)
        if max_tokens > room or room < 1:
            raise RequestError(
                400, f"the prompt has {len(prompt_ids)} tokens; with max_tokens {max_tokens} it exceeds the model's "
                f"context of {self.max_length} tokens", param="max_tokens", code="context_length_exceeded")
        d = self.defaults
        params = SamplingParams(
            max_tokens=max_tokens,
            temperature=d.temperature if request.temperature is None else request.temperature,
            top_p=d.top_p if request.top_p is None else request.top_p,
            top_k=request.top_k or 0,
            repetition_penalty=request.repetition_penalty or 1.0,
            seed=request.seed,
            logprobs=logprobs,
        )
        stop = (request.stop,) if isinstance(request.stop, str) else tuple(request.stop or ())
        return [self.engine.submit(prompt_ids, params, adapter=adapter, stop=stop, loop=loop, pixels=pixels)
                for _ in range(request.n)]

    def fit(self, prompt_ids: list[int], max_tokens: int, has_images: bool) -> list[int]:
        """--truncation_strategy left|right: a prompt that leaves no room for ``max_tokens`` keeps its end or its
        beginning (a prompt with images is never cut); delete and raise leave it to the context check (a 400)."""
        limit = self.max_length - max_tokens
        strategy = self.defaults.truncation_strategy
        if len(prompt_ids) <= limit or limit < 1 or has_images or strategy not in ("left", "right"):
            return prompt_ids
        return prompt_ids[-limit:] if strategy == "left" else prompt_ids[:limit]

    def uses_tools(self, request: ChatCompletionRequest) -> bool:
        """Whether the answer is parsed for tool calls: the request offers tools the model may call."""
        return bool(request.tools) and request.tool_choice != "none"

    def with_tools(self, request: ChatCompletionRequest, messages: list[dict]) -> list[dict]:
        """--agent_template hermes: tools, earlier calls and tool results rendered into plain messages."""
        agentic = request.tools or any(m["role"] == "tool" or m.get("tool_calls") for m in messages)
        if not agentic:
            return messages
        if self.defaults.agent_template is None:
            raise RequestError(400, "tools, tool calls and tool messages need a server started with --agent_template "
                               "hermes", param="tools" if request.tools else "messages")
        return render_hermes(messages, [tool.model_dump(exclude_none=True) for tool in request.tools or []]
                             if request.tool_choice != "none" else None)

    def completion_prompt(self, prompt: str, index: int) -> list[int]:
        """A raw prompt's ids. An empty prompt starts from the beginning-of-sequence token, as in vLLM; a
        model without one has nothing to continue from, so that is a 400."""
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if ids:
            return ids
        if self.tokenizer.bos_token_id is None:
            raise RequestError(400, f"prompt[{index}]: the prompt is empty and the model has no beginning-of-sequence "
                               "token to start from", param="prompt")
        return [self.tokenizer.bos_token_id]

    def chat_prompt(self, request: ChatCompletionRequest) -> tuple[list[int], dict | None]:
        """The prompt's token ids and, for a vision-language model, its pixel inputs. Image parts become
        ``<image>`` placeholders where they stand, and their images are read (downloads included: call it off
        the event loop)."""
        messages, images = [], []
        for i, message in enumerate(request.messages):
            if message.content is None and not (message.role == "assistant" and message.tool_calls):
                raise RequestError(400, f"messages[{i}].content: only an assistant turn with tool_calls may have no "
                                   "content", param=f"messages[{i}].content")
            pieces = [message.content] if isinstance(message.content, str) else []
            for j, part in enumerate(message.content if isinstance(message.content, list) else []):
                if isinstance(part, TextPart):
                    pieces.append(part.text)
                    continue
                field = f"messages[{i}].content[{j}].image_url"
                if not isinstance(self.encoder, VisionEncoder):
                    raise RequestError(400, f"{field}: the model '{request.model}' is a text-only model and takes no "
                                       "images", param=field, code="image_input_not_supported")
                images.append(request_image(part.image_url.url, self.defaults.allowed_local_media_path, field))
                pieces.append(PLACEHOLDER)
            messages.append({"role": "system" if message.role == "developer" else message.role,
                             "content": "".join(pieces),
                             **({"tool_calls": [call.model_dump() for call in message.tool_calls]}
                                if message.tool_calls else {})})
        messages = self.with_tools(request, messages)
        if not isinstance(self.encoder, VisionEncoder):
            return self.encoder.encode_prompt(messages), None
        try:
            prompt = self.encoder.encode_prompt(messages, images)
        except DataError as error:  # e.g. a literal "<image>" in the text besides the image parts
            raise RequestError(400, f"messages: {error.message}", param="messages") from error
        return prompt.input_ids, prompt.pixels


def request_image(url: str, allowed_dir: str | None, field: str):
    """An image part's url → an RGB image: data: and http(s):// URLs always; a local path or file:// URL only
    inside ``--allowed_local_media_path`` (a client must not read the server's files)."""
    from alignkit.vision.images import load_image

    if not url.startswith(("data:", "http://", "https://")):
        if allowed_dir is None:
            raise RequestError(400, f"{field}: local image paths are not served; send a data: or http(s):// URL (or "
                               "start the server with --allowed_local_media_path DIR)", param=field)
        path = Path(url.removeprefix("file://")).expanduser().resolve()
        if not path.is_relative_to(Path(allowed_dir).expanduser().resolve()):
            raise RequestError(400, f"{field}: {url} is outside --allowed_local_media_path {allowed_dir}", param=field)
        url = str(path)
    try:
        return load_image(url, None, field)
    except DataError as error:
        raise RequestError(400, str(error), param=field) from error


async def collect(job: Job) -> tuple[str, Finished, list[TokenLogprob]]:
    """The whole answer of a job, its closing event and its tokens' log-probs (when asked for)."""
    pieces, logprobs, event = [], [], None
    async for event in job.aevents():  # the last event is the Finished one
        if isinstance(event, Delta):
            pieces.append(event.text)
            logprobs += event.logprobs
    if event.reason == "error":
        raise RequestError(500, f"generation failed: {event.error}", type="server_error")
    return "".join(pieces), event, logprobs


def sse(payload: dict | str) -> str:
    """One server-sent event; OpenAI's streams end with the literal ``[DONE]``."""
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def create_app(server: Server, *, api_key: str | None) -> FastAPI:
    # The OpenAPI spec (GET /openapi.json) lets schema-driven clients and fuzzers read the API.
    app = FastAPI(title="alignkit", docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    schema_of_app = app.openapi

    def openapi_with_served_models() -> dict:
        """The spec names the served models, so a client (or fuzzer) built from it can reach generation."""
        if app.openapi_schema is None:
            spec = schema_of_app()
            for schema in spec.get("components", {}).get("schemas", {}).values():
                if schema.get("title") in ("ChatCompletionRequest", "CompletionRequest"):
                    schema["properties"]["model"]["enum"] = list(server.models)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi_with_served_models
    guard_openai_app(app, api_key)

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": server.created, "owned_by": "alignkit"} for name in server.models
        ]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: ChatCompletionRequest):
        if request.top_logprobs is not None and not request.logprobs:
            raise RequestError(400, "top_logprobs: set logprobs to true to ask for them", param="top_logprobs")
        if isinstance(server.encoder, VisionEncoder):  # images may be downloaded: not on the event loop
            prompt_ids, pixels = await asyncio.to_thread(server.chat_prompt, request)
        else:
            prompt_ids, pixels = server.chat_prompt(request)
        jobs = server.submit(request, prompt_ids, request.max_completion_tokens or request.max_tokens,
                             asyncio.get_running_loop(), pixels,
                             logprobs=(request.top_logprobs or 0) if request.logprobs else None)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": request.model}
        if request.stream:
            return StreamingResponse(chat_stream(jobs, head, request, server.tokenizer, server.uses_tools(request)),
                                     media_type="text/event-stream")
        results = [await collect(job) for job in jobs]
        return {**head, "object": "chat.completion", "usage": usage([f for _, f, _ in results]), "choices": [
            {"index": i, **answer_message(text, f.reason, server.uses_tools(request)),
             "logprobs": chat_logprobs(lps, server.tokenizer) if request.logprobs else None}
            for i, (text, f, lps) in enumerate(results)]}

    @app.post("/v1/completions")
    async def completions(request: CompletionRequest):
        prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
        if not prompts:
            raise RequestError(400, "prompt: give a string or a non-empty list of strings", param="prompt")
        loop = asyncio.get_running_loop()
        # OpenAI's order: the n answers of prompt 0, then those of prompt 1, ...
        jobs = [job for i, p in enumerate(prompts)
                for job in server.submit(request, server.completion_prompt(p, i), request.max_tokens, loop,
                                         logprobs=request.logprobs)]
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": request.model}
        if request.stream:
            return StreamingResponse(completion_stream(jobs, head, request, server.tokenizer, len(prompts)),
                                     media_type="text/event-stream")
        results = [await collect(job) for job in jobs]
        tokenizer = server.tokenizer
        return {**head, "object": "text_completion", "usage": usage([f for _, f, _ in results], len(prompts)),
                "choices": [{"index": i, "text": text, "finish_reason": f.reason,
                             "logprobs": None if request.logprobs is None else completion_logprobs(lps, tokenizer)}
                            for i, (text, f, lps) in enumerate(results)]}

    return app


def wants_usage(request: GenerationRequest) -> bool:
    return bool(request.stream_options and request.stream_options.include_usage)


def answer_message(text: str, reason: str, tools: bool) -> dict:
    """A choice's ``message`` and ``finish_reason``; with tools, ``<tool_call>`` blocks become ``tool_calls``."""
    if tools:
        content, calls = parse_hermes(text)
        if calls:
            return {"message": {"role": "assistant", "content": content, "tool_calls": calls},
                    "finish_reason": "tool_calls"}
    return {"message": {"role": "assistant", "content": text}, "finish_reason": reason}


async def chat_stream(jobs: list[Job], head: dict, request: ChatCompletionRequest, tokenizer, tools: bool = False):
    def chunk(index: int, delta: dict, finish_reason: str | None = None, logprobs: dict | None = None) -> str:
        return sse({**head, "object": "chat.completion.chunk", "choices": [
            {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": logprobs}]})

    finished = []
    try:
        for index, job in enumerate(jobs):  # generated together; their events wait in their queues
            yield chunk(index, {"role": "assistant", "content": ""})
            if tools:  # the answer is parsed whole: one delta with its content and tool calls
                try:
                    text, finished_event, lps = await collect(job)
                except RequestError as error:
                    yield sse({"error": error.body})
                    continue
                finished.append(finished_event)
                message = answer_message(text, finished_event.reason, True)
                delta = {k: v for k, v in message["message"].items() if k != "role"}
                if "tool_calls" in delta:
                    delta["tool_calls"] = [{"index": n, **call} for n, call in enumerate(delta["tool_calls"])]
                yield chunk(index, delta, logprobs=chat_logprobs(lps, tokenizer) if request.logprobs else None)
                yield chunk(index, {}, message["finish_reason"])
                continue
            async for event in job.aevents():
                if isinstance(event, Delta):
                    logprobs = chat_logprobs(event.logprobs, tokenizer) if request.logprobs else None
                    yield chunk(index, {"content": event.text}, logprobs=logprobs)
                elif event.reason == "error":
                    yield sse({"error": {"message": f"generation failed: {event.error}", "type": "server_error"}})
                else:
                    finished.append(event)
                    yield chunk(index, {}, event.reason)
        if wants_usage(request):  # OpenAI's last chunk: no choices, the whole request's usage
            yield sse({**head, "object": "chat.completion.chunk", "choices": [], "usage": usage(finished)})
        yield sse("[DONE]")
    finally:
        for job in jobs:
            job.cancelled = True  # a client that hangs up stops its rows at the next token


async def completion_stream(jobs: list[Job], head: dict, request: CompletionRequest, tokenizer, prompts: int):
    finished = []
    try:
        for index, job in enumerate(jobs):
            offset = 0
            async for event in job.aevents():
                if isinstance(event, Delta):
                    logprobs = (None if request.logprobs is None
                                else completion_logprobs(event.logprobs, tokenizer, offset))
                    offset += len(event.text)
                    choice = {"index": index, "text": event.text, "finish_reason": None, "logprobs": logprobs}
                elif event.reason == "error":
                    yield sse({"error": {"message": f"generation failed: {event.error}", "type": "server_error"}})
                    continue
                else:
                    finished.append(event)
                    choice = {"index": index, "text": "", "finish_reason": event.reason, "logprobs": None}
                yield sse({**head, "object": "text_completion", "choices": [choice]})
        if wants_usage(request):
            yield sse({**head, "object": "text_completion", "choices": [], "usage": usage(finished, prompts)})
        yield sse("[DONE]")
    finally:
        for job in jobs:
            job.cancelled = True


# ------------------------------------------------------------------------------------------- command


def load_served_model(args: DeployArguments):
    """(model, tokenizer, {served name: peft adapter name or None for the base})."""
    from alignkit.generation.loader import load_for_answers
    from alignkit.models.load import resolve_checkpoint
    from alignkit.models.placement import check_adapter_placement

    default_dir, named = parse_adapters(args.adapters, args.ckpt_dir)
    model, default_adapters = resolve_checkpoint(args.model, [], default_dir)
    loaded = load_for_answers(model, [], None, args.dtype, device_map=args.device_map,
                              max_memory=args.device_max_memory, trust_remote_code=args.trust_remote_code)
    lm, tokenizer = loaded.model, loaded.saved_with  # tokenizer: a vision-language model's processor
    served_name = args.served_model_name or Path(default_dir or model or "smollm2-135m-instruct").name
    adapters = ({"default": default_adapters[0]} if default_adapters else {}) | named
    for name in named:
        if name == served_name or (name == "default" and default_adapters):
            raise AlignkitError(f"--adapters {name}=...: the name '{name}' is taken by the default model")
    models: dict[str, str | None] = {served_name: "default" if default_adapters else None, **{n: n for n in named}}
    if adapters:
        from peft import PeftModel

        check_adapter_placement(lm)

        for index, (name, path) in enumerate(adapters.items()):
            if not (Path(path) / "adapter_config.json").is_file():
                raise AlignkitError(f"--adapters {path}: no adapter_config.json there, so it is not a LoRA adapter")
            if index == 0:
                lm = PeftModel.from_pretrained(lm, path, adapter_name=name)
            else:
                lm.load_adapter(path, adapter_name=name)
        lm.eval()
    return lm, tokenizer, models


def run_deploy(args: DeployArguments) -> int:
    import uvicorn

    from alignkit.generation.loader import context_length, encoder_for

    if args.infer_backend in ("vllm", "sglang"):
        from alignkit.commands.engine_server import run_engine_server

        return run_engine_server(args)
    from alignkit.commands.score_server import run_score_server, scored_model

    if (scored := scored_model(args)) is not None:  # a reward model or PRM answers with scores, as in ms-swift
        return run_score_server(args, scored)
    lm, tokenizer, models = load_served_model(args)
    max_length = args.max_length or context_length(lm)
    encoder = encoder_for(lm, tokenizer, max_length=max_length)
    if args.enable_thinking is not None:  # the default; a request's chat_template_kwargs are not read
        if isinstance(encoder, VisionEncoder):
            raise AlignkitError("--enable_thinking applies to text models; leave it out for a vision-language model")
        encoder.chat_template_kwargs = {"enable_thinking": args.enable_thinking}
    engine = BatchEngine(lm, encoder, max_batch_size=args.max_batch_size).start()
    server = Server(engine, encoder, models=models, max_length=max_length, defaults=args)
    app = create_app(server, api_key=args.api_key)
    logger.info("Serving %s on http://%s:%d/v1%s", ", ".join(models), args.host, args.port,
                " (API key required)" if args.api_key else "")
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        engine.stop()
    return 0
