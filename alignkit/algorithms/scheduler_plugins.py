"""The checks a multi-turn run makes of its scheduler before data or models load, shared by the trainer and
``alignkit rollout`` (which announces the scheduler to trainers): plugin files, the scheduler, the environment."""

from __future__ import annotations

import sys
from pathlib import Path

from alignkit.algorithms.multi_turn import env_class, scheduler_class
from alignkit.algorithms.rewards import load_plugin_file
from alignkit.algorithms.swift_shim import swift_multi_turns


def check_scheduler(name: str, plugin_files: list[str], gym_env: str | None = None) -> None:
    """Load the plugin files (those not loaded yet) and check that the scheduler they, or ms-swift's built-ins,
    register can run here, and that --gym_env names a registered environment."""
    for path in plugin_files:
        if f"alignkit_plugin_{Path(path).stem}" not in sys.modules:
            load_plugin_file(path)
    scheduler_class(name, swift_multi_turns())
    if gym_env:
        env_class(gym_env)
