"""The processes of a data-parallel run (torchrun, ``accelerate launch``, or alignkit's own launch).

accelerate owns the process group; alignkit only asks which process this is and lets the main one do what
must happen once (create the run directory, log, write checkpoints), sharing its result with the others.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

import torch

T = TypeVar("T")


def leave_process_group() -> None:
    """Destroy the process group before the process exits: left to interpreter shutdown, the backend's threads
    can be torn down while still joinable and abort the process ("terminate called without an active
    exception", seen on gloo after finished runs)."""
    if launched() and torch.distributed.is_available() and torch.distributed.is_initialized():
        gc.collect()  # a wrapped model left in a reference cycle still holds the group
        torch.distributed.destroy_process_group()


def exit_process(code: int) -> NoReturn:
    """Exit with ``code``. One of several launched processes skips the interpreter's teardown (os._exit, after
    flushing logs and streams; trackers and checkpoints are closed by then): a collective backend's C++ threads
    can outlive destroy_process_group and abort the process there, turning a finished run into a failed one."""
    if not launched():
        sys.exit(code)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stream has nothing left to flush
            pass
    os._exit(code)


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
