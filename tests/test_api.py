"""ms-swift's Python API in alignkit (alignkit/api.py): the seed's script (shared/seeds 003) with the model and data
local, argument lists, ms-swift-style keyword objects and alignkit's typed arguments."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from alignkit import api
from alignkit.config import AppArguments as TypedAppArguments
from alignkit.config import InferArguments as TypedInferArguments
from alignkit.config import RunArguments


def sft_file(tmp_path: Path) -> str:
    path = tmp_path / "blossom.jsonl"
    path.write_text("".join(json.dumps({"query": f"What is {a} + 2?", "response": f"Answer: {a + 2}"}) + "\n"
                            for a in range(8)))
    return str(path)


def test_the_seed_script_trains_merges_and_answers(tiny_model_dir, tmp_path):
    # shared/seeds 003 "使用python", with --model_id_or_path and a local dataset (offline), a short run and a
    # held-out split so that there is a best checkpoint to rank and rows for --load_dataset_config.
    result = api.sft_main(api.SftArguments(
        model_type=api.ModelType.qwen_7b_chat, model_id_or_path=tiny_model_dir,
        dataset=[f"{sft_file(tmp_path)}#6"], output_dir=str(tmp_path / "output"), max_steps=2, save_steps=1,
        split_dataset_ratio=0.5, eval_steps=1, report_to=["none"]))
    best = Path(result["best_model_checkpoint"])
    assert Path(result["last_model_checkpoint"]).name == "checkpoint-2" and result["global_step"] == 2
    evaluated = {r["step"]: r["eval_loss"] for r in result["log_history"] if "eval_loss" in r}
    assert result["best_metric"] == min(evaluated.values())
    assert best.name == f"checkpoint-{min(evaluated, key=evaluated.get)}"

    infer_args = api.InferArguments(ckpt_dir=str(best), load_dataset_config=True, max_new_tokens=3)
    answers = api.infer_main(infer_args)  # the run's held-out rows, answered
    assert len(answers) == 3 and all("response" in a for a in answers)

    merged = api.merge_lora(infer_args, device_map="cpu")  # the seed's commented-out line
    assert merged == str(best) + "-merged" and infer_args.ckpt_dir == merged
    assert (Path(merged) / "config.json").is_file() and not (Path(merged) / "adapter_config.json").exists()
    stamp = (Path(merged) / "config.json").stat().st_mtime_ns
    assert api.merge_lora(api.InferArguments(ckpt_dir=str(best))) == merged  # exists: kept, as in ms-swift
    assert (Path(merged) / "config.json").stat().st_mtime_ns == stamp


def test_lists_typed_arguments_and_keywords_mean_the_same(tiny_model_dir, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"{a}?"},
                                                      {"role": "assistant", "content": str(a)}],
                                         "rejected_response": str(a + 1)}) + "\n" for a in range(4)))
    common = {"model": tiny_model_dir, "dataset": [str(pairs)], "max_steps": 1, "report_to": ["none"]}
    from_list = api.rlhf_main(["--model", tiny_model_dir, "--dataset", str(pairs), "--max_steps", "1",
                               "--report_to", "none", "--output_dir", str(tmp_path / "a"), "--rlhf_type", "cpo"])
    from_typed = api.rlhf_main(RunArguments(**common, output_dir=str(tmp_path / "b"), rlhf_type="cpo"))
    from_keywords = api.rlhf_main(api.RLHFArguments(**common, output_dir=str(tmp_path / "c"), rlhf_type="cpo",
                                                    sft_type="lora"))
    for result in (from_list, from_typed, from_keywords):
        run_args = json.loads((Path(result["last_model_checkpoint"]) / "args.json").read_text())
        assert run_args["algorithm"] == "cpo" and run_args["model"] == tiny_model_dir
        assert result["best_model_checkpoint"] == result["last_model_checkpoint"]  # nothing held out to rank
        assert result["best_metric"] is None


def test_infer_arguments_passed_to_app_keep_the_apps_flags(caplog):
    with caplog.at_level(logging.INFO, logger="alignkit"):
        typed = api.typed_arguments("app", api.InferArguments(ckpt_dir="ckpt", load_dataset_config=True,
                                                              max_new_tokens=7))
    assert isinstance(typed, TypedAppArguments) and typed.ckpt_dir == "ckpt" and typed.max_new_tokens == 7
    assert "for `alignkit app`: left out, not its flags: load_dataset_config" in caplog.text
    typed = api.typed_arguments("app", TypedInferArguments(ckpt_dir="ckpt", val_dataset=["x.jsonl"]))
    assert isinstance(typed, TypedAppArguments) and typed.ckpt_dir == "ckpt"


def test_an_unknown_keyword_stops_with_the_closest_flag():
    from alignkit.errors import AlignkitError

    with pytest.raises(AlignkitError, match="unknown flag --learning_rat .*did you mean --learning_rate"):
        api.typed_arguments("sft", api.SftArguments(learning_rat=1e-4))


def test_the_seeds_python_inference_with_an_adapter_and_merged(tiny_chat_model_dir, tmp_path):
    """shared/seeds 003 "使用LoRA增量权重进行推理" and "使用LoRA merged的权重进行推理", with the local model as
    model_id_or_path (the seeds' offline tip) and a random adapter as the checkpoint."""
    from conftest import save_random_lora

    from alignkit.data.template import ChatEncoder
    from alignkit.generation.answers import generate_answers
    from alignkit.models.load import load_adapters, load_causal_lm

    ckpt_dir = save_random_lora(tiny_chat_model_dir, tmp_path / "checkpoint-100")
    model_type = api.ModelType.qwen_7b_chat
    template_type = api.get_default_template_type(model_type)
    assert template_type == "qwen"

    model, tokenizer = api.get_model_tokenizer(model_type, model_kwargs={"device_map": "auto"},
                                               model_id_or_path=tiny_chat_model_dir)
    model = api.Swift.from_pretrained(model, ckpt_dir, inference_mode=True)
    template = api.get_template(template_type, tokenizer)
    response, history = api.inference(model, template, "What is 2 + 3?", max_new_tokens=6)
    reference = load_adapters(load_causal_lm(tiny_chat_model_dir), [ckpt_dir], trainable=False)
    encoder = ChatEncoder(tokenizer, max_length=4096)
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    assert response == generate_answers(reference, encoder, [messages], max_new_tokens=6)[0]
    assert history == [["What is 2 + 3?", response]]

    # The next turn carries the history, as in ms-swift.
    second, history = api.inference(model, template, "And 4 + 4?", history, max_new_tokens=6)
    follow_up = [*messages, {"role": "assistant", "content": response}, {"role": "user", "content": "And 4 + 4?"}]
    assert second == generate_answers(reference, encoder, [follow_up], max_new_tokens=6)[0]
    assert len(history) == 2

    plain, _ = api.get_model_tokenizer(model_type, model_id_or_path=tiny_chat_model_dir)  # a merged dir loads so
    plain_answer, _ = api.inference(plain, api.get_template(template_type, tokenizer), "What is 2 + 3?",
                                    max_new_tokens=6)
    assert plain_answer == generate_answers(load_causal_lm(tiny_chat_model_dir), encoder, [messages],
                                            max_new_tokens=6)[0]
