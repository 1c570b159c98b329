"""Tool calls in ms-swift's hermes agent template (`--agent_template hermes`, swift/agent_template/hermes.py):
the request's OpenAI ``tools`` are written into the system prompt, the assistant's earlier calls are rendered
back as ``<tool_call>`` blocks, tool results as ``<tool_response>`` blocks in a user turn, and an answer's
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks are parsed into OpenAI ``tool_calls``.

Plain functions over messages (dicts) and strings, so the server and the tests use the same code."""

from __future__ import annotations

import json
import re
import uuid

from alignkit.data.agent_templates import hermes_tools

TOOL_CALL = re.compile(r"<tool_call>(.+?)</tool_call>", re.DOTALL)


def hermes_system(tools: list[dict], system: str | None) -> str:
    """The system prompt with the tools in hermes format (ms-swift's text, byte for byte; the training side's)."""
    return hermes_tools(tools, system)


def call_block(call: dict) -> str:
    """An assistant's earlier OpenAI tool call as the ``<tool_call>`` block the model wrote."""
    function = call.get("function", call)
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            pass  # kept as the string the client sent
    return f"<tool_call>\n{json.dumps({'name': function['name'], 'arguments': arguments}, ensure_ascii=False)}\n" \
           "</tool_call>"


def render_hermes(messages: list[dict], tools: list[dict] | None) -> list[dict]:
    """OpenAI chat messages (with ``tools``, assistant ``tool_calls`` and ``tool`` results) as plain
    system/user/assistant messages for the model's chat template."""
    rendered: list[dict] = []
    if tools:
        system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
        rendered.append({"role": "system", "content": hermes_system(tools, system)})
        messages = messages[1:] if system is not None else messages
    for message in messages:
        role, content = message["role"], message.get("content") or ""
        if role == "tool":
            response = f"<tool_response>\n{content}\n</tool_response>"
            if rendered and rendered[-1].get("tool_results"):  # consecutive results share one user turn
                rendered[-1]["content"] += "\n" + response
            else:
                rendered.append({"role": "user", "content": response, "tool_results": True})
        elif role == "assistant" and message.get("tool_calls"):
            blocks = "\n".join(call_block(call) for call in message["tool_calls"])
            # The text and its calls join without a separator, as ms-swift joins them (and as training writes them).
            rendered.append({"role": "assistant", "content": f"{content}{blocks}"})
        else:
            rendered.append({"role": role, "content": content})
    return [{"role": m["role"], "content": m["content"]} for m in rendered]


def parse_hermes(text: str) -> tuple[str | None, list[dict]]:
    """(the answer's text before its first tool call, or None when it is only calls; OpenAI ``tool_calls``).
    A block that is not a JSON object with ``name`` and ``arguments`` stays text, as in ms-swift."""
    calls = []
    for block in TOOL_CALL.findall(text):
        try:
            call = json.loads(block)
        except json.JSONDecodeError:
            continue
        if not isinstance(call, dict) or "name" not in call or "arguments" not in call:
            continue
        arguments = call["arguments"]
        calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": {
            "name": str(call["name"]),
            "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)}})
    if not calls:
        return text, []
    content = text[: text.index("<tool_call>")].strip()
    return content or None, calls
