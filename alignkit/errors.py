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
        super().__init__(f"{where}: {message}" if where else message)
