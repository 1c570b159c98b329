"""`alignkit app`: a chat page (Gradio) for a model or adapter, with streaming answers, an editable system
prompt and generation settings.

    alignkit app --ckpt_dir output/v0-.../checkpoint-50            # http://127.0.0.1:7860

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


# The page's words in --lang en|zh (ms-swift's app offers both).
LABELS = {
    "en": {"description": "Answers stream as they are generated. Settings are under *Generation settings*.",
           "system": "System prompt", "max_new_tokens": "Max new tokens", "temperature": "Temperature (0: greedy)",
           "top_p": "Top-p", "settings": "Generation settings"},
    "zh": {"description": "回答边生成边显示。生成参数在「生成设置」中。", "system": "系统提示词",
           "max_new_tokens": "最大生成长度", "temperature": "温度（0：贪心解码）", "top_p": "Top-p",
           "settings": "生成设置"},
}


def whole_answers(pieces):
    """--stream false: nothing until the answer is complete, then all of it."""
    answers = list(pieces)
    if answers:
        yield answers[-1]


def build_app(engine: BatchEngine, encoder: ChatEncoder, args: AppArguments, title: str):
    import gradio as gr

    def respond(message: str, history: list[dict], system: str, max_new_tokens: float, temperature: float,
                top_p: float):
        params = SamplingParams(max_tokens=int(max_new_tokens), temperature=float(temperature), top_p=float(top_p))
        try:
            pieces = answer_stream(engine, encoder, message, history, system, params)
            yield from pieces if args.stream else whole_answers(pieces)
        except RuntimeError as error:
            raise gr.Error(str(error)) from error

    words = LABELS[args.lang]
    return gr.ChatInterface(
        respond,
        title=title,
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


def run_app(args: AppArguments) -> int:
    from alignkit.generation.loader import load_for_answers
    from alignkit.vision.model import vision_model_path

    if vision_model_path(args.model, args.adapters, args.ckpt_dir) is not None:
        raise AlignkitError("alignkit app is a text chat page; chat with a vision-language model (images in the "
                            "messages) with `alignkit infer`, or serve it with `alignkit deploy`")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    loaded = load_for_answers(args.model, args.adapters, args.ckpt_dir, args.dtype, device_map=args.device_map,
                              max_memory=args.device_max_memory,  # prompts up to the model's context
                              trust_remote_code=args.trust_remote_code)
    encoder = loaded.encoder
    engine = BatchEngine(loaded.model, encoder).start()
    source = args.ckpt_dir or (args.adapters[0] if args.adapters else args.model) or "smollm2-135m-instruct"
    demo = build_app(engine, encoder, args, title=f"alignkit chat: {Path(source).name}")
    logger.info("Chat page on http://%s:%d%s", args.server_name, args.server_port,
                " (and a public share link)" if args.share else "")
    try:
        demo.queue(default_concurrency_limit=8).launch(
            server_name=args.server_name, server_port=args.server_port, share=args.share, show_error=True,
        )
    finally:
        engine.stop()
    return 0
