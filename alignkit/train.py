"""Kept so that ``from alignkit.train import run_training`` goes on working; the code is in
alignkit/training/run.py."""

from alignkit.training.run import run_training

__all__ = ["run_training"]
