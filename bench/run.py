"""DPO speed and memory, side by side: alignkit, alignkit with every speed-up off (the plain PyTorch
step: completion-only LM head, fused AdamW, a reference forward each step), TRL 1.16 and ms-swift 4.6.

One command, from the repository root, with alignkit's own environment active:

    python bench/run.py                       # all four settings, 12 steps each, 3 interleaved rounds
    python bench/run.py --settings lora-bf16 --steps 8 --rounds 2 --frameworks alignkit trl

It sets up the peers' virtual environments (bench/.venvs, see venvs.py), exports the built-in preference
data to each one's format and runs every framework on the same rows and settings (4 pairs per optimizer
step, max_length 128, LoRA r 8 on all linear layers without dropout (TRL's default disable_dropout turns it
off anyway), beta 0.1, sigmoid, no weight decay, AdamW betas (0.9, 0.999), gradient clipping at 1.0).

Fair work: each run's own records are read back (bench/accounting.py) and every optimizer step must have
consumed exactly 4 pairs, or the benchmark stops with an error instead of printing a ratio.

Drift: the machine is shared, so one framework after another is not a fair comparison. Frameworks run
interleaved, A B C D, A B C D, ... (``--rounds``) within each setting; each run's s/step is the median of its
steps 3..N, and the report gives each framework's median over the rounds, its spread (min, max) and the
ratios of the medians (and the per-round ratios' range). alignkit's one-off reference pass is reported apart
(``ref_precompute_s``) and in ``pairs_per_s_incl_precompute``. Peak RSS is the run's process tree maximum
(wait4's ru_maxrss), the largest over the rounds.
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
from accounting import AccountingError, from_alignkit_run, from_hf_trainer, verify  # noqa: E402

WORK = ROOT / "bench" / "work"
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
PAIRS_PER_STEP = 4
MAX_LENGTH = 128
LEARNING_RATE = {"lora": 5e-4, "full": 1e-5}
SETTINGS = ["lora-fp32", "full-fp32", "lora-bf16", "full-bf16"]
FRAMEWORKS = ["alignkit", "alignkit_plain", "trl", "swift"]
# Fixed for the peers so that their own defaults cannot differ from alignkit's (ms-swift's weight decay is 0.1).
SAME_OPTIMIZER = ["--weight_decay", "0", "--adam_beta1", "0.9", "--adam_beta2", "0.999", "--max_grad_norm", "1.0"]
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
        "--save_steps", "100000", "--report_to", "none", "--output_dir", str(out), "--gradient_accumulation_steps", "1",
        *SAME_OPTIMIZER, *(PLAIN if plain else []),
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
        # ms-swift fills in gradient accumulation by itself (aiming at a total batch of 16) unless given.
        "--gradient_accumulation_steps", "1", *SAME_OPTIMIZER,
        "--max_length", str(MAX_LENGTH), "--lora_rank", "8", "--lora_alpha", "32", "--lora_dropout", "0",
        "--target_modules", "all-linear", "--beta", "0.1", "--loss_type", "sigmoid",
        "--learning_rate", str(LEARNING_RATE[train_type]), "--lr_scheduler_type", "cosine", "--warmup_ratio", "0",
        "--logging_steps", "1", "--eval_strategy", "steps", "--eval_steps", str(steps), "--save_strategy", "no",
        "--gradient_checkpointing", "false", "--dataloader_num_workers", "0", "--dataset_num_proc", "1",
        "--report_to", "none", "--output_dir", str(out), "--seed", "42",
    ]


def summarise_run(raw: dict) -> dict:
    """One run: its s/step (median of steps 3..N), losses, accuracy, peak RSS and the reference pass."""
    times = raw["step_seconds"][2:] or raw["step_seconds"]  # steps 3..N
    out = {
        "s_per_step": statistics.median(times),
        "peak_rss_gib": raw["peak_rss_gib"],
        "first_loss": raw["losses"][0] if raw["losses"] else None,
        "last_loss": raw["losses"][-1] if raw["losses"] else None,
        "eval_reward_accuracy": raw["eval_reward_accuracy"],
        "steps_timed": len(times),
        "pairs_per_step_verified": raw["pairs_per_step_verified"],
    }
    if raw.get("ref_precompute_s") is not None:
        pairs = PAIRS_PER_STEP * len(raw["step_seconds"])
        out["ref_precompute_s"] = raw["ref_precompute_s"]
        out["pairs_per_s_incl_precompute"] = pairs / (sum(raw["step_seconds"]) + raw["ref_precompute_s"])
    return out


def summarise_rounds(runs: list[dict], tokens_per_step: float) -> dict:
    """A framework's rounds in one setting: the median s/step over rounds, its spread, and the rest."""
    per_round = [r["s_per_step"] for r in runs]
    s_per_step = statistics.median(per_round)
    out = {
        "s_per_step": round(s_per_step, 3),
        "s_per_step_rounds": [round(x, 3) for x in per_round],
        "s_per_step_spread": [round(min(per_round), 3), round(max(per_round), 3)],
        "pairs_per_s": round(PAIRS_PER_STEP / s_per_step, 3),
        "tokens_per_s": round(tokens_per_step / s_per_step, 1),
        "peak_rss_gib": round(max(r["peak_rss_gib"] for r in runs), 2),
        "first_loss": runs[-1]["first_loss"],
        "last_loss": runs[-1]["last_loss"],
        "eval_reward_accuracy": runs[-1]["eval_reward_accuracy"],
        "steps_timed": runs[-1]["steps_timed"],
        "pairs_per_step_verified": PAIRS_PER_STEP,
        "wall_s_rounds": [r["wall_s"] for r in runs],
    }
    if "ref_precompute_s" in runs[0]:
        out["ref_precompute_s"] = round(statistics.median(r["ref_precompute_s"] for r in runs), 1)
        out["pairs_per_s_incl_precompute"] = round(
            statistics.median(r["pairs_per_s_incl_precompute"] for r in runs), 3)
    return out


def ratios_of_medians(by_framework: dict[str, dict]) -> dict[str, dict]:
    """alignkit's pairs/s over each peer's: the ratio of the medians, and the range of the per-round ratios."""
    ours = by_framework["alignkit"]
    ratios = {}
    for framework, theirs in by_framework.items():
        if framework == "alignkit":
            continue
        per_round = [t / o for o, t in zip(ours["s_per_step_rounds"], theirs["s_per_step_rounds"])]
        ratios[f"alignkit/{framework}"] = {
            "ratio_of_medians": round(theirs["s_per_step"] / ours["s_per_step"], 2),
            "per_round_range": [round(min(per_round), 2), round(max(per_round), 2)],
        }
    return ratios


def run_one(framework: str, setting: str, steps: int, data: dict, threads: int | None, round_index: int) -> dict:
    out = WORK / "runs" / f"{framework}-{setting}-round{round_index}"
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
    if framework.startswith("alignkit"):
        (run_dir,) = [p for p in (out / "run").iterdir() if p.is_dir()]
        raw, accounting = alignkit_result(out / "run", log), from_alignkit_run(run_dir)
    else:
        raw = json.loads(result.read_text())
        accounting = from_hf_trainer(raw["accounting"])
    try:
        raw["pairs_per_step_verified"] = verify(accounting, PAIRS_PER_STEP, who=f"{framework} {setting} ({log})")
    except AccountingError as error:
        raise SystemExit(f"[bench] not comparable, no ratio printed: {error}") from None
    raw["peak_rss_gib"] = peak
    summary = summarise_run(raw)
    summary["wall_s"] = round(wall, 1)
    print(f"[bench] {setting} round {round_index} {framework}: s/step {summary['s_per_step']:.3f}, "
          f"{summary['pairs_per_step_verified']} pairs/step verified", file=sys.stderr, flush=True)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=SETTINGS, choices=SETTINGS)
    parser.add_argument("--frameworks", nargs="+", default=FRAMEWORKS, choices=FRAMEWORKS)
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per run (timed: steps 3..N)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds per setting (A B C D, A B C D, ...); the report takes medians")
    parser.add_argument("--eval_rows", type=int, default=32, help="held-out pairs for the reward accuracy")
    parser.add_argument("--output", default=None, help="also write the JSON here")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP threads of every run (default: torch's, one per core). On a machine loaded by "
                             "other work, 1 avoids threads spinning at barriers while their partner is descheduled.")
    args = parser.parse_args()
    if "alignkit" not in args.frameworks:
        parser.error("--frameworks must include alignkit: the report is ratios against it")

    for peer in ("trl", "swift"):
        if peer in args.frameworks:
            venvs.setup(peer)
    data = export_data(args.steps, args.eval_rows)
    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results: dict[str, dict] = {}
    ratios: dict[str, dict] = {}
    for setting in args.settings:
        runs: dict[str, list[dict]] = {fw: [] for fw in args.frameworks}
        for round_index in range(1, args.rounds + 1):
            for fw in args.frameworks:
                runs[fw].append(run_one(fw, setting, args.steps, data, args.threads, round_index))
        results[setting] = {fw: summarise_rounds(r, data["tokens_per_step"]) for fw, r in runs.items()}
        ratios[setting] = ratios_of_medians(results[setting])
        print(f"[bench] {setting}: {json.dumps(ratios[setting])}", file=sys.stderr, flush=True)
    report = {
        "command": "python bench/run.py " + " ".join(sys.argv[1:]),
        "date": started,
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
            "pairs_per_step_verified": "every run, from its own log (bench/accounting.py)",
            "max_length": MAX_LENGTH,
            "tokens_per_step": round(data["tokens_per_step"], 1),
            "lora": "r 8, alpha 32, dropout 0, all linear",
            "beta": 0.1,
            "loss_type": "sigmoid",
            "steps": args.steps,
            "rounds": args.rounds,
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
