"""Online RL (PPO, GRPO): the policy learns from its own sampled completions. See docs/online.md."""
