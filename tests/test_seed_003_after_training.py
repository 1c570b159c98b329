"""Seed 003 (ms-swift 2.x's LLM fine-tuning document), after training: its infer, export and app-ui command
lines run as written, `swift` changed to `alignkit` and the document's placeholder `xxx/vx-xxx/checkpoint-xxx`
replaced by a real checkpoint of a one-step run on the tiny model (a local dataset with a held-out split,
so that --load_dataset_config has rows to answer). The launch variable CUDA_VISIBLE_DEVICES is left out."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import httpx
import pytest
from servers import free_port, start_server

from alignkit.cli import main

PLACEHOLDER = "xxx/vx-xxx/checkpoint-xxx"
# The document's lines, in its order (Merge LoRA, 使用数据集评估, 人工评估, Web-UI).
EXPORT_MERGE = "swift export --ckpt_dir 'xxx/vx-xxx/checkpoint-xxx' --merge_lora true"
INFER_DATASET = "swift infer --ckpt_dir 'xxx/vx-xxx/checkpoint-xxx' --load_dataset_config true"
INFER_MERGED_DATASET = "swift infer --ckpt_dir 'xxx/vx-xxx/checkpoint-xxx-merged' --load_dataset_config true"
INFER_CHAT = "swift infer --ckpt_dir 'xxx/vx-xxx/checkpoint-xxx'"
INFER_MERGED_CHAT = "swift infer --ckpt_dir 'xxx/vx-xxx/checkpoint-xxx-merged'"
APP_UI = "swift app-ui --ckpt_dir 'xxx/vx-xxx/checkpoint-xxx'"
APP_UI_MERGED = "swift app-ui --ckpt_dir 'xxx/vx-xxx/checkpoint-xxx-merged'"


def argv_of(line: str, checkpoint: Path, *extra: str) -> list[str]:
    argv = shlex.split(line.replace(PLACEHOLDER, str(checkpoint)))
    assert argv[0] == "swift"
    return [*argv[1:], *extra]


@pytest.fixture(scope="module")
def checkpoint(tiny_chat_model_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("seed003")
    rows = [{"messages": [{"role": "user", "content": f"What is {a} + {b}?"},
                          {"role": "assistant", "content": f"Answer: {a + b}"}]} for a in range(1, 5) for b in range(3)]
    data = folder / "chatml.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["sft", "--model_id_or_path", tiny_chat_model_dir, "--dataset", str(data), "--output_dir",
                 str(folder / "output"), "--max_steps", "1", "--split_dataset_ratio", "0.25"]) == 0
    (run_dir,) = (folder / "output").iterdir()
    return run_dir / "checkpoint-1"


def answers(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_seed_003_dataset_evaluation_direct_then_merged(checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    direct = tmp_path / "direct.jsonl"
    assert main(argv_of(INFER_DATASET, checkpoint, "--result_path", str(direct), "--max_new_tokens", "4")) == 0
    assert main(argv_of(EXPORT_MERGE, checkpoint)) == 0
    merged_dir = Path(f"{checkpoint}-merged")
    assert (merged_dir / "config.json").is_file() and not (merged_dir / "adapter_config.json").exists()
    merged = tmp_path / "merged.jsonl"
    assert main(argv_of(INFER_MERGED_DATASET, checkpoint, "--result_path", str(merged), "--max_new_tokens", "4")) == 0
    first, second = answers(direct), answers(merged)
    assert len(first) == 3  # the run's held-out quarter of 12 rows
    # The merged weights answer as the adapter on its base (greedy decoding).
    assert [r["response"] for r in second] == [r["response"] for r in first]


def test_seed_003_human_evaluation_chats_from_stdin(checkpoint, monkeypatch, capsys):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("What is 2 + 2?\nexit\n"))
    assert main(argv_of(INFER_CHAT, checkpoint, "--max_new_tokens", "4")) == 0
    assert "alignkit chat" in capsys.readouterr().out


@pytest.mark.parametrize("line", [APP_UI, APP_UI_MERGED])
def test_seed_003_app_ui_serves_the_chat_page(line, checkpoint, tmp_path):
    if line == APP_UI_MERGED and not Path(f"{checkpoint}-merged").exists():
        assert main(argv_of(EXPORT_MERGE, checkpoint)) == 0
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    process = start_server(argv_of(line, checkpoint, "--server_port", str(port)), tmp_path / "app.log", url, {})
    try:
        page = httpx.get(url, timeout=30).text
        assert "alignkit chat: checkpoint-1" in page  # the page of this checkpoint
    finally:
        process.terminate()
        process.wait(timeout=30)


INFER_BASE_DATASET = "swift infer --model_id_or_path qwen/Qwen-7B-Chat --dataset AI-ModelScope/blossom-math-v2"


def test_seed_003_original_model_dataset_evaluation(tiny_chat_model_dir, tmp_path, monkeypatch):
    """原始模型 / 使用数据集评估: the base model answers the dataset's prompts into infer_result/ (the model and the
    dataset swapped for local ones in ms-swift's rows; --max_new_tokens bounds the tiny model's answers)."""
    monkeypatch.chdir(tmp_path)
    rows = [{"query": f"What is {a} times 3?", "response": f"{3 * a}\n\nAnswer: {3 * a}"} for a in range(4)]
    data = tmp_path / "blossom-math-v2.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = shlex.split(INFER_BASE_DATASET)[1:]
    argv[argv.index("--model_id_or_path") + 1] = tiny_chat_model_dir
    argv[argv.index("--dataset") + 1] = str(data)
    assert main([*argv, "--max_new_tokens", "4"]) == 0
    (result,) = Path("infer_result").glob("*.jsonl")
    written = answers(result)
    assert len(written) == len(rows) and all("response" in r for r in written)
