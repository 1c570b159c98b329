"""`alignkit app`: a chat page (Gradio) for a model or adapter, with streaming answers, an editable system
prompt and generation settings.

    alignkit app --ckpt_dir output/v0-.../checkpoint-50            # http://127.0.0.1:7860
    alignkit app --base_url http://127.0.0.1:8000/v1                # a client of a running OpenAI-style server

Answers come from the same batching engine as `alignkit deploy`, so several browser tabs are answered
together. For a vision-language model (docs/vision.md) the message box takes images: each image stands before
the text of its message (ms-swift's order), and the images of earlier turns stay in the conversation. The page
is local unless --server_name 0.0.0.0 or --share true (a public gradio.live link).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from alignkit.config.commands import AppArguments
from alignkit.data.template import ChatEncoder
from alignkit.errors import AlignkitError, DataError
from alignkit.generation.batch_engine import BatchEngine, Delta, Job, SamplingParams
from alignkit.vision.encode import PLACEHOLDER, VisionEncoder

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


def image_path(part) -> str | None:
    """The file of a gradio content part, if it is one: ``{"type": "file", "file": {"path": ...}}`` (gradio's
    history), ``{"path": ...}`` or a ``(path,)`` tuple (older gradio), a path string or dict in a message's files."""
    if isinstance(part, dict):
        if isinstance(part.get("file"), dict):
            return part["file"].get("path")
        return part.get("path")
    if isinstance(part, (list, tuple)) and part and isinstance(part[0], str):
        return part[0]
    return None


def content_with_images(content) -> tuple[str, list[str]]:
    """A gradio message content → (text with ``<image>`` where each image stands, the images' paths)."""
    parts = content if isinstance(content, list) else [content]
    text, paths = "", []
    for part in parts:
        path = None if isinstance(part, str) else image_path(part)
        if path is not None:
            text, paths = text + PLACEHOLDER, [*paths, path]
        else:
            text += message_text(part)
    return text, paths


def vision_chat(message: dict | str, history: list[dict], system: str) -> tuple[list[dict], list[str]]:
    """``chat_messages`` for a vision-language model: the new message is the multimodal box's ``{"text", "files"}``
    (its images first, then its text); earlier turns keep their images. Returns (messages with ``<image>``
    placeholders, the images' paths in the order the placeholders stand). Consecutive turns of one role (gradio
    may show an image and its text as two) are one message."""
    messages = [{"role": "system", "content": system}] if system.strip() else []
    paths: list[str] = []
    if isinstance(message, dict):
        current = [{"path": f} if isinstance(f, str) else f for f in message.get("files") or []]
        current.append(message.get("text") or "")
    else:
        current = [message]
    turns = [(turn["role"], turn["content"]) for turn in history if turn.get("role") in ("user", "assistant")]
    for role, content in [*turns, ("user", current)]:
        text, images = content_with_images(content)
        paths += images
        if messages and messages[-1]["role"] == role and role != "system":
            messages[-1]["content"] += text
        else:
            messages.append({"role": role, "content": text})
    return messages, paths


def answer_stream(engine: BatchEngine, encoder: ChatEncoder | VisionEncoder, message, history: list[dict],
                  system: str, params: SamplingParams):
    """The growing answer, one yield per streamed piece (what the chat page shows as it arrives). A
    vision-language model's images (the message's and earlier turns') reach generation with the prompt."""
    if isinstance(encoder, VisionEncoder):
        yield from growing_answer(vision_job(engine, encoder, message, history, system, params))
        return
    yield from growing_answer(engine.submit(encoder.encode_prompt(chat_messages(message, history, system)), params))


def vision_job(engine: BatchEngine, encoder: VisionEncoder, message, history: list[dict], system: str,
               params: SamplingParams) -> Job:
    from alignkit.vision.images import load_image

    messages, paths = vision_chat(message, history, system)
    try:
        images = [load_image(path, None, f"image {i + 1}") for i, path in enumerate(paths)]
        prompt = encoder.encode_prompt(messages, images)
    except DataError as error:  # an unreadable file, or a typed "<image>" without its image
        raise RuntimeError(str(error)) from error
    return engine.submit(prompt.input_ids, params, pixels=prompt.pixels)


def growing_answer(job: Job):
    """A job's growing answer; the job stops when the page stops reading."""
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


def build_app(answer, args: AppArguments, title: str, *, images: bool = False):
    """The page; ``answer(message, history, system, params)`` yields the growing answer. ``images``: the message
    box takes images too (a vision-language model), and ``message`` is then ``{"text", "files"}``."""
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
        multimodal=images,
        textbox=gr.MultimodalTextbox(file_types=["image"], file_count="multiple") if images else None,
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
    loaded = load_for_answers(args.model, args.adapters, args.ckpt_dir, args.dtype, device_map=args.device_map,
                              max_memory=args.device_max_memory,  # prompts up to the model's context
                              trust_remote_code=args.trust_remote_code)
    encoder = loaded.encoder
    engine = BatchEngine(loaded.model, encoder).start()
    source = args.ckpt_dir or (args.adapters[0] if args.adapters else args.model) or "smollm2-135m-instruct"

    def answer(message, history, system, params):
        return answer_stream(engine, encoder, message, history, system, params)

    try:
        launch(build_app(answer, args, title=f"alignkit chat: {Path(source).name}", images=loaded.vision), args)
    finally:
        engine.stop()
    return 0
