"""Dataset formats: tell a file's format from its columns and turn each record into canonical rows.

``FORMATS`` is the whole catalogue: the columns that identify a format, the kinds of row it can give,
and the function that parses one record into a ``Parsed`` (a prompt and whatever answers the record
holds). ``to_rows`` then builds the row the command needs. A new format (LLaMA-Factory, hh-rlhf, ...)
is one parse function and one line in ``FORMATS``; the first entry whose columns are all present wins,
so more specific formats come first.

Example (ms-swift preference, kind "preference")::

    {"messages": [{"role": "user", "content": "2+3?"}, {"role": "assistant", "content": "5"}],
     "rejected_response": "6"}
    -> PreferenceRow(prompt=[user "2+3?"], chosen=[assistant "5"], rejected=[assistant "6"])

Strings stand for one turn: a prompt string is a user turn, an answer string an assistant turn.
Field paths in errors index messages from 0: ``messages[2].role`` is the third message's role.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from alignkit.data.rows import ConversationRow, Message, PreferenceRow, PromptRow, Row, RowSource, UnpairedRow
from alignkit.errors import DataError

KINDS = ("sft", "preference", "unpaired", "prompt")
ROLES = ("system", "user", "assistant")


@dataclass
class Parsed:
    """One record in a format-neutral shape.

    ``chosen`` is the answer (for an unpaired record, its one answer, judged by ``label``);
    ``prompt_field`` names the column the prompt came from, for errors.
    """

    prompt: list[Message]
    prompt_field: str
    chosen: list[Message] | None = None
    rejected: list[Message] | None = None
    label: bool | None = None
    margin: float | None = None
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Format:
    name: str
    columns: tuple[str, ...]
    kinds: tuple[str, ...]
    parse: Callable[[dict[str, Any], RowSource], Parsed]


# ---------------------------------------------------------------------------------------------- values


def _error(source: RowSource, field: str | None, message: str) -> DataError:
    return DataError(message, file=source.file, row=source.row, field=field)


def _missing(value: Any) -> bool:
    # Parquet and CSV give None or NaN for an empty cell; JSON lines simply leave the key out.
    return value is None or (isinstance(value, float) and math.isnan(value))


def _has(record: dict[str, Any], name: str) -> bool:
    return not _missing(record.get(name))


def _required(record: dict[str, Any], name: str, source: RowSource, expected: str) -> Any:
    value = record.get(name)
    if _missing(value):
        raise _error(source, name, f"missing value; expected {expected}")
    if isinstance(value, (str, list)) and not value:
        raise _error(source, name, f"empty; expected {expected}")
    return value


def _string(record: dict[str, Any], name: str, source: RowSource) -> str:
    value = _required(record, name, source, "a non-empty string")
    if not isinstance(value, str):
        raise _error(source, name, f"expected a string, got {type(value).__name__}")
    return value


def _messages(value: Any, name: str, source: RowSource) -> list[Message]:
    """Check a list of ``{"role", "content"}`` dicts and return plain copies (extra keys dropped)."""
    if not isinstance(value, list):
        raise _error(source, name, f"expected a list of messages, got {type(value).__name__}")
    messages = []
    for i, message in enumerate(value):
        where = f"{name}[{i}]"
        if not isinstance(message, dict):
            raise _error(
                source,
                where,
                f"expected a message {{'role': ..., 'content': ...}}, got {type(message).__name__}",
            )
        for key in ("role", "content"):
            if _missing(message.get(key)):
                raise _error(source, where, f"message has no '{key}'")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise _error(
                source, f"{where}.role", f"unknown role {role!r}; expected one of {', '.join(ROLES)}"
            )
        if not isinstance(content, str):
            raise _error(source, f"{where}.content", f"expected a string, got {type(content).__name__}")
        messages.append({"role": role, "content": content})
    return messages


def _turns(record: dict[str, Any], name: str, source: RowSource, role: str) -> list[Message]:
    """A column holding a string (one ``role`` turn) or a non-empty list of messages."""
    value = _required(record, name, source, "a non-empty string or list of messages")
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return _messages(value, name, source)


def _answer(messages: list[Message], name: str, source: RowSource, offset: int = 0) -> list[Message]:
    """An answer holds assistant turns only; ``offset`` is its start in the column, for the error path."""
    if not any(m["content"] for m in messages):
        raise _error(source, name, "empty; expected an answer with text")
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            raise _error(
                source,
                f"{name}[{offset + i}].role",
                f"expected 'assistant' in an answer, got {message['role']!r}",
            )
    return messages


def _label(record: dict[str, Any], source: RowSource) -> bool:
    value = record.get("label")
    if not isinstance(value, bool):
        raise _error(source, "label", f"expected true or false, got {value!r} ({type(value).__name__})")
    return value


def _margin(record: dict[str, Any], source: RowSource) -> float | None:
    value = record.get("margin")
    if _missing(value):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _error(source, "margin", f"expected a number, got {value!r} ({type(value).__name__})")
    return float(value)


def _extras(record: dict[str, Any], used: set[str]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in used}


def _split_last_answer(
    messages: list[Message], name: str, source: RowSource
) -> tuple[list[Message], list[Message]]:
    """``[..., user, assistant]`` -> (everything before the last turn, [last turn])."""
    if messages[-1]["role"] != "assistant":
        raise _error(
            source, name, f"expected the last message to be an assistant turn, got {messages[-1]['role']!r}"
        )
    return messages[:-1], messages[-1:]


def _shared_prompt(chosen: list[Message], rejected: list[Message]) -> int:
    """Length of the prompt two conversations share: their common prefix, cut after its last user turn."""
    common = 0
    while common < min(len(chosen), len(rejected)) and chosen[common] == rejected[common]:
        common += 1
    users = [i for i in range(common) if chosen[i]["role"] == "user"]
    return users[-1] + 1 if users else 0


# ------------------------------------------------------------------------------------------- parsers


_SWIFT_COLUMNS = {"messages", "system", "rejected_response", "rejected_messages", "label", "margin"}


def parse_swift_messages(record: dict[str, Any], source: RowSource) -> Parsed:
    """ms-swift: ``messages`` (+ ``system``) with ``rejected_response``, ``rejected_messages`` or ``label``."""
    messages = _messages(
        _required(record, "messages", source, "a non-empty list of messages"), "messages", source
    )
    system = _system(record, messages, source)
    messages = system + messages
    extras = _extras(record, _SWIFT_COLUMNS)
    # Field paths must index the column as written, so shift by the prepended system turn.
    offset = -len(system)
    if _has(record, "rejected_messages"):
        rejected = _messages(
            _required(record, "rejected_messages", source, "a non-empty list of messages"),
            "rejected_messages",
            source,
        )
        rejected = system + rejected
        cut = _shared_prompt(messages, rejected)
        if cut == 0:
            raise _error(
                source, "rejected_messages", "shares no prompt ending in a user turn with 'messages'"
            )
        return Parsed(
            prompt=messages[:cut],
            prompt_field="messages",
            chosen=_answer(messages[cut:], "messages", source, cut + offset),
            rejected=_answer(rejected[cut:], "rejected_messages", source, cut + offset),
            margin=_margin(record, source),
            extras=extras,
        )
    if _has(record, "rejected_response"):
        prompt, chosen = _split_last_answer(messages, "messages", source)
        chosen = _answer(chosen, "messages", source, len(prompt) + offset)
        rejected = _answer(
            _turns(record, "rejected_response", source, "assistant"), "rejected_response", source
        )
        return Parsed(prompt, "messages", chosen, rejected, margin=_margin(record, source), extras=extras)
    if _has(record, "label"):
        prompt, chosen = _split_last_answer(messages, "messages", source)
        chosen = _answer(chosen, "messages", source, len(prompt) + offset)
        return Parsed(prompt, "messages", chosen, label=_label(record, source), extras=extras)
    if messages[-1]["role"] == "assistant":
        answer = _answer(messages[-1:], "messages", source, len(messages) - 1 + offset)
        return Parsed(messages[:-1], "messages", answer, extras=extras)
    return Parsed(messages, "messages", extras=extras)


def _system(record: dict[str, Any], messages: list[Message], source: RowSource) -> list[Message]:
    if _missing(record.get("system")):
        return []
    system = _string(record, "system", source)
    if messages[0]["role"] == "system":
        raise _error(source, "system", "the conversation already starts with a system message")
    return [{"role": "system", "content": system}]


def parse_swift_query(record: dict[str, Any], source: RowSource) -> Parsed:
    """ms-swift: ``query``/``response`` with optional ``history`` ([[query, response], ...]) and ``system``."""
    messages = []
    history = record.get("history")
    if _has(record, "history"):
        if not isinstance(history, list):
            raise _error(
                source, "history", f"expected a list of [query, response] pairs, got {type(history).__name__}"
            )
        for i, pair in enumerate(history):
            if not (
                isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(t, str) for t in pair)
            ):
                raise _error(
                    source, f"history[{i}]", f"expected a [query, response] pair of strings, got {pair!r}"
                )
            messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    messages.append({"role": "user", "content": _string(record, "query", source)})
    messages.append({"role": "assistant", "content": _string(record, "response", source)})
    converted = {k: v for k, v in record.items() if k not in ("query", "response", "history")}
    return parse_swift_messages({**converted, "messages": messages}, source)


_TRL_COLUMNS = {"prompt", "chosen", "rejected", "completion", "label", "margin"}


def parse_trl(record: dict[str, Any], source: RowSource) -> Parsed:
    """TRL: ``prompt`` with ``chosen``/``rejected`` or ``completion`` (+ ``label``), strings or messages.

    Without a ``prompt`` column, ``chosen`` and ``rejected`` are whole conversations and the prompt is
    their shared beginning (TRL's implicit prompt).
    """
    extras = _extras(record, _TRL_COLUMNS)
    if not _has(record, "prompt"):
        chosen, rejected = (_turns(record, name, source, "assistant") for name in ("chosen", "rejected"))
        if isinstance(record["chosen"], str) or isinstance(record["rejected"], str):
            raise _error(source, "prompt", "missing; strings for chosen and rejected need a 'prompt' column")
        cut = _shared_prompt(chosen, rejected)
        if cut == 0:
            raise _error(source, "rejected", "shares no prompt ending in a user turn with 'chosen'")
        return Parsed(
            prompt=chosen[:cut],
            prompt_field="chosen",
            chosen=_answer(chosen[cut:], "chosen", source, cut),
            rejected=_answer(rejected[cut:], "rejected", source, cut),
            margin=_margin(record, source),
            extras=extras,
        )
    parsed = Parsed(prompt=_turns(record, "prompt", source, "user"), prompt_field="prompt", extras=extras)
    if _has(record, "chosen"):
        parsed.chosen = _answer(_turns(record, "chosen", source, "assistant"), "chosen", source)
        parsed.rejected = _answer(_turns(record, "rejected", source, "assistant"), "rejected", source)
        parsed.margin = _margin(record, source)
    elif _has(record, "completion"):
        parsed.chosen = _answer(_turns(record, "completion", source, "assistant"), "completion", source)
        if _has(record, "label"):
            parsed.label = _label(record, source)
    return parsed


FORMATS: tuple[Format, ...] = (
    Format("ms-swift preference", ("messages", "rejected_response"), KINDS, parse_swift_messages),
    Format(
        "ms-swift preference (rejected_messages)",
        ("messages", "rejected_messages"),
        KINDS,
        parse_swift_messages,
    ),
    Format("ms-swift unpaired", ("messages", "label"), ("unpaired", "prompt"), parse_swift_messages),
    Format(
        "messages (ms-swift / TRL conversational)", ("messages",), ("sft", "prompt"), parse_swift_messages
    ),
    Format(
        "ms-swift query/response preference",
        ("query", "response", "rejected_response"),
        KINDS,
        parse_swift_query,
    ),
    Format(
        "ms-swift query/response unpaired",
        ("query", "response", "label"),
        ("unpaired", "prompt"),
        parse_swift_query,
    ),
    Format("ms-swift query/response", ("query", "response"), ("sft", "prompt"), parse_swift_query),
    Format("TRL preference", ("prompt", "chosen", "rejected"), KINDS, parse_trl),
    Format("TRL preference (implicit prompt)", ("chosen", "rejected"), KINDS, parse_trl),
    Format("TRL unpaired", ("prompt", "completion", "label"), ("unpaired", "prompt"), parse_trl),
    Format("TRL prompt-completion", ("prompt", "completion"), ("sft", "prompt"), parse_trl),
    Format("TRL prompt-only", ("prompt",), ("prompt",), parse_trl),
)


def detect_format(columns: list[str], kind: str, file: str) -> Format:
    """The first format in ``FORMATS`` whose columns are all present; it must be able to give ``kind`` rows."""
    for fmt in FORMATS:
        if set(fmt.columns) <= set(columns):
            break
    else:
        known = "; ".join(f"{f.name} ({', '.join(f.columns)})" for f in FORMATS)
        raise DataError(
            f"unknown dataset format: found columns {', '.join(columns)}; known formats: {known}", file=file
        )
    if kind not in fmt.kinds:
        able = ", ".join(f"{f.name} ({', '.join(f.columns)})" for f in FORMATS if kind in f.kinds)
        raise DataError(
            f"format '{fmt.name}' gives {' or '.join(fmt.kinds)} rows, not {kind} rows; formats for {kind}: {able}",
            file=file,
        )
    return fmt


def to_rows(parsed: Parsed, kind: str, source: RowSource) -> list[Row]:
    """Build the canonical rows of ``kind`` from a parsed record.

    A preference record gives two unpaired rows for KTO (chosen → True, rejected → False), as TRL does;
    every other case gives one row.
    """
    if not parsed.prompt:
        raise _error(source, parsed.prompt_field, "no prompt: expected a user turn before the answer")
    if kind == "sft":
        if parsed.chosen is None:
            raise _error(source, parsed.prompt_field, "expected the last message to be an assistant turn")
        return [ConversationRow(messages=parsed.prompt + parsed.chosen, source=source)]
    if parsed.prompt[-1]["role"] != "user":
        raise _error(
            source,
            parsed.prompt_field,
            f"the prompt must end with a user turn, but it ends with {parsed.prompt[-1]['role']!r}",
        )
    if kind == "preference":
        return [
            PreferenceRow(parsed.prompt, parsed.chosen, parsed.rejected, parsed.margin, source, parsed.extras)
        ]
    if kind == "unpaired":
        if parsed.label is not None:
            return [UnpairedRow(parsed.prompt, parsed.chosen, parsed.label, source)]
        return [
            UnpairedRow(parsed.prompt, parsed.chosen, True, source),
            UnpairedRow(parsed.prompt, parsed.rejected, False, source),
        ]
    return [PromptRow(prompt=parsed.prompt, extras=parsed.extras, source=source)]


def convert(record: dict[str, Any], fmt: Format, kind: str, source: RowSource) -> list[Row]:
    """One record of a file in format ``fmt`` → its canonical rows of ``kind``."""
    # The format was told from the columns of the whole file; each record must still have them all.
    for column in fmt.columns:
        if _missing(record.get(column)):
            raise _error(source, column, f"missing value; format '{fmt.name}' needs {', '.join(fmt.columns)}")
    return to_rows(fmt.parse(record, source), kind, source)
