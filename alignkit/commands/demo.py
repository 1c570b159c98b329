"""The main job: DPO with LoRA on the built-in model and data, with before/after numbers and a chart.

    alignkit demo            (what `make demo` runs)

Before and after training it measures, on held-out rows of the built-in arithmetic task: how often
the model prefers the correct answer (log-prob accuracy), the mean log-prob margin, and how often its
own greedy answer is correct in the required format.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from alignkit.commands.eval import evaluate_model
from alignkit.config.commands import DemoArguments
from alignkit.config.run import RunArguments
from alignkit.models.load import load_for_inference
from alignkit.models.reference import Reference
from alignkit.training.run import run_training

logger = logging.getLogger("alignkit")

PREFERENCE_SET = "arith-pref:test"
TASK_SET = "arith-prompts:test"


def measure(model_dir: str | None, adapters: list[str], args: DemoArguments) -> dict:
    model, tokenizer = load_for_inference(model_dir, adapters, None, args.dtype)
    report = evaluate_model(
        model, tokenizer, preference_sets=[PREFERENCE_SET], task_set=TASK_SET, beta=0.1,
        reference=Reference() if adapters else None, batch_size=16, max_length=256, max_new_tokens=16,
        limit=args.eval_limit, system=None,
    )
    return {**report[PREFERENCE_SET], **{k: v for k, v in report[TASK_SET].items() if k != "samples"},
            "samples": report[TASK_SET]["samples"]}


def run_demo(args: DemoArguments) -> int:
    logger.info("Measuring the built-in model before training")
    before = measure(None, [], args)
    train_args = RunArguments(
        rlhf_type="dpo",
        train_type="lora",
        dataset=["arith-pref"],
        val_dataset=["arith-pref:test#64"],
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.per_device_train_batch_size,
        learning_rate=args.learning_rate,
        lr_scheduler_type="cosine",
        warmup_ratio=0.05,
        beta=0.1,
        rpo_alpha=args.rpo_alpha,
        logging_steps=5,
        save_steps=10**9,
        max_length=256,
        dtype=args.dtype,
        lora_rank=8,
        lora_alpha=32,
    )
    checkpoint = run_training(train_args, task="rlhf")
    logger.info("Measuring the trained adapter %s", checkpoint)
    after = measure(None, [str(checkpoint)], args)

    run_dir = checkpoint.parent
    rows = [
        ("held-out preference accuracy", "preference_accuracy", "{:.3f}"),
        ("held-out log-prob margin (chosen - rejected)", "logp_margin", "{:+.3f}"),
        ("held-out implicit-reward accuracy", "reward_accuracy", "{:.3f}"),
        ("task accuracy (greedy, strict format)", "task_accuracy", "{:.3f}"),
    ]
    print_table(rows, before, after)
    report = {"before": before, "after": after, "checkpoint": str(checkpoint)}
    (run_dir / "demo_report.json").write_text(json.dumps(report, indent=2))
    chart = plot_training(run_dir)
    print(f"report: {run_dir / 'demo_report.json'}\nchart:  {chart}\nadapter: {checkpoint}")
    return 0


def print_table(rows, before: dict, after: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="DPO (LoRA) on SmolLM2-135M-Instruct, built-in arithmetic task, held-out rows")
    table.add_column("metric")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    for label, key, fmt in rows:
        table.add_row(label, fmt.format(before[key]) if key in before else "n/a (no reference yet)",
                      fmt.format(after[key]) if key in after else "n/a")
    Console().print(table)


def plot_training(run_dir: Path) -> Path:
    """loss and rewards/margins per logged step, from logging.jsonl, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    steps = [r["step"] for r in train]
    fig, (ax_loss, ax_margin) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(steps, [r["loss"] for r in train], marker="o")
    ax_loss.set(title="DPO loss", xlabel="step", ylabel="loss")
    ax_margin.plot(steps, [r["rewards/margins"] for r in train], marker="o", label="rewards/margins")
    ax_margin.plot(steps, [r["rewards/accuracies"] for r in train], marker="s", label="rewards/accuracies")
    ax_margin.set(title="Implicit rewards", xlabel="step")
    ax_margin.legend()
    fig.tight_layout()
    path = run_dir / "training.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
