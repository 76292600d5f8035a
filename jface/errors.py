"""The errors jface raises for bad files: every reader and loader of :mod:`jface.files` and
:mod:`jface.models` raises these, and every command line turns them into one line on stderr."""

from __future__ import annotations

__all__ = ["ModelFileError", "UnsafePickleError", "WeightConversionError"]


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


class WeightConversionError(ModelFileError):
    """A state dict does not fit the Flax module: lists unexpected keys, missing leaves, bad shapes."""
