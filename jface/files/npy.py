"""``.npy`` headers and arrays, read with declared-size checks and never with pickles.

The header is parsed with ``ast.literal_eval`` (a literal dict, nothing evaluated) and its declared
``shape`` x ``itemsize`` is checked against the bytes that follow and against the caller's
:class:`~jface.files.paths.ExpansionBudget` *before* the array is allocated: numpy's own reader
allocates the declared size first, so a 100-byte file declaring a terabyte would otherwise fail
deep inside numpy, or succeed in reserving gigabytes.
"""

from __future__ import annotations

import ast
import math

import numpy as np

from jface.errors import ModelFileError
from jface.files.paths import ExpansionBudget, declared_bytes, read_file_bytes

__all__ = ["MAX_HEADER_BYTES", "read_npy_header", "header_dtype_shape", "read_npy_array",
           "load_npy"]

#: numpy itself refuses headers above 10 000 bytes unless told otherwise.
MAX_HEADER_BYTES = 10_000
_MAGIC = b"\x93NUMPY"
_CHUNK = 1 << 22


def _parse_header(raw: bytes, path, field) -> dict:
    try:
        header = ast.literal_eval(raw.decode("latin1"))
    except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        raise ModelFileError(path, f".npy header is not a literal dict ({exc})", field) from None
    if not isinstance(header, dict) or not {"descr", "shape", "fortran_order"} <= set(header):
        raise ModelFileError(path, ".npy header lacks descr/shape/fortran_order", field)
    return header


def _lengths(prefix: bytes, path, field) -> tuple[int, int]:
    """(header length, header start) from the first 8 bytes (magic + version)."""
    if not prefix.startswith(_MAGIC) or len(prefix) < 8:
        raise ModelFileError(path, "not an .npy file (bad magic)", field)
    major = prefix[6]
    if major == 1:
        return 2, 10
    if major in (2, 3):
        return 4, 12
    raise ModelFileError(path, f"unknown .npy format version {major}", field)


def read_npy_header(data: bytes, path, field=None) -> tuple[dict, int]:
    """(header dict, offset of the array data) of the ``.npy`` bytes ``data``."""
    if len(data) < 10:
        raise ModelFileError(path, "not an .npy file (bad magic)", field)
    width, start = _lengths(data[:8], path, field)
    hlen = int.from_bytes(data[8:8 + width], "little")
    raw = data[start:start + hlen]
    if len(raw) != hlen:
        raise ModelFileError(path, ".npy header is truncated", field)
    return _parse_header(raw, path, field), start + hlen


def header_dtype_shape(header: dict, path, field=None) -> tuple[np.dtype, tuple, bool]:
    """The header's (dtype, shape, fortran_order), checked: no object dtypes, a tuple of
    non-negative ints for the shape."""
    try:
        dtype = np.lib.format.descr_to_dtype(header["descr"])
    except Exception as exc:  # noqa: BLE001 - any unparsable descr
        raise ModelFileError(path, f".npy header has an invalid dtype {header['descr']!r} ({exc})",
                             field) from None
    if dtype.hasobject:
        raise ModelFileError(path, "holds Python objects (a pickle); only plain arrays are read",
                             field)
    shape = header["shape"]
    if not isinstance(shape, tuple) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
    ):
        raise ModelFileError(path, f".npy header has an invalid shape {shape!r}", field)
    if not isinstance(header["fortran_order"], bool):
        raise ModelFileError(path, ".npy header fortran_order is not a bool", field)
    return dtype, shape, header["fortran_order"]


def read_npy_array(fp, path, field=None, *, size: int | None = None,
                   budget: ExpansionBudget | None = None) -> np.ndarray:
    """One ``.npy`` array from the binary stream ``fp`` (e.g. a zip member).

    ``size``: the stream's total length when known (a zip member's declared uncompressed size);
    the header's declared array bytes must fill it exactly. ``budget`` is charged the declared
    bytes before the array is allocated.
    """
    prefix = fp.read(8)
    width, start = _lengths(prefix, path, field)
    hlen = int.from_bytes(fp.read(width), "little")
    if hlen > MAX_HEADER_BYTES:
        raise ModelFileError(path, f".npy header of {hlen} bytes (limit {MAX_HEADER_BYTES})",
                             field)
    raw = fp.read(hlen)
    if len(raw) != hlen:
        raise ModelFileError(path, ".npy header is truncated", field)
    dtype, shape, fortran = header_dtype_shape(_parse_header(raw, path, field), path, field)
    nbytes = declared_bytes(shape, dtype)
    if size is not None and start + hlen + nbytes != size:
        raise ModelFileError(
            path,
            f"the .npy header declares {dtype}{list(shape)} ({nbytes} bytes) but the entry holds "
            f"{size - start - hlen} bytes of data",
            field,
        )
    if budget is not None:
        budget.take(nbytes, field, what=f"declares an array {dtype}{list(shape)} of")
    out = np.empty(shape, dtype=dtype, order="F" if fortran else "C")
    flat = out.reshape(-1, order="A").view(np.uint8) if out.size and dtype.itemsize else None
    filled = 0
    while flat is not None and filled < nbytes:
        chunk = fp.read(min(_CHUNK, nbytes - filled))
        if not chunk:
            raise ModelFileError(path, f".npy data is truncated ({filled} of {nbytes} bytes)",
                                 field)
        flat[filled:filled + len(chunk)] = np.frombuffer(chunk, np.uint8)
        filled += len(chunk)
    return out


def load_npy(path, *, budget: ExpansionBudget | None = None) -> np.ndarray:
    """A plain (no pickles) ``.npy`` file, its declared size checked before it is allocated."""
    data = read_file_bytes(path)
    header, offset = read_npy_header(data, path)
    dtype, shape, fortran = header_dtype_shape(header, path)
    nbytes = declared_bytes(shape, dtype)
    if offset + nbytes != len(data):
        raise ModelFileError(path, f"the .npy header declares {dtype}{list(shape)} ({nbytes} "
                             f"bytes) but the file holds {len(data) - offset} bytes of data")
    if budget is not None:
        budget.take(nbytes, what=f"declares an array {dtype}{list(shape)} of")
    out = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=offset)
    return out.reshape(shape, order="F" if fortran else "C").copy(order="K")
