"""`infer`, `eval`, `export` and `deploy` on tiny random vision-language models (LLaVA, Idefics3): generation equals
transformers' own generate on the processor's inputs, batch and chat answers equal it row by row, eval's
preference numbers equal log-probs computed by hand, a merged export gives the adapter model's logits and
answers with plain transformers, and the server answers OpenAI image parts (400 for unreadable images)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import torch
from test_vision import write_dataset
from tiny_vlms import BUILDERS, build_all, greedy_answer, load_for_generation, write_images

from alignkit.cli import main
from alignkit.generation.answers import generate
from alignkit.vision.images import load_image

FAMILIES = sorted(BUILDERS)
QUESTION = "What is this?"


@pytest.fixture(scope="module")
def vlms(tmp_path_factory):
    return build_all(tmp_path_factory, "vlm")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("pictures"))


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# ------------------------------------------------------------------ generation


@pytest.mark.parametrize("family", FAMILIES)
def test_generation_equals_transformers_generate_on_the_processors_inputs(vlms, images, family):
    model, encoder = load_for_generation(vlms[family])
    processor, tokenizer = encoder.processor, encoder.tokenizer
    picture = load_image(images[0], None, "images")
    ours = greedy_answer(model, encoder, user(f"<image>{QUESTION}"), images[:1])

    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text",
                                                                                            "text": QUESTION}]}],
                                         add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[[picture]], add_special_tokens=False, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=8, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    assert ours == tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    # A batch mixing one image, two images and none answers each prompt as it is answered alone; the image matters.
    prompts = [(user(f"<image>{QUESTION}"), images[:1]), (user("Compare <image> and <image>"), images[1:3]),
               (user("Hello"), [])]
    batched = generate(model, encoder, [
        encoder.encode_prompt(m, [load_image(p, None, "images") for p in paths]) for m, paths in prompts],
        max_new_tokens=8)
    assert batched == [greedy_answer(model, encoder, m, paths) for m, paths in prompts]
    assert greedy_answer(model, encoder, user(f"<image>{QUESTION}"), images[1:2]) != ours


@pytest.mark.parametrize("family", FAMILIES)
def test_infer_answers_a_jsonl_of_prompts_with_images(vlms, images, tmp_path, family):
    (tmp_path / "a.png").write_bytes(Path(images[0]).read_bytes())  # relative to the data file
    rows = [{"messages": user(f"<image>{QUESTION}"), "images": ["a.png"]},
            {"messages": user("Compare <image> and <image>"), "images": images[1:3]},
            {"messages": user("Hello")},
            {"messages": user(QUESTION), "images": [{"bytes": Path(images[2]).read_bytes()}]}]  # no placeholder
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps(r, default=lambda b: base64.b64encode(b).decode()) + "\n" for r in rows))
    result = tmp_path / "answers.jsonl"
    assert main(["infer", "--model", vlms[family], "--val_dataset", str(data), "--result_path", str(result),
                 "--max_new_tokens", "8", "--max_batch_size", "3", "--dtype", "fp32"]) == 0
    written = [json.loads(line) for line in result.read_text().splitlines()]
    model, encoder = load_for_generation(vlms[family])
    expected = [greedy_answer(model, encoder, user(f"<image>{QUESTION}"), images[:1]),
                greedy_answer(model, encoder, user("Compare <image> and <image>"), images[1:3]),
                greedy_answer(model, encoder, user("Hello"), []),
                greedy_answer(model, encoder, user(QUESTION), images[2:3])]
    assert [w["response"] for w in written] == expected
    assert written[0]["images"] == ["a.png"] and written[1]["images"] == images[1:3]
    assert base64.b64decode(written[3]["images"][0]["bytes"]) == Path(images[2]).read_bytes()


def test_interactive_chat_asks_for_each_images_path_and_keeps_the_history(vlms, images, monkeypatch, capsys):
    typed = iter([f"<image>{QUESTION}", images[0], "And <image>?", "missing.png", "And <image>?", images[1],
                  "exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(typed))
    assert main(["infer", "--model", vlms["llava"], "--max_new_tokens", "6", "--dtype", "fp32"]) == 0
    printed = capsys.readouterr().out
    assert "image file 'missing.png' not found" in printed  # the mistyped path drops that message only
    answers = [piece.split("\n")[0] for piece in printed.split(">>> ")[1:]]

    model, encoder = load_for_generation(vlms["llava"])
    first = greedy_answer(model, encoder, user(f"<image>{QUESTION}"), images[:1], max_new_tokens=6)
    history = [*user(f"<image>{QUESTION}"), {"role": "assistant", "content": first}, *user("And <image>?")]
    second = greedy_answer(model, encoder, history, images[:2], max_new_tokens=6)
    assert answers == [first, second]


def test_infer_refuses_vllm_for_a_vision_language_model(vlms, tmp_path, capsys):
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"messages": user("Hello")}) + "\n")
    assert main(["infer", "--model", vlms["llava"], "--val_dataset", str(data), "--infer_backend", "vllm",
                 "--result_path", str(tmp_path / "r.jsonl")]) == 2
    assert "--infer_backend vllm generates from text prompts only" in capsys.readouterr().err


# ------------------------------------------------------------------ eval and export of a trained adapter


@pytest.fixture(scope="module")
def trained(vlms, images, tmp_path_factory):
    """{family: (LoRA checkpoint after two DPO steps, the image preference data it trained on)}."""
    runs = {}
    for family in FAMILIES:
        folder = tmp_path_factory.mktemp(f"dpo-{family}")
        data = write_dataset(folder, images)
        out = folder / "out"
        assert main(["rlhf", "--rlhf_type", "dpo", "--model", vlms[family], "--dataset", data, "--max_steps", "2",
                     "--batch_size", "2", "--learning_rate", "5e-2", "--output_dir", str(out), "--dtype", "fp32",
                     "--report_to", "none", "--save_steps", "2", "--train_type", "lora"]) == 0
        (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
        runs[family] = str(run_dir / "checkpoint-2"), data
    return runs


@pytest.mark.parametrize("family", FAMILIES)
def test_eval_scores_image_preference_pairs_as_log_probs_computed_by_hand(vlms, trained, tmp_path, family):
    from alignkit.data.loading import load_dataset_spec
    from alignkit.models.logprobs import forward_logps
    from alignkit.vision.collate import VisionPairCollator

    checkpoint, data = trained[family]
    report_path = tmp_path / "report.json"
    assert main(["eval", "--ckpt_dir", checkpoint, "--dataset", data, "--task_dataset", "none", "--beta", "0.1",
                 "--report_path", str(report_path), "--dtype", "fp32"]) == 0
    scores = json.loads(report_path.read_text())[data]

    # By hand: each pair alone, chosen and rejected each with their own copy of the pixels (the unshared path).
    model, encoder = load_for_generation(vlms[family], [checkpoint])
    collate = VisionPairCollator(encoder.tokenizer.pad_token_id)
    gaps, reward_gaps = [], []
    with torch.no_grad():
        for row in load_dataset_spec(data, "preference", seed=42):
            batch = collate([(0, encoder.encode_pair(row))])
            logps, _ = forward_logps(model, batch)
            with model.disable_adapter():
                ref, _ = forward_logps(model, batch)
            gaps.append((logps[0] - logps[1]).item())
            reward_gaps.append(0.1 * ((logps[0] - ref[0]) - (logps[1] - ref[1])).item())
    assert scores["pairs"] == 4
    assert scores["logp_margin"] == pytest.approx(sum(gaps) / 4, abs=1e-4)
    assert scores["preference_accuracy"] == sum(g > 0 for g in gaps) / 4
    assert scores["reward_margin"] == pytest.approx(sum(reward_gaps) / 4, abs=1e-5)
    assert scores["reward_margin"] != pytest.approx(0, abs=1e-4)  # the adapter moved the model


def test_eval_task_prompts_with_images_are_answered_with_them(vlms, images, tmp_path):
    data = tmp_path / "task.jsonl"
    rows = [{"messages": user(f"<image>{QUESTION}"), "images": [images[i]], "solution": "42"} for i in range(2)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report_path = tmp_path / "report.json"
    assert main(["eval", "--model", vlms["idefics3"], "--dataset", "none", "--task_dataset", str(data),
                 "--max_new_tokens", "6", "--report_path", str(report_path), "--dtype", "fp32"]) == 0
    samples = json.loads(report_path.read_text())[str(data)]["samples"]
    model, encoder = load_for_generation(vlms["idefics3"])
    assert [s["answer"] for s in samples] == [greedy_answer(model, encoder, user(f"<image>{QUESTION}"), images[i:i + 1],
                                                     max_new_tokens=6) for i in range(2)]


@pytest.mark.parametrize("family", FAMILIES)
def test_merged_export_reloads_with_plain_transformers_with_the_adapters_logits_and_answers(vlms, images, trained,
                                                                                           tmp_path, family):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    checkpoint, _ = trained[family]
    output = tmp_path / "merged"
    assert main(["export", "--ckpt_dir", checkpoint, "--merge_lora", "true", "--output_dir", str(output),
                 "--dtype", "fp32"]) == 0
    merged = AutoModelForImageTextToText.from_pretrained(output).eval()
    processor = AutoProcessor.from_pretrained(output)
    assert not (output / "adapter_config.json").exists()

    adapter_model, encoder = load_for_generation(vlms[family], [checkpoint])
    base, _ = load_for_generation(vlms[family])
    pictures = [load_image(p, None, "images") for p in images[:2]]
    text = encoder.render([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "and"},
                                                        {"type": "image"}]}], generation_prompt=True)
    inputs = processor(text=[text], images=[pictures], add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        logits = merged(**inputs).logits
        # fp32 rounding of W + BA against the unmerged sum: 1.5e-5 seen with logits moved by ~7 from the base.
        assert torch.allclose(logits, adapter_model(**inputs).logits, atol=1e-4)
        assert not torch.allclose(logits, base(**inputs).logits, atol=1e-3)
    generated = merged.generate(**inputs, max_new_tokens=8, do_sample=False)
    tokenizer = processor.tokenizer
    assert tokenizer.decode(generated[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True) == greedy_answer(
        adapter_model, encoder, user("<image>and<image>"), images[:2])


def test_a_vision_language_model_is_not_quantised(trained, tmp_path, capsys):
    assert main(["export", "--ckpt_dir", trained["llava"][0], "--quant_bits", "4",
                 "--output_dir", str(tmp_path / "q")]) == 2
    assert "is a vision-language model: alignkit exports it merged" in capsys.readouterr().err
