"""Test-only fault injection: make this process receive a signal at an exact point of training.

The reliability tests kill a run at a chosen place (between two micro-batches, inside a checkpoint
write) and check that resuming gives the uninterrupted run's weights bit for bit. Timing a kill from
outside cannot hit those places reliably, so the run kills itself there when asked to::

    ALIGNKIT_TEST_FAULT=KILL@micro_batch:4   SIGKILL after the first micro-batch of optimizer step 4
    ALIGNKIT_TEST_FAULT=TERM@micro_batch:3   SIGTERM there (the run should save and exit cleanly)
    ALIGNKIT_TEST_FAULT=KILL@checkpoint:4    SIGKILL halfway through writing checkpoint-4

Unset (always, outside the tests) this does nothing. The variable is read here and nowhere else.
"""

from __future__ import annotations

import os
import signal

ENV = "ALIGNKIT_TEST_FAULT"


def fault_point(point: str, step: int) -> None:
    """Send the signal named by ``ALIGNKIT_TEST_FAULT`` to this process if it names ``point:step``."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, where = spec.partition("@")
    if where == f"{point}:{step}":
        os.kill(os.getpid(), getattr(signal, f"SIG{name}"))
