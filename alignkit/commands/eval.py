"""`alignkit eval`: held-out preference accuracy and margins, and the built-in task's answer accuracy."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from alignkit.config.commands import EvalArguments
from alignkit.data.builtin import is_correct
from alignkit.data.collate import PairCollator
from alignkit.data.loading import load_dataset_spec
from alignkit.data.rows import PreferenceRow, PromptRow
from alignkit.data.template import ChatEncoder, Truncated
from alignkit.errors import AlignkitError
from alignkit.generation.answers import generate, generate_answers
from alignkit.generation.loader import encoder_for, load_for_answers
from alignkit.models.load import load_causal_lm, resolve_model_path
from alignkit.models.logprobs import forward_logps
from alignkit.models.placement import input_device, split_map
from alignkit.models.reference import Reference
from alignkit.vision.collate import VisionPairCollator
from alignkit.vision.encode import VisionEncoder
from alignkit.vision.model import load_vision_model, vision_model_path
from alignkit.vision.shared_images import enable_shared_images, shares_images

logger = logging.getLogger("alignkit")


@torch.no_grad()
def preference_scores(
    model, encoder: ChatEncoder, rows: list[PreferenceRow], *, beta: float, batch_size: int,
    reference: Reference | None,
) -> dict[str, float]:
    """How often the model prefers the chosen answer.

    ``preference_accuracy``: log π(chosen) > log π(rejected) (sums over answer tokens), the model's own
    preference; ``logp_margin`` its mean gap. With a reference: ``reward_accuracy`` / ``reward_margin``
    of the implicit DPO reward β·(log π − log π_ref), as ``rewards/accuracies`` in training.
    """
    pairs = []
    for index, row in enumerate(rows):
        try:
            pairs.append((index, encoder.encode_pair(row)))
        except Truncated:
            pass
    if not pairs:
        raise AlignkitError("no preference rows fit --max_length")
    pad_id = encoder.tokenizer.pad_token_id
    if isinstance(encoder, VisionEncoder):  # rows with images: their pixel inputs ride along (docs/vision.md)
        collate = VisionPairCollator(pad_id, share_images=shares_images(model.config))
    else:
        collate = PairCollator(pad_id)
    device = input_device(model)
    logp_gaps, reward_gaps = [], []
    for start in tqdm(range(0, len(pairs), batch_size), desc="preference eval", leave=False):
        batch = collate(pairs[start : start + batch_size]).to(device)
        n = len(batch.row_ids)
        logps, _ = forward_logps(model, batch)  # (2n,)
        logp_gaps.append(logps[:n] - logps[n:])
        if reference is not None:
            ref, _ = reference.logps(model, batch)
            reward_gaps.append(beta * ((logps[:n] - ref[:n]) - (logps[n:] - ref[n:])))
    gap = torch.cat(logp_gaps).float()
    scores = {
        "pairs": len(pairs),
        "preference_accuracy": (gap > 0).float().mean().item(),
        "logp_margin": gap.mean().item(),
    }
    if reward_gaps:
        reward_gap = torch.cat(reward_gaps).float()
        scores["reward_accuracy"] = (reward_gap > 0).float().mean().item()
        scores["reward_margin"] = reward_gap.mean().item()
    return scores


def task_accuracy(model, encoder: ChatEncoder, rows: list[PromptRow], *, batch_size: int, max_new_tokens: int) -> dict:
    """Greedy answers to the built-in task's prompts, graded by its checker."""
    correct, samples = 0, []
    for start in tqdm(range(0, len(rows), batch_size), desc="task eval", leave=False):
        chunk = rows[start : start + batch_size]
        answers = generate(model, encoder, [encoder.prompt_of(r) for r in chunk], max_new_tokens=max_new_tokens)
        for row, answer in zip(chunk, answers):
            ok = is_correct(answer, row.extras["solution"])
            correct += ok
            if len(samples) < 5:
                samples.append({"prompt": row.prompt[-1]["content"], "answer": answer, "correct": ok})
    return {"prompts": len(rows), "task_accuracy": correct / max(len(rows), 1), "samples": samples}


@torch.no_grad()
def reward_win_rate(model, baseline, encoder: ChatEncoder, scorer, rows: list[PromptRow], *, batch_size: int,
                    max_new_tokens: int) -> dict:
    """How often the reward model prefers the model's greedy answer to the baseline's (ties count half).

    ``baseline`` is a second model, or None for ``model`` with its adapter switched off."""
    ours, theirs = [], []
    for start in tqdm(range(0, len(rows), batch_size), desc="reward-model eval", leave=False):
        prompts = [r.prompt for r in rows[start : start + batch_size]]
        answers = generate_answers(model, encoder, prompts, max_new_tokens=max_new_tokens)
        if baseline is None:
            with model.disable_adapter():
                base_answers = generate_answers(model, encoder, prompts, max_new_tokens=max_new_tokens)
        else:
            base_answers = generate_answers(baseline, encoder, prompts, max_new_tokens=max_new_tokens)
        for target, given in ((ours, answers), (theirs, base_answers)):
            target += scorer.score([p + [{"role": "assistant", "content": a}] for p, a in zip(prompts, given)])
    mine, base = torch.tensor(ours), torch.tensor(theirs)  # (N,) rewards
    return {
        "prompts": len(rows),
        "win_rate": ((mine > base).float() + 0.5 * (mine == base).float()).mean().item(),
        "reward_mean": mine.mean().item(),
        "baseline_reward_mean": base.mean().item(),
        "reward_margin": (mine - base).mean().item(),
    }


def evaluate_model(model, tokenizer, *, preference_sets: list[str], task_set: str | None, beta: float,
                   reference: Reference | None, batch_size: int, max_length: int, max_new_tokens: int,
                   limit: int | None, system: str | None, seed: int = 42) -> dict:
    """``tokenizer``: a vision-language model's processor evaluates rows with their images."""
    encoder = encoder_for(model, tokenizer, max_length=max_length, system=system)
    report: dict = {}
    for spec in preference_sets:
        rows = load_dataset_spec(spec, "preference", seed=seed)[:limit]
        report[spec] = preference_scores(model, encoder, rows, beta=beta, batch_size=batch_size, reference=reference)
    if task_set:
        rows = load_dataset_spec(task_set, "prompt", seed=seed)[:limit]
        if not all("solution" in r.extras for r in rows):
            raise AlignkitError(f"--task_dataset {task_set}: rows need a 'solution' column to be graded")
        report[task_set] = task_accuracy(model, encoder, rows, batch_size=batch_size, max_new_tokens=max_new_tokens)
    return report


def run_eval(args: EvalArguments) -> int:
    report_path = Path(args.report_path or f"eval_result/{time.strftime('%Y%m%d-%H%M%S')}.json")
    chart_path = report_path.with_suffix(".png")
    for path in (report_path, chart_path):
        if path.exists():
            raise AlignkitError(f"{path} exists; alignkit never overwrites results (pass another --report_path)")
    vision = vision_model_path(args.model, args.adapters, args.ckpt_dir) is not None
    if vision and args.reward_model:
        raise AlignkitError("--reward_model compares the text answers of two text models; it does not take a "
                            "vision-language model")
    loaded = load_for_answers(args.model, args.adapters, args.ckpt_dir, args.dtype, device_map=args.device_map,
                              max_memory=args.device_max_memory, max_length=args.max_length, system=args.system)
    model, tokenizer = loaded.model, loaded.saved_with
    reference = None
    if args.ref_model:
        # A split model's reference is split the same way; otherwise it sits beside the model.
        if split_map(model):
            reference = Reference(load_causal_lm(resolve_model_path(args.ref_model), device_map=split_map(model)))
        else:
            reference = Reference(load_reference(resolve_model_path(args.ref_model), vision).to(input_device(model)))
    elif hasattr(model, "disable_adapter"):
        reference = Reference()  # the base model under the adapter
    preference_sets = [] if args.dataset == ["none"] else args.dataset
    task_set = None if (args.task_dataset or "none") == "none" else args.task_dataset
    report = evaluate_model(
        model, tokenizer, preference_sets=preference_sets, task_set=task_set, beta=args.beta, reference=reference,
        batch_size=args.batch_size, max_length=args.max_length, max_new_tokens=args.max_new_tokens,
        limit=args.limit, system=args.system,
    )
    if args.reward_model:
        baseline = reference.frozen_model if reference is not None else None
        if baseline is None and not hasattr(model, "disable_adapter"):
            raise AlignkitError("--reward_model compares two models' answers: pass an adapter (--adapters/--ckpt_dir, "
                                "compared with its base) or --ref_model")
        from alignkit.models.scalar_model import load_reward_scorer

        scorer = load_reward_scorer(args.reward_model, dtype=args.dtype, max_length=args.max_length, system=args.system,
                                    batch_size=args.batch_size)
        rows = load_dataset_spec(args.reward_prompts, "prompt", seed=42)[: args.limit]
        report[f"{args.reward_prompts} (reward model)"] = reward_win_rate(
            model, baseline, ChatEncoder(tokenizer, max_length=args.max_length, system=args.system), scorer, rows,
            batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
        )
    text = json.dumps(report, indent=2)
    print(text)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(text)
    plot_report(report, chart_path, title=f"alignkit eval: {args.ckpt_dir or (args.adapters or [args.model])[0]}")
    print(f"report: {report_path}\nchart:  {chart_path}")
    return 0


def load_reference(model_path: str, vision: bool):
    if not vision:
        return load_causal_lm(model_path)
    reference = load_vision_model(model_path)
    enable_shared_images(reference)
    return reference


def plot_report(report: dict, path: Path, title: str) -> None:
    """Accuracies (left) and margins (right) of every evaluated set, as bars labelled with their values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = {"accuracy": [], "margin": []}
    for name, scores in report.items():
        for key, value in scores.items():
            if key.endswith(("accuracy", "win_rate")):
                bars["accuracy"].append((f"{name}\n{key}", value))
            elif key.endswith("margin"):
                bars["margin"].append((f"{name}\n{key}", value))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, (kind, items) in zip(axes, bars.items()):
        labels, values = [label for label, _ in items], [value for _, value in items]
        drawn = ax.bar(range(len(values)), values, color="tab:blue" if kind == "accuracy" else "tab:orange")
        ax.bar_label(drawn, fmt="%.3f")
        ax.set_xticks(range(len(values)), labels, fontsize=8)
        ax.set_title(kind)
        if kind == "accuracy":
            ax.set_ylim(0, 1.1)
        ax.axhline(0, color="black", linewidth=0.5)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
