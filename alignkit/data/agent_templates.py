"""ms-swift's agent templates (``--agent_template``, swift/agent_template: hermes, react_en/zh, react_grpo, qwen_en/zh
and their parallel variants): a conversation with tools, tool calls and tool results rendered into plain
system/user/assistant turns the chat template renders, with each assistant turn split into parts that are trained
(the model's own text, its tool calls) or not (a tool's result written into the turn).

Rows hold ms-swift's agent format: a ``tools`` column (JSON tool definitions, OpenAI-style or bare functions)
and messages with roles ``tool_call`` (a call as JSON ``{"name", "arguments"}``) and ``tool`` (a result);
OpenAI's assistant ``tool_calls`` field is read as ``tool_call`` messages (``fields.messages``). The steps are
ms-swift's (Template._swift_prepare_inputs, _get_system), its text byte for byte:

- the tools are written into the system prompt (the row's, else --system, else the template's default);
  hermes and qwen keep that prompt before them, react_en/react_zh/react_grpo replace it;
- consecutive ``tool_call`` messages become one assistant turn; consecutive assistant turns join;
- ``tool`` results after an assistant turn: hermes writes them as a user turn of ``<tool_response>`` blocks;
  react (and hermes when the answer is itself written ReAct-style, ``Action:`` + ``Action Input:``) appends
  ``Observation:`` (qwen: ``✿RESULT✿:``) to the answer and the results after it, untrained, and the next answer
  continues the same turn (after an answer that is not ReAct-style, the results as they are, nothing added).

Worked example (hermes)::

    tools    = [{"name": "get_weather", "description": "Weather of a city", "parameters": {...}}]
    messages = [user "Weather in Paris?", tool_call '{"name": "get_weather", "arguments": {"city": "Paris"}}',
                tool '{"temp": 21}', assistant "21 degrees."]
    -> [system "\\n\\n# Tools\\n\\nYou may call one or more functions ... </tool_call>",
        user "Weather in Paris?",
        assistant '<tool_call>\\n{"name": "get_weather", "arguments": {"city": "Paris"}}\\n</tool_call>',
        user '<tool_response>\\n{"temp": 21}\\n</tool_response>',
        assistant "21 degrees."]

The same with react_en: one assistant turn, parts ``"Action: get_weather\\nAction Input: {'city': 'Paris'}\\n
Observation:"`` (trained), ``'{"temp": 21}\\n'`` (not trained), ``"21 degrees."`` (trained). ms-swift writes the
arguments with Python's ``str`` of the parsed object, quotes and all; so does alignkit.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from typing import Any

from alignkit.data.rows import Message, RowSource
from alignkit.errors import DataError

AGENT_TEMPLATES = ("hermes", "react_en", "react_zh", "react_grpo", "qwen_en", "qwen_zh", "qwen_en_parallel",
                   "qwen_zh_parallel")
AGENT_ROLES = ("tool_call", "tool")


@dataclass(frozen=True)
class Part:
    """A piece of an assistant turn's text; ``trained`` is False for a tool's result written into the turn."""

    text: str
    trained: bool = True


@dataclass
class AgentConversation:
    """Plain messages for the chat template, and each assistant turn's parts (their texts join to its content)."""

    messages: list[Message]
    parts: dict[int, list[Part]]


def is_agent_row(messages: list[Message], tools: list | None) -> bool:
    return bool(tools) or any(m["role"] in AGENT_ROLES for m in messages)


# ------------------------------------------------------------------------------------------- tools


def parse_json(value: Any) -> Any:
    """ms-swift's _parse_json: JSON, else a Python literal, else None; a value that is not a string as it is."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        try:
            return ast.literal_eval(value)
        except Exception:  # any text that is not a literal
            return None


def wrap_tool(tool: dict) -> dict:
    """A bare function description becomes OpenAI's ``{"type": "function", "function": ...}``, as ms-swift does."""
    return tool if "type" in tool or "function" in tool else {"type": "function", "function": tool}


def read_tools(value: Any, where: str, source: RowSource | None) -> list[dict]:
    """The ``tools`` column as ms-swift reads it (_preprocess_tools): a JSON list, or a list of JSON objects (each
    may be a string), every tool wrapped as OpenAI's ``{"type": "function", ...}``."""
    tools = parse_json(value)
    if isinstance(tools, dict):
        tools = [tools]
    if not isinstance(tools, list):
        raise _error(source, where, f"expected a list of tool definitions, got {value!r:.80}")
    out = []
    for i, tool in enumerate(tools):
        tool = parse_json(tool)
        if not isinstance(tool, dict):
            raise _error(source, f"{where}[{i}]", f"expected a tool definition (a JSON object), got {tool!r:.80}")
        out.append(wrap_tool(tool))
    return out


def hermes_tools(tools: list[dict], system: str | None) -> str:
    """ms-swift's HermesAgentTemplate._format_tools."""
    descriptions = "\n".join(json.dumps(wrap_tool(tool), ensure_ascii=False) for tool in tools)
    return f"""{system or ''}

# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
""" + descriptions + """
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call>"""


REACT_EN = ("Answer the following questions as best you can. You have access to the following tools:\n\n",
            "{name}: Call this tool to interact with the {human} API. What is the {human} API useful for? "
            "{description} Parameters: {parameters} Format the arguments as a JSON object.",
            "\n\nUse the following format:\n\n"
            "Question: the input question you must answer\n"
            "Thought: you should always think about what to do\n"
            "Action: the action to take, should be one of [{names}]\n"
            "Action Input: the input to the action\n"
            "Observation: the result of the action\n"
            "... (this Thought/Action/Action Input/Observation can be repeated zero or more times)\n"
            "Thought: I now know the final answer\n"
            "Final Answer: the final answer to the original input question\n\n"
            "Begin!\n")
REACT_ZH = ("尽可能地回答以下问题。你可以使用以下工具:\n\n",
            "{name}: 调用此工具与 {human} API 进行交互。{human} 有什么用？{description} 输入参数：{parameters} "
            "此工具的输入应为JSON对象。",
            "\n\n请按照以下格式进行:\n\n"
            "Question: 需要你回答的输入问题\n"
            "Thought: 你应该总是思考该做什么\n"
            "Action: 需要使用的工具，应该是[{names}]中的一个\n"
            "Action Input: 传入工具的内容\n"
            "Observation: 行动的结果\n"
            "... (这个Thought/Action/Action Input/Observation可以重复N次)\n"
            "Thought: 我现在知道最后的答案\n"
            "Final Answer: 对原始输入问题的最终答案\n\n"
            "现在开始！\n")
# ms-swift's ReactGRPOAgentTemplate (swift/agent_template/extra.py): react_en's tool lines and keywords under a
# prompt asking for <think> reasoning first, for GRPO agent rollouts.
REACT_GRPO = ("A conversation for tool calling between User and Assistant. The user asks a question which may be "
              "solved by calling tools, and the Assistant solves it. The assistant first thinks about the reasoning "
              "process in the mind and then provides the user with the answer. The reasoning process should be "
              "enclosed within <think> </think>tags and answer should follow the ReACT format(Action:xxx\n"
              "Action Input:xxx), i.e., <think> reasoning process here </think> Action: action here\n"
              "Action Input: parameters here\n\n"
              "Answer the following questions as best as you can. You have access to the following tools:\n\n",
              REACT_EN[1],
              "\n\nUse the following format:\n\n"
              "<think>you should always think about what to do</think>\n"
              "Action: the action to take, should be one of [{names}]\n"
              "Action Input: the input to the action\n"
              "Observation: the result of the action, given by the actual calling\n"
              "... (this Thought/Action/Action Input/Observation can be repeated zero or more times)\n"
              "Final Answer: the final answer to the original input question\n\n"
              "Begin!\n")


def react_tools(tools: list[dict], text: tuple[str, str, str], source: RowSource | None) -> str:
    """ms-swift's ReactEn/ReactZnAgentTemplate._format_tools (the system prompt is replaced, not kept)."""
    head, line, tail = text
    names, lines = [], []
    for i, tool in enumerate(tools):
        function = tool["function"] if "type" in tool and "function" in tool else tool
        name = function.get("name_for_model") or function.get("name")
        description = function.get("description")
        description = function.get("description_for_model") if description is None else description
        if name is None or description is None:
            raise _error(source, f"tools[{i}]", "a tool needs a name and a description for the react and qwen "
                         "templates")
        parameters = function.get("parameters") or {}
        parameters = parameters if isinstance(parameters, str) else json.dumps(parameters, ensure_ascii=False)
        names.append(name)
        lines.append(line.format(name=name, human=function.get("name_for_human") or name, description=description,
                                 parameters=parameters))
    return head + "\n\n".join(lines) + tail.format(names=",".join(names))


QWEN_LINE = {"en": "### {human}\n\n{name}: {description} Parameters: {parameters} Format the arguments as a JSON "
                   "object.",
             "zh": "### {human}\n\n{name}: {description} 输入参数：{parameters} 此工具的输入应为JSON对象。"}
QWEN_HEAD = {"en": "\n\n# Tools\n\n## You have access to the following tools:\n\n",
             "zh": "\n\n# 工具\n\n## 你拥有如下工具：\n\n"}
QWEN_TAIL = {  # ms-swift's QwenEn/QwenZh(Parallel)AgentTemplate._format_tools, its "he result" typo included
    "qwen_en": "\n\n## When you need to call a tool, please insert the following command in your reply, which can be "
               "called zero or multiple times according to your needs:\n\n"
               "✿FUNCTION✿: The tool to use, should be one of [{names}]\n✿ARGS✿: The input of the tool\n"
               "✿RESULT✿: Tool results\n✿RETURN✿: Reply based on tool results. Images need to be rendered as ![](url)",
    "qwen_zh": "\n\n## 你可以在回复中插入零次、一次或多次以下命令以调用工具：\n\n"
               "✿FUNCTION✿: 工具名称，必须是[{names}]之一。\n✿ARGS✿: 工具输入\n✿RESULT✿: 工具结果\n"
               "✿RETURN✿: 根据工具结果进行回复，需将图片用![](url)渲染出来",
    "qwen_en_parallel": "\n\n## Insert the following command in your reply when you need to call N tools in "
                        "parallel:\n\n✿FUNCTION✿: The name of tool 1, should be one of [{names}]\n"
                        "✿ARGS✿: The input of tool 1\n✿FUNCTION✿: The name of tool 2\n✿ARGS✿: The input of tool 2\n"
                        "...\n✿FUNCTION✿: The name of tool N\n✿ARGS✿: The input of tool N\n"
                        "✿RESULT✿: The result of tool 1\n✿RESULT✿: The result of tool 2\n...\n"
                        "✿RESULT✿: he result of tool N\n"
                        "✿RETURN✿: Reply based on tool results. Images need to be rendered as ![](url)",
    "qwen_zh_parallel": "\n\n## 你可以在回复中插入以下命令以并行调用N个工具：\n\n"
                        "✿FUNCTION✿: 工具1的名称，必须是[{names}]之一\n"
                        "✿ARGS✿: 工具1的输入\n✿FUNCTION✿: 工具2的名称\n✿ARGS✿: 工具2的输入\n...\n"
                        "✿FUNCTION✿: 工具N的名称\n✿ARGS✿: 工具N的输入\n✿RESULT✿: 工具1的结果\n"
                        "✿RESULT✿: 工具2的结果\n...\n"
                        "✿RESULT✿: 工具N的结果\n✿RETURN✿: 根据工具结果进行回复，需将图片用![](url)渲染出来",
}


def tools_system(template: str, tools: list[dict], system: str | None, source: RowSource | None) -> str:
    if template == "hermes":
        return hermes_tools(tools, system)
    if template.startswith("react"):
        return react_tools(tools, {"react_en": REACT_EN, "react_zh": REACT_ZH, "react_grpo": REACT_GRPO}[template],
                           source)
    language = "zh" if template.startswith("qwen_zh") else "en"  # the qwen templates keep the system prompt
    text = ("", QWEN_LINE[language], QWEN_TAIL[template])
    return (system or "") + QWEN_HEAD[language] + react_tools(tools, text, source)


# -------------------------------------------------------------------------------------- tool calls


def parse_call(content: str, where: str, source: RowSource | None) -> dict:
    """ms-swift's _parse_tool_call: ``{"name", "arguments"}`` (``parameters`` accepted), arguments parsed."""
    call = parse_json(content)
    if not isinstance(call, dict) or "name" not in call:
        raise _error(source, where, f"a tool call must be a JSON object with 'name' and 'arguments', got "
                     f"{content!r:.80}")
    arguments = call.get("arguments")
    arguments = parse_json(call.get("parameters") if arguments is None else arguments)
    if arguments is None:
        raise _error(source, where, f"the tool call's arguments are not JSON: {content!r:.80}")
    return {"name": call["name"], "arguments": arguments}


@dataclass(frozen=True)
class Keywords:
    """ms-swift's AgentKeyword: how a ReAct-style answer names a call, its arguments and the results."""

    action: str = "Action:"
    action_input: str = "Action Input:"
    observation: str = "Observation:"


REACT = Keywords()
QWEN = Keywords("✿FUNCTION✿:", "✿ARGS✿:", "✿RESULT✿:")


def keywords_of(template: str) -> Keywords:
    return QWEN if template.startswith("qwen") else REACT


def format_calls(template: str, calls: list[dict]) -> str:
    """One assistant turn's tool calls as the model writes them (ms-swift's _format_tool_calls)."""
    if template == "hermes":
        return "\n".join(f"<tool_call>\n{json.dumps(call, ensure_ascii=False)}\n</tool_call>" for call in calls)
    k = keywords_of(template)
    # str() of the parsed arguments, as ms-swift's f-string writes them.
    return "".join(f"{k.action} {call['name']}\n{k.action_input} {call['arguments']}\n" for call in calls) + \
        k.observation


def _with_action(parts: list[Part], k: Keywords) -> bool:
    """ms-swift's test for a ReAct-style answer (``Action:`` and ``Action Input:`` in it), on the answer since the
    last tool result: one message's text, searched; several joined messages are a list in ms-swift, where ``in``
    looks for whole elements, so such an answer never counts (and its results are written as they are)."""
    since = parts[max((i for i, p in enumerate(parts) if not p.trained), default=-1) + 1:]
    texts = [p.text for p in since]
    if len(texts) == 1:
        texts = texts[0]
    return k.action in texts and k.action_input in texts


def react_results(results: list[str], observation: str = "Observation:") -> str:
    """Tool results after ``Observation:`` (ReactCompatMixin._format_tool_responses): each ends with a newline,
    results after the first are led by their own ``Observation:``."""
    out = []
    for i, result in enumerate(results):
        if i > 0:
            out.append(observation)
        out.append(result if result.endswith("\n") else result + "\n")
    return "".join(out)


# ------------------------------------------------------------------------------------------- render


def render_agent(messages: list[Message], tools: list[dict] | None, template: str, system: str | None,
                 source: RowSource | None = None) -> AgentConversation:
    """An agent conversation (see the module docstring) → plain messages and the parts of each assistant turn.
    ``system`` is the prompt the tools join: the row's own (``messages[0]`` when it is a system turn) takes its
    place, as in ms-swift."""
    first = 1 if messages and messages[0]["role"] == "system" else 0
    if first:
        system = messages[0]["content"]
    out: list[dict] = []  # {"role", "parts"} for assistant turns, {"role", "content"} otherwise
    i = first
    while i < len(messages):
        role, where = messages[i]["role"], f"messages[{i}]"
        start = i
        while role in AGENT_ROLES and i + 1 < len(messages) and messages[i + 1]["role"] == role:
            i += 1  # consecutive calls (or results) go together
        if role == "tool_call":
            calls = [parse_call(messages[j]["content"], f"messages[{j}].content", source) for j in range(start, i + 1)]
            _add_answer(out, Part(format_calls(template, calls)))
        elif role == "tool":
            following = messages[i + 1]["role"] if i + 1 < len(messages) else None
            _add_results(out, [messages[j]["content"] for j in range(start, i + 1)], template, following, where,
                         source)
        elif role == "assistant":
            _add_answer(out, Part(messages[i]["content"]))
        elif role == "user" and out and out[-1]["role"] == "user" and not out[-1].get("results"):
            out[-1]["content"] += messages[i]["content"]  # consecutive user turns join, as in ms-swift
        elif role == "system":
            raise _error(source, f"{where}.role", "a system message is only allowed first")
        else:
            out.append({"role": role, "content": messages[i]["content"]})
        i += 1
    plain: list[Message] = []
    if tools:
        plain.append({"role": "system", "content": tools_system(template, tools, system, source)})
    elif system is not None:
        plain.append({"role": "system", "content": system})
    parts = {}
    for turn in out:
        if turn["role"] == "assistant":
            parts[len(plain)] = turn["parts"]
            plain.append({"role": "assistant", "content": "".join(part.text for part in turn["parts"])})
        else:
            plain.append({"role": turn["role"], "content": turn["content"]})
    return AgentConversation(plain, parts)


def _add_results(out: list[dict], results: list[str], template: str, following: str | None, where: str,
                 source: RowSource | None) -> None:
    """Tool results after the assistant turn ``out[-1]`` (ms-swift's _format_tool_responses): hermes, a user turn of
    ``<tool_response>`` blocks; react (or a ReAct-style hermes answer), untrained text in the assistant's turn."""
    if not out or out[-1]["role"] != "assistant":
        raise _error(source, where, "a tool result must follow an assistant turn or a tool call (ms-swift's results "
                     "without a call before them are not supported)")
    parts, k = out[-1]["parts"], keywords_of(template)
    if template == "hermes" and not _with_action(parts, k):
        out.append({"role": "user", "results": True, "content": "\n".join(
            f"<tool_response>\n{result}\n</tool_response>" for result in results)})
        return
    if following not in ("assistant", "tool_call"):
        raise _error(source, where, f"with --agent_template {template} a tool result is written into the assistant's "
                     "turn, so an assistant turn or tool call must follow it")
    if _with_action(parts, k):
        if not parts[-1].text.endswith(k.observation):
            parts[-1] = Part(parts[-1].text + ("" if parts[-1].text.endswith("\n") else "\n") + k.observation)
        written = react_results(results, k.observation)
    else:  # ms-swift writes results after an answer without Action / Action Input as they are
        written = "".join(results)
    parts.append(Part(written, trained=False))  # the next answer continues the turn


def _add_answer(out: list[dict], part: Part) -> None:
    """An assistant turn, or more text of the one before (consecutive answers join, as ms-swift's lists do)."""
    if out and out[-1]["role"] == "assistant":
        out[-1]["parts"].append(part)
    else:
        out.append({"role": "assistant", "parts": [part]})


def _error(source: RowSource | None, field: str, message: str) -> DataError:
    where = {"file": source.file, "row": source.row} if source is not None else {}
    return DataError(message, **where, field=field)
