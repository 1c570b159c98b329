"""The training commands of the seed documents (ms-swift 2.x's own docs, shared/seeds 000, 001, 003) run as written,
`swift` changed to `alignkit`, with the documents' offline tip (--model_id_or_path <local dir>
--check_model_is_latest false), a local --dataset in the same format as the named hub dataset, and --max_steps 1.
--model_type stays as written. Shell substitutions are evaluated ($(expr 16 / $nproc_per_node) is 8) and the
launch variables (CUDA_VISIBLE_DEVICES, NPROC_PER_NODE) left out: this is one CPU process."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch

from alignkit.cli import main

# 000: `swift dpo` (ms-swift 2.x's DPO document)
SEED_000_DPO = """swift dpo \\
    --model_type  yi-6b-chat \\
    --ref_model_type  yi-6b-chat \\
    --model_revision  master \\
    --sft_type  lora \\
    --tuner_backend  swift \\
    --dtype  AUTO  \\
    --output_dir  output  \\
    --dataset  hh-rlhf-cn:harmless_base_cn  \\
    --num_train_epochs  3  \\
    --max_length  1024  \\
    --max_prompt_length  512  \\
    --check_dataset_strategy  none  \\
    --lora_rank  8  \\
    --lora_alpha  32  \\
    --lora_dropout_p  0.05  \\
    --lora_target_modules  ALL  \\
    --gradient_checkpointing  true  \\
    --batch_size  1  \\
    --weight_decay  0.1  \\
    --learning_rate  5e-5  \\
    --gradient_accumulation_steps  8  \\
    --max_grad_norm  1.0  \\
    --warmup_ratio  0.03  \\
    --eval_steps  2000  \\
    --save_steps  2000  \\
    --save_total_limit  2  \\
    --logging_steps  10
"""

# 001: one command per algorithm; the common tail of every one of them.
_TAIL_001 = """    --num_train_epochs  2  \\
    --lora_target_modules  ALL  \\
    --gradient_checkpointing  true  \\
    --batch_size  1  \\
    --learning_rate  5e-5  \\
    --gradient_accumulation_steps  16  \\
    --warmup_ratio  0.03  \\
    --save_total_limit  2
"""
SEED_001 = {
    "dpo": """swift rlhf \\
    --rlhf_type dpo \\
    --model_type  llama3-8b-instruct \\
    --beta 0.1 \\
    --rpo_alpha 0.1 \\
    --sft_type  lora \\
    --dataset shareai-llama3-dpo-zh-en-emoji \\
""" + _TAIL_001,
    "rm": """swift rlhf \\
    --rlhf_type rm \\
    --model_type  llama3-8b-instruct \\
    --sft_type  lora \\
    --dataset hh-rlhf-cn-harmless-base-cn \\
""" + _TAIL_001,
    "ppo": """swift rlhf \\
    --rlhf_type ppo \\
    --model_type  llama3-8b-instruct \\
    --sft_type  lora \\
    --dataset hh-rlhf-cn-harmless-base-cn \\
    --reward_model_id_or_path path/to/reawrd_model \\
    --reward_model_type  llama3-8b-instruct \\
""" + _TAIL_001,
    "kto": """swift rlhf \\
    --rlhf_type kto \\
    --model_type  llama3-8b-instruct \\
    --beta 0.1 \\
    --desirable_weight 1.0 \\
    --undesirable_weight 1.0 \\
    --sft_type  lora \\
    --dataset ultrafeedback-kto \\
""" + _TAIL_001,
    "cpo": """swift rlhf \\
    --rlhf_type cpo \\
    --model_type  llama3-8b-instruct \\
    --beta 0.1 \\
    --sft_type  lora \\
    --dataset shareai-llama3-dpo-zh-en-emoji \\
""" + _TAIL_001,
    "orpo": """swift rlhf \\
    --rlhf_type orpo \\
    --model_type  llama3-8b-instruct \\
    --beta 0.1 \\
    --sft_type  lora \\
    --dataset shareai-llama3-dpo-zh-en-emoji \\
""" + _TAIL_001,
    "simpo": """swift rlhf \\
    --rlhf_type simpo \\
    --model_type  llama3-8b-instruct \\
    --beta 2.0 \\
    --simpo_gamma 1.0 \\
    --sft_type  lora \\
    --dataset shareai-llama3-dpo-zh-en-emoji \\
""" + _TAIL_001,
}

# 003: `swift sft` (ms-swift 2.x's fine-tuning document, "使用自己的数据集": with one's own dataset)
SEED_003_SFT = """swift sft \\
    --model_id_or_path qwen/Qwen-7B-Chat \\
    --dataset chatml.jsonl \\
    --output_dir output \\
"""

QUESTIONS = [(a, b) for a in range(1, 6) for b in range(1, 5)]  # 20 rows: more than one step's 16 micro-batches


def hh_rlhf_cn_rows() -> list[dict]:
    """AI-ModelScope/hh_rlhf_cn's layout: context messages and chosen/rejected messages spelled role/text."""
    return [{"context": [{"role": "human", "text": f"{a} + {b} 等于几？"}],
             "chosen": {"role": "assistant", "text": f"Answer: {a + b}"},
             "rejected": {"role": "assistant", "text": f"Answer: {a + b + 1}"}} for a, b in QUESTIONS]


def shareai_rows() -> list[dict]:
    """shareai-llama3-dpo-zh-en-emoji as ms-swift reads it: query, response (answer_zh), rejected (answer_en)."""
    return [{"query": f"What is {a} + {b}?", "response": f"答案：{a + b} 😀", "rejected_response": f"Answer: {a + b}"}
            for a, b in QUESTIONS]


def ultrafeedback_kto_rows() -> list[dict]:
    """AI-ModelScope/ultrafeedback-binarized-preferences-cleaned-kto's layout: prompt, completion, label."""
    return [{"prompt": f"What is {a} + {b}?", "completion": f"Answer: {a + b + (a % 2)}", "label": a % 2 == 0}
            for a, b in QUESTIONS]


def chatml_rows() -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"What is {a} + {b}?"},
                          {"role": "assistant", "content": f"Answer: {a + b}"}]} for a, b in QUESTIONS]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def run_seed(command: str, *, model: str, dataset: str) -> Path:
    """Run a seed command with only its --dataset swapped, plus the offline tip and --max_steps 1; returns the
    run directory (under ./output, the command's own --output_dir or default)."""
    argv = shlex.split(command.replace("\\\n", " "))  # the shell's line continuations
    assert argv[0] == "swift"
    argv = argv[1:]
    argv[argv.index("--dataset") + 1] = dataset
    if "--model_id_or_path" in argv:  # 003 names the hub model this way: the local one takes its place
        argv[argv.index("--model_id_or_path") + 1] = model
    else:
        argv += ["--model_id_or_path", model]
    argv += ["--check_model_is_latest", "false", "--max_steps", "1"]
    assert main(argv) == 0
    (run_dir,) = [p for p in Path("output").iterdir() if p.is_dir()]
    return run_dir


def assert_checkpoint(run_dir: Path, model: str, algorithm: str) -> Path:
    checkpoint = run_dir / "checkpoint-1"
    assert (checkpoint / "adapter_model.safetensors").is_file()
    saved = json.loads((checkpoint / "args.json").read_text())
    assert saved["model"] == model and saved["algorithm"] == algorithm
    return checkpoint


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the commands write to ./output


def test_seed_000_swift_dpo(tiny_model_dir, tmp_path):
    run_dir = run_seed(SEED_000_DPO, model=tiny_model_dir,
                       dataset=write_jsonl(tmp_path / "harmless_base_cn.jsonl", hh_rlhf_cn_rows()))
    assert_checkpoint(run_dir, tiny_model_dir, "dpo")
    saved = json.loads((run_dir / "args.json").read_text())
    assert saved["gradient_accumulation_steps"] == 8 and saved["lora_target_modules"] == ["ALL"]


@pytest.mark.parametrize("method", ["dpo", "cpo", "orpo", "simpo"])
def test_seed_001_pair_methods(tiny_model_dir, tmp_path, method):
    run_dir = run_seed(SEED_001[method], model=tiny_model_dir,
                       dataset=write_jsonl(tmp_path / "dpo_zh_en_emoji.jsonl", shareai_rows()))
    assert_checkpoint(run_dir, tiny_model_dir, method)


def test_seed_001_rm(tiny_model_dir, tmp_path):
    run_dir = run_seed(SEED_001["rm"], model=tiny_model_dir,
                       dataset=write_jsonl(tmp_path / "harmless_base_cn.jsonl", hh_rlhf_cn_rows()))
    checkpoint = assert_checkpoint(run_dir, tiny_model_dir, "rm")
    assert (checkpoint / "value_head.safetensors").is_file()


def brief_tiny_model(path: Path) -> str:
    """The tiny model, made to end its answers after a few tokens: every token's embedding gets a large shared
    component, the end-of-turn token's a slightly larger one, so (with tied embeddings) its logit stands about 2
    above the rest. The seed's --max_completion_length default (512) then costs seconds instead of minutes."""
    from conftest import build_tiny_model, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 10.0
        model.model.embed_tokens.weight[tokenizer.eos_token_id, 0] = 10.3
    # Room for the seed's 512 completion tokens beside the prompts: --max_length unset is the model's length.
    model.config.max_position_embeddings = 2048
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_seed_001_ppo(tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    policy = brief_tiny_model(tmp_path / "policy")
    tokenizer = AutoTokenizer.from_pretrained(policy)
    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    reward_model = tmp_path / "reward_model"
    LlamaForSequenceClassification(config).save_pretrained(reward_model)
    tokenizer.save_pretrained(reward_model)
    command = SEED_001["ppo"].replace("path/to/reawrd_model", str(reward_model))  # the document's placeholder
    run_dir = run_seed(command, model=policy, dataset=write_jsonl(tmp_path / "harmless_base_cn.jsonl",
                                                                   hh_rlhf_cn_rows()))
    assert_checkpoint(run_dir, policy, "ppo")
    assert json.loads((run_dir / "args.json").read_text())["reward_model"] == [str(reward_model)]


def test_seed_001_kto(tiny_model_dir, tmp_path):
    run_dir = run_seed(SEED_001["kto"], model=tiny_model_dir,
                       dataset=write_jsonl(tmp_path / "ultrafeedback_kto.jsonl", ultrafeedback_kto_rows()))
    assert_checkpoint(run_dir, tiny_model_dir, "kto")


def test_seed_003_sft(tiny_model_dir, tmp_path):
    run_dir = run_seed(SEED_003_SFT, model=tiny_model_dir, dataset=write_jsonl(tmp_path / "chatml.jsonl",
                                                                                chatml_rows()))
    assert_checkpoint(run_dir, tiny_model_dir, "sft")
