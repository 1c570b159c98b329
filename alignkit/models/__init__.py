"""Weights and forwards: loading, the built-in model, placement, heads, log-probs, packing, reference."""
