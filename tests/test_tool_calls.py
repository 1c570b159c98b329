"""deploy --agent_template hermes (ms-swift's hermes agent template): tools rendered into the prompt, earlier
calls and tool results rendered back, and <tool_call> blocks of an answer parsed into OpenAI tool_calls."""

from __future__ import annotations

import json

import pytest

from alignkit.generation.tool_calls import hermes_system, parse_hermes, render_hermes

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}

# What ms-swift's HermesAgentTemplate._format_tools writes for WEATHER and the system "You are helpful."
SWIFT_SYSTEM = """You are helpful.

# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call>"""  # noqa: E501


def test_tools_are_written_as_ms_swift_writes_them():
    assert hermes_system([WEATHER], "You are helpful.") == SWIFT_SYSTEM
    assert hermes_system([WEATHER["function"]], "You are helpful.") == SWIFT_SYSTEM  # a bare function is wrapped


def test_a_qwen_style_answer_becomes_tool_calls():
    answer = ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
              '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Tokyo"}}\n</tool_call>')
    content, calls = parse_hermes(answer)
    assert content == "Let me check."
    assert [(c["type"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("function", "get_weather", {"city": "Paris"}), ("function", "get_weather", {"city": "Tokyo"})]
    assert len({c["id"] for c in calls}) == 2 and all(c["id"].startswith("call_") for c in calls)
    only_call = parse_hermes('<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>')
    assert only_call[0] is None and json.loads(only_call[1][0]["function"]["arguments"]) == {}


@pytest.mark.parametrize("answer", ["The weather is fine.", "<tool_call>not json</tool_call>",
                                    '<tool_call>{"name": "f"}</tool_call>', '<tool_call>["f", {}]</tool_call>'])
def test_anything_else_stays_text(answer):
    assert parse_hermes(answer) == (answer, [])


def test_a_conversation_with_calls_and_results_is_rendered_back():
    messages = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Weather in Paris and Tokyo?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "b", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Tokyo"}'}}]},
        {"role": "tool", "tool_call_id": "a", "content": "18C"},
        {"role": "tool", "tool_call_id": "b", "content": "25C"},
    ]
    assert render_hermes(messages, [WEATHER]) == [
        {"role": "system", "content": SWIFT_SYSTEM},
        {"role": "user", "content": "Weather in Paris and Tokyo?"},
        {"role": "assistant", "content": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
                                         '</tool_call>\n<tool_call>\n{"name": "get_weather", "arguments": '
                                         '{"city": "Tokyo"}}\n</tool_call>'},
        {"role": "user", "content": "<tool_response>\n18C\n</tool_response>\n<tool_response>\n25C\n</tool_response>"},
    ]


# ---------------------------------------------------------------------------------------------- end to end

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi", reason="deploy needs the serve extra: pip install -e '.[serve]'")


@pytest.fixture(scope="module")
def agent_server(tiny_chat_model_dir, tmp_path_factory):
    from servers import free_port, start_server

    port = free_port()
    process = start_server(["deploy", "--model", tiny_chat_model_dir, "--served_model_name", "tiny", "--port",
                            str(port), "--dtype", "fp32", "--max_new_tokens", "4", "--agent_template", "hermes",
                            "--max_length", "1024"],  # the tools take more than the tiny model's 512 positions
                           tmp_path_factory.mktemp("agent") / "server.log", f"http://127.0.0.1:{port}/v1/models", {})
    yield f"http://127.0.0.1:{port}/v1"
    process.terminate()
    process.wait(timeout=30)


def test_the_prompt_holds_the_tools_and_the_tool_results(agent_server, tiny_chat_model_dir):
    from transformers import AutoTokenizer

    from alignkit.data.template import ChatEncoder

    client = openai.OpenAI(base_url=agent_server, api_key="none", max_retries=0, timeout=120)
    conversation = [{"role": "user", "content": "Weather in Paris?"},
                    {"role": "assistant", "content": None, "tool_calls": [
                        {"id": "a", "type": "function",
                         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
                    {"role": "tool", "tool_call_id": "a", "content": "18C"}]
    reply = client.chat.completions.create(model="tiny", messages=conversation, tools=[WEATHER], max_tokens=4,
                                           temperature=0)
    encoder = ChatEncoder(AutoTokenizer.from_pretrained(tiny_chat_model_dir), max_length=4096)
    expected = encoder.encode_prompt(render_hermes(conversation, [WEATHER]))
    assert reply.usage.prompt_tokens == len(expected)
    assert "get_weather" in encoder.tokenizer.decode(expected)
    plain = client.chat.completions.create(model="tiny", messages=conversation[:1], max_tokens=4, temperature=0)
    assert plain.usage.prompt_tokens < reply.usage.prompt_tokens
    assert reply.choices[0].finish_reason in ("stop", "length")  # the random tiny model writes no <tool_call>
    streamed = client.chat.completions.create(model="tiny", messages=conversation, tools=[WEATHER], max_tokens=4,
                                              temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(streamed)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply.choices[0].message.content
    assert chunks[-1].usage.prompt_tokens == len(expected)


def test_tools_need_an_agent_template(tiny_chat_model_dir, tmp_path_factory):
    import httpx
    from servers import free_port, start_server

    port = free_port()
    process = start_server(["deploy", "--model", tiny_chat_model_dir, "--port", str(port), "--dtype", "fp32"],
                           tmp_path_factory.mktemp("no-agent") / "server.log", f"http://127.0.0.1:{port}/v1/models", {})
    try:
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=60, json={
            "model": "tiny-chat-llama0", "messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER]})
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert answer.status_code == 400
    assert "--agent_template hermes" in answer.json()["error"]["message"]
