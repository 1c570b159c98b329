"""TRL 1.16 GRPOTrainer on the GRPO benchmark workload (runs in bench/.venvs/trl). Writes a JSON summary.

The reward is the function of bench/peers/grpo_reward.py named by ``--reward``, the one alignkit is given too. Each
step's rollout (TRL's ``_generate_and_score_completions``: sampling, old log-probs when needed, rewards, advantages)
is timed apart from the whole optimizer step, to say what dominates.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # accounting.py


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("model", "train_file", "train_type", "output_dir", "result"):
        parser.add_argument(f"--{name}", required=True)
    for name in ("steps", "per_device_train_batch_size", "num_generations", "max_completion_length", "lora_rank"):
        parser.add_argument(f"--{name}", type=int, required=True)
    parser.add_argument("--learning_rate", type=float, required=True)
    parser.add_argument("--reward", required=True, help="a function of bench/peers/grpo_reward.py")
    args = parser.parse_args()

    import grpo_reward
    from datasets import load_dataset
    from peft import LoraConfig
    from step_timer import StepTimer
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    data = load_dataset("json", data_files={"train": args.train_file})["train"]
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype="float32")
    config = GRPOConfig(
        output_dir=args.output_dir, max_steps=args.steps, per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=1, num_generations=args.num_generations,
        max_completion_length=args.max_completion_length, temperature=1.0, top_p=1.0, top_k=0,
        repetition_penalty=1.0, beta=0.0, loss_type="dapo", scale_rewards="group", epsilon=0.2, num_iterations=1,
        mask_truncated_completions=False, disable_dropout=True, shuffle_dataset=False,
        optim="adamw_torch_fused", weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, max_grad_norm=1.0,
        learning_rate=args.learning_rate, lr_scheduler_type="cosine", warmup_steps=0, logging_steps=1,
        save_strategy="no", report_to="none", use_cpu=True, bf16=False, fp16=False, dataloader_num_workers=0,
        seed=42, log_completions=False,
        # TRL's GRPOConfig turns it on by default; alignkit has it off on a CPU. Off for both: the same work.
        gradient_checkpointing=False,
    )
    peft_config = (LoraConfig(r=args.lora_rank, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                              task_type="CAUSAL_LM") if args.train_type == "lora" else None)
    timer = StepTimer()
    reward = getattr(grpo_reward, args.reward)
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=config, train_dataset=data,
                          processing_class=tokenizer, peft_config=peft_config, callbacks=[timer])
    rollout_seconds: list[float] = []
    generate_and_score = trainer._generate_and_score_completions

    def timed_rollout(*a, **k):
        started = time.perf_counter()
        out = generate_and_score(*a, **k)
        rollout_seconds.append(time.perf_counter() - started)
        return out

    trainer._generate_and_score_completions = timed_rollout
    trainer.train()
    history = trainer.state.log_history
    Path(args.result).write_text(json.dumps({
        "step_seconds": timer.step_seconds,
        "rollout_seconds": rollout_seconds,
        "losses": [r["loss"] for r in history if "loss" in r],
        "rewards": [r["reward"] for r in history if "reward" in r],
        "frac_reward_zero_std": [r["frac_reward_zero_std"] for r in history if "frac_reward_zero_std" in r],
        "accounting": {
            "optimizer_steps": len([r for r in history if "loss" in r]),
            "completions_per_optimizer_step": trainer.args.per_device_train_batch_size
            * trainer.args.gradient_accumulation_steps * trainer.args.world_size,
            "completions_per_generation": trainer.args.generation_batch_size,
            "num_generations": trainer.num_generations,
            "max_completion_length": trainer.max_completion_length,
            "update_epochs": trainer.num_iterations,
        },
    }))


if __name__ == "__main__":
    main()
