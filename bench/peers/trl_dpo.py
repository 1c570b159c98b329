"""TRL 1.16 DPOTrainer on the benchmark workload (runs in bench/.venvs/trl). Writes a JSON summary."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # accounting.py


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("model", "train_file", "eval_file", "train_type", "dtype", "output_dir", "result"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--learning_rate", type=float, required=True)
    args = parser.parse_args()

    from datasets import load_dataset
    from peft import LoraConfig
    from step_timer import StepTimer, summary
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    data = load_dataset("json", data_files={"train": args.train_file, "eval": args.eval_file})
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    config = DPOConfig(
        output_dir=args.output_dir, max_steps=args.steps, per_device_train_batch_size=4, per_device_eval_batch_size=4,
        gradient_accumulation_steps=1, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, max_grad_norm=1.0,
        learning_rate=args.learning_rate, lr_scheduler_type="cosine", warmup_steps=0, beta=0.1, loss_type=["sigmoid"],
        max_length=128, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
        bf16=args.dtype == "bf16", dataloader_num_workers=0, seed=42,
    )
    peft_config = (LoraConfig(r=8, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
                   if args.train_type == "lora" else None)
    timer = StepTimer()
    trainer = DPOTrainer(model=model, args=config, train_dataset=data["train"], eval_dataset=data["eval"],
                         processing_class=tokenizer, peft_config=peft_config, callbacks=[timer])
    trainer.train()
    trainer.evaluate()
    Path(args.result).write_text(json.dumps(summary(timer, trainer)))


if __name__ == "__main__":
    main()
