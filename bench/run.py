"""DPO speed and memory, side by side: alignkit, alignkit with every speed-up off (the plain PyTorch
step: completion-only LM head, fused AdamW, a reference forward each step), TRL 1.16 and ms-swift 4.6.

One command, from the repository root, with alignkit's own environment active:

    python bench/run.py                       # all four settings, 12 steps each
    python bench/run.py --settings lora-bf16 --steps 8 --frameworks alignkit trl

It sets up the peers' virtual environments (bench/.venvs, see venvs.py), exports the built-in preference
data to each one's format, runs every framework on the same rows and settings one after another (4 pairs
per step, max_length 128, LoRA r 8 on all linear layers without dropout (TRL's default disable_dropout
turns it off anyway), beta 0.1, sigmoid), and prints JSON: s/step
(median of steps 3..N), pairs/s, tokens/s, peak RSS, first/last loss, held-out reward accuracy, and the
ratios alignkit/peer. alignkit's one-off reference pass is reported apart (``ref_precompute_s``) and in
``pairs_per_s_incl_precompute``. Peak RSS is the run's process tree maximum (wait4's ru_maxrss).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import venvs  # noqa: E402

WORK = ROOT / "bench" / "work"
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
PAIRS_PER_STEP = 4
MAX_LENGTH = 128
LEARNING_RATE = {"lora": 5e-4, "full": 1e-5}
SETTINGS = ["lora-fp32", "full-fp32", "lora-bf16", "full-bf16"]
FRAMEWORKS = ["alignkit", "alignkit_plain", "trl", "swift"]
PLAIN = ["--padding_free", "false", "--prefix_sharing", "false", "--precompute_ref_log_probs", "false"]


def export_data(steps: int, eval_rows: int) -> dict:
    """The built-in arith-pref rows as TRL (conversational prompt/chosen/rejected) and ms-swift
    (messages + rejected_response) JSONL, plus the workload's token count per step."""
    from alignkit.data.builtin import arith_pref
    from alignkit.data.template import ChatEncoder
    from alignkit.models.load import load_tokenizer, resolve_model_path

    data = WORK / "data"
    data.mkdir(parents=True, exist_ok=True)
    splits = {"train": arith_pref("train")[: steps * PAIRS_PER_STEP], "eval": arith_pref("test")[:eval_rows]}
    for split, rows in splits.items():
        trl = [{"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected} for r in rows]
        swift = [{"messages": r.prompt + r.chosen, "rejected_response": r.rejected[-1]["content"]} for r in rows]
        (data / f"{split}_trl.jsonl").write_text("".join(json.dumps(x) + "\n" for x in trl))
        (data / f"{split}_swift.jsonl").write_text("".join(json.dumps(x) + "\n" for x in swift))
    model = resolve_model_path(None)
    encoder = ChatEncoder(load_tokenizer(model), max_length=MAX_LENGTH)
    tokens = sum(len(e.input_ids) for row in splits["train"] for e in encoder.encode_pair(row))
    return {"model": model, "dir": data, "tokens_per_step": tokens / steps}


def run_measured(cmd: list[str], log: Path, env: dict) -> tuple[int, float, float]:
    """Run a command; return (exit code, peak RSS of its process tree in GiB, wall seconds)."""
    started = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    return os.waitstatus_to_exitcode(status), usage.ru_maxrss / 2**20, time.perf_counter() - started


def alignkit_cmd(setting: str, steps: int, data: dict, out: Path, plain: bool) -> list[str]:
    train_type, dtype = setting.split("-")
    return [
        sys.executable, "-m", "alignkit", "rlhf", "--rlhf_type", "dpo", "--model", data["model"],
        "--dataset", str(data["dir"] / "train_trl.jsonl"), "--val_dataset", str(data["dir"] / "eval_trl.jsonl"),
        "--train_type", train_type, "--dtype", dtype, "--max_steps", str(steps), "--batch_size", str(PAIRS_PER_STEP),
        "--eval_batch_size", "4", "--max_length", str(MAX_LENGTH), "--lora_rank", "8", "--lora_alpha", "32",
        "--lora_dropout", "0", "--lora_target_modules", "all-linear", "--beta", "0.1", "--loss_type", "sigmoid",
        "--learning_rate", str(LEARNING_RATE[train_type]), "--lr_scheduler_type", "cosine", "--logging_steps", "1",
        "--save_steps", "100000", "--report_to", "none", "--output_dir", str(out), *(PLAIN if plain else []),
    ]


def alignkit_result(out: Path, log: Path) -> dict:
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    records = [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines()]
    train = [r for r in records if "step_seconds" in r]
    evals = [r for r in records if "eval_rewards/accuracies" in r]
    precompute = re.findall(r"computed in ([0-9.]+)s", log.read_text())
    return {
        "step_seconds": [r["step_seconds"] for r in train],
        "losses": [r["loss"] for r in train],
        "eval_reward_accuracy": evals[-1]["eval_rewards/accuracies"] if evals else None,
        "ref_precompute_s": float(precompute[0]) if precompute else None,
    }


def trl_cmd(setting: str, steps: int, data: dict, out: Path, result: Path) -> list[str]:
    train_type, dtype = setting.split("-")
    return [
        str(venvs.python_of("trl")), str(ROOT / "bench" / "peers" / "trl_dpo.py"), "--model", data["model"],
        "--train_file", str(data["dir"] / "train_trl.jsonl"), "--eval_file", str(data["dir"] / "eval_trl.jsonl"),
        "--train_type", train_type, "--dtype", dtype, "--steps", str(steps), "--output_dir", str(out),
        "--learning_rate", str(LEARNING_RATE[train_type]), "--result", str(result),
    ]


def swift_cmd(setting: str, steps: int, data: dict, out: Path, result: Path) -> list[str]:
    train_type, dtype = setting.split("-")
    return [
        str(venvs.python_of("swift")), str(ROOT / "bench" / "peers" / "swift_dpo.py"), str(result),
        "--rlhf_type", "dpo", "--model", data["model"], "--model_type", "llama", "--template", "chatml",
        "--system", SYSTEM, "--dataset", str(data["dir"] / "train_swift.jsonl"),
        "--val_dataset", str(data["dir"] / "eval_swift.jsonl"), "--split_dataset_ratio", "0",
        "--tuner_type", train_type, "--torch_dtype", "float32", "--use_cpu", "true", "--fp16", "false",
        "--bf16", "true" if dtype == "bf16" else "false", "--max_steps", str(steps),
        "--per_device_train_batch_size", str(PAIRS_PER_STEP), "--per_device_eval_batch_size", "4",
        "--max_length", str(MAX_LENGTH), "--lora_rank", "8", "--lora_alpha", "32", "--lora_dropout", "0",
        "--target_modules", "all-linear", "--beta", "0.1", "--loss_type", "sigmoid",
        "--learning_rate", str(LEARNING_RATE[train_type]), "--lr_scheduler_type", "cosine", "--warmup_ratio", "0",
        "--logging_steps", "1", "--eval_strategy", "steps", "--eval_steps", str(steps), "--save_strategy", "no",
        "--gradient_checkpointing", "false", "--dataloader_num_workers", "0", "--dataset_num_proc", "1",
        "--report_to", "none", "--output_dir", str(out), "--seed", "42",
    ]


def summarise(raw: dict, tokens_per_step: float) -> dict:
    times = raw["step_seconds"][2:] or raw["step_seconds"]  # steps 3..N
    s_per_step = statistics.median(times)
    out = {
        "s_per_step": round(s_per_step, 3),
        "pairs_per_s": round(PAIRS_PER_STEP / s_per_step, 3),
        "tokens_per_s": round(tokens_per_step / s_per_step, 1),
        "peak_rss_gib": round(raw["peak_rss_gib"], 2),
        "first_loss": raw["losses"][0] if raw["losses"] else None,
        "last_loss": raw["losses"][-1] if raw["losses"] else None,
        "eval_reward_accuracy": raw["eval_reward_accuracy"],
        "steps_timed": len(times),
    }
    if raw.get("ref_precompute_s") is not None:
        pairs = PAIRS_PER_STEP * len(raw["step_seconds"])
        out["ref_precompute_s"] = raw["ref_precompute_s"]
        out["pairs_per_s_incl_precompute"] = round(pairs / (sum(raw["step_seconds"]) + raw["ref_precompute_s"]), 3)
    return out


def run_one(framework: str, setting: str, steps: int, data: dict, threads: int | None) -> dict:
    out = WORK / "runs" / f"{framework}-{setting}"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    out.mkdir(parents=True)
    log, result = out / "log.txt", out / "result.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "ALIGNKIT_CACHE": str(out / "cache"), "PYTHONPATH": str(ROOT)}  # a cold reference cache each run
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if framework.startswith("alignkit"):
        cmd = alignkit_cmd(setting, steps, data, out / "run", plain=framework == "alignkit_plain")
    elif framework == "trl":
        cmd = trl_cmd(setting, steps, data, out / "run", result)
    else:
        cmd = swift_cmd(setting, steps, data, out / "run", result)
    code, peak, wall = run_measured(cmd, log, env)
    if code != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"{framework} {setting} failed (exit {code}); log {log}:\n{tail}")
    raw = alignkit_result(out / "run", log) if framework.startswith("alignkit") else json.loads(result.read_text())
    raw["peak_rss_gib"] = peak
    summary = summarise(raw, data["tokens_per_step"])
    summary["wall_s"] = round(wall, 1)
    print(f"[bench] {setting} {framework}: {json.dumps(summary)}", file=sys.stderr, flush=True)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=SETTINGS, choices=SETTINGS)
    parser.add_argument("--frameworks", nargs="+", default=FRAMEWORKS, choices=FRAMEWORKS)
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per run (timed: steps 3..N)")
    parser.add_argument("--eval_rows", type=int, default=32, help="held-out pairs for the reward accuracy")
    parser.add_argument("--output", default=None, help="also write the JSON here")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP threads of every run (default: torch's, one per core). On a machine loaded by "
                             "other work, 1 avoids threads spinning at barriers while their partner is descheduled.")
    args = parser.parse_args()

    for peer in ("trl", "swift"):
        if peer in args.frameworks:
            venvs.setup(peer)
    data = export_data(args.steps, args.eval_rows)
    load_before = os.getloadavg()
    results: dict[str, dict] = {}
    for setting in args.settings:
        results[setting] = {fw: run_one(fw, setting, args.steps, data, args.threads) for fw in args.frameworks}
    ratios = {}
    for setting, by_fw in results.items():
        if "alignkit" in by_fw:
            ratios[setting] = {f"alignkit/{fw}": round(by_fw["alignkit"]["pairs_per_s"] / r["pairs_per_s"], 2)
                               for fw, r in by_fw.items() if fw != "alignkit"}
    report = {
        "command": "python bench/run.py " + " ".join(sys.argv[1:]),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "threads_per_run": args.threads or "torch default",
            "load_avg_before": [round(x, 2) for x in load_before],
            "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "workload": {
            "model": "SmolLM2-135M-Instruct",
            "pairs_per_step": PAIRS_PER_STEP,
            "max_length": MAX_LENGTH,
            "tokens_per_step": round(data["tokens_per_step"], 1),
            "lora": "r 8, alpha 32, dropout 0, all linear",
            "beta": 0.1,
            "loss_type": "sigmoid",
            "steps": args.steps,
            "learning_rate": LEARNING_RATE,
        },
        "results": results,
        "ratios_pairs_per_s": ratios,
    }
    text = json.dumps(report, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
