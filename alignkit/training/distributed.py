"""The processes of a data-parallel run (torchrun, ``accelerate launch``, or alignkit's own launch).

accelerate owns the process group; alignkit only asks which process this is and lets the main one do what
must happen once (create the run directory, log, write checkpoints), sharing its result with the others.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")


def leave_process_group() -> None:
    """Destroy the process group before the process exits: left to interpreter shutdown, the backend's threads
    can be torn down while still joinable and abort the process ("terminate called without an active
    exception", seen once on gloo after a finished run)."""
    if launched() and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def launched() -> bool:
    """Whether a launcher started this process as one of several (torchrun and accelerate set these)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def process_state(timeout: int | None = None):
    """accelerate's process state, which joins the process group (gloo on CPU, NCCL on GPUs) when launched;
    ``timeout`` (seconds, --ddp_timeout) applies to the first call, which joins it."""
    from datetime import timedelta

    from accelerate import PartialState

    extra = {"timeout": timedelta(seconds=timeout)} if timeout else {}
    return PartialState(cpu=not torch.cuda.is_available(), **extra)


def on_main(make: Callable[[], T]) -> T:
    """Run ``make`` on the main process only and return its result on every process."""
    if not launched():
        return make()
    from accelerate.utils import broadcast_object_list

    state = process_state()
    box = [make() if state.is_main_process else None]
    broadcast_object_list(box, from_process=0)
    return box[0]
