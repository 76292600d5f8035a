"""Read pickles of numpy arrays (e.g. cydonia999's ``resnet50_ft_weight.pkl``) without executing code.

The unpickler resolves only the globals numpy's own array pickling uses, each to a checked stand-in:
``numpy.core.multiarray._reconstruct`` / ``numpy._core.multiarray._reconstruct`` (only for
``numpy.ndarray``), ``numpy.ndarray``, ``numpy.dtype`` (no object dtype), ``numpy...multiarray.scalar``
(no object dtype), ``collections.OrderedDict`` and ``_codecs.encode`` (latin-1). Python-2 pickles are
read with ``encoding='latin1'`` as numpy requires. Anything else raises
:class:`~jface.models.errors.UnsafePickleError` before it is called.
"""

from __future__ import annotations

import codecs
import collections
import pickle
import struct
from pathlib import Path

import numpy as np

from jface.models.errors import ModelFileError, UnsafePickleError

# What a damaged (not malicious: globals are allow-listed) pickle stream raises while loading.
# MemoryError / OverflowError: an opcode declaring an absurd length (BINBYTES8, BYTEARRAY8).
MALFORMED_PICKLE_ERRORS = (
    pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, IndexError, KeyError,
    struct.error, MemoryError, OverflowError,
)

__all__ = ["load_numpy_pickle"]

_MULTIARRAY = ("numpy.core.multiarray", "numpy._core.multiarray")


def _safe_dtype(*args, **kwargs):
    dt = np.dtype(*args, **kwargs)
    if dt.hasobject:
        raise TypeError("object dtypes are not allowed")
    return dt


def _reconstruct(cls, shape, dtype_code):
    if cls is not np.ndarray:
        raise TypeError(f"_reconstruct only for numpy.ndarray, got {cls!r}")
    return np.ndarray.__new__(np.ndarray, shape, _safe_dtype(dtype_code))


def _scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, (bytes, bytearray)):
        raise TypeError("numpy scalar with an unsupported dtype or payload")
    return np.frombuffer(bytes(data), dtype=dtype, count=1)[0]


def _codecs_encode(text, encoding="utf-8"):
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise TypeError("_codecs.encode only with latin1 text is allowed")
    return codecs.encode(text, "latin1")


def _allowed(module, name):
    if module in _MULTIARRAY and name == "_reconstruct":
        return _reconstruct
    if module in _MULTIARRAY and name == "scalar":
        return _scalar
    if module == "numpy" and name == "ndarray":
        return np.ndarray
    if module == "numpy" and name == "dtype":
        return _safe_dtype
    if module == "collections" and name == "OrderedDict":
        return collections.OrderedDict
    if module == "_codecs" and name == "encode":
        return _codecs_encode
    return None


class _NumpyUnpickler(pickle.Unpickler):
    def __init__(self, file, path):
        super().__init__(file, encoding="latin1")
        self._path = path

    def find_class(self, module, name):
        obj = _allowed(module, name)
        if obj is None:
            raise UnsafePickleError(
                self._path,
                f"refusing to load global {module}.{name}: only numpy arrays are allowed; nothing was executed",
            )
        return obj

    def persistent_load(self, pid):
        raise UnsafePickleError(self._path, f"unexpected persistent id {pid!r}")


def load_numpy_pickle(path):
    """Unpickle a file that holds only numpy arrays in dicts/lists (no code executed)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(path, "file not found")
    with open(path, "rb") as f:
        try:
            return _NumpyUnpickler(f, path).load()
        except (UnsafePickleError, ModelFileError):
            raise
        except MALFORMED_PICKLE_ERRORS as e:
            raise ModelFileError(path, f"malformed numpy pickle ({type(e).__name__}: {e})") from None
