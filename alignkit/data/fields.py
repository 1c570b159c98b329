"""Checked access to one record's fields: strings, messages, answers, labels, margins, image paths.

Every dataset format's parser (``alignkit.data.formats``) reads its columns through these functions, so
each problem is reported the same way: a ``DataError`` naming the file, the row and the field, and what
was expected. Field paths index messages from 0: ``messages[2].role`` is the third message's role.

Messages are accepted in the spellings the common formats use and normalised to
``{"role": "system"|"user"|"assistant", "content": str}``::

    {"role": "user", "content": "hi"}        OpenAI / ms-swift / TRL
    {"from": "human", "value": "hi"}         ShareGPT / LLaMA-Factory
    {"from": "human", "content": "hi"}       ColossalChat
    {"role": "human", "text": "hi"}          ms-swift's hh-rlhf-cn
    -> {"role": "user", "content": "hi"}

Agent rows (SFT, rendered by --agent_template) add ms-swift's roles ``tool_call`` (``function_call``) and ``tool``
(``tool_response``, ``function_response``, ``observation``), whose content may be a JSON object (kept as its JSON
text), and OpenAI's assistant ``tool_calls``, read as ``tool_call`` messages after the assistant's text::

    {"role": "assistant", "content": null, "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}
    -> {"role": "tool_call", "content": '{"name": "f", "arguments": {}}'}
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from alignkit.data.agent_templates import read_tools
from alignkit.data.rows import Message, RowSource
from alignkit.errors import DataError

ROLES = ("system", "user", "assistant", "tool_call", "tool")
# ms-swift's MessagesPreprocessor spellings (a '-' reads as '_'); tool_response is ms-swift's other name for tool.
ROLE_ALIASES = {"human": "user", "gpt": "assistant", "function_call": "tool_call", "tool_response": "tool",
                "function_response": "tool", "observation": "tool", "observations": "tool"}


def error(source: RowSource, field: str | None, message: str) -> DataError:
    return DataError(message, file=source.file, row=source.row, field=field)


def missing(value: Any) -> bool:
    # Parquet and CSV give None or NaN for an empty cell; JSON lines simply leave the key out.
    return value is None or (isinstance(value, float) and math.isnan(value))


def has(record: dict[str, Any], name: str) -> bool:
    return not missing(record.get(name))


def required(record: dict[str, Any], name: str, source: RowSource, expected: str) -> Any:
    value = record.get(name)
    if missing(value):
        raise error(source, name, f"missing value; expected {expected}")
    if isinstance(value, (str, list, dict)) and not value:
        raise error(source, name, f"empty; expected {expected}")
    return value


def string(record: dict[str, Any], name: str, source: RowSource) -> str:
    value = required(record, name, source, "a non-empty string")
    if not isinstance(value, str):
        raise error(source, name, f"expected a string, got {type(value).__name__}")
    return value


def optional_string(record: dict[str, Any], name: str, source: RowSource) -> str:
    """A string column that may be absent or empty (alpaca's ``input``, ptx's ``source``)."""
    value = record.get(name)
    if missing(value):
        return ""
    if not isinstance(value, str):
        raise error(source, name, f"expected a string, got {type(value).__name__}")
    return value


def message(value: Any, where: str, source: RowSource) -> Message:
    """One message in any accepted spelling (see the module docstring), as a plain ``{"role", "content"}``."""
    if not isinstance(value, dict):
        raise error(source, where, f"expected a message {{'role': ..., 'content': ...}}, got {type(value).__name__}")
    role_key = "role" if "role" in value else "from"
    content_key = next((key for key in ("content", "value", "text") if key in value), "content")
    if missing(value.get(role_key)):
        raise error(source, where, "message has no 'role' (or 'from')")
    if missing(value.get(content_key)):
        raise error(source, where, "message has no 'content' (or 'value', 'text')")
    role, content = value[role_key], value[content_key]
    if isinstance(role, str):  # a list or dict is no key
        role = ROLE_ALIASES.get(role.replace("-", "_"), role)
    if role not in ROLES:
        raise error(source, f"{where}.{role_key}", f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    if role in ("tool_call", "tool") and not isinstance(content, str):
        content = json.dumps(content, ensure_ascii=False)  # ms-swift keeps a call or result object as its JSON
    if isinstance(content, list):
        content = content_parts(content, f"{where}.{content_key}", source)
    if not isinstance(content, str):
        raise error(source, f"{where}.{content_key}", f"expected a string, got {type(content).__name__}")
    return {"role": role, "content": content}


def content_parts(parts: list, where: str, source: RowSource) -> str:
    """TRL/OpenAI content parts → text with ms-swift's ``<image>`` placeholders, the images being in the row's
    ``images`` column: [{"type": "image"}, {"type": "text", "text": "What?"}] → "<image>What?"."""
    out = []
    for i, part in enumerate(parts):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            out.append(part["text"])
        elif kind == "image" and all(part.get(k) is None for k in ("image", "url", "path")):
            out.append("<image>")
        else:
            raise error(source, f"{where}[{i}]", f"expected a content part {{'type': 'text', 'text': ...}} or "
                        f"{{'type': 'image'}} (the image itself in the 'images' column), got {part!r:.80}")
    return "".join(out)


def messages(value: Any, name: str, source: RowSource) -> list[Message]:
    """A list of messages (extra keys dropped; an assistant's OpenAI ``tool_calls`` become ``tool_call`` turns)."""
    if not isinstance(value, list):
        raise error(source, name, f"expected a list of messages, got {type(value).__name__}")
    out = []
    for i, m in enumerate(value):
        calls = m.get("tool_calls") if isinstance(m, dict) and m.get("role") == "assistant" else None
        if not calls:
            out.append(message(m, f"{name}[{i}]", source))
            continue
        if not missing(m.get("content")) and m["content"]:
            out.append(message(m, f"{name}[{i}]", source))
        out += tool_calls(calls, f"{name}[{i}].tool_calls", source)
    return out


def tool_calls(calls: Any, where: str, source: RowSource) -> list[Message]:
    """OpenAI ``tool_calls`` → ``tool_call`` messages (ms-swift's normalize_openai_tool_calls)."""
    if not isinstance(calls, list):
        raise error(source, where, f"expected a list of tool calls, got {type(calls).__name__}")
    out = []
    for i, call in enumerate(calls):
        function = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise error(source, f"{where}[{i}]", f"expected a tool call with a function name, got {call!r:.80}")
        arguments = function.get("arguments", {})  # a JSON string is parsed when the call is rendered
        out.append({"role": "tool_call", "content": json.dumps({"name": function["name"], "arguments": arguments},
                                                               ensure_ascii=False)})
    return out


def tools(record: dict[str, Any], source: RowSource) -> list[dict] | None:
    """ms-swift's ``tools`` column (a JSON list, or a list of tool objects or their JSON), None when absent."""
    value = record.get("tools")
    return None if missing(value) or value in ("", []) else read_tools(value, "tools", source)


def turns(record: dict[str, Any], name: str, source: RowSource, role: str) -> list[Message]:
    """A column holding a string (one ``role`` turn), one message, or a non-empty list of messages."""
    value = required(record, name, source, "a non-empty string or list of messages")
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, dict):
        return [message(value, name, source)]
    return messages(value, name, source)


def answer(turns_: list[Message], name: str, source: RowSource, offset: int = 0) -> list[Message]:
    """An answer holds assistant turns only; ``offset`` is its start in the column, for the error path."""
    if not any(m["content"] for m in turns_):
        raise error(source, name, "empty; expected an answer with text")
    for i, m in enumerate(turns_):
        if m["role"] != "assistant":
            raise error(source, f"{name}[{offset + i}].role", f"expected 'assistant' in an answer, got {m['role']!r}")
    return turns_


def label(record: dict[str, Any], name: str, source: RowSource) -> bool:
    value = record.get(name)
    if not isinstance(value, bool):
        raise error(source, name, f"expected true or false, got {value!r} ({type(value).__name__})")
    return value


def class_label(record: dict[str, Any], name: str, source: RowSource) -> int | float | list:
    """A seq_cls label as ms-swift takes it: a number (a class index, or a regression target) or a non-empty list
    of numbers (class indices for multi-label, targets for multi-output regression). Which one fits is checked
    against --problem_type and --num_labels before training (``data.validate.check_class_labels``)."""
    value = required(record, name, source, "a class index, a list of class indices or a number")
    if isinstance(value, bool):  # true/false as classes 1/0, as ms-swift's int(label)
        return int(value)

    def number(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    if number(value) or isinstance(value, list) and value and all(number(x) for x in value):
        return value
    raise error(source, name, f"expected a class index, a list of class indices or a number, got {value!r}")


def margin(record: dict[str, Any], source: RowSource) -> float | None:
    value = record.get("margin")
    if missing(value):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(source, "margin", f"expected a number, got {value!r} ({type(value).__name__})")
    return float(value)


def history(record: dict[str, Any], source: RowSource) -> list[Message]:
    """ms-swift / alpaca ``history``: ``[[query, response], ...]`` -> alternating user/assistant turns."""
    value = record.get("history")
    if missing(value):
        return []
    if not isinstance(value, list):
        raise error(source, "history", f"expected a list of [query, response] pairs, got {type(value).__name__}")
    out = []
    for i, pair in enumerate(value):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            raise error(source, f"history[{i}]", f"expected a [query, response] pair of strings, got {pair!r}")
        out += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return out


def system_turn(record: dict[str, Any], conversation: list[Message], source: RowSource) -> list[Message]:
    """The ``system`` column as a leading system turn ([] when absent); refuses a second system prompt."""
    if missing(record.get("system")) or record.get("system") == "":
        return []
    system = string(record, "system", source)
    if conversation and conversation[0]["role"] == "system":
        raise error(source, "system", "the conversation already starts with a system message")
    return [{"role": "system", "content": system}]


def split_last_answer(turns_: list[Message], name: str, source: RowSource) -> tuple[list[Message], list[Message]]:
    """``[..., user, assistant]`` -> (everything before the last turn, [last turn])."""
    if turns_[-1]["role"] != "assistant":
        raise error(source, name, f"expected the last message to be an assistant turn, got {turns_[-1]['role']!r}")
    return turns_[:-1], turns_[-1:]


def split_pair(
    chosen: list[Message], rejected: list[Message], names: tuple[str, str], source: RowSource
) -> tuple[list[Message], list[Message], list[Message]]:
    """Two whole conversations -> (shared prompt, chosen answer, rejected answer).

    The prompt is their common beginning, cut after its last user turn; what follows must be assistant
    turns only, so the pair differs in its final answer and nowhere earlier. Example::

        chosen   = [user "hi", assistant "hello", user "2+3?", assistant "5"]
        rejected = [user "hi", assistant "hello", user "2+3?", assistant "6"]
        -> prompt = the first three turns; answers [assistant "5"] and [assistant "6"]
    """
    common = 0
    while common < min(len(chosen), len(rejected)) and chosen[common] == rejected[common]:
        common += 1
    users = [i for i in range(common) if chosen[i]["role"] == "user"]
    if not users:
        raise error(source, names[1], f"shares no prompt ending in a user turn with '{names[0]}'")
    cut = users[-1] + 1
    for name, conversation in zip(names, (chosen, rejected)):
        later_user = next((i for i in range(cut, len(conversation)) if conversation[i]["role"] != "assistant"), None)
        if later_user is not None:
            raise error(
                source,
                f"{name}[{later_user}]",
                f"'{names[0]}' and '{names[1]}' differ before their last user turn (they agree on "
                f"{common} messages); only the final answer may differ",
            )
    return (
        chosen[:cut],
        answer(chosen[cut:], names[0], source, cut),
        answer(rejected[cut:], names[1], source, cut),
    )


def extras(record: dict[str, Any], used: set[str]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in used}


IMAGE_COLUMNS = ("images", "rejected_images")


def check_images(record: dict[str, Any], source: RowSource) -> int:
    """Check that every local image path of ms-swift's ``images`` / ``rejected_images`` exists.

    A relative path is looked up from the working directory, then from the data file's folder. URLs and
    inline bytes are not checked. Returns the number of images seen.
    """
    seen = 0
    for column in IMAGE_COLUMNS:
        value = record.get(column)
        if missing(value):
            continue
        items = [value] if isinstance(value, (str, dict)) else value
        if not isinstance(items, list):
            raise error(source, column, f"expected a list of image paths, got {type(value).__name__}")
        for i, item in enumerate(items):
            where = f"{column}[{i}]"
            path = item.get("path") if isinstance(item, dict) else item
            if isinstance(item, dict) and path is None and item.get("bytes") is not None:
                seen += 1
                continue
            if not isinstance(path, str) or not path:
                raise error(source, where, f"expected an image path, got {item!r}")
            seen += 1
            if path.startswith(("http://", "https://", "data:")):
                continue
            folder = Path(source.file).parent
            if not (Path(path).expanduser().is_file() or (folder / path).is_file()):
                raise error(
                    source, where, f"image file '{path}' not found (looked in the working directory and {folder})"
                )
    return seen
