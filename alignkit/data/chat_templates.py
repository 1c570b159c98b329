"""Which chat template renders the data: the tokenizer's own, a named built-in one, or a template config file.

``resolve_template`` decides, in this order: ``--template_config FILE`` (ColossalChat's conversation
template config), ``--template NAME`` (a built-in below), the tokenizer's own template, and for a
tokenizer without one (a base model) the built-in ``chatml``, as ms-swift does, saying so in the log.

A template config is a JSON object with these keys (all optional but ``chat_template`` or a tokenizer
template must exist)::

    {"chat_template": "{% for message in messages %}...",   # Jinja; null: the tokenizer's own
     "system_message": "You are a helpful assistant.",      # added when a conversation has no system turn
     "end_of_assistant": "<|im_end|>",                      # trained tokens of a turn end with these
     "stop_ids": [2]}                                       # generation stops at these token ids

Built-in templates (rendered for ``[user "hi", assistant "hello"]``)::

    chatml   <|im_start|>user\\nhi<|im_end|>\\n<|im_start|>assistant\\nhello<|im_end|>\\n
    qwen     ChatML with Qwen2.5's default system prompt
    llama3   <|begin_of_text|><|start_header_id|>user<|end_header_id|>\\n\\nhi<|eot_id|>...
    default  ### Human:\\nhi\\n\\n### Assistant:\\nhello</s>   (plain text; turns end with the EOS token)
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from alignkit.errors import AlignkitError

logger = logging.getLogger("alignkit")

_CHATML_TURNS = (
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

BUILTIN_TEMPLATES: dict[str, str] = {
    "chatml": "{% for message in messages %}" + _CHATML_TURNS,
    "qwen": (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
        "{% endif %}" + _CHATML_TURNS
    ),
    "llama3": (
        "{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + "
        "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' %}"
        "{% if loop.index0 == 0 %}{% set content = (bos_token or '') + content %}{% endif %}{{ content }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
    ),
    # Separators open a turn instead of closing one, so every turn ends at a token boundary (EOS or text):
    # a trailing "\n\n" would tokenize differently at the end of a prompt than inside the conversation.
    "default": (
        "{% for message in messages %}{% if not loop.first %}{{ '\\n\\n' }}{% endif %}"
        "{% if message['role'] == 'system' %}{{ message['content'] }}"
        "{% elif message['role'] == 'user' %}{{ '### Human:\\n' + message['content'] }}"
        "{% else %}{{ '### Assistant:\\n' + message['content'] + eos_token }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '\\n\\n### Assistant:\\n' }}{% endif %}"
    ),
}
END_OF_TURN = {"chatml": "<|im_end|>", "qwen": "<|im_end|>", "llama3": "<|eot_id|>", "default": None}
FALLBACK_TEMPLATE = "chatml"


@dataclass(frozen=True)
class ChatTemplate:
    """A resolved template: its Jinja source and where it came from (for logs and the cache key)."""

    name: str
    source: str
    system_message: str | None = None
    end_of_assistant: str | None = None
    stop_ids: tuple[int, ...] = ()


def resolve_template(tokenizer, *, template: str | None = None, template_config: str | None = None) -> ChatTemplate:
    """The template that renders conversations (see the module docstring for the order)."""
    if template_config is not None:
        return load_template_config(template_config, tokenizer)
    if template is not None:
        name = template.lower()
        if name not in BUILTIN_TEMPLATES:
            raise AlignkitError(f"--template {template}: unknown; built-in templates: {', '.join(BUILTIN_TEMPLATES)}")
        logger.info("Chat template: built-in '%s' (--template)", name)
        return _builtin(name, tokenizer)
    if getattr(tokenizer, "chat_template", None):
        return ChatTemplate("tokenizer", tokenizer.chat_template)
    logger.warning(
        "The tokenizer of %r has no chat template (a base model?): using the built-in '%s' template. "
        "Choose another with --template %s, or pass --template_config FILE",
        tokenizer.name_or_path, FALLBACK_TEMPLATE, "|".join(BUILTIN_TEMPLATES),
    )
    return _builtin(FALLBACK_TEMPLATE, tokenizer)


def _builtin(name: str, tokenizer) -> ChatTemplate:
    if name == "default" and tokenizer.eos_token is None:
        raise AlignkitError("--template default ends each answer with the EOS token, but the tokenizer has none")
    marker = END_OF_TURN[name]
    stop = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if marker is not None:
        ids = tokenizer(marker, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            stop.insert(0, ids[0])
        else:
            logger.warning("'%s' is not one token for this tokenizer: it is trained as %d plain-text tokens", marker,
                           len(ids))
    return ChatTemplate(name, BUILTIN_TEMPLATES[name], stop_ids=tuple(dict.fromkeys(stop)))


_CONFIG_KEYS = ("chat_template", "system_message", "end_of_assistant", "stop_ids", "response_format_tags")


def load_template_config(path: str, tokenizer) -> ChatTemplate:
    """Read a ColossalChat-style template config (see the module docstring); errors name the file and key."""
    where = f"--template_config {path}"
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise AlignkitError(f"{where}: file not found") from exc
    except json.JSONDecodeError as exc:
        raise AlignkitError(f"{where}: invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from exc
    if not isinstance(config, dict):
        raise AlignkitError(f"{where}: expected a JSON object with keys {', '.join(_CONFIG_KEYS)}")
    unknown = sorted(set(config) - set(_CONFIG_KEYS))
    if unknown:
        raise AlignkitError(f"{where}: unknown key(s) {', '.join(unknown)}; expected {', '.join(_CONFIG_KEYS)}")
    if config.get("response_format_tags") is not None:
        if not isinstance(config["response_format_tags"], dict):
            raise AlignkitError(f"{where}: 'response_format_tags' must be an object, got "
                                f"{type(config['response_format_tags']).__name__}")
        # ColossalChat's verifiable rewards check answers against these tags; alignkit's rendering has no use for them.
        logger.info("%s: response_format_tags do not change rendering; the reward functions gsm8k_reward_fn and "
                    "math_competition_reward_fn check completions against them", where)
    for key in ("chat_template", "system_message", "end_of_assistant"):
        if config.get(key) is not None and not isinstance(config[key], str):
            raise AlignkitError(f"{where}: '{key}' must be a string, got {type(config[key]).__name__}")
    source = borrowed_template(config.get("chat_template"), where) or getattr(tokenizer, "chat_template", None)
    if not source:
        raise AlignkitError(f"{where}: 'chat_template' is empty and the tokenizer has no chat template of its own")
    stop_ids = config.get("stop_ids")
    if stop_ids is None:
        stop_ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    vocab = len(tokenizer)
    if not isinstance(stop_ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in stop_ids):
        raise AlignkitError(f"{where}: 'stop_ids' must be a list of token ids, got {stop_ids!r}")
    outside = [i for i in stop_ids if not 0 <= i < vocab]
    if outside:
        raise AlignkitError(f"{where}: 'stop_ids' {outside} are outside the tokenizer's vocabulary (size {vocab})")
    logger.info("Chat template: %s", where)
    return ChatTemplate(
        name=f"config:{path}",
        source=source,
        system_message=config.get("system_message") or None,
        end_of_assistant=config.get("end_of_assistant") or None,
        stop_ids=tuple(stop_ids),
    )


def borrowed_template(value: str | None, where: str) -> str | None:
    """A config's ``chat_template``; a local model directory there (no Jinja in it) lends its tokenizer's template,
    as ColossalChat's setup_conversation_template does."""
    if not value or "{" in value or not Path(value).expanduser().is_dir():
        return value
    from transformers import AutoTokenizer

    template = getattr(AutoTokenizer.from_pretrained(str(Path(value).expanduser())), "chat_template", None)
    if not template:
        raise AlignkitError(f"{where}: 'chat_template' names the model {value}, whose tokenizer has no chat template")
    logger.info("%s: the chat template of %s's tokenizer", where, value)
    return template


def written_default_system(render) -> str | None:
    """The system prompt a chat template writes when a conversation has none (Qwen2.5's "You are Qwen, ..."): the
    text T for which [system T, user] renders as [user] alone; None when it writes none. ``render(messages,
    generation_prompt=...)`` renders with the template."""
    user = {"role": "user", "content": "\u27e6user\u27e7"}
    probe = "\u27e6system\u27e7"
    try:
        bare = render([user], generation_prompt=False)
        probed = render([{"role": "system", "content": probe}, user], generation_prompt=False)
        before, _, after = probed.partition(probe)
        if not (bare.startswith(before) and bare.endswith(after) and len(bare) > len(before) + len(after)):
            return None
        text = bare[len(before): len(bare) - len(after)]
        return text if render([{"role": "system", "content": text}, user], generation_prompt=False) == bare else None
    except Exception:  # a template that refuses a system turn has no default one either
        return None


def prompt_as_held(render, messages: list[dict], full_text: str) -> str:
    """``messages`` rendered with the generation prompt, as ``full_text`` (the whole conversation) holds them. Where
    the template's generation prompt adds what the conversation's answers do not start with (DeepSeek-R1's
    ``<think>\\n`` after ``<｜Assistant｜>``, which ms-swift writes at inference only, as its response_prefix), the
    assistant header the conversation itself writes is taken instead: the text between ``messages`` and an
    answer's content. Otherwise (no such header) the generation prompt, and the caller's prefix check speaks."""
    text = render(messages, generation_prompt=True)
    if full_text.startswith(text):
        return text
    bare = render(messages, generation_prompt=False)
    probe = "\u27e6answer\u27e7"
    rendered = render([*messages, {"role": "assistant", "content": probe}], generation_prompt=False)
    at = rendered.find(probe, len(bare))
    if not rendered.startswith(bare) or at < 0:
        return text
    held = bare + rendered[len(bare): at]
    if not (text.startswith(held) and full_text.startswith(held)):
        return text
    if not _WARNED_HEADER:
        _WARNED_HEADER.append(True)
        logger.warning("The chat template's generation prompt ends with %r, which answers in the data do not start "
                       "with: answers are trained from after the assistant header %r, as ms-swift does (its "
                       "response_prefix applies at inference only)", text[len(held):], held[len(bare):])
    return held


_WARNED_HEADER: list[bool] = []
