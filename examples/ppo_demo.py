"""The classic RLHF pipeline on the built-in model and task: SFT → reward model → PPO. A demo, not a test.

1. SFT (LoRA) teaches the ``Answer: <number>`` format (the base model never uses it);
2. ``rm`` trains a reward model, initialised from the SFT model, on the built-in preference pairs
   (correct answer preferred);
3. PPO trains a new LoRA adapter on the SFT model (merged) against that reward model, with a KL penalty
   to the SFT model.

Before and after PPO, greedy answers to held-out prompts are scored by the reward model; the PPO log
shows the KL to the reference staying bounded. Numbers go to ``report.json`` in --output_dir.

    python examples/ppo_demo.py                          # about 20 minutes on 2 CPU cores
    python examples/ppo_demo.py --sft_checkpoint output/grpo_demo/sft/v0-.../checkpoint-20 --rm_checkpoint RM
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from demo_common import changed_arguments, sft_arguments, timed

from alignkit.cli import setup_logging
from alignkit.config import RunArguments
from alignkit.data.builtin import is_correct
from alignkit.data.loading import load_dataset_spec
from alignkit.data.template import ChatEncoder
from alignkit.generation.answers import generate_answers
from alignkit.models.load import load_for_inference
from alignkit.models.scalar_model import load_scalar_model, score_conversations
from alignkit.train import run_training


def held_out_scores(policy_checkpoint: Path, reward_checkpoint: Path, limit: int) -> dict:
    """Greedy answers of the policy to held-out prompts: mean reward-model score and task accuracy."""
    # bf16 weights: greedy decoding twice as fast on CPU, the same for both models compared.
    model, tokenizer = load_for_inference(None, [], str(policy_checkpoint), "bf16")
    encoder = ChatEncoder(tokenizer, max_length=512)
    rows = load_dataset_spec("arith-prompts:test", "prompt", seed=42)[:limit]
    answers = []
    for start in range(0, len(rows), 50):
        answers += generate_answers(model, encoder, [r.prompt for r in rows[start : start + 50]], max_new_tokens=12)
    reward_model, reward_tokenizer = load_scalar_model(str(reward_checkpoint), adapters=[])
    reward_encoder = ChatEncoder(reward_tokenizer, max_length=512, truncation_strategy="left")
    conversations = [[*r.prompt, {"role": "assistant", "content": a}] for r, a in zip(rows, answers)]
    scores = score_conversations(reward_model, reward_encoder, conversations, batch_size=25)
    accuracy = sum(is_correct(a, r.extras["solution"]) for r, a in zip(rows, answers)) / len(rows)
    return {"rm_score": scores.mean().item(), "task_accuracy": accuracy, "prompts": len(rows),
            "samples": [{"prompt": r.prompt[-1]["content"], "answer": a, "score": s.item()}
                        for r, a, s in list(zip(rows, answers, scores))[:3]]}


def merge_adapter(checkpoint: Path, directory: Path) -> Path:
    """The SFT adapter merged into the base weights (ms-swift's `export --merge_lora`): PPO's LoRA reference,
    the adapter-disabled model, is then the SFT model, as InstructGPT's reference is."""
    model, tokenizer = load_for_inference(None, [], str(checkpoint), "fp32")
    model.merge_and_unload().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="output/ppo_demo")
    parser.add_argument("--sft_checkpoint", default=None, help="reuse an SFT adapter instead of training one")
    parser.add_argument("--rm_checkpoint", default=None, help="reuse an `rm` run's checkpoint instead of training one")
    parser.add_argument("--sft_steps", type=int, default=12)
    parser.add_argument("--rm_steps", type=int, default=20)
    parser.add_argument("--ppo_steps", type=int, default=60)
    parser.add_argument("--eval_limit", type=int, default=100)
    # 1e-4 over 100 steps hacks the reward model (KL to 5.5 nats, accuracy 0.50 -> 0.35); see docs/online.md.
    parser.add_argument("--learning_rate", type=float, default=5e-5)
    options = parser.parse_args()
    setup_logging()
    out = Path(options.output_dir)
    times: dict[str, float] = {}
    report: dict = {"times_s": times}

    sft = sft_arguments(options.sft_steps, out)
    rm = RunArguments(rlhf_type="rm", dataset=["arith-pref"], val_dataset=["arith-pref:test#20"],
                      max_steps=options.rm_steps, per_device_train_batch_size=4, learning_rate=5e-4,
                      max_length=128, logging_steps=5, output_dir=str(out / "rm"), report_to=["none"])
    ppo = RunArguments(
        rlhf_type="ppo", dataset=["arith-prompts"], val_dataset=["arith-prompts:test#8"],
        per_device_train_batch_size=4, gradient_accumulation_steps=2, num_ppo_epochs=2, max_completion_length=12,
        kl_coef=0.05, learning_rate=options.learning_rate, lr_scheduler_type="constant", max_steps=options.ppo_steps,
        logging_steps=1, save_steps=100, missing_eos_penalty=1.0, output_dir=str(out / "ppo"),
        report_to=["none"], max_length=256,
    )
    if options.sft_checkpoint:
        sft_checkpoint = Path(options.sft_checkpoint)
    else:
        sft_checkpoint = timed("sft", times, lambda: run_training(sft, task="sft"))
    sft_model = merge_adapter(sft_checkpoint, out / "sft_merged")
    rm.model = ppo.model = str(sft_model)
    if options.rm_checkpoint:
        rm_checkpoint = Path(options.rm_checkpoint)
    else:
        rm_checkpoint = timed("rm", times, lambda: run_training(rm, task="rlhf"))
    report["before_ppo"] = timed("eval before ppo", times, held_out_scores, sft_model, rm_checkpoint,
                                 options.eval_limit)
    ppo.reward_model = [str(rm_checkpoint)]
    report["commands"] = {"sft": changed_arguments(sft), "rm": changed_arguments(rm), "ppo": changed_arguments(ppo)}
    ppo_checkpoint = timed("ppo", times, lambda: run_training(ppo, task="rlhf"))
    report["after_ppo"] = timed("eval after ppo", times, held_out_scores, ppo_checkpoint, rm_checkpoint,
                                options.eval_limit)
    log = [json.loads(line) for line in (ppo_checkpoint.parent / "logging.jsonl").read_text().splitlines()]
    report["ppo_log"] = log
    kl = [r["objective/kl"] for r in log if "objective/kl" in r]

    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(f"\nheld-out ({options.eval_limit} prompts of arith-prompts:test, greedy), scored by the reward model")
    for key in ("before_ppo", "after_ppo"):
        print(f"  {key:10s} rm score {report[key]['rm_score']:+.3f}   task accuracy {report[key]['task_accuracy']:.2f}")
    print(f"KL(π ‖ π_ref) per completion during PPO: first {kl[0]:.3f}, max {max(kl):.3f}, last {kl[-1]:.3f}")
    print(f"wall times (s): {times}; report: {out / 'report.json'}")


if __name__ == "__main__":
    main()
