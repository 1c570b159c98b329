"""Errors that end a run with a clear message and exit status 2 (no traceback unless --debug)."""

from __future__ import annotations


class AlignkitError(Exception):
    """A problem with the user's input: flags, files, paths. Printed without a traceback."""


class DataError(AlignkitError):
    """A dataset row that cannot be used. The message names the file, the row and the field."""

    def __init__(self, message: str, *, file: str | None = None, row: int | None = None, field: str | None = None):
        self.message, self.file, self.row, self.field = message, file, row, field
        where = ", ".join(
            part
            for part in (
                file,
                f"row {row}" if row is not None else None,
                f"field '{field}'" if field is not None else None,
            )
            if part
        )
        super().__init__(f"{where}: {_clip(message)}" if where else _clip(message))


def _clip(message: str, limit: int = 2000) -> str:
    """Messages quote the user's values; a megabyte-long value must not become a megabyte-long message."""
    if len(message) <= limit:
        return message
    return f"{message[: limit - 350]} ... [{len(message) - limit + 50} characters cut] ... {message[-300:]}"


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped training after a checkpoint was saved (resumable unless --save_only_model;
    none with --save_strategy no).

    Not an AlignkitError: nothing was wrong with the input, and the CLI exits with 128 + the signal number
    (130 for Ctrl-C, 143 for SIGTERM), as a shell does for a process stopped by that signal.
    """

    def __init__(self, signum: int, checkpoint, *, resumable: bool = True):
        import signal

        self.exit_code = 128 + signum
        self.checkpoint = checkpoint
        stopped = f"stopped by {signal.Signals(signum).name}"
        if checkpoint is None:
            message = f"{stopped}; no checkpoint saved (--save_strategy no)"
        elif resumable:
            message = f"{stopped}; saved {checkpoint}. Continue with --resume_from_checkpoint {checkpoint}"
        else:
            message = (f"{stopped}; saved the weights to {checkpoint} (--save_only_model: not resumable; "
                       "train on from them in a new run)")
        super().__init__(message)
