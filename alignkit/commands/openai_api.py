"""The OpenAI API as `alignkit deploy` speaks it: request bodies (pydantic models, refusing unknown fields by
name), the error body, and the answer's pieces (usage, log-probs) in OpenAI's shapes."""

from __future__ import annotations

import logging
from typing import Annotated, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from alignkit.generation.batch_engine import Finished, TokenLogprob

logger = logging.getLogger("alignkit")


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImageURL(BaseModel):
    url: str
    detail: Literal["auto", "low", "high"] | None = None  # OpenAI's; the processor decides the resolution here


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


class FunctionCall(BaseModel):
    name: str
    arguments: str  # a JSON object, as a string (OpenAI's shape)


class ToolCall(BaseModel):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    # None only for an assistant turn that made tool calls (OpenAI's shape); checked by the server
    content: str | list[Annotated[TextPart | ImagePart, Field(discriminator="type")]] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's earlier calls (--agent_template)
    tool_call_id: str | None = None  # a tool result's call


class FunctionTool(BaseModel):
    name: str
    description: str | None = None
    parameters: dict | None = None


class Tool(BaseModel):
    type: Literal["function"]
    function: FunctionTool


class StreamOptions(BaseModel):
    include_usage: bool = False


class GenerationRequest(BaseModel):
    """Fields shared by both endpoints. Unknown fields are refused by name rather than ignored."""

    model_config = ConfigDict(extra="forbid")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)  # vLLM's extension
    # vLLM's extension; bounded so that logits divided by it stay finite (a fuzzer found 5e-324 → NaN)
    repetition_penalty: float | None = Field(None, ge=0.01, le=100)
    n: int = Field(1, ge=1, le=16)  # answers per prompt, each its own row of the batch
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    user: str | None = None
    # with temperature > 0: the same request (alone) draws the same answers; the range torch.manual_seed takes
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)


class ChatCompletionRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # OpenAI's newer name of max_tokens; wins over it
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Tool] | None = None  # rendered by the server's --agent_template
    tool_choice: Literal["auto", "none"] | None = None  # "required" and named functions are not supported


class CompletionRequest(GenerationRequest):
    prompt: str | list[str]
    logprobs: int | None = Field(None, ge=0, le=20)  # the legacy API's: the k likeliest alternatives per token
    echo: Literal[False] = False


class RequestError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.body = status, {"message": message, "type": type, "param": param, "code": code}


def error_response(status: int, message: str, **fields) -> JSONResponse:
    body = {"message": message, "type": "invalid_request_error", "param": None, "code": None, **fields}
    return JSONResponse({"error": body}, status_code=status)


def guard_openai_app(app, api_key: str | None) -> None:
    """What every OpenAI-style app of alignkit answers alike: a wrong or missing ``Bearer`` key (when one is set)
    is 401, and every error, ours, pydantic's, starlette's or an unexpected one, is OpenAI's error body."""
    import secrets

    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.middleware("http")
    async def check_api_key(request: Request, call_next):
        if api_key is not None:
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return error_response(401, "Incorrect API key provided", code="invalid_api_key")
        return await call_next(request)

    @app.exception_handler(RequestError)
    async def on_request_error(request: Request, error: RequestError):
        return JSONResponse({"error": error.body}, status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, error: RequestValidationError):
        return error_response(400, describe_validation(error.errors()))

    @app.exception_handler(HTTPException)
    async def on_http_error(request: Request, error: HTTPException):
        return error_response(error.status_code, str(error.detail))

    @app.exception_handler(Exception)
    async def on_internal_error(request: Request, error: Exception):
        logger.exception("internal error on %s", request.url.path)
        return error_response(500, f"internal server error ({type(error).__name__})", type="server_error")


def describe_validation(errors: list[dict]) -> str:
    """Pydantic's errors as one line, e.g. ``messages.0.role: Input should be 'system', ...``."""
    parts = []
    for error in errors:
        where = ".".join(str(x) for x in error.get("loc", ()) if x != "body")
        if error.get("type") == "extra_forbidden":
            parts.append(f"unsupported parameter '{where}'")
        elif error.get("type") == "json_invalid":
            parts.append(f"the request body is not valid JSON ({error.get('ctx', {}).get('error', '')})".strip())
        else:
            parts.append(f"{where or 'body'}: {error.get('msg')}")
    return "; ".join(parts)


def usage(finished: list[Finished], prompts: int = 1) -> dict:
    """Token counts of a request's answers; each prompt counts once however many answers (``n``) it has."""
    prompt_tokens = sum(f.prompt_tokens for f in finished[:: max(1, len(finished) // prompts)])
    completion_tokens = sum(f.completion_tokens for f in finished)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def token_entry(token: int, logprob: float, tokenizer) -> dict:
    text = tokenizer.decode([token])
    return {"token": text, "logprob": logprob, "bytes": list(text.encode())}


def chat_logprobs(entries: list[TokenLogprob], tokenizer) -> dict:
    """``choices[i].logprobs`` of a chat completion: ``{"content": [{token, logprob, bytes, top_logprobs}]}``."""
    return {"content": [{**token_entry(e.token, e.logprob, tokenizer),
                         "top_logprobs": [token_entry(t, lp, tokenizer) for t, lp in e.top]} for e in entries]}


def completion_logprobs(entries: list[TokenLogprob], tokenizer, offset: int = 0) -> dict:
    """``choices[i].logprobs`` of the legacy completions API: parallel lists, ``text_offset`` in characters."""
    tokens = [tokenizer.decode([e.token]) for e in entries]
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token)
    return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{tokenizer.decode([t]): lp for t, lp in e.top} for e in entries], "text_offset": offsets}
