"""alignkit's agent rendering and loss weights against ms-swift's own code.

Copies ms-swift's agent templates (swift/agent_template/{base,hermes,react,qwen}.py), its loss-scale splitter
(swift/loss_scale/utils.py, config/*.json) and split helpers out of an ms-swift git directory, with stand-ins for
the two imports they need, and renders agent conversations the way ms-swift's Template does for a ChatML template
(_preprocess_tool_call, _swift_prepare_inputs, _get_system, then system / query / response contexts). For every
agent template and weighting it compares the whole text with alignkit's ChatEncoder (built-in model's tokenizer)
and the weights of the trained answer text (end-of-turn tokens left out: alignkit trains every turn's, ms-swift the
last one's).

    python bench/agent_parity.py [MS_SWIFT_GIT_DIR]     (default: /work/.mirror/modelscope+ms-swift/repo)
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from alignkit.data.agent_templates import read_tools

STUBS = {
    "swift/__init__.py": "",
    "swift/agent_template/__init__.py": "",
    "swift/loss_scale/__init__.py": "",
    "swift/infer_engine.py": "from dataclasses import dataclass\nfrom typing import Any\n\n\n@dataclass\n"
                             "class Function:\n    name: str\n    arguments: Any\n",
}
COPIED = ["swift/agent_template/base.py", "swift/agent_template/hermes.py", "swift/agent_template/react.py",
          "swift/agent_template/qwen.py", "swift/loss_scale/utils.py", *(f"swift/loss_scale/config/{name}.json"
                                                                         for name in ("hermes", "react", "qwen"))]
CHATML = {"prompt": ["<|im_start|>user\n{{QUERY}}<|im_end|>\n<|im_start|>assistant\n"], "chat_sep": ["<|im_end|>\n"]}
TOOLS = [{"name": "get_weather", "description": "Weather of a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
         json.dumps({"type": "function", "function": {"name": "search", "description": "Web search",
                                                      "parameters": {"q": {"type": "string"}}}})]
CONVERSATIONS = [
    [{"role": "user", "content": "Weather in Paris and Rome?"},
     {"role": "tool_call", "content": '{"name": "get_weather", "arguments": {"city": "Paris"}}'},
     {"role": "tool_call", "content": '{"name": "get_weather", "arguments": "{\\"city\\": \\"Rome\\"}"}'},
     {"role": "tool", "content": '{"temp": 21}'}, {"role": "tool", "content": '{"temp": 25}\n'},
     {"role": "assistant", "content": "Paris 21, Rome 25."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Find x"},
     {"role": "assistant", "content": "Let me search."},
     {"role": "tool_call", "content": '{"name": "search", "parameters": {"q": "x"}}'},
     {"role": "tool", "content": "x is 1"}, {"role": "assistant", "content": "Thought: ok\nFinal Answer: 1"},
     {"role": "user", "content": "and y?"}, {"role": "assistant", "content": "No idea."}],
    [{"role": "user", "content": "Weather?"},
     {"role": "assistant", "content": "Thought: check\nAction: get_weather\nAction Input: {\"city\": \"Paris\"}"},
     {"role": "tool", "content": "sunny"}, {"role": "assistant", "content": "Final Answer: sunny"}],
    [{"role": "user", "content": "Weather?"},
     {"role": "assistant", "content": "✿FUNCTION✿: get_weather\n✿ARGS✿: {\"city\": \"Paris\"}"},
     {"role": "tool", "content": "sunny"}, {"role": "tool", "content": "warm"},
     {"role": "assistant", "content": "✿RETURN✿: sunny ✿RESULT✿: x"}],
]
SETTINGS = [("hermes", None), ("hermes", "hermes"), ("hermes", "react"), ("react_en", None), ("react_en", "react"),
            ("react_zh", None), ("qwen_en", "qwen"), ("qwen_zh", None), ("qwen_en_parallel", "qwen"),
            ("qwen_zh_parallel", "qwen")]


def extract(git_dir: str, root: Path) -> None:
    for path, text in STUBS.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    for path in COPIED:
        text = subprocess.run(["git", "-C", git_dir, "show", f"HEAD:{path}"], check=True, capture_output=True,
                              text=True).stdout
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    utils = subprocess.run(["git", "-C", git_dir, "show", "HEAD:swift/template/utils.py"], check=True,
                           capture_output=True, text=True).stdout
    split = utils[utils.index("def _split_str_by_regex"): utils.index("def get_last_user_round")]
    (root / "swift/template.py").write_text("import re\nfrom typing import Dict, List\nPrompt = list\n\n" + split)


def swift_render(classes: dict, messages: list[dict], name: str, system: str | None, weighting: str | None,
                 config_dir: Path) -> tuple[str, list[float]]:
    """ms-swift's Template on a ChatML template: (text, each character's loss weight)."""
    from swift.loss_scale.utils import calculate_loss_scale

    template = classes[name]()
    template.template_meta = type("Meta", (), CHATML)()
    messages = [dict(m) for m in messages]
    if messages[0]["role"] == "system":
        system = messages.pop(0)["content"]
    i = 0
    while i < len(messages):  # _preprocess_tool_call
        if messages[i]["role"] == "tool_call":
            start = i
            while i + 1 < len(messages) and messages[i + 1]["role"] == "tool_call":
                i += 1
            messages[start: i + 1] = [{"role": "assistant",
                                       "content": template._format_tool_calls(messages[start: i + 1])}]
            i = start
        i += 1
    i = 1
    while i < len(messages):  # _swift_prepare_inputs, swift backend
        before, message = messages[i - 1], messages[i]
        if before["role"] == "assistant" and message["role"] == "tool":
            start = i
            while i + 1 < len(messages) and messages[i + 1]["role"] == "tool":
                i += 1
            before["content"], results = template._format_tool_responses(before["content"], messages[start: i + 1])
            messages[start: i + 1] = [{"role": "tool", "content": results}]
            i = start + 1
        elif before["role"] == message["role"] == "assistant":
            before["content"] = (before["content"] if isinstance(before["content"], list) else [before["content"]]) + [
                message["content"]]
            messages.pop(i)
        else:
            i += 1
    system = template._format_tools([template.wrap_tool(template._parse_json(t)) for t in TOOLS], system)
    text, weights = "", []

    def add(piece: str, weight: float) -> None:
        nonlocal text
        text += piece
        weights.extend([weight] * len(piece))

    add(f"<|im_start|>system\n{system}<|im_end|>\n", 0.0)
    table = json.loads((config_dir / f"{weighting}.json").read_text()) if weighting else None
    for n, (query, response) in enumerate(zip(messages[::2], messages[1::2])):
        if query["role"] == "tool":
            add("".join(query["content"]), 0.0)
        else:
            add(f"<|im_start|>user\n{query['content']}<|im_end|>\n<|im_start|>assistant\n", 0.0)
        for piece in response["content"] if isinstance(response["content"], list) else [response["content"]]:
            pieces, piece_weights = calculate_loss_scale(query["content"], piece, table) if table else ([piece], [1.0])
            for part, weight in zip(pieces, piece_weights):
                add(part, weight)
        if 2 * n + 2 >= len(messages) or messages[2 * n + 2]["role"] != "tool":
            add("<|im_end|>\n", 1.0)  # end-of-turn: alignkit trains every turn's, ms-swift the last; not compared
    return text, weights


def alignkit_render(tokenizer, messages: list[dict], name: str, weighting: str | None):
    """(text, each token's (first character, end character, loss weight), the template's default system)."""
    from alignkit.data.rows import ConversationRow
    from alignkit.data.template import IGNORE_INDEX, ChatEncoder

    encoder = ChatEncoder(tokenizer, max_length=1 << 14, agent_template=name, loss_scale=weighting or "default")
    encoded = encoder.encode_conversation(ConversationRow(messages, tools=read_tools(TOOLS, "tools", None)))
    text = tokenizer.decode(encoded.input_ids)
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert len(offsets) == len(encoded.input_ids)
    tokens = [(a, b, 0.0 if label == IGNORE_INDEX else encoded.loss_scale[i] if encoded.loss_scale else 1.0)
              for i, ((a, b), label) in enumerate(zip(offsets, encoded.labels))]
    return text, tokens, encoder.default_system()


def differences(text: str, tokens: list[tuple[int, int, float]], weights: list[float]) -> list[str]:
    """Tokens whose weight is not ms-swift's for their characters. Left out: end-of-turn tokens, and tokens that
    straddle two of ms-swift's pieces (alignkit tokenizes the whole text, so one token may hold the end of one
    piece and the start of the next; it takes the later piece's weight)."""
    out = []
    for first, end, weight in tokens:
        theirs = set(weights[first:end])
        if "<|im_end|>" in text[first:end] or text[first:end] == "\n" and text[:first].endswith("<|im_end|>"):
            continue
        if len(theirs) == 1 and weight not in theirs:
            out.append(f"{text[first:end]!r}: {weight} here, {theirs.pop()} in ms-swift")
    return out


def main() -> int:
    git_dir = sys.argv[1] if len(sys.argv) > 1 else "/work/.mirror/modelscope+ms-swift/repo"
    from transformers import AutoTokenizer

    from alignkit.models.builtin import builtin_model_dir

    tokenizer = AutoTokenizer.from_pretrained(builtin_model_dir())
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        extract(git_dir, root)
        sys.path.insert(0, work)
        hermes, react, qwen = (importlib.import_module(f"swift.agent_template.{module}")
                               for module in ("hermes", "react", "qwen"))
        classes = {"hermes": hermes.HermesAgentTemplate, "react_en": react.ReactEnAgentTemplate,
                   "react_zh": react.ReactZnAgentTemplate, "qwen_en": qwen.QwenEnAgentTemplate,
                   "qwen_zh": qwen.QwenZhAgentTemplate, "qwen_en_parallel": qwen.QwenEnParallelAgentTemplate,
                   "qwen_zh_parallel": qwen.QwenZhParallelAgentTemplate}
        failures = 0
        for name, weighting in SETTINGS:
            for n, messages in enumerate(CONVERSATIONS):
                ours, tokens, default = alignkit_render(tokenizer, messages, name, weighting)
                theirs, weights = swift_render(classes, messages, name, default, weighting,
                                               root / "swift/loss_scale/config")
                wrong = differences(ours, tokens, weights) if ours == theirs else ["the text differs"]
                failures += bool(wrong)
                print(f"{'DIFF' if wrong else 'OK  '} {name:17} {weighting or '-':7} conversation {n}"
                      + "".join(f"\n     {line}" for line in wrong))
        print(f"{len(SETTINGS) * len(CONVERSATIONS) - failures} of {len(SETTINGS) * len(CONVERSATIONS)} the same")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
