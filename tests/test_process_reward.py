"""Process reward models (ms-swift's task_type prm) on a tiny random Qwen2-shaped PRM built from a config: each
step's score is softmax(head(hidden at its <extra_0> tag))[1], checked against a hand computation from the
checkpoint's own tensors; `alignkit infer --model <PRM>` scores datasets and chat turns as ms-swift prints them."""

from __future__ import annotations

import json

import pytest
import torch

from alignkit.models.process_reward import DEFAULT_SYSTEM, STEP_TAG, is_process_reward_model, load_step_scorer

QUESTION = "What is 2 + 3?"


def build_tiny_prm(path) -> str:
    """A Qwen2ForProcessRewardModel checkpoint as Qwen publishes it: ``model.*`` decoder, ``score.{0,2}.*`` head,
    the remote-code auto_map in config.json (never run), ``<extra_0>`` a special token."""
    from conftest import build_tiny_tokenizer
    from safetensors.torch import save_file
    from transformers import Qwen2Config, Qwen2Model

    tokenizer = build_tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": [STEP_TAG]})
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id, initializer_range=0.3)
    config.architectures = ["Qwen2ForProcessRewardModel"]
    config.auto_map = {"AutoConfig": "configuration_qwen2_rm.Qwen2RMConfig",
                       "AutoModel": "modeling_qwen2_rm.Qwen2ForProcessRewardModel"}
    decoder = Qwen2Model(config)
    for module in decoder.modules():  # larger weights: step scores that differ visibly from 0.5
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            torch.nn.init.normal_(module.weight, std=0.3)
    head = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    state = {f"model.{k}": v.contiguous() for k, v in decoder.state_dict().items()}
    state |= {f"score.{k}": v.contiguous() for k, v in head.state_dict().items()}
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def prm_dir(tmp_path_factory):
    return build_tiny_prm(tmp_path_factory.mktemp("tiny-prm"))


def hand_scores(prm_dir: str, text: str) -> list[float]:
    """The steps' scores computed by hand: the decoder's hidden states (transformers' Qwen2Model loaded alone), the
    head's two layers from the safetensors file, p = exp(l1) / (exp(l0) + exp(l1)) at each tag position."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, Qwen2Model

    tokenizer = AutoTokenizer.from_pretrained(prm_dir)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    decoder = Qwen2Model.from_pretrained(prm_dir).eval()
    with torch.no_grad():
        hidden = decoder(input_ids=torch.tensor([ids])).last_hidden_state[0]  # (T, d)
    w = load_file(f"{prm_dir}/model.safetensors")
    inner = torch.relu(hidden @ w["score.0.weight"].T + w["score.0.bias"])
    logits = inner @ w["score.2.weight"].T + w["score.2.bias"]  # (T, 2)
    tag = tokenizer.convert_tokens_to_ids(STEP_TAG)
    return [(logits[i, 1].exp() / logits[i].exp().sum()).item() for i, token in enumerate(ids) if token == tag]


def chatml(system: str, question: str, answer: str) -> str:
    return (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
            f"<|im_start|>assistant\n{answer}<|im_end|>\n")


def test_step_scores_equal_a_hand_computation_and_an_untagged_answer_is_one_step(prm_dir):
    scorer = load_step_scorer(prm_dir, dtype="fp32", batch_size=4)
    steps = f"2 + 3 = 5.{STEP_TAG}So the answer is 5.{STEP_TAG}"
    conversations = [[{"role": "user", "content": QUESTION}, {"role": "assistant", "content": steps}],
                     [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "5"}],
                     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION},
                      {"role": "assistant", "content": steps}]]
    got = scorer.score(conversations)  # one right-padded batch of three lengths
    expected = [hand_scores(prm_dir, chatml(DEFAULT_SYSTEM, QUESTION, steps)),
                hand_scores(prm_dir, chatml(DEFAULT_SYSTEM, QUESTION, "5" + STEP_TAG)),
                hand_scores(prm_dir, chatml("Be brief.", QUESTION, steps))]
    assert [len(s) for s in got] == [2, 1, 2]
    for scores, wanted in zip(got, expected):
        assert scores == pytest.approx(wanted, abs=1e-5)
    assert len({round(s, 4) for s in got[0] + got[2]}) == 4  # the steps and the system prompts matter
    assert scorer.score(conversations[1:2])[0] == pytest.approx(got[1], abs=1e-6)  # alone as in the batch


def test_prms_are_recognised_by_architecture_or_registered_id(prm_dir, tiny_model_dir):
    assert is_process_reward_model(prm_dir)
    assert is_process_reward_model("Qwen/Qwen2.5-Math-PRM-7B")
    assert not is_process_reward_model(tiny_model_dir)
    assert not is_process_reward_model("Qwen/Qwen2.5-Math-7B-Instruct")


def test_infer_scores_a_dataset_and_chat_turns_as_ms_swift_prints_them(prm_dir, tmp_path, monkeypatch, capsys):
    from alignkit.cli import main

    steps = f"2 + 3 = 5.{STEP_TAG}So the answer is 5.{STEP_TAG}"
    rows = [{"messages": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": steps}]},
            {"messages": [{"role": "user", "content": "What is 1 + 1?"}, {"role": "assistant", "content": "2"}]}]
    data = tmp_path / "steps.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = tmp_path / "scores.jsonl"
    assert main(["infer", "--model", prm_dir, "--val_dataset", str(data), "--result_path", str(result),
                 "--dtype", "fp32"]) == 0
    written = [json.loads(line) for line in result.read_text().splitlines()]
    assert written[0]["response"] == pytest.approx(hand_scores(prm_dir, chatml(DEFAULT_SYSTEM, QUESTION, steps)),
                                                   abs=1e-5)
    assert written[1]["response"] == pytest.approx(
        hand_scores(prm_dir, chatml(DEFAULT_SYSTEM, "What is 1 + 1?", "2" + STEP_TAG)), abs=1e-5)
    assert written[1]["messages"][-1] == {"role": "assistant", "content": "2"}

    # Interactive, as ms-swift's `swift infer --model Qwen/Qwen2.5-Math-PRM-7B`: a query, then the answer to judge.
    typed = iter([QUESTION, steps, "exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(typed))
    capsys.readouterr()
    assert main(["infer", "--model", prm_dir, "--dtype", "fp32"]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert json.loads(printed[0]) == pytest.approx(hand_scores(prm_dir, chatml(DEFAULT_SYSTEM, QUESTION, steps)),
                                                   abs=1e-5)


def test_over_long_conversations_follow_truncation_strategy_and_adapters_are_refused(prm_dir, tmp_path, capsys):
    from alignkit.cli import main

    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": QUESTION},
                                             {"role": "assistant", "content": "5"}]}) + "\n")
    flags = ["infer", "--model", prm_dir, "--val_dataset", str(data), "--dtype", "fp32", "--max_length", "8"]
    assert main([*flags, "--result_path", str(tmp_path / "deleted.jsonl")]) == 0
    assert (tmp_path / "deleted.jsonl").read_text() == ""  # delete (the default): skipped and counted
    assert main([*flags, "--result_path", str(tmp_path / "raised.jsonl"), "--truncation_strategy", "raise"]) == 2
    assert "exceed --max_length 8" in capsys.readouterr().err
    assert main(["infer", "--model", prm_dir, "--adapters", str(tmp_path)]) == 2
    assert "--adapters/--ckpt_dir: a process reward model is scored as published" in capsys.readouterr().err


def test_task_type_prm_names_what_is_not_a_prm(tiny_model_dir, capsys):
    from alignkit.cli import main

    assert main(["infer", "--model", tiny_model_dir, "--task_type", "prm"]) != 0
    assert "a process reward model has the architecture Qwen2ForProcessRewardModel" in capsys.readouterr().err


# ------------------------------------------------------------------------ deploy: ms-swift's reward-model server


@pytest.fixture(scope="module")
def rm_dir(tiny_model_dir, tmp_path_factory):
    """An alignkit reward model (a full model with value_head.safetensors beside it), its head drawn at random."""
    import shutil

    from alignkit.models.reward_model import new_value_head, save_value_head

    path = tmp_path_factory.mktemp("tiny-rm") / "rm"
    shutil.copytree(tiny_model_dir, path)
    torch.manual_seed(3)
    save_value_head(new_value_head(32), path)
    return str(path)


def serve(model_dir: str, tmp_path, name: str):
    from servers import free_port, start_server

    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    process = start_server(["deploy", "--model", model_dir, "--port", str(port), "--dtype", "fp32",
                            "--served_model_name", name], tmp_path / f"{name}.log", f"{url}/models", {})
    return process, url


def test_deploy_answers_step_scores_and_rewards_as_ms_swifts_reward_server(prm_dir, rm_dir, tmp_path):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi", reason="deploy needs the serve extra: pip install -e '.[serve]'")
    from alignkit.models.scalar_model import load_reward_scorer

    steps = f"2 + 3 = 5.{STEP_TAG}So the answer is 5.{STEP_TAG}"
    conversation = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": steps}]
    servers = []
    try:
        for model_dir, name in ((prm_dir, "prm"), (rm_dir, "rm")):
            servers.append(serve(model_dir, tmp_path, name))
        (_, prm_url), (_, rm_url) = servers
        answer = httpx.post(f"{prm_url}/chat/completions", json={"model": "prm", "messages": conversation},
                            timeout=60).json()
        assert answer["choices"][0]["message"]["content"] == pytest.approx(
            hand_scores(prm_dir, chatml(DEFAULT_SYSTEM, QUESTION, steps)), abs=1e-5)
        reward = httpx.post(f"{rm_url}/chat/completions", json={"model": "rm", "messages": conversation},
                            timeout=60).json()["choices"][0]["message"]["content"]
        expected = load_reward_scorer(rm_dir, dtype="fp32", max_length=4096).score([conversation])[0]
        assert reward == pytest.approx(expected, abs=1e-5) and isinstance(reward, float)
        refused = httpx.post(f"{prm_url}/chat/completions", json={"model": "prm", "messages": conversation[:1]},
                             timeout=60)
        assert refused.status_code == 400 and "assistant message to judge" in refused.json()["error"]["message"]
        assert httpx.post(f"{prm_url}/chat/completions", json={"model": "x", "messages": conversation},
                          timeout=60).status_code == 404
        assert [m["id"] for m in httpx.get(f"{rm_url}/models").json()["data"]] == ["rm"]
    finally:
        for process, _ in servers:
            process.terminate()
            process.wait(timeout=30)
