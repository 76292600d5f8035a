"""Path checks, whole-file reads and the size limits every reader of :mod:`jface.files` applies.

Two limits bound what reading a file may cost:

* :data:`MAX_FILE_BYTES`: the largest file read whole into memory;
* :data:`MAX_EXPANDED_BYTES`: the most a file may *expand to* (the arrays a compressed ``.npz``,
  a ``.mat``, a pickle or a torch archive declares), checked from the declared sizes before
  anything is allocated, so a small file that claims gigabytes fails at once with an error naming
  the file instead of exhausting memory.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from jface.errors import ModelFileError

__all__ = ["MAX_FILE_BYTES", "MAX_EXPANDED_BYTES", "check_path", "read_file_bytes",
           "declared_bytes", "ExpansionBudget"]

#: Upper bound on a file read whole into memory (the real FLAME pkl is ~50 MB).
MAX_FILE_BYTES = 4 * 2**30
#: Upper bound on what one file may expand to: the arrays it declares, summed. The largest real
#: files are far below it (VGG-19 weights 548 MB, BFM 2009 ~260 MB of arrays, FLAME ~60 MB).
MAX_EXPANDED_BYTES = 2**30


def check_path(path) -> Path:
    """``path`` as a :class:`Path` after the existence / directory / empty / size checks."""
    path = Path(os.fspath(path))
    if not path.exists():
        raise ModelFileError(path, "no such file")
    if path.is_dir():
        raise ModelFileError(path, "is a directory, expected a file")
    size = path.stat().st_size
    if size == 0:
        raise ModelFileError(path, "file is empty")
    if size > MAX_FILE_BYTES:
        raise ModelFileError(path, f"file is {size} bytes, larger than any model file expected")
    return path


def read_file_bytes(path) -> bytes:
    """The whole file, after the existence/directory/empty checks."""
    path = check_path(path)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelFileError(path, f"cannot read: {exc}") from None


def declared_bytes(shape, dtype) -> int:
    """``prod(shape) * itemsize``: what an array of that declared shape and dtype occupies."""
    return math.prod(int(s) for s in shape) * np.dtype(dtype).itemsize


class ExpansionBudget:
    """What one file may still expand to; :meth:`take` each declared array size before reading it.

    ``take`` raises :class:`ModelFileError` naming the file (and the member/field) once the sum of
    the declared sizes passes ``limit`` (default :data:`MAX_EXPANDED_BYTES`).
    """

    def __init__(self, path, limit: int | None = None):
        self.path = path
        self.limit = MAX_EXPANDED_BYTES if limit is None else int(limit)
        self.used = 0

    def take(self, nbytes: int, field: str | None = None, what: str = "declares") -> None:
        nbytes = int(nbytes)
        if nbytes < 0:
            raise ModelFileError(self.path, f"declares a negative size ({nbytes} bytes)", field)
        if self.used + nbytes > self.limit:
            raise ModelFileError(
                self.path,
                f"{what} {nbytes} bytes of data ({self.used + nbytes} in all so far), more than "
                f"the {self.limit}-byte limit on what one file may expand to; refusing to read it",
                field,
            )
        self.used += nbytes
