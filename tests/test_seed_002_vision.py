"""Seed 002 (ms-swift's multimodal human-alignment document): its single-GPU commands run as written, `swift`
changed to `alignkit`, with the offline tip of seed 000 (--model_id_or_path <local dir> --check_model_is_latest
false), a tiny local LLaVA in place of the 7B models, a local file in the rows ms-swift makes of `rlaif-v`
(images, query, response, rejected_response) for --dataset, and --max_steps 1. The launch variables
(CUDA_VISIBLE_DEVICES) are left out: this is one CPU process. The document's multi-GPU variants differ from these
in launch variables only (tests/test_seed_commands.py covers those forms for seed 001)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from tiny_vlms import build_llava, write_images

from alignkit.cli import main

_TAIL = """    --sft_type  lora \\
    --dataset rlaif-v#1000 \\
    --num_train_epochs  2  \\
    --lora_target_modules  {targets}  \\
    --gradient_checkpointing  true  \\
    --batch_size  1  \\
    --learning_rate  5e-5  \\
    --gradient_accumulation_steps  16  \\
    --warmup_ratio  0.03  \\
    --save_total_limit  2
"""
_LLAVA = "    --model_type  llava1_6-mistral-7b-instruct \\\n"
SEED_002 = {
    "dpo": "swift rlhf \\\n    --rlhf_type dpo \\\n" + _LLAVA + "    --beta 0.1 \\\n    --rpo_alpha 0.1 \\\n"
           + _TAIL.format(targets="DEFAULT"),
    "rm": "swift rlhf \\\n    --rlhf_type rm \\\n    --model_type  internvl2-2b \\\n" + _TAIL.format(targets="ALL"),
    "cpo": "swift rlhf \\\n    --rlhf_type cpo \\\n" + _LLAVA + "    --beta 0.1 \\\n" + _TAIL.format(targets="DEFAULT"),
    "orpo": "swift rlhf \\\n    --rlhf_type orpo \\\n" + _LLAVA + "    --beta 0.1 \\\n"
            + _TAIL.format(targets="DEFAULT"),
    "simpo": "swift rlhf \\\n    --rlhf_type simpo \\\n" + _LLAVA + "    --beta 2.0 \\\n    --simpo_gamma 1.0 \\\n"
             + _TAIL.format(targets="DEFAULT"),
}


@pytest.fixture(scope="module")
def llava(tmp_path_factory) -> str:
    return str(build_llava(tmp_path_factory.mktemp("tiny-llava")))


@pytest.fixture(scope="module")
def rlaif_v(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("rlaif-v")
    images = write_images(folder)
    rows = [{"images": [images[i % len(images)]], "query": f"What colour is picture {i}?",
             "response": f"Colour {i}.", "rejected_response": f"Shape {i + 1}."} for i in range(20)]
    path = folder / "rlaif_v.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.mark.parametrize("method", sorted(SEED_002))
def test_seed_002_vision_methods(method, llava, rlaif_v, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = shlex.split(SEED_002[method].replace("\\\n", " "))
    assert argv[0] == "swift"
    argv = argv[1:]
    argv[argv.index("--dataset") + 1] = rlaif_v
    argv += ["--model_id_or_path", llava, "--check_model_is_latest", "false", "--max_steps", "1"]
    assert main(argv) == 0
    (run_dir,) = [p for p in Path("output").iterdir() if p.is_dir()]
    checkpoint = run_dir / "checkpoint-1"
    assert (checkpoint / "adapter_model.safetensors").is_file()
    saved = json.loads((checkpoint / "args.json").read_text())
    assert saved["model"] == llava and saved["algorithm"] == method
    step = json.loads((run_dir / "logging.jsonl").read_text().splitlines()[0])
    assert step["step"] == 1 and step["loss"] == step["loss"]  # a finite loss was logged
    if method == "rm":
        assert (checkpoint / "value_head.safetensors").is_file()  # the document: "saved in value_head.safetensors"


def test_seed_002_internvl2_itself_needs_remote_code_and_the_error_says_so(rlaif_v, tmp_path, monkeypatch, capsys):
    """The document's RM model, InternVL2, exists only as remote code (its repository's own modeling files):
    alignkit stops before training, naming that and the transformers port to use."""
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "InternVL2-2B"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({
        "architectures": ["InternVLChatModel"], "model_type": "internvl_chat",
        "auto_map": {"AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
                     "AutoModel": "modeling_internvl_chat.InternVLChatModel"}}))
    argv = shlex.split(SEED_002["rm"].replace("\\\n", " "))[1:]
    argv[argv.index("--dataset") + 1] = rlaif_v
    monkeypatch.setattr("sys.stdin", open("/dev/null"))  # transformers asks on a terminal; here it must not wait
    assert main([*argv, "--model_id_or_path", str(model), "--check_model_is_latest", "false", "--max_steps", "1"]) == 2
    assert "needs its own Python code (transformers' trust_remote_code)" in capsys.readouterr().err
    assert not Path("output").exists() or not any(Path("output").rglob("checkpoint-*"))
