"""GRPO speed and memory, side by side: alignkit and TRL 1.16 GRPOTrainer on the same prompts, reward, group size,
lengths, sampling, loss and optimizer, interleaved (A B, A B, ...) so that the machine's drift hits both alike.

    python bench/grpo_run.py --output bench/results/grpo-latest.json
    python bench/grpo_run.py --steps 4 --rounds 1 --num_generations 4     # a quick look

The workload: the built-in SmolLM2-135M-Instruct, the built-in arithmetic prompts in dataset order (no shuffle),
``--prompts_per_step`` prompts × ``--num_generations`` completions per step, sampled at temperature 1.0 (top_p 1,
top_k 0) up to ``--max_completion_length`` tokens, scored by bench/peers/grpo_reward.py (the same Python function
in both: ``--reward arith_partial``, partial credit for the last number's distance to the solution, whose scores
differ within a group; ``--reward arith``, the task's 0/1 accuracy, which stays 0 on the base model), group-scaled
advantages, loss_type dapo (TRL's default), beta 0 (TRL's default: no reference model),
epsilon 0.2, one optimizer step per generation (fused AdamW, no weight decay, clipping at 1.0, cosine), LoRA r 8
on all linear layers without dropout (or full), float32, gradient checkpointing off for both (TRL's GRPOConfig
turns it on by default).

Fair work: every step's completions, their prompts and their lengths are read back from the shared reward
function's record, and each framework's own resolved batch accounting is checked (bench/grpo_accounting.py);
anything unequal stops the benchmark before a ratio is printed.

Reported per framework: s/step (median of steps 3..N per run, then the median over rounds, with the rounds'
range), the share of it that is the rollout, completions/s, generated tokens/s (the completions' own mean tokens
per step over the same steps) and peak RSS of the process tree (wait4's ru_maxrss, the largest over rounds); and,
from the reward function's record of every step of every round, the mean reward and the share of groups whose G
rewards differ (the groups with a nonzero advantage).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import venvs  # noqa: E402
from accounting import AccountingError  # noqa: E402
from grpo_accounting import GrpoWork, from_alignkit_grpo, from_trl_grpo, read_reward_log, verify_grpo  # noqa: E402
from run import run_measured  # noqa: E402

WORK = ROOT / "bench" / "work" / "grpo"
REWARD = ROOT / "bench" / "peers" / "grpo_reward.py"
LEARNING_RATE = {"lora": 5e-4, "full": 1e-5}
# --reward → the function of bench/peers/grpo_reward.py that both frameworks are given.
REWARDS = {"arith_partial": "arith_partial_reward", "arith": "arith_reward"}
REWARD_TEXT = {"arith_partial": "1.0 for 'Answer: <solution>', else 0.5 / (1 + |last number - solution|), 0 without "
                                "a number",
               "arith": "built-in arithmetic accuracy, 1.0 for 'Answer: <solution>', else 0.0"}
FRAMEWORKS = ["alignkit", "trl"]
WARMUP_STEPS = 2


def export_prompts(args) -> tuple[Path, GrpoWork]:
    """The built-in arithmetic prompts of the run, as TRL's conversational prompt-only JSONL with a ``solution``
    column (alignkit reads the same file), and the prompts each step must sample."""
    from alignkit.data.builtin import arith_prompts

    rows = arith_prompts("train")[: args.steps * args.prompts_per_step]
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": r.prompt, "solution": r.extras["solution"]}) + "\n" for r in rows))
    texts = [r.prompt[-1]["content"] for r in rows]
    steps = [texts[i : i + args.prompts_per_step] for i in range(0, len(texts), args.prompts_per_step)]
    return path, GrpoWork(steps, args.num_generations, args.max_completion_length)


def alignkit_cmd(args, model: str, data: Path, out: Path) -> list[str]:
    completions = args.prompts_per_step * args.num_generations
    return [
        sys.executable, "-m", "alignkit", "rlhf", "--rlhf_type", "grpo", "--model", model, "--dataset", str(data),
        "--dataset_shuffle", "false", "--reward_funcs", f"{REWARD}:{REWARDS[args.reward]}",
        "--num_generations", str(args.num_generations), "--per_device_train_batch_size", str(completions),
        "--gradient_accumulation_steps", "1", "--max_completion_length", str(args.max_completion_length),
        "--temperature", "1.0", "--top_p", "1.0", "--top_k", "0", "--repetition_penalty", "1.0",
        "--beta", "0", "--loss_type", "dapo", "--scale_rewards", "group", "--epsilon", "0.2", "--num_iterations", "1",
        "--train_type", args.train_type, "--dtype", "fp32", "--gradient_checkpointing", "false",
        "--lora_rank", "8", "--lora_alpha", "32", "--lora_dropout", "0", "--lora_target_modules", "all-linear",
        "--optim", "adamw_torch_fused", "--weight_decay", "0", "--adam_beta1", "0.9", "--adam_beta2", "0.999",
        "--max_grad_norm", "1.0",
        "--learning_rate", str(LEARNING_RATE[args.train_type]), "--lr_scheduler_type", "cosine",
        "--warmup_ratio", "0", "--max_steps", str(args.steps), "--logging_steps", "1", "--save_steps", "100000",
        "--report_to", "none", "--seed", "42", "--output_dir", str(out),
    ]


def trl_cmd(args, model: str, data: Path, out: Path, result: Path) -> list[str]:
    return [
        str(venvs.python_of("trl")), str(ROOT / "bench" / "peers" / "trl_grpo.py"), "--model", model,
        "--train_file", str(data), "--train_type", args.train_type, "--output_dir", str(out), "--result", str(result),
        "--steps", str(args.steps), "--per_device_train_batch_size", str(args.prompts_per_step * args.num_generations),
        "--num_generations", str(args.num_generations), "--max_completion_length", str(args.max_completion_length),
        "--lora_rank", "8", "--learning_rate", str(LEARNING_RATE[args.train_type]), "--reward", REWARDS[args.reward],
    ]


def alignkit_result(run_dir: Path) -> dict:
    records = [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in records if "time/update_s" in r]
    return {
        # The online loop's step: its rollout (sampling, rewards, advantages) and its update (loss, backward,
        # optimizer, weight sync), as TRL's step_begin..step_end holds both.
        "step_seconds": [r["time/rollout_s"] + r["time/update_s"] for r in train],
        "rollout_seconds": [r["time/rollout_s"] for r in train],
        "losses": [r["loss"] for r in train],
        "rewards": [r["reward"] for r in train],
        "frac_reward_zero_std": [r["frac_reward_zero_std"] for r in train],
    }


def reward_signal(calls: list[dict]) -> dict:
    """From the reward function's record: the mean reward, and how many groups (a step's completions of one prompt)
    there were and how many of them had rewards that differ, i.e. a nonzero advantage."""
    groups = [[r for p, r in zip(c["prompts"], c["rewards"]) if p == prompt]
              for c in calls for prompt in set(c["prompts"])]
    return {"mean_reward": statistics.mean(r for c in calls for r in c["rewards"]),
            "groups": len(groups), "groups_with_signal": sum(len(set(g)) > 1 for g in groups)}


def run_one(framework: str, args, model: str, data: Path, work: GrpoWork, round_index: int) -> dict:
    out = WORK / "runs" / f"{framework}-{args.train_type}-round{round_index}"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    out.mkdir(parents=True)
    log, result, rewards = out / "log.txt", out / "result.json", out / "rewards.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "ALIGNKIT_CACHE": str(out / "cache"), "PYTHONPATH": str(ROOT), "BENCH_REWARD_LOG": str(rewards)}
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    if framework == "alignkit":
        cmd = alignkit_cmd(args, model, data, out / "run")
    else:
        cmd = trl_cmd(args, model, data, out / "run", result)
    code, peak, wall = run_measured(cmd, log, env)
    if code != 0:
        raise SystemExit(f"{framework} failed (exit {code}); log {log}:\n{log.read_text()[-3000:]}")
    if framework == "alignkit":
        (run_dir,) = [p for p in (out / "run").iterdir() if p.is_dir()]
        raw, configured = alignkit_result(run_dir), from_alignkit_grpo(run_dir, log.read_text())
    else:
        raw = json.loads(result.read_text())
        configured = from_trl_grpo(raw["accounting"])
    calls = read_reward_log(rewards)
    try:
        verify_grpo(configured, calls, work, who=f"{framework} ({log})")
    except AccountingError as error:
        raise SystemExit(f"[bench] not comparable, no ratio printed: {error}") from None
    timed = slice(WARMUP_STEPS, None) if len(raw["step_seconds"]) > WARMUP_STEPS else slice(None)
    s_per_step = statistics.median(raw["step_seconds"][timed])
    summary = {
        "s_per_step": s_per_step,
        "rollout_share": statistics.median(r / s for r, s in zip(raw["rollout_seconds"][timed],
                                                                 raw["step_seconds"][timed])),
        "tokens_per_step": statistics.mean(sum(c["lengths"]) for c in calls[timed]),
        "mean_completion_tokens": statistics.mean(x for c in calls[timed] for x in c["lengths"]),
        "peak_rss_gib": peak,
        "wall_s": round(wall, 1),
        "steps_timed": len(raw["step_seconds"][timed]),
        **reward_signal(calls),
        # The framework's own metric, as a cross-check of the record's groups_with_signal.
        "logged_frac_reward_zero_std": statistics.mean(raw["frac_reward_zero_std"]),
    }
    print(f"[bench] grpo {args.train_type} round {round_index} {framework}: s/step {s_per_step:.2f}, rollout "
          f"{summary['rollout_share']:.0%}, {work.completions_per_step} completions/step verified, mean reward "
          f"{summary['mean_reward']:.3f}, {summary['groups_with_signal']} of {summary['groups']} groups with reward "
          "spread",
          file=sys.stderr, flush=True)
    return summary


def summarise(runs: list[dict], completions_per_step: int) -> dict:
    per_round = [r["s_per_step"] for r in runs]
    s_per_step = statistics.median(per_round)
    tokens = statistics.mean(r["tokens_per_step"] for r in runs)
    spread, groups = sum(r["groups_with_signal"] for r in runs), sum(r["groups"] for r in runs)
    return {
        "s_per_step": round(s_per_step, 3),
        "s_per_step_rounds": [round(x, 3) for x in per_round],
        "s_per_step_spread": [round(min(per_round), 3), round(max(per_round), 3)],
        "completions_per_s": round(completions_per_step / s_per_step, 3),
        "generated_tokens_per_s": round(tokens / s_per_step, 1),
        "generated_tokens_per_step": round(tokens, 1),
        "mean_completion_tokens": round(statistics.mean(r["mean_completion_tokens"] for r in runs), 1),
        "rollout_share_of_step": round(statistics.median(r["rollout_share"] for r in runs), 3),
        "peak_rss_gib": round(max(r["peak_rss_gib"] for r in runs), 2),
        # Over every step of every round (the warm-up steps too), from the shared reward function's record.
        "mean_reward": round(statistics.mean(r["mean_reward"] for r in runs), 4),
        "mean_reward_rounds": [round(r["mean_reward"], 4) for r in runs],
        "groups_with_reward_spread": round(spread / groups, 3),
        "groups_with_reward_spread_count": [spread, groups],
        "logged_frac_reward_zero_std": round(statistics.mean(r["logged_frac_reward_zero_std"] for r in runs), 3),
        "steps_timed": runs[-1]["steps_timed"],
        "completions_per_step_verified": completions_per_step,
        "wall_s_rounds": [r["wall_s"] for r in runs],
    }


def table(report: dict) -> str:
    """The README's Markdown table of a report."""
    results, rounds = report["results"], report["workload"]["rounds"]
    lines = [f"| {report['workload']['setting']} | s/step, median of {rounds} rounds [range] | rollout share | "
             "completions/s | generated tokens/s (mean tokens) | peak RSS GiB | mean reward | "
             "groups with reward spread |",
             "|---|---|---|---|---|---|---|---|"]
    names = {"alignkit": "alignkit", "trl": "TRL 1.16 `GRPOTrainer`"}
    for fw, r in results.items():
        low, high = r["s_per_step_spread"]
        lines.append(f"| {names.get(fw, fw)} | {r['s_per_step']:.2f} [{low:.2f}–{high:.2f}] | "
                     f"{r['rollout_share_of_step']:.0%} | {r['completions_per_s']:.2f} | "
                     f"{r['generated_tokens_per_s']:.0f} ({r['mean_completion_tokens']:.1f}) | "
                     f"{r['peak_rss_gib']:.2f} | {r['mean_reward']:.3f} | {r['groups_with_reward_spread']:.0%} |")
    for name, ratio in report["ratios_completions_per_s"].items():
        low, high = ratio["per_round_range"]
        lines.append(f"| {name} (completions/s, ratio of medians [per-round range]) | "
                     f"{ratio['ratio_of_medians']:.2f}× [{low:.2f}–{high:.2f}] | | | | | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frameworks", nargs="+", default=FRAMEWORKS, choices=FRAMEWORKS)
    parser.add_argument("--train_type", default="lora", choices=("lora", "full"))
    parser.add_argument("--steps", type=int, default=6, help=f"steps per run (timed: steps {WARMUP_STEPS + 1}..N)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (A B, A B, ...)")
    parser.add_argument("--prompts_per_step", type=int, default=2)
    parser.add_argument("--num_generations", type=int, default=4)
    parser.add_argument("--max_completion_length", type=int, default=32)
    parser.add_argument("--reward", default="arith_partial", choices=REWARDS,
                        help="the shared reward: arith_partial (partial credit, scores differ within a group) or "
                             "arith (0/1 accuracy, 0 on the base model); see bench/peers/grpo_reward.py")
    parser.add_argument("--threads", type=int, default=None, help="OMP threads of every run (default: torch's)")
    parser.add_argument("--output", default=None, help="also write the JSON here")
    args = parser.parse_args()
    if "alignkit" not in args.frameworks:
        parser.error("--frameworks must include alignkit: the report is ratios against it")
    if "trl" in args.frameworks:
        venvs.setup("trl")
    from alignkit.models.load import resolve_model_path

    model = resolve_model_path(None)
    data, work = export_prompts(args)
    load_before, started = os.getloadavg(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    runs: dict[str, list[dict]] = {fw: [] for fw in args.frameworks}
    for round_index in range(1, args.rounds + 1):
        for fw in args.frameworks:
            runs[fw].append(run_one(fw, args, model, data, work, round_index))
    results = {fw: summarise(r, work.completions_per_step) for fw, r in runs.items()}
    ratios = {}
    for fw in args.frameworks[1:]:
        per_round = [t["s_per_step"] / o["s_per_step"] for o, t in zip(runs["alignkit"], runs[fw])]
        ratios[f"alignkit ÷ {fw}"] = {
            "ratio_of_medians": round(results[fw]["s_per_step"] / results["alignkit"]["s_per_step"], 2),
            "per_round_range": [round(min(per_round), 2), round(max(per_round), 2)]}
    report = {
        "command": "python bench/grpo_run.py " + " ".join(sys.argv[1:]),
        "date": started,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "threads_per_run": args.threads or "torch default",
                    "load_avg_before": [round(x, 2) for x in load_before],
                    "load_avg_after": [round(x, 2) for x in os.getloadavg()]},
        "workload": {
            "setting": f"{args.train_type}-fp32", "model": "SmolLM2-135M-Instruct",
            "prompts_per_step": args.prompts_per_step, "num_generations": args.num_generations,
            "completions_per_step": work.completions_per_step, "max_completion_length": args.max_completion_length,
            "completions_per_step_verified": "every step, from the shared reward function's record and each "
                                             "framework's resolved batch (bench/grpo_accounting.py)",
            "reward": f"bench/peers/grpo_reward.py:{REWARDS[args.reward]} ({REWARD_TEXT[args.reward]})",
            "sampling": "temperature 1.0, top_p 1.0, top_k 0, repetition_penalty 1.0",
            "loss": "loss_type dapo, beta 0 (no reference model), epsilon 0.2, scale_rewards group, 1 iteration",
            "optimizer": f"adamw_torch_fused, lr {LEARNING_RATE[args.train_type]:g}, cosine, no warm-up, no weight "
                         "decay, clip 1.0, one optimizer step per generation",
            "lora": "r 8, alpha 32, dropout 0, all linear" if args.train_type == "lora" else None,
            "steps": args.steps, "warmup_steps_untimed": WARMUP_STEPS, "rounds": args.rounds,
        },
        "results": results,
        "ratios_completions_per_s": ratios,
    }
    text = json.dumps(report, indent=2, ensure_ascii=False)
    if args.output:
        Path(args.output).write_text(text + "\n")
    print(text)
    print(table(report), file=sys.stderr)


if __name__ == "__main__":
    main()
