"""Algorithms: one file per method. Offline ones supply ``loss(model, batch)``; online ones (PPO, GRPO) also
``experience(policy, prompts)``."""
