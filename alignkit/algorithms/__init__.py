"""Algorithms for the offline loop: each supplies ``loss(model, batch) -> (loss, metrics)``."""
