"""Dataset formats: tell a file's format from its columns and turn each record into canonical rows.

``FORMATS`` is the whole catalogue: the columns that identify a format, the kinds of row it can give
(the first is the kind it naturally holds), an optional check of a sample record for formats that
share columns, and the function that parses one record into a ``Parsed`` (a prompt and whatever
answers the record holds). ``to_rows`` then builds the row the command needs. The first entry whose
columns are all present (and whose sample check passes) wins, so more specific formats come first.
When none matches, ms-swift's automatic column names are tried (``AUTO_COLUMNS``: ``question`` →
``query``, ``answer`` → ``response``, ...).

Example (ms-swift preference, kind "preference")::

    {"messages": [{"role": "user", "content": "2+3?"}, {"role": "assistant", "content": "5"}],
     "rejected_response": "6"}
    -> PreferenceRow(prompt=[user "2+3?"], chosen=[assistant "5"], rejected=[assistant "6"])

Strings stand for one turn: a prompt string is a user turn, an answer string an assistant turn.
Field paths in errors index messages from 0: ``messages[2].role`` is the third message's role.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from alignkit.data import fields as f
from alignkit.data import prepared
from alignkit.data.agent_templates import AGENT_ROLES
from alignkit.data.retrieval_rows import COLUMNS as GROUP_COLUMNS
from alignkit.data.retrieval_rows import GROUP_KINDS, parse_group
from alignkit.data.rows import (
    ClassificationRow,
    ConversationRow,
    Message,
    PreferenceRow,
    PromptRow,
    Row,
    RowSource,
    TokenizedRow,
    UnpairedRow,
)
from alignkit.errors import DataError

KINDS = ("sft", "preference", "unpaired", "prompt", "classification", *GROUP_KINDS)
PAIRED = ("preference", "sft", "unpaired", "prompt")  # a pair also gives a conversation, two KTO rows, a prompt
SINGLE = ("sft", "prompt")
LABELLED = ("unpaired", "prompt")


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
    class_label: int | float | list | None = None  # seq_cls: the label of the whole conversation
    tools: list[dict] | None = None  # agent rows: the tool definitions (ms-swift's ``tools`` column)


@dataclass(frozen=True)
class Format:
    name: str
    columns: tuple[str, ...]
    kinds: tuple[str, ...]
    parse: Callable[[dict[str, Any], RowSource], Parsed]
    sniff: Callable[[dict[str, Any]], bool] | None = None
    tokenized: Callable[[dict[str, Any], RowSource], TokenizedRow] | None = None  # rows that arrive as token ids


# ------------------------------------------------------------------------------------------- ms-swift


_SWIFT_COLUMNS = {"messages", "system", "rejected_response", "rejected_messages", "label", "margin", "tools"}


def parse_swift_messages(record: dict[str, Any], source: RowSource) -> Parsed:
    """ms-swift: ``messages`` (+ ``system``) with ``rejected_response``, ``rejected_messages`` or ``label``.

    Also ColossalChat's SFT and PPO-prompt files, whose messages are spelled ``{"from", "content"}``.
    """
    written = f.messages(f.required(record, "messages", source, "a non-empty list of messages"), "messages", source)
    system = f.system_turn(record, written, source)
    messages = system + written
    extras = f.extras(record, _SWIFT_COLUMNS)
    if f.has(record, "rejected_messages"):
        rejected = f.messages(
            f.required(record, "rejected_messages", source, "a non-empty list of messages"), "rejected_messages", source
        )
        # Split the columns as written, so that error paths index them; the system turn joins the prompt.
        prompt, chosen, rejected = f.split_pair(written, rejected, ("messages", "rejected_messages"), source)
        return Parsed(system + prompt, "messages", chosen, rejected, margin=f.margin(record, source), extras=extras)
    if f.has(record, "rejected_response"):
        prompt, chosen = f.split_last_answer(messages, "messages", source)
        chosen = f.answer(chosen, "messages", source, len(written) - 1)
        rejected = f.answer(f.turns(record, "rejected_response", source, "assistant"), "rejected_response", source)
        return Parsed(prompt, "messages", chosen, rejected, margin=f.margin(record, source), extras=extras)
    if f.has(record, "label"):
        prompt, chosen = f.split_last_answer(messages, "messages", source)
        chosen = f.answer(chosen, "messages", source, len(written) - 1)
        return Parsed(prompt, "messages", chosen, label=f.label(record, "label", source), extras=extras)
    tools = f.tools(record, source)
    if messages[-1]["role"] == "tool_call":  # an agent row may end with a call: ms-swift trains it as an answer
        return Parsed(messages[:-1], "messages", messages[-1:], extras=extras, tools=tools)
    if messages[-1]["role"] == "assistant":
        answer = f.answer(messages[-1:], "messages", source, len(written) - 1)
        return Parsed(messages[:-1], "messages", answer, extras=extras, tools=tools)
    return Parsed(messages, "messages", extras=extras, tools=tools)


def parse_swift_query(record: dict[str, Any], source: RowSource) -> Parsed:
    """ms-swift: ``query`` (+ ``response``) with optional ``history`` ([[query, response], ...]) and ``system``."""
    messages = f.history(record, source) + [{"role": "user", "content": f.string(record, "query", source)}]
    if f.has(record, "response"):
        messages.append({"role": "assistant", "content": f.string(record, "response", source)})
    converted = {k: v for k, v in record.items() if k not in ("query", "response", "history")}
    return parse_swift_messages({**converted, "messages": messages}, source)


# ------------------------------------------------------------------------------------ TRL and friends


_TRL_COLUMNS = {"prompt", "chosen", "rejected", "completion", "label", "margin"}


def parse_trl(record: dict[str, Any], source: RowSource) -> Parsed:
    """TRL: ``prompt`` with ``chosen``/``rejected`` or ``completion`` (+ ``label``), strings or messages.

    Without a ``prompt`` column, ``chosen`` and ``rejected`` are whole conversations and the prompt is
    their shared beginning (TRL's implicit prompt). ColossalChat's KTO rows (``completion`` as one
    ``{"from", "content"}`` message) parse here too.
    """
    extras = f.extras(record, _TRL_COLUMNS)
    if not f.has(record, "prompt"):
        chosen, rejected = (f.turns(record, name, source, "assistant") for name in ("chosen", "rejected"))
        if isinstance(record["chosen"], str) or isinstance(record["rejected"], str):
            raise f.error(source, "prompt", "missing; strings for chosen and rejected need a 'prompt' column")
        prompt, chosen, rejected = f.split_pair(chosen, rejected, ("chosen", "rejected"), source)
        return Parsed(prompt, "chosen", chosen, rejected, margin=f.margin(record, source), extras=extras)
    parsed = Parsed(prompt=f.turns(record, "prompt", source, "user"), prompt_field="prompt", extras=extras)
    if f.has(record, "chosen"):
        parsed.chosen = f.answer(f.turns(record, "chosen", source, "assistant"), "chosen", source)
        parsed.rejected = f.answer(f.turns(record, "rejected", source, "assistant"), "rejected", source)
        parsed.margin = f.margin(record, source)
    elif f.has(record, "completion"):
        parsed.chosen = f.answer(f.turns(record, "completion", source, "assistant"), "completion", source)
        if f.has(record, "label"):
            parsed.label = f.label(record, "label", source)
    return parsed


def parse_whole_conversations(record: dict[str, Any], source: RowSource) -> Parsed:
    """UltraFeedback-binarized: ``chosen``/``rejected`` are whole conversations and ``prompt`` repeats the
    last user turn (or the prompt's messages); scores and other columns are kept as extras."""
    chosen = f.messages(f.required(record, "chosen", source, "a non-empty list of messages"), "chosen", source)
    rejected = f.messages(f.required(record, "rejected", source, "a non-empty list of messages"), "rejected", source)
    prompt, chosen, rejected = f.split_pair(chosen, rejected, ("chosen", "rejected"), source)
    stated = f.turns(record, "prompt", source, "user")
    if prompt[-len(stated):] != stated:
        raise f.error(source, "prompt", "does not match the conversation that 'chosen' and 'rejected' share")
    return Parsed(prompt, "chosen", chosen, rejected, margin=f.margin(record, source),
                  extras=f.extras(record, _TRL_COLUMNS | {"messages"}))


def parse_colossal_preference(record: dict[str, Any], source: RowSource) -> Parsed:
    """ColossalChat: ``context`` (messages ending with the user) with ``chosen``/``rejected`` answers."""
    prompt = f.messages(f.required(record, "context", source, "a non-empty list of messages"), "context", source)
    return Parsed(
        prompt,
        "context",
        f.answer(f.turns(record, "chosen", source, "assistant"), "chosen", source),
        f.answer(f.turns(record, "rejected", source, "assistant"), "rejected", source),
        extras=f.extras(record, {"context", "chosen", "rejected"}),
    )


def parse_colossal_ptx(record: dict[str, Any], source: RowSource) -> Parsed:
    """ColossalChat ptx: ``source`` (an instruction, may be empty) and ``Target`` (the text to learn)."""
    instruction = f.optional_string(record, "source", source)
    prompt = [{"role": "user", "content": instruction}] if instruction else []
    target = [{"role": "assistant", "content": f.string(record, "Target", source)}]
    return Parsed(prompt, "source", target, extras=f.extras(record, {"source", "Target"}))


# ------------------------------------------------------------------------------------ Anthropic hh-rlhf


_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def transcript(text: str, name: str, source: RowSource) -> list[Message]:
    """``"\\n\\nHuman: hi\\n\\nAssistant: hello"`` -> [user "hi", assistant "hello"]."""
    parts = _HH_TURN.split(text if text.startswith("\n\n") else "\n\n" + text)
    if parts[0].strip() or len(parts) < 3:
        raise f.error(source, name, "expected a transcript of '\\n\\nHuman: …' and '\\n\\nAssistant: …' turns")
    return [
        {"role": "user" if speaker == "Human" else "assistant", "content": content.strip()}
        for speaker, content in zip(parts[1::2], parts[2::2])
    ]


def parse_hh(record: dict[str, Any], source: RowSource) -> Parsed:
    """Anthropic hh-rlhf: ``chosen``/``rejected`` transcripts sharing everything but the final answer."""
    chosen, rejected = (transcript(f.string(record, name, source), name, source) for name in ("chosen", "rejected"))
    prompt, chosen, rejected = f.split_pair(chosen, rejected, ("chosen", "rejected"), source)
    return Parsed(prompt, "chosen", chosen, rejected, extras=f.extras(record, {"chosen", "rejected"}))


# --------------------------------------------------------------------------------------- LLaMA-Factory


_KTO_TAG = "kto_tag"


def _pair(record: dict[str, Any], source: RowSource, parsed: Parsed) -> Parsed:
    parsed.chosen = f.answer(f.turns(record, "chosen", source, "assistant"), "chosen", source)
    parsed.rejected = f.answer(f.turns(record, "rejected", source, "assistant"), "rejected", source)
    return parsed


def _tag(record: dict[str, Any], source: RowSource, parsed: Parsed) -> Parsed:
    if f.has(record, _KTO_TAG):
        parsed.label = f.label(record, _KTO_TAG, source)
    return parsed


def parse_alpaca(record: dict[str, Any], source: RowSource) -> Parsed:
    """LLaMA-Factory alpaca: ``instruction`` + ``input`` (joined by a newline), ``history``, ``system``;
    answers in ``output`` (SFT, or KTO with ``kto_tag``) or ``chosen``/``rejected``."""
    query = f.string(record, "instruction", source)
    extra_input = f.optional_string(record, "input", source)
    if extra_input:
        query += "\n" + extra_input
    conversation = f.history(record, source) + [{"role": "user", "content": query}]
    prompt = f.system_turn(record, conversation, source) + conversation
    used = {"instruction", "input", "output", "history", "system", "chosen", "rejected", _KTO_TAG}
    parsed = Parsed(prompt, "instruction", extras=f.extras(record, used))
    if f.has(record, "chosen"):
        return _pair(record, source, parsed)
    if f.has(record, "output"):
        parsed.chosen = [{"role": "assistant", "content": f.string(record, "output", source)}]
    return _tag(record, source, parsed)


def parse_sharegpt(record: dict[str, Any], source: RowSource) -> Parsed:
    """LLaMA-Factory sharegpt: ``conversations`` of ``{"from", "value"}`` (+ ``system``); answers as the
    last ``gpt`` turn (SFT, or KTO with ``kto_tag``) or ``chosen``/``rejected`` message objects."""
    written = f.messages(
        f.required(record, "conversations", source, "a non-empty list of messages"), "conversations", source
    )
    conversation = f.system_turn(record, written, source) + written
    parsed = Parsed(conversation, "conversations", extras=f.extras(record, {"conversations", "system", "chosen",
                                                                          "rejected", _KTO_TAG, "tools"}),
                    tools=f.tools(record, source))
    if f.has(record, "chosen"):
        return _pair(record, source, parsed)
    if conversation[-1]["role"] in ("assistant", "tool_call"):
        parsed.prompt, parsed.chosen = conversation[:-1], conversation[-1:]
    return _tag(record, source, parsed)


# ------------------------------------------------------------------------------------------- seq_cls


def parse_classification(record: dict[str, Any], source: RowSource) -> Parsed:
    """ms-swift seq_cls rows: ``messages`` (+ ``system``), or ``query`` (+ ``response``, ``history``, ``system``),
    and ``label``. The whole conversation is classified, so it may end with either role::

        {"messages": [{"role": "user", "content": "great phone"}], "label": 1}
        -> Parsed(prompt=[user "great phone"], class_label=1)
    """
    if f.has(record, "messages"):
        name = "messages"
        written = f.messages(f.required(record, "messages", source, "a non-empty list of messages"), name, source)
    else:
        name = "query"
        written = f.history(record, source) + [{"role": "user", "content": f.string(record, "query", source)}]
        if f.has(record, "response"):
            written.append({"role": "assistant", "content": f.string(record, "response", source)})
    messages = f.system_turn(record, written, source) + written
    used = {"messages", "query", "response", "history", "system", "label"}
    return Parsed(messages, name, extras=f.extras(record, used), class_label=f.class_label(record, "label", source))


# Formats of classification rows, read only for seq_cls (their columns overlap KTO's `messages` + `label`).
CLASSIFICATION_FORMATS: tuple[Format, ...] = (
    Format("ms-swift seq_cls", ("messages", "label"), ("classification",), parse_classification),
    Format("ms-swift seq_cls (query)", ("query", "label"), ("classification",), parse_classification),
)


def _group_only(record: dict[str, Any], source: RowSource) -> Parsed:
    raise f.error(source, None, "embedding/reranker rows are read by --task_type embedding, reranker or "
                  "generative_reranker only")


# Embedding and reranker rows (alignkit/data/retrieval_rows.py), read only for those task types.
GROUP_FORMATS: tuple[Format, ...] = (
    Format("ms-swift embedding/reranker", GROUP_COLUMNS, GROUP_KINDS, _group_only),
)


# ------------------------------------------------------------------------------------------- catalogue


def _first_message_has(key: str, column: str) -> Callable[[dict[str, Any]], bool]:
    def sniff(record: dict[str, Any]) -> bool:
        value = record.get(column)
        first = value[0] if isinstance(value, list) and value else value
        return isinstance(first, dict) and key in first

    return sniff


def _is_transcript(record: dict[str, Any]) -> bool:
    chosen = record.get("chosen")
    return isinstance(chosen, str) and chosen.lstrip().startswith("Human:")


def _whole_conversation(record: dict[str, Any]) -> bool:
    def starts_with_prompt(value: Any) -> bool:
        return isinstance(value, list) and bool(value) and isinstance(value[0], dict) and (
            value[0].get("role", value[0].get("from")) in ("user", "human", "system")
        )

    return starts_with_prompt(record.get("chosen")) and starts_with_prompt(record.get("rejected"))


def _tokenized_only(record: dict[str, Any], source: RowSource) -> Parsed:
    raise f.error(source, None, "this format holds token ids, not messages")


def _prepared(name: str, columns: tuple[str, ...], kind: str, read, sniff=None) -> Format:
    """A format of already tokenised rows (alignkit/data/prepared.py): read as they are, never re-rendered."""
    return Format(name, columns, (kind,), _tokenized_only, sniff, tokenized=read)


FORMATS: tuple[Format, ...] = (
    Format("ms-swift preference", ("messages", "rejected_response"), PAIRED, parse_swift_messages),
    Format("ms-swift preference (rejected_messages)", ("messages", "rejected_messages"), PAIRED, parse_swift_messages),
    Format("ms-swift unpaired", ("messages", "label"), LABELLED, parse_swift_messages),
    Format("UltraFeedback binarized", ("prompt", "chosen", "rejected"), PAIRED, parse_whole_conversations,
           _whole_conversation),
    Format("TRL preference", ("prompt", "chosen", "rejected"), PAIRED, parse_trl),
    Format("ColossalChat preference", ("context", "chosen", "rejected"), PAIRED, parse_colossal_preference),
    Format("LLaMA-Factory sharegpt preference", ("conversations", "chosen", "rejected"), PAIRED, parse_sharegpt),
    Format("LLaMA-Factory sharegpt KTO", ("conversations", _KTO_TAG), LABELLED, parse_sharegpt),
    Format("LLaMA-Factory sharegpt", ("conversations",), SINGLE, parse_sharegpt),
    Format("LLaMA-Factory alpaca preference", ("instruction", "chosen", "rejected"), PAIRED, parse_alpaca),
    Format("LLaMA-Factory alpaca KTO", ("instruction", "output", _KTO_TAG), LABELLED, parse_alpaca),
    Format("LLaMA-Factory alpaca", ("instruction", "output"), SINGLE, parse_alpaca),
    Format("ColossalChat messages (from/content)", ("messages",), SINGLE, parse_swift_messages,
           _first_message_has("from", "messages")),
    Format("messages (ms-swift / TRL conversational)", ("messages",), SINGLE, parse_swift_messages),
    Format("ms-swift query/response preference", ("query", "response", "rejected_response"), PAIRED,
           parse_swift_query),
    Format("ms-swift query/response unpaired", ("query", "response", "label"), LABELLED, parse_swift_query),
    Format("ms-swift query/response", ("query", "response"), SINGLE, parse_swift_query),
    Format("ms-swift query (prompt-only)", ("query",), ("prompt",), parse_swift_query),
    Format("Anthropic hh-rlhf", ("chosen", "rejected"), PAIRED, parse_hh, _is_transcript),
    Format("TRL preference (implicit prompt)", ("chosen", "rejected"), PAIRED, parse_trl),
    # ColossalChat's prepare_dataset output: token ids (its KTO rows share the raw ones' column names).
    _prepared("ColossalChat prepared preference (token ids)", prepared.PREFERENCE_COLUMNS, "preference",
              prepared.preference_row),
    _prepared("ColossalChat prepared SFT (token ids)", prepared.SFT_COLUMNS, "sft", prepared.sft_row),
    _prepared("ColossalChat prepared KTO (token ids)", prepared.KTO_COLUMNS, "unpaired", prepared.kto_row,
              prepared.holds_token_ids("completion")),
    _prepared("ColossalChat prepared prompts (token ids)", prepared.PROMPT_COLUMNS, "prompt", prepared.prompt_row,
              prepared.holds_token_ids("input_ids")),
    Format("ColossalChat KTO", ("prompt", "completion", "label"), LABELLED, parse_trl,
           _first_message_has("from", "completion")),
    Format("TRL unpaired", ("prompt", "completion", "label"), LABELLED, parse_trl),
    Format("TRL prompt-completion", ("prompt", "completion"), SINGLE, parse_trl),
    Format("ColossalChat ptx", ("source", "Target"), ("sft",), parse_colossal_ptx),
    Format("TRL prompt-only", ("prompt",), ("prompt",), parse_trl),
)

AUTO_COLUMNS: dict[str, tuple[str, ...]] = {
    "query": ("prompt", "query", "instruction", "question", "problem"),
    "response": ("response", "answer", "output", "completion"),
    "system": ("system_prompt",),
}
"""ms-swift's automatic column names, tried when no format matches: the first present source column of
each target is renamed to it (``{"question": "q", "answer": "a"}`` reads as ``{"query", "response"}``)."""


def auto_columns(columns: list[str]) -> dict[str, str]:
    """The renaming ``AUTO_COLUMNS`` gives for these columns, e.g. ``{"question": "query", "answer": "response"}``."""
    mapping = {}
    for target, candidates in AUTO_COLUMNS.items():
        if target in columns:
            continue
        source = next((c for c in candidates if c in columns), None)
        if source is not None:
            mapping[source] = target
    return mapping


def _matches(fmt: Format, columns: set[str], records: list[dict[str, Any]]) -> bool:
    if not set(fmt.columns) <= columns:
        return False
    if fmt.sniff is None:
        return True
    sample = next((r for r in records if all(f.has(r, c) for c in fmt.columns)), None)
    return sample is not None and fmt.sniff(sample)


def detect_format(columns: list[str], kind: str | None, file: str, records: list[dict[str, Any]] = ()) -> Format:
    """The first format in ``FORMATS`` whose columns are all present and whose sniff accepts the first record
    holding them; it must be able to give ``kind`` rows (any kind when ``kind`` is None)."""
    present = set(columns)
    catalogue = (CLASSIFICATION_FORMATS if kind == "classification" else GROUP_FORMATS if kind in GROUP_KINDS
                 else FORMATS)
    for fmt in catalogue:
        if _matches(fmt, present, records):
            break
    else:
        known = "; ".join(dict.fromkeys(f"{x.name} ({', '.join(x.columns)})" for x in catalogue))
        raise DataError(
            f"unknown dataset format: found columns {', '.join(columns)}; known formats: {known}; "
            "rename columns with --columns '{\"old\": \"new\"}'",
            file=file,
        )
    if kind is not None and kind not in fmt.kinds:
        able = ", ".join(dict.fromkeys(f"{x.name} ({', '.join(x.columns)})" for x in FORMATS if kind in x.kinds))
        raise DataError(
            f"format '{fmt.name}' gives {' or '.join(fmt.kinds)} rows, not {kind} rows; formats for {kind}: {able}",
            file=file,
        )
    return fmt


def natural_kind(fmt: Format, record: dict[str, Any], source: RowSource) -> str:
    """The kind of row a record holds by itself: a pair, a labelled answer, a conversation or a prompt."""
    if fmt.tokenized is not None:
        return fmt.kinds[0]
    try:
        parsed = fmt.parse(record, source)
    except DataError:
        return fmt.kinds[0]  # the record's own error is reported when it is converted
    if parsed.rejected is not None:
        return "preference"
    if parsed.label is not None:
        return "unpaired"
    return "sft" if parsed.chosen is not None else "prompt"


def to_rows(parsed: Parsed, kind: str, source: RowSource) -> list[Row]:
    """Build the canonical rows of ``kind`` from a parsed record.

    A preference record gives two unpaired rows for KTO (chosen → True, rejected → False), as TRL does;
    every other case gives one row.
    """
    if kind == "sft":
        if not parsed.prompt:
            raise f.error(source, parsed.prompt_field, "no prompt: expected a user turn before the answer")
        if parsed.chosen is None:
            raise f.error(source, parsed.prompt_field, "expected the last message to be an assistant turn")
        return [ConversationRow(messages=parsed.prompt + parsed.chosen, source=source, tools=parsed.tools)]
    agent = next((i for i, m in enumerate(parsed.prompt + (parsed.chosen or []) + (parsed.rejected or []))
                  if m["role"] in AGENT_ROLES), None)
    if agent is not None or parsed.tools:
        raise f.error(source, parsed.prompt_field, "tools, tool calls and tool results (agent rows) are trained by "
                      f"sft only, not as {kind} rows")
    if kind == "classification":
        return [ClassificationRow(parsed.prompt, parsed.class_label, source, parsed.extras)]
    if not parsed.prompt or parsed.prompt[-1]["role"] != "user":
        ends = repr(parsed.prompt[-1]["role"]) if parsed.prompt else "nothing"
        raise f.error(source, parsed.prompt_field, f"the prompt must end with a user turn, but it ends with {ends}")
    if kind != "prompt" and parsed.chosen is None:
        raise f.error(
            source, parsed.prompt_field, f"expected an answer for {kind} rows, but the record holds a prompt only"
        )
    if kind == "preference":
        return [PreferenceRow(parsed.prompt, parsed.chosen, parsed.rejected, parsed.margin, source, parsed.extras)]
    if kind == "unpaired":
        if parsed.label is not None:
            return [UnpairedRow(parsed.prompt, parsed.chosen, parsed.label, source, parsed.extras)]
        return [
            UnpairedRow(parsed.prompt, parsed.chosen, True, source, parsed.extras),
            UnpairedRow(parsed.prompt, parsed.rejected, False, source, parsed.extras),
        ]
    return [PromptRow(prompt=parsed.prompt, extras=parsed.extras, source=source)]


def convert(record: dict[str, Any], fmt: Format, kind: str, source: RowSource) -> list[Row]:
    """One record of a file in format ``fmt`` → its canonical rows of ``kind``."""
    # The format was told from the columns of the whole file; each record must still have them all.
    for column in fmt.columns:
        if f.missing(record.get(column)):
            raise f.error(source, column, f"missing value; format '{fmt.name}' needs {', '.join(fmt.columns)}")
    f.check_images(record, source)
    if fmt.tokenized is not None:
        return [fmt.tokenized(record, source)]
    if kind in GROUP_KINDS:
        return [parse_group(record, kind, source)]
    return to_rows(fmt.parse(record, source), kind, source)
