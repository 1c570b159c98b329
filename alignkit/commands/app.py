"""`alignkit app`: a chat page (Gradio) for a model or adapter, with streaming answers, an editable system
prompt and generation settings.

    alignkit app --ckpt_dir output/v0-.../checkpoint-50            # http://127.0.0.1:7860
    alignkit app --base_url http://127.0.0.1:8000/v1                # a client of a running OpenAI-style server

Answers come from the same batching engine as `alignkit deploy`, so several browser tabs are answered
together. The page is local unless --server_name 0.0.0.0 or --share true (a public gradio.live link).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from alignkit.config.commands import AppArguments
from alignkit.data.template import ChatEncoder
from alignkit.errors import AlignkitError
from alignkit.generation.batch_engine import BatchEngine, Delta, SamplingParams

logger = logging.getLogger("alignkit")


def message_text(content) -> str:
    """Gradio hands history contents as a string, or as a list of parts ``{"type": "text", "text": ...}``."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return content.get("text") or ""
    if isinstance(content, (list, tuple)):
        return "".join(message_text(part) for part in content)
    return str(content)


def chat_messages(message: str, history: list[dict], system: str) -> list[dict]:
    """The conversation for the chat template: system prompt, earlier turns, the new user message."""
    messages = [{"role": "system", "content": system}] if system.strip() else []
    messages += [{"role": turn["role"], "content": message_text(turn["content"])} for turn in history
                 if turn.get("role") in ("user", "assistant")]
    return [*messages, {"role": "user", "content": message}]


def answer_stream(engine: BatchEngine, encoder: ChatEncoder, message: str, history: list[dict], system: str,
                  params: SamplingParams):
    """The growing answer, one yield per streamed piece (what the chat page shows as it arrives)."""
    job = engine.submit(encoder.encode_prompt(chat_messages(message, history, system)), params)
    answer = ""
    try:
        for event in job.events():
            if isinstance(event, Delta):
                answer += event.text
                yield answer
            elif event.reason == "error":
                raise RuntimeError(f"generation failed: {event.error}")
        if not answer:  # the model ended its turn at once
            yield answer
    finally:
        job.cancelled = True  # the user pressed stop or left: free the row


def server_answer_stream(client, model: str, message: str, history: list[dict], system: str,
                         params: SamplingParams, *, stream: bool = True):
    """``answer_stream`` for a page that is a client of an OpenAI-compatible server (``--base_url``)."""
    from openai import OpenAIError

    request = {"model": model, "messages": chat_messages(message, history, system), "max_tokens": params.max_tokens,
               "temperature": params.temperature, "top_p": params.top_p}
    try:
        if not stream:
            yield client.chat.completions.create(**request).choices[0].message.content or ""
            return
        answer = ""
        for chunk in client.chat.completions.create(**request, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                answer += chunk.choices[0].delta.content
                yield answer
        if not answer:
            yield answer
    except OpenAIError as error:
        raise RuntimeError(f"the server at {client.base_url} answered: {error}") from error


def final_only(answers):
    """--stream false: the page shows each answer once, complete."""
    last = ""
    for last in answers:  # noqa: B007  (the loop's last value is the complete answer)
        pass
    yield last


# The page's words (--lang).
LABELS = {
    "en": {"description": "Answers stream as they are generated. Settings are under *Generation settings*.",
           "system": "System prompt", "max_new_tokens": "Max new tokens", "temperature": "Temperature (0: greedy)",
           "top_p": "Top-p", "settings": "Generation settings"},
    "zh": {"description": "回答边生成边显示。生成参数在 *生成设置* 中。", "system": "系统提示词",
           "max_new_tokens": "最大生成 token 数", "temperature": "温度（0：贪心解码）", "top_p": "Top-p",
           "settings": "生成设置"},
}


def build_app(answer, args: AppArguments, title: str):
    """The page; ``answer(message, history, system, params)`` yields the growing answer."""
    import gradio as gr

    words = LABELS[args.lang]

    def respond(message: str, history: list[dict], system: str, max_new_tokens: float, temperature: float,
                top_p: float):
        params = SamplingParams(max_tokens=int(max_new_tokens), temperature=float(temperature), top_p=float(top_p))
        answers = answer(message, history, system, params)
        try:
            yield from answers if args.stream else final_only(answers)
        except RuntimeError as error:
            raise gr.Error(str(error)) from error

    words = LABELS[args.lang]
    return gr.ChatInterface(
        respond,
        title=args.studio_title or title,
        description=words["description"],
        additional_inputs=[
            gr.Textbox(value=args.system or "", label=words["system"], lines=2),
            gr.Slider(1, 2048, value=args.max_new_tokens, step=1, label=words["max_new_tokens"]),
            gr.Slider(0.0, 2.0, value=args.temperature, step=0.05, label=words["temperature"]),
            gr.Slider(0.05, 1.0, value=args.top_p, step=0.05, label=words["top_p"]),
        ],
        additional_inputs_accordion=words["settings"],
        flagging_mode="never",
        analytics_enabled=False,
    )


def server_client(args: AppArguments):
    """(client, served model name) for --base_url; the name from --model, else the server's first model."""
    from openai import OpenAI, OpenAIError

    client = OpenAI(base_url=args.base_url, api_key=args.api_key or os.environ.get("OPENAI_API_KEY") or "none")
    if args.model:
        return client, args.model
    try:
        models = [model.id for model in client.models.list()]
    except OpenAIError as error:
        raise AlignkitError(f"--base_url {args.base_url}: cannot list the server's models ({error}); is it an "
                            "OpenAI-compatible server's /v1 address?") from error
    if not models:
        raise AlignkitError(f"--base_url {args.base_url}: the server lists no model; name one with --model")
    return client, models[0]


def launch(demo, args: AppArguments) -> None:
    logger.info("Chat page on http://%s:%d%s", args.server_name, args.server_port,
                " (and a public share link)" if args.share else "")
    demo.queue(default_concurrency_limit=8).launch(
        server_name=args.server_name, server_port=args.server_port, share=args.share, show_error=True,
    )


def run_app_on_server(args: AppArguments) -> int:
    if args.adapters or args.ckpt_dir:
        raise AlignkitError("--base_url: the page chats with the server's models; --adapters/--ckpt_dir load a "
                            "model here, so serve them with `alignkit deploy` and point --base_url at it")
    client, model = server_client(args)
    logger.info("Chat page as a client of %s, model %s", args.base_url, model)

    def answer(message, history, system, params):
        return server_answer_stream(client, model, message, history, system, params, stream=args.stream)

    launch(build_app(answer, args, title=f"alignkit chat: {model}"), args)
    return 0


def run_app(args: AppArguments) -> int:
    from alignkit.generation.loader import load_for_answers
    from alignkit.vision.model import vision_model_path

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    if args.base_url:
        return run_app_on_server(args)
    if args.infer_backend in ("vllm", "sglang"):  # the engine's own server, the page its client
        import dataclasses

        from alignkit.commands.engine_server import start_engine_for_app

        server, base_url = start_engine_for_app(args)
        try:
            return run_app_on_server(dataclasses.replace(args, base_url=base_url, model=None, adapters=[],
                                                         ckpt_dir=None, api_key=args.api_key))
        finally:
            server.terminate()
    if vision_model_path(args.model, args.adapters, args.ckpt_dir) is not None:
        raise AlignkitError("alignkit app is a text chat page; chat with a vision-language model (images in the "
                            "messages) with `alignkit infer`, or serve it with `alignkit deploy`")
    loaded = load_for_answers(args.model, args.adapters, args.ckpt_dir, args.dtype, device_map=args.device_map,
                              max_memory=args.device_max_memory,  # prompts up to the model's context
                              trust_remote_code=args.trust_remote_code)
    encoder = loaded.encoder
    engine = BatchEngine(loaded.model, encoder).start()
    source = args.ckpt_dir or (args.adapters[0] if args.adapters else args.model) or "smollm2-135m-instruct"

    def answer(message, history, system, params):
        return answer_stream(engine, encoder, message, history, system, params)

    try:
        launch(build_app(answer, args, title=f"alignkit chat: {Path(source).name}"), args)
    finally:
        engine.stop()
    return 0
