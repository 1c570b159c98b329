"""Prompts to text: generation for inference and rollouts, the server's batch engine, vLLM."""
