"""Run directories and checkpoints: written whole or not at all, rotated without losing the newest.

Layout::

    <output_dir>/v0-20261121-101500/          one run; never reused
        args.json  logging.jsonl  runs/ (TensorBoard)
        checkpoint-50/                        adapter or model (safetensors), tokenizer, args.json,
                                              trainer_state.json, optimizer.pt, scheduler.pt, rng_state.pt
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from alignkit.errors import AlignkitError

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"


def new_run_dir(output_dir: str | os.PathLike) -> Path:
    """Create ``<output_dir>/v<N>-<timestamp>`` with N one more than any existing version."""
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    versions = [int(m.group(1)) for p in root.iterdir() if (m := re.match(r"^v(\d+)-", p.name))]
    version = max(versions, default=-1) + 1
    while True:
        run_dir = root / f"v{version}-{time.strftime('%Y%m%d-%H%M%S')}"
        try:
            run_dir.mkdir()  # exist_ok=False: two runs never share a directory
            return run_dir
        except FileExistsError:
            version += 1


@dataclass
class TrainerState:
    """Where the loop is: enough to continue exactly where it stopped."""

    global_step: int = 0
    epoch: int = 0
    batches_done_in_epoch: int = 0  # micro-batches of the current epoch already consumed

    def to_json(self) -> dict:
        return dict(self.__dict__)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary ``*.tmp`` directories are not listed)."""
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def save_checkpoint(
    run_dir: Path,
    state: TrainerState,
    *,
    model,
    tokenizer,
    optimizer,
    scheduler,
    args: dict,
    save_total_limit: int | None,
) -> Path:
    final = run_dir / f"checkpoint-{state.global_step}"
    partial = run_dir / f"checkpoint-{state.global_step}.tmp"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    (partial / "args.json").write_text(json.dumps(args, indent=2, default=str))
    torch.save(optimizer.state_dict(), partial / "optimizer.pt")
    torch.save(scheduler.state_dict(), partial / "scheduler.pt")
    torch.save(rng_state(), partial / "rng_state.pt")
    # The state file is written last: its presence marks the checkpoint complete.
    (partial / STATE_FILE).write_text(json.dumps(state.to_json(), indent=2))
    if final.exists():
        shutil.rmtree(final)
    partial.rename(final)
    rotate(run_dir, save_total_limit)
    return final


def rotate(run_dir: Path, save_total_limit: int | None) -> None:
    if not save_total_limit or save_total_limit < 1:
        return
    checkpoints = list_checkpoints(run_dir)
    for old in checkpoints[: -save_total_limit]:  # the newest is always among the kept ones
        shutil.rmtree(old)


def rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_trainer_state(checkpoint: Path) -> TrainerState:
    path = Path(checkpoint)
    if not path.is_dir():
        raise AlignkitError(f"--resume_from_checkpoint {checkpoint}: no such directory")
    if not (path / STATE_FILE).is_file():
        raise AlignkitError(f"--resume_from_checkpoint {checkpoint}: {STATE_FILE} is missing, so the checkpoint is incomplete")
    return TrainerState(**json.loads((path / STATE_FILE).read_text()))


def load_model_weights(model, checkpoint: Path) -> None:
    """Load a checkpoint's trainable weights (LoRA adapter or full model) into the live model."""
    from safetensors.torch import load_file

    from alignkit.reward_model import VALUE_HEAD_FILE, RewardModel, load_value_head

    if isinstance(model, RewardModel):  # the scalar head sits beside the adapter or model files
        if not (checkpoint / VALUE_HEAD_FILE).is_file():
            raise AlignkitError(f"{checkpoint}: no {VALUE_HEAD_FILE} to resume the reward model's head from")
        model.value_head.load_state_dict(load_value_head(checkpoint).state_dict())
        model = model.lm
    adapter = checkpoint / "adapter_model.safetensors"
    if adapter.is_file():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(adapter))
        return
    shards = sorted(checkpoint.glob("model*.safetensors"))
    if not shards:
        raise AlignkitError(f"{checkpoint}: no adapter_model.safetensors or model*.safetensors to resume from")
    state = {}
    for shard in shards:
        state.update(load_file(shard))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied embeddings are saved once; anything else missing means the checkpoint is for another model.
    missing = [k for k in missing if "lm_head" not in k]
    if missing or unexpected:
        raise AlignkitError(f"{checkpoint}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
