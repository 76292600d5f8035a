"""Errors raised for bad model files."""

from __future__ import annotations


class ModelFileError(ValueError):
    """A model/data file is missing, unreadable, or not in the expected layout.

    The message names the file, the field and what was expected.
    """

    def __init__(self, path, message: str, field: str | None = None):
        self.path = str(path)
        self.field = field
        where = f"{self.path}" + (f" [{field}]" if field else "")
        super().__init__(f"{where}: {message}")


class UnsafePickleError(ModelFileError):
    """A pickle asked for a global outside the allow-list; nothing was executed."""
