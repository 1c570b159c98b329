"""--agent_template and the agent --loss_scale weightings: agent rows rendered as ms-swift renders them (expected
texts written out by hand from swift/agent_template/hermes.py, react.py and base.py), tool results never trained,
tool calls weighed as swift/loss_scale/config/{hermes,react}.json say, and the weights reaching the loss."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from alignkit.cli import main
from alignkit.data.agent_templates import read_tools, render_agent
from alignkit.data.cache import load, save
from alignkit.data.chat_templates import resolve_template
from alignkit.data.collate import Batch, SequenceCollator
from alignkit.data.hub_datasets import _function_calling_chatml
from alignkit.data.loading import load_dataset_spec
from alignkit.data.rows import ConversationRow
from alignkit.data.template import IGNORE_INDEX, ChatEncoder, Encoded
from alignkit.errors import AlignkitError, DataError
from alignkit.generation.tool_calls import render_hermes
from alignkit.models.logprobs import forward_logps, sequence_logps
from alignkit.models.packing import Layout

TOOLS = [{"name": "get_weather", "description": "Weather of a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
# Two parallel calls, their two results, the final answer (ms-swift's agent format).
MESSAGES = [
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {"role": "tool_call", "content": '{"name": "get_weather", "arguments": {"city": "Paris"}}'},
    {"role": "tool_call", "content": '{"name": "get_weather", "arguments": {"city": "Rome"}}'},
    {"role": "tool", "content": '{"temp": 21}'},
    {"role": "tool", "content": '{"temp": 25}'},
    {"role": "assistant", "content": "Paris 21, Rome 25."},
]
ROW = ConversationRow(MESSAGES, tools=TOOLS)
TOOL_JSON = ('{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city", '
             '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}')
CALL_PARIS = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
CALL_ROME = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def pieces(tokenizer, encoded: Encoded) -> list[tuple[str, float]]:
    """The trained text in runs of equal weight: [(text, weight), ...]."""
    out: list[tuple[str, float]] = []
    run: list[int] = []
    weight = None
    for i, (token, label) in enumerate(zip(encoded.input_ids, encoded.labels)):
        w = 0.0 if label == IGNORE_INDEX else (encoded.loss_scale[i] if encoded.loss_scale is not None else 1.0)
        if w != weight and run:
            if weight:
                out.append((tokenizer.decode(run), weight))
            run = []
        weight = w
        run.append(token)
    if run and weight:
        out.append((tokenizer.decode(run), weight))
    return out


def test_hermes_renders_tools_calls_and_results_as_ms_swift(tokenizer):
    encoded = ChatEncoder(tokenizer, max_length=1024, agent_template="hermes").encode_conversation(ROW)
    # The tools join the template's default system prompt ("You are a helpful assistant.", ms-swift's default_system).
    system = ("You are a helpful assistant.\n\n# Tools\n\nYou may call one or more functions to assist with the user "
              "query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
              + TOOL_JSON + "\n</tools>\n\nFor each function call, return a json object with function name and "
              "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, "
              "\"arguments\": <args-json-object>}\n</tool_call>")
    assert tokenizer.decode(encoded.input_ids) == (
        f"<|im_start|>system\n{system}<|im_end|>\n"
        "<|im_start|>user\nWeather in Paris and Rome?<|im_end|>\n"
        f"<|im_start|>assistant\n{CALL_PARIS}\n{CALL_ROME}<|im_end|>\n"
        "<|im_start|>user\n<tool_response>\n{\"temp\": 21}\n</tool_response>\n"
        "<tool_response>\n{\"temp\": 25}\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\nParis 21, Rome 25.<|im_end|>\n")
    # The calls are trained, the results (a user turn) are not; no weights without --loss_scale hermes.
    assert pieces(tokenizer, encoded) == [(f"{CALL_PARIS}\n{CALL_ROME}<|im_end|>\n", 1.0),
                                          ("Paris 21, Rome 25.<|im_end|>\n", 1.0)]
    assert encoded.loss_scale is None


def test_react_en_writes_the_results_into_the_turn_untrained(tokenizer):
    encoded = ChatEncoder(tokenizer, max_length=1024, agent_template="react_en",
                          system="ignored by react").encode_conversation(ROW)
    system = ("Answer the following questions as best you can. You have access to the following tools:\n\n"
              "get_weather: Call this tool to interact with the get_weather API. What is the get_weather API useful "
              "for? Weather of a city Parameters: {\"type\": \"object\", \"properties\": {\"city\": {\"type\": "
              "\"string\"}}} Format the arguments as a JSON object.\n\nUse the following format:\n\n"
              "Question: the input question you must answer\nThought: you should always think about what to do\n"
              "Action: the action to take, should be one of [get_weather]\nAction Input: the input to the action\n"
              "Observation: the result of the action\n... (this Thought/Action/Action Input/Observation can be "
              "repeated zero or more times)\nThought: I now know the final answer\nFinal Answer: the final answer to "
              "the original input question\n\nBegin!\n")
    calls = ("Action: get_weather\nAction Input: {'city': 'Paris'}\n"  # str() of the arguments, as ms-swift
             "Action: get_weather\nAction Input: {'city': 'Rome'}\nObservation:")
    results = '{"temp": 21}\nObservation:{"temp": 25}\n'
    assert tokenizer.decode(encoded.input_ids) == (
        f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\nWeather in Paris and Rome?<|im_end|>\n"
        f"<|im_start|>assistant\n{calls}{results}Paris 21, Rome 25.<|im_end|>\n")
    assert pieces(tokenizer, encoded) == [(calls, 1.0), ("Paris 21, Rome 25.<|im_end|>\n", 1.0)]
    # last_round: ms-swift's last round starts after the last tool result.
    last = ChatEncoder(tokenizer, max_length=1024, agent_template="react_en", loss_scale="last_round")
    assert pieces(tokenizer, last.encode_conversation(ROW)) == [("Paris 21, Rome 25.<|im_end|>\n", 1.0)]


def test_react_grpo_is_react_en_under_ms_swifts_think_prompt(tokenizer):
    # swift/agent_template/extra.py ReactGRPOAgentTemplate, written out by hand: react_en's tool line, its own
    # head and format, react_en's calls and results.
    encoded = ChatEncoder(tokenizer, max_length=2048, agent_template="react_grpo").encode_conversation(ROW)
    system = ("A conversation for tool calling between User and Assistant. The user asks a question which may be "
              "solved by calling tools, and the Assistant solves it. The assistant first thinks about the reasoning "
              "process in the mind and then provides the user with the answer. The reasoning process should be "
              "enclosed within <think> </think>tags and answer should follow the ReACT format(Action:xxx\nAction "
              "Input:xxx), i.e., <think> reasoning process here </think> Action: action here\nAction Input: "
              "parameters here\n\nAnswer the following questions as best as you can. You have access to the "
              "following tools:\n\n"
              "get_weather: Call this tool to interact with the get_weather API. What is the get_weather API useful "
              "for? Weather of a city Parameters: {\"type\": \"object\", \"properties\": {\"city\": {\"type\": "
              "\"string\"}}} Format the arguments as a JSON object.\n\nUse the following format:\n\n"
              "<think>you should always think about what to do</think>\n"
              "Action: the action to take, should be one of [get_weather]\nAction Input: the input to the action\n"
              "Observation: the result of the action, given by the actual calling\n... (this Thought/Action/Action "
              "Input/Observation can be repeated zero or more times)\nFinal Answer: the final answer to the original "
              "input question\n\nBegin!\n")
    react_en = ChatEncoder(tokenizer, max_length=1024, agent_template="react_en").encode_conversation(ROW)
    turns = tokenizer.decode(react_en.input_ids).split("<|im_start|>user", 1)[1]
    assert tokenizer.decode(encoded.input_ids) == f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user{turns}"
    assert pieces(tokenizer, encoded) == pieces(tokenizer, react_en)


def test_react_results_after_a_joined_answer_follow_as_they_are(tokenizer):
    # ms-swift's ReAct test ("Action:" in content) looks for whole list elements once an answer's text and its
    # call are joined, so no Observation: is added and the result follows unchanged.
    row = ConversationRow([MESSAGES[0], {"role": "assistant", "content": "Let me look."}, MESSAGES[1], MESSAGES[3],
                           MESSAGES[5]], tools=TOOLS)
    encoded = ChatEncoder(tokenizer, max_length=1024, agent_template="react_en").encode_conversation(row)
    assert tokenizer.decode(encoded.input_ids).endswith(
        "<|im_start|>assistant\nLet me look.Action: get_weather\nAction Input: {'city': 'Paris'}\nObservation:"
        '{"temp": 21}Paris 21, Rome 25.<|im_end|>\n')
    assert pieces(tokenizer, encoded) == [
        ("Let me look.Action: get_weather\nAction Input: {'city': 'Paris'}\nObservation:", 1.0),
        ("Paris 21, Rome 25.<|im_end|>\n", 1.0)]


def test_qwen_en_and_its_loss_scale_as_ms_swift(tokenizer):
    encoder = ChatEncoder(tokenizer, max_length=2048, agent_template="qwen_en", loss_scale="qwen")
    encoded = encoder.encode_conversation(ROW)
    system = ("You are a helpful assistant.\n\n# Tools\n\n## You have access to the following tools:\n\n"
              "### get_weather\n\nget_weather: Weather of a city Parameters: {\"type\": \"object\", \"properties\": "
              "{\"city\": {\"type\": \"string\"}}} Format the arguments as a JSON object.\n\n## When you need to call "
              "a tool, please insert the following command in your reply, which can be called zero or multiple times "
              "according to your needs:\n\n"
              "✿FUNCTION✿: The tool to use, should be one of [get_weather]\n✿ARGS✿: The input of the tool\n"
              "✿RESULT✿: Tool results\n✿RETURN✿: Reply based on tool results. Images need to be rendered as ![](url)")
    calls = ("✿FUNCTION✿: get_weather\n✿ARGS✿: {'city': 'Paris'}\n✿FUNCTION✿: get_weather\n✿ARGS✿: {'city': 'Rome'}\n"
             "✿RESULT✿:")
    assert tokenizer.decode(encoded.input_ids) == (
        f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\nWeather in Paris and Rome?<|im_end|>\n"
        f'<|im_start|>assistant\n{calls}{{"temp": 21}}\n✿RESULT✿:{{"temp": 25}}\nParis 21, Rome 25.<|im_end|>\n')
    # swift/loss_scale/config/qwen.json: ✿FUNCTION✿ and ✿ARGS✿ 2/2, ✿RESULT✿ 2/0.
    assert pieces(tokenizer, encoded) == [(calls, 2.0), ("Paris 21, Rome 25.<|im_end|>\n", 1.0)]


def test_hermes_loss_scale_weighs_each_tool_call_block_twice(tokenizer):
    encoder = ChatEncoder(tokenizer, max_length=1024, agent_template="hermes", loss_scale="hermes")
    encoded = encoder.encode_conversation(ROW)
    assert pieces(tokenizer, encoded) == [(CALL_PARIS, 2.0), ("\n", 1.0), (CALL_ROME, 2.0), ("<|im_end|>\n", 1.0),
                                          ("Paris 21, Rome 25.<|im_end|>\n", 1.0)]
    # Untrained tokens weigh 0; the weights line up with the tokens.
    assert len(encoded.loss_scale) == len(encoded.input_ids)
    assert all(w == 0 for w, label in zip(encoded.loss_scale, encoded.labels) if label == IGNORE_INDEX)
    # A row without tool calls has nothing to weigh.
    plain = ConversationRow([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    assert encoder.encode_conversation(plain).loss_scale is None


def test_react_loss_scale_weighs_actions_and_untrains_observations(tokenizer):
    row = ConversationRow([
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Thought: look it up\nAction: get_weather\nAction Input: {\"city\": "
                                         "\"Paris\"}"},
        {"role": "tool", "content": "21"},
        {"role": "assistant", "content": "Thought: done\nFinal Answer: 21 Observation: not the model's"},
    ], tools=TOOLS)
    encoded = ChatEncoder(tokenizer, max_length=1024, agent_template="react_en",
                          loss_scale="react").encode_conversation(row)
    # swift/loss_scale/config/react.json: Thought 1/1, Action 2/2, Action Input 2/2, Final Answer 1/1,
    # Observation 2/0; "\nObservation:" was appended by the template (ReactCompatMixin._format_tool_responses).
    assert pieces(tokenizer, encoded) == [
        ("Thought: look it up\n", 1.0), ("Action: get_weather\nAction Input: {\"city\": \"Paris\"}\nObservation:", 2.0),
        ("Thought: done\nFinal Answer: 21 ", 1.0), ("Observation:", 2.0), ("<|im_end|>\n", 1.0)]


def test_openai_tool_calls_and_tool_messages_read_as_ms_swift(tokenizer, tmp_path):
    openai_row = {"messages": [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "b", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]},
        {"role": "tool", "tool_call_id": "a", "content": '{"temp": 21}'},
        {"role": "tool", "tool_call_id": "b", "content": {"temp": 25}},
        {"role": "assistant", "content": "Paris 21, Rome 25."}],
        "tools": json.dumps([{"type": "function", "function": TOOLS[0]}])}
    path = tmp_path / "agent.jsonl"
    path.write_text(json.dumps(openai_row) + "\n")
    [row] = load_dataset_spec(str(path), "sft", seed=0)
    encoder = ChatEncoder(tokenizer, max_length=1024, agent_template="hermes")
    assert encoder.encode_conversation(row) == encoder.encode_conversation(ROW)


def test_function_calling_chatml_reads_as_ms_swift(tokenizer, tmp_path):
    # ms-swift's FunctionCallChatmlPreprocessor: tools from function_description, the prose system turn dropped.
    record = {"function_description": json.dumps(TOOLS[0], indent=4) + "\n\n" + json.dumps(TOOLS[0]),
              "conversations": [
                  {"from": "system", "value": "You have access to get_weather ..."},
                  {"from": "human", "value": "Weather in Paris?"},
                  {"from": "function-call", "value": '{"name": "get_weather", "arguments": \'{"city": "Paris"}\'}'},
                  {"from": "function-response", "value": '{"temp": 21}'},
                  {"from": "gpt", "value": "21."}]}
    path = tmp_path / "fc.jsonl"
    path.write_text(json.dumps(_function_calling_chatml(record)) + "\n")
    [row] = load_dataset_spec(str(path), "sft", seed=0)
    assert [m["role"] for m in row.messages] == ["user", "tool_call", "tool", "assistant"]
    assert len(row.tools) == 2
    encoded = ChatEncoder(tokenizer, max_length=2048, agent_template="hermes").encode_conversation(row)
    assert pieces(tokenizer, encoded)[0] == (f"{CALL_PARIS}<|im_end|>\n", 1.0)


def test_default_system_is_found_only_where_the_template_writes_one(tokenizer):
    assert ChatEncoder(tokenizer, max_length=64).default_system() == "You are a helpful assistant."
    chatml = ChatEncoder(tokenizer, max_length=1024, agent_template="hermes",
                         template=resolve_template(tokenizer, template="chatml"))
    assert chatml.default_system() is None
    text = tokenizer.decode(chatml.encode_conversation(ROW).input_ids)
    assert text.startswith("<|im_start|>system\n\n\n# Tools\n\n")  # ms-swift: system '' when there is none


def test_agent_rows_need_the_flag_and_sft(tokenizer, tmp_path):
    with pytest.raises(DataError, match="choose how they are written with --agent_template"):
        ChatEncoder(tokenizer, max_length=1024).encode_conversation(ROW)
    with pytest.raises(DataError, match="a tool result must follow an assistant turn"):
        ChatEncoder(tokenizer, max_length=1024, agent_template="hermes").encode_conversation(
            ConversationRow([MESSAGES[0], MESSAGES[3], {"role": "assistant", "content": "x"}]))
    with pytest.raises(DataError, match="react_en a tool result is written into the assistant's turn, so an assistant"):
        ChatEncoder(tokenizer, max_length=1024, agent_template="react_en").encode_conversation(ConversationRow(
            [MESSAGES[0], MESSAGES[1], MESSAGES[3], MESSAGES[0], {"role": "assistant", "content": "x"}]))
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"messages": MESSAGES, "rejected_response": "no"}) + "\n")
    with pytest.raises(DataError, match="agent rows\\) are trained by sft only, not as preference rows"):
        load_dataset_spec(str(path), "preference", seed=0)
    with pytest.raises(AlignkitError, match="preference and KTO losses take no per-token weights"):
        from alignkit.data.rows import PreferenceRow

        ChatEncoder(tokenizer, max_length=64, loss_scale="hermes").encode_pair(PreferenceRow(
            [MESSAGES[0]], [{"role": "assistant", "content": "a"}], [{"role": "assistant", "content": "b"}]))


def test_weights_survive_truncation_collate_and_the_cache(tokenizer, tmp_path):
    encoded = ChatEncoder(tokenizer, max_length=1024, agent_template="hermes",
                          loss_scale="hermes").encode_conversation(ROW)
    cut = ChatEncoder(tokenizer, max_length=len(encoded.input_ids) - 5, truncation_strategy="left",
                      agent_template="hermes", loss_scale="hermes").encode_conversation(ROW)
    assert cut == Encoded(encoded.input_ids[5:], encoded.labels[5:], encoded.loss_scale[5:])
    plain = Encoded([1, 2, 3], [IGNORE_INDEX, 2, 3])
    batch = SequenceCollator(pad_id=0)([(0, encoded), (1, plain)])
    assert batch.loss_scale.shape == batch.labels.shape
    assert batch.loss_scale[1].tolist()[:4] == [0.0, 1.0, 1.0, 0.0]  # a row without weights: 1 per trained token
    assert batch.loss_scale[0, : len(encoded.input_ids)].tolist() == encoded.loss_scale
    path = tmp_path / "cache.npz"
    save(path, [(0, encoded), (1, plain)], 0)
    assert load(path) == ([(0, encoded), (1, plain)], 0)


def test_weighted_loss_is_the_weighted_sum_over_trained_tokens_padded_and_packed(tokenizer, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    # By hand: tokens 2 and 3 trained with weights 2 and 0.5: sum = 2 log p(2) + 0.5 log p(3), count 2.
    torch.manual_seed(0)
    logits = torch.randn(1, 4, 5)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 2, 3]])
    scale = torch.tensor([[0.0, 0.0, 2.0, 0.5]])
    logp = logits.log_softmax(-1)
    total, counts = sequence_logps(logits, labels, loss_scale=scale)
    assert torch.allclose(total, 2 * logp[0, 1, 2] + 0.5 * logp[0, 2, 3])
    assert counts.tolist() == [2]

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    encoder = ChatEncoder(tokenizer, max_length=1024, agent_template="hermes", loss_scale="hermes")
    plain = ConversationRow([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    batch = SequenceCollator(pad_id=tokenizer.pad_token_id)(
        [(0, encoder.encode_conversation(ROW)), (1, encoder.encode_conversation(plain))])
    with torch.no_grad():
        padded, counts = forward_logps(model, batch)
        packed, packed_counts = Layout(padding_free=True).logps(model, batch)
        unweighted, _ = forward_logps(model, Batch(batch.input_ids, batch.attention_mask, batch.labels, batch.row_ids))
    assert torch.allclose(padded, packed, atol=1e-4) and counts.tolist() == packed_counts.tolist()
    # The row with calls weighs more than unweighted; the plain row is unchanged.
    assert padded[0] < unweighted[0] and torch.allclose(padded[1], unweighted[1])


@pytest.mark.parametrize("example", [
    # examples/train/agent/loss_scale/train.sh and qwen2_5.sh (packed, full), model and data local, steps few.
    ["--tuner_type", "lora", "--loss_scale", "hermes", "--lora_rank", "8", "--lora_alpha", "32",
     "--target_modules", "all-linear"],
    ["--tuner_type", "full", "--packing", "true", "--loss_scale", "hermes"],
])
def test_ms_swift_agent_examples_train(tokenizer, tiny_model_dir, tmp_path, example, caplog):
    from transformers import AutoModelForCausalLM

    caplog.set_level(logging.INFO, logger="alignkit")
    data = tmp_path / "agent.jsonl"
    data.write_text("\n".join(json.dumps({"messages": MESSAGES, "tools": TOOLS}) for _ in range(4)) + "\n")
    out = tmp_path / "out"
    code = main(["sft", "--model", tiny_model_dir, "--dataset", str(data), "--agent_template", "hermes", *example,
                 "--max_steps", "2", "--output_dir", str(out), "--report_to", "none", "--dtype", "fp32",
                 "--max_length", "2048", "--split_dataset_ratio", "0", "--per_device_train_batch_size", "2",
                 "--logging_steps", "1"])
    assert code == 0
    # Step 1 (the starting weights; the rows are alike) logs the weighted loss: -Σ w log p / trained tokens.
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    first = json.loads((run_dir / "logging.jsonl").read_text().splitlines()[0])
    encoded = ChatEncoder(tokenizer, max_length=2048, agent_template="hermes", loss_scale="hermes").encode_conversation(
        ConversationRow(MESSAGES, tools=read_tools(TOOLS, "tools", None)))
    ids, labels = torch.tensor([encoded.input_ids]), torch.tensor(encoded.labels[1:])
    with torch.no_grad():
        logp = AutoModelForCausalLM.from_pretrained(tiny_model_dir)(ids).logits[0, :-1].log_softmax(-1)
    trained = labels != IGNORE_INDEX
    token_logp = logp[trained].gather(-1, labels[trained].unsqueeze(-1)).squeeze(-1)
    weights = torch.tensor(encoded.loss_scale[1:])[trained]
    assert sorted(set(weights.tolist())) == [1.0, 2.0]
    assert first["loss"] == pytest.approx(-(weights * token_logp).sum().item() / int(trained.sum()), rel=1e-4)
    if "--packing" in example:  # the packed rows weighed the same tokens, so the layout check kept them
        assert "Speed-up check (padding-free packing" in caplog.text and "this run uses padded" not in caplog.text


def test_alignkit_data_shows_agent_rows_as_sft_trains_them(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "agent.jsonl"
    data.write_text(json.dumps({"messages": MESSAGES, "tools": TOOLS}) + "\n")
    assert main(["data", "--dataset", str(data), "--model", tiny_model_dir, "--agent_template", "hermes"]) == 0
    out = capsys.readouterr().out
    assert f"[[{CALL_PARIS}\n{CALL_ROME}<|im_end|>\n]]<|im_start|>user\n<tool_response>" in out


# DeepSeek-R1-Distill's template, shortened: answers lose what precedes </think>, the generation prompt adds <think>.
R1_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}{{ '<|im_start|>User:' + message['content'] }}"
    "{% else %}{% set content = message['content'] %}{% if '</think>' in content %}"
    "{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{ '<|im_start|>Assistant:' + content + '<|im_end|>' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>Assistant:<think>\\n' }}{% endif %}")


def test_deepseek_r1_example_trains_after_the_header_the_conversation_holds(tokenizer, caplog, monkeypatch):
    # examples/train/agent/deepseek_r1.sh: react_en + --loss_scale react on DeepSeek-R1-Distill, whose generation
    # prompt's "<think>\n" ms-swift writes at inference only (response_prefix): answers train from "Assistant:".
    from alignkit.data import chat_templates
    from alignkit.data.chat_templates import ChatTemplate

    monkeypatch.setattr(chat_templates, "_WARNED_HEADER", [])  # warned once per process
    encoder = ChatEncoder(tokenizer, max_length=1024, agent_template="react_en", loss_scale="react",
                          template=ChatTemplate("r1", R1_TEMPLATE))
    encoded = encoder.encode_conversation(ROW)
    assert tokenizer.decode(encoded.input_ids).endswith(
        "<|im_start|>User:Weather in Paris and Rome?<|im_start|>Assistant:Action: get_weather\nAction Input: "
        "{'city': 'Paris'}\nAction: get_weather\nAction Input: {'city': 'Rome'}\nObservation:"
        '{"temp": 21}\nObservation:{"temp": 25}\nParis 21, Rome 25.<|im_end|>')
    assert pieces(tokenizer, encoded) == [
        ("Action: get_weather\nAction Input: {'city': 'Paris'}\nAction: get_weather\nAction Input: {'city': 'Rome'}\n"
         "Observation:", 2.0), ("Paris 21, Rome 25.<|im_end|>", 1.0)]
    assert "generation prompt ends with '<think>\\n'" in caplog.text


def test_deploy_renders_earlier_calls_as_training_writes_them():
    openai = [{"role": "system", "content": "Be brief."}, MESSAGES[0],
              {"role": "assistant", "content": "Let me look.", "tool_calls": [
                  {"function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
              {"role": "tool", "content": '{"temp": 21}'}]
    swift = [openai[0], MESSAGES[0], {"role": "assistant", "content": "Let me look."}, MESSAGES[1], MESSAGES[3]]
    trained = render_agent(swift, read_tools(TOOLS, "tools", None), "hermes", None).messages
    assert render_hermes(openai, TOOLS) == trained
