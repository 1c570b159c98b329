"""Run directories and checkpoints: written whole or not at all, rotated without losing the newest.

Layout::

    <output_dir>/v0-20261121-101500/          one run; never reused by another run
        args.json  logging.jsonl  runs/ (TensorBoard)
        checkpoint-50/                        adapter or model (safetensors), tokenizer, args.json,
                                              trainer_state.json, optimizer.pt, scheduler.pt, rng_state.pt

With ``--save_only_model`` a checkpoint holds the weights, tokenizer, args.json and trainer_state.json only
(``"save_only_model": true`` there); it cannot be resumed, only trained on from as new weights.

A checkpoint is written into ``checkpoint-N.tmp`` and renamed to ``checkpoint-N`` only when every file
is on disk, so a run killed mid-write leaves the previous checkpoint as the newest complete one.
``trainer_state.json`` lists the size of every file written; ``verify_checkpoint`` checks them (and
the safetensors headers), which catches truncated or missing files. It does not checksum tensor data.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shutil
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from alignkit.errors import AlignkitError
from alignkit.models import bottleneck_adapter, lora_ga
from alignkit.models.weights import load_model_weights
from alignkit.training.faults import fault_point

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
RUN_PATTERN = re.compile(r"^v(\d+)-")
STATE_FILE = "trainer_state.json"
RESUME_FILES = ("optimizer.pt", "scheduler.pt", "rng_state.pt")


def new_run_dir(output_dir: str | os.PathLike) -> Path:
    """Create ``<output_dir>/v<N>-<timestamp>`` with N one more than any existing version."""
    root = Path(output_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
        versions = [int(m.group(1)) for p in root.iterdir() if (m := RUN_PATTERN.match(p.name))]
    except OSError as exc:
        raise AlignkitError(
            f"--output_dir {output_dir}: cannot create a run directory there ({exc.strerror or exc})"
        ) from exc
    version = max(versions, default=-1) + 1
    while True:
        run_dir = root / f"v{version}-{time.strftime('%Y%m%d-%H%M%S')}"
        try:
            run_dir.mkdir()  # exist_ok=False: two runs never share a directory
            return run_dir
        except FileExistsError:
            version += 1


def run_dirs(output_dir: Path) -> list[Path]:
    """The run directories under ``output_dir``, newest (highest version) first."""
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := RUN_PATTERN.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found, reverse=True)]


@dataclass
class TrainerState:
    """Where the loop is: enough to continue exactly where it stopped."""

    global_step: int = 0
    epoch: int = 0
    batches_done_in_epoch: int = 0  # micro-batches of the current epoch already consumed
    nonfinite_steps: int = 0  # updates skipped because the loss or the gradient was NaN/inf
    nonfinite_in_a_row: int = 0  # ... since the last applied update
    running_metrics: dict = field(default_factory=dict)  # metric sums since the last log (RunningMean)
    # --metric_for_best_model (transformers' names): the best value, its step, its checkpoint if saved.
    best_metric: float | None = None
    best_global_step: int | None = None
    best_model_checkpoint: str | None = None
    early_stop_best: float | None = None  # --early_stop_interval: the best metric at the last improving save
    early_stop_count: int = 0  # ... and the saves since without improvement

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> TrainerState:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def checkpoint_step(path: Path) -> int:
    return int(CHECKPOINT_PATTERN.match(path.name).group(1))


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints of a run, oldest first (temporary ``*.tmp`` directories are not listed)."""
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
    keep: str | None = None,
    state_dict: dict | None = None,
) -> Path:
    """Write ``checkpoint-N`` (see the module docstring). ``optimizer`` None (``--save_only_model``): weights
    only. ``keep``: the best checkpoint, which rotation never deletes. ``state_dict``: the whole weights gathered
    from a sharding engine (ZeRO-3, FSDP), written instead of ``model``'s own (sharded) tensors."""
    final = run_dir / f"checkpoint-{state.global_step}"
    if final.exists():
        raise AlignkitError(f"{final} already exists; a run never overwrites a checkpoint")
    if state_dict is None:
        check_finite_weights(model, final)
    else:
        check_finite_tensors(state_dict, final)
    partial = run_dir / f"checkpoint-{state.global_step}.tmp"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    if bottleneck_adapter.has_adapters(model):  # ms-swift's Adapter: its own checkpoint layout (default/)
        bottleneck_adapter.save(model, partial)
    elif state_dict is None:
        model.save_pretrained(partial, safe_serialization=True)
        if lora_ga.has_start(model):  # the adapter as a plain LoRA on the unchanged base model
            lora_ga.save_converted(model, partial)
    else:
        model.save_pretrained(partial, state_dict=state_dict, safe_serialization=True)
    fault_point("checkpoint", state.global_step)
    tokenizer.save_pretrained(partial)
    (partial / "args.json").write_text(json.dumps(args, indent=2, default=str))
    if optimizer is not None:
        torch.save(optimizer.state_dict(), partial / "optimizer.pt")
        torch.save(scheduler.state_dict(), partial / "scheduler.pt")
        torch.save(rng_state(), partial / "rng_state.pt")
    files = {p.relative_to(partial).as_posix(): p.stat().st_size for p in sorted(partial.rglob("*")) if p.is_file()}
    # The state file is written last and lists every other file: verify_checkpoint compares sizes.
    weights_only = {"save_only_model": True} if optimizer is None else {}
    (partial / STATE_FILE).write_text(json.dumps({**state.to_json(), **weights_only, "files": files}, indent=2))
    # Flush to disk before the rename makes the checkpoint visible, so a power loss cannot leave a
    # complete-looking checkpoint with empty files.
    for path in partial.rglob("*"):
        if path.is_file():
            _fsync(path)
    _fsync(partial)
    partial.rename(final)
    _fsync(run_dir)
    rotate(run_dir, save_total_limit, keep=keep)
    return final


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_finite_weights(model, checkpoint: Path) -> None:
    """Refuse to save NaN/inf weights: a checkpoint that loads but only produces NaN is worse than none."""
    for name, param in model.named_parameters():
        if param.requires_grad and not torch.isfinite(param).all():
            raise AlignkitError(f"not saving {checkpoint.name}: parameter {name} holds NaN or inf values")


def check_finite_tensors(state_dict: dict, checkpoint: Path) -> None:
    for name, tensor in state_dict.items():
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise AlignkitError(f"not saving {checkpoint.name}: weight {name} holds NaN or inf values")


def rotate(run_dir: Path, save_total_limit: int | None, keep: str | None = None) -> None:
    """Delete the oldest checkpoints beyond ``save_total_limit``, never the newest nor ``keep`` (the best
    checkpoint): transformers' ``rotate_checkpoints``, where both protected ones may exceed a limit of 1."""
    if not save_total_limit or save_total_limit < 1:
        return
    checkpoints = list_checkpoints(run_dir)
    protected = {checkpoints[-1].name} if checkpoints else set()
    if keep is not None and Path(keep).parent.resolve() == run_dir.resolve():
        protected.add(Path(keep).name)
    excess = len(checkpoints) - max(save_total_limit, len(protected))
    doomed_ones = [c for c in checkpoints if c.name not in protected][: max(excess, 0)]
    for old in doomed_ones:
        # Renamed first, so a kill during the removal never leaves a half-deleted checkpoint-N.
        doomed = old.with_name(old.name + ".deleting")
        shutil.rmtree(doomed, ignore_errors=True)  # left by a run killed while removing it
        old.rename(doomed)
        shutil.rmtree(doomed)


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


# ------------------------------------------------------------------------------------------ verify and load


def verify_checkpoint(checkpoint: Path) -> str | None:
    """What is wrong with a checkpoint (incomplete, truncated or missing files), or None if it is complete."""
    if not checkpoint.is_dir():
        return "no such directory"
    if checkpoint.name.endswith(".tmp"):
        return "incomplete: it was being written when the run stopped"
    state_path = checkpoint / STATE_FILE
    if not state_path.is_file():
        return f"{STATE_FILE} is missing, so the checkpoint is incomplete"
    try:
        state = json.loads(state_path.read_text())
        TrainerState.from_json(state)
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        return f"{STATE_FILE} is unreadable ({exc})"
    files = state.get("files") or {name: None for name in RESUME_FILES}  # checkpoints written before sizes were kept
    for name, size in files.items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        if size is not None and path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, but {size} were written"
    weights = [p for p in checkpoint.glob("*.safetensors") if p.name.startswith(("adapter_model", "model"))]
    weights += list(checkpoint.glob(f"{bottleneck_adapter.SUBDIR}/{bottleneck_adapter.WEIGHTS_FILE}"))
    if not weights:
        return "no adapter_model.safetensors or model*.safetensors"
    for path in weights:
        problem = _safetensors_problem(path)
        if problem:
            return f"{path.name} is corrupt ({problem})"
    return None


def _safetensors_problem(path: Path) -> str | None:
    """A safetensors file is an 8-byte header length, a JSON header, then the tensors it lists."""
    size = path.stat().st_size
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            return "shorter than its header"
        (header_len,) = struct.unpack("<Q", raw)
        if 8 + header_len > size:
            return "truncated header"
        try:
            header = json.loads(f.read(header_len))
        except (ValueError, UnicodeDecodeError):
            return "unreadable header"
    if not isinstance(header, dict):
        return "unreadable header"
    ends = [
        t["data_offsets"][1]
        for k, t in header.items()
        if k != "__metadata__" and isinstance(t, dict) and "data_offsets" in t
    ]
    if 8 + header_len + max(ends, default=0) != size:
        return f"{size} bytes, but its header describes {8 + header_len + max(ends, default=0)}"
    return None


def is_weights_only(checkpoint: Path) -> bool:
    """Whether a (verified) checkpoint was written with --save_only_model."""
    return bool(json.loads((Path(checkpoint) / STATE_FILE).read_text()).get("save_only_model"))


def read_trainer_state(checkpoint: Path) -> TrainerState:
    path = Path(checkpoint)
    problem = verify_checkpoint(path)
    if problem:
        raise AlignkitError(f"--resume_from_checkpoint {checkpoint}: {problem}")
    return TrainerState.from_json(json.loads((path / STATE_FILE).read_text()))


def load_checkpoint(checkpoint: Path, *, model, optimizer, scheduler) -> TrainerState:
    """Restore weights, optimizer, scheduler and RNG states from a checkpoint; return where the loop was."""
    state = read_trainer_state(checkpoint)
    steps = (
        ("the weights", lambda: load_model_weights(model, checkpoint)),
        (
            "optimizer.pt",
            lambda: optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=False)),
        ),
        (
            "scheduler.pt",
            lambda: scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", weights_only=False)),
        ),
        ("rng_state.pt", lambda: restore_rng_state(torch.load(checkpoint / "rng_state.pt", weights_only=False))),
    )
    for what, load in steps:
        try:
            load()
        except AlignkitError:
            raise
        except Exception as exc:  # corrupt files raise whatever their parser raises
            raise AlignkitError(
                f"--resume_from_checkpoint {checkpoint}: {what} cannot be loaded ({type(exc).__name__}: {exc})"
            ) from exc
    return state


