"""Ctrl-C (SIGINT) and SIGTERM during training: finish the optimizer step, save, exit cleanly.

Schedulers (SLURM, Kubernetes) send SIGTERM before killing a job; a person presses Ctrl-C. Either way
the work since the last checkpoint should not be lost. The first signal only sets ``requested``; the
loop checks it after each optimizer step, saves a checkpoint and raises ``TrainingInterrupted``, which
the CLI turns into exit status 128 + signal (130 for SIGINT, 143 for SIGTERM). A second signal stops at
once: checkpoints are renamed into place only when complete, so nothing half-written is left behind.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

logger = logging.getLogger("alignkit")

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequests:
    """``with StopRequests() as stop:`` ... ``if stop.requested:`` save and stop."""

    def __init__(self):
        self.requested: int | None = None  # the signal number, once one arrived
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequests:
        # Python only lets the main thread install handlers; elsewhere (a notebook worker) keep the defaults.
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.requested is not None:
            logger.warning("%s received again: stopping now", name)
            self._restore()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)
            return
        self.requested = signum
        logger.warning("%s received: finishing this optimizer step, then saving a checkpoint "
                       "(send it again to stop at once)", name)
