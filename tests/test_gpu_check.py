"""bench/gpu_check.py cannot rot: its dry run (the same sections on a CPU, a tiny model) runs here and its JSON
has every field; a section that kills its worker is recorded and the next one runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check  # noqa: E402

TRAINING = ("steps_timed", "s_per_step", "tokens_per_step", "tokens_per_s", "flops_per_token", "mfu",
            "peak_memory_gib", "first_loss", "last_loss", "seconds")


def test_the_gpu_plan_covers_both_models_every_method_engine_and_peer():
    names = {s["name"] for s in gpu_check.plan(list(gpu_check.MODELS), dry_run=False)}
    for model in ("llama-0.5b", "qwen2-1.5b"):
        for section in ("parity", "dpo_lora", "dpo_full", "sft_full", "grpo_lora", "trl_dpo_lora", "trl_dpo_full",
                        "dpo_lora_liger", "trl_dpo_lora_liger"):
            assert f"{section}/{model}" in names
    for engine in ("zero2", "zero3", "fsdp2"):
        assert f"dpo_full_{engine}/llama-0.5b" in names
    assert "grpo_lora_zero3/llama-0.5b" in names
    assert {"packing_memory/llama-0.5b", "parity_flex/llama-0.5b"} <= names


def test_dry_run_writes_every_field_and_survives_a_crashed_worker(tiny_model_dir, tmp_path):
    output = tmp_path / "gpu_check.json"
    env = dict(os.environ, ALIGNKIT_GPU_CHECK_CRASH="sft_full/llama-tiny", PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "bench/gpu_check.py", "--dry_run", "--output", str(output), "--tokenizer",
                    tiny_model_dir, "--work_dir", str(tmp_path / "work")], cwd=ROOT, env=env, check=True, timeout=900)
    report = json.loads(output.read_text())

    meta = report["meta"]
    for key in ("date", "device", "device_name", "versions", "peak_tflops", "peak_source", "matmul_tflops",
                "dry_run", "budget_s", "total_s"):
        assert key in meta
    assert meta["dry_run"] is True and meta["device"] == "cpu" and meta["versions"]["torch"]
    assert set(report["models"]) == {"llama-tiny"}
    assert report["models"]["llama-tiny"]["parameters"] > 0
    sections = report["sections"]
    assert set(sections) == {s["name"] for s in gpu_check.plan(["llama-tiny"], dry_run=True)}
    for name, result in sections.items():
        assert result["status"] in ("ok", "error", "timeout", "skipped")
        assert result["status"] == "ok" or result["error"], name

    for name in ("dpo_lora", "dpo_full", "trl_dpo_lora", "trl_dpo_full"):
        result = sections[f"{name}/llama-tiny"]
        assert result["status"] == "ok", result
        for key in TRAINING:
            assert key in result, (name, key)
        assert result["tokens_per_s"] > 0 and result["mfu"] is None  # no peak FLOP/s known for a CPU
        # Offline (the check sets HF_HUB_OFFLINE), alignkit has turned transformers' Hub kernels off by then.
        assert result["hub_kernels"]["after"] == {"USE_HUB_KERNELS": "NO", "enabled": False}, result["hub_kernels"]
    grpo = sections["grpo_lora/llama-tiny"]
    assert grpo["status"] == "ok", grpo  # ran in a fresh worker after the crash
    for key in ("rollout_s", "update_s", "generated_tokens_per_s", "tokens_per_s", "mfu", "peak_memory_gib"):
        assert key in grpo
    crashed = sections["sft_full/llama-tiny"]
    assert crashed["status"] == "error" and "exited with code 3" in crashed["error"]

    parity = sections["parity/llama-tiny"]
    assert parity["status"] == "ok" and parity["ok"]
    assert set(parity["layouts"]) == {"packed_fp32", "prefix_shared_fp32", "packed_bf16", "prefix_shared_bf16"}
    assert parity["layouts"]["prefix_shared_fp32"]["logp_per_token_max_diff"] < 1e-4
    assert "no backward on a CPU" in sections["parity_flex/llama-tiny"]["error"]
    memory = sections["packing_memory/llama-tiny"]
    assert memory["status"] == "ok" and all("seconds" in r for r in memory["lengths"]["sdpa"].values())

    summary = report["summary"]["dpo_lora/llama-tiny"]
    assert summary["vs_trl"] == round(summary["alignkit_tokens_per_s"] / summary["trl_tokens_per_s"], 3)
    for key in ("trl_liger_tokens_per_s", "vs_trl_liger"):
        assert key in summary


def test_the_colocated_vllm_section_is_planned_where_vllm_imports(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name == "vllm" else find_spec(name))
    (section,) = [s for s in gpu_check.plan(list(gpu_check.MODELS), dry_run=False) if s["kind"] == "vllm_colocate"]
    assert section["name"] == "grpo_vllm_colocate_2proc/llama-0.5b" and section["group"] == "vllm"
    assert not [s for s in gpu_check.plan(["llama-tiny"], dry_run=True) if s["kind"] == "vllm_colocate"]
