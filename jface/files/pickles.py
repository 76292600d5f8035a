"""The one restricted unpickler: pickled numpy arrays, chumpy / scipy.sparse stand-ins and torch
tensors, rebuilt as plain numpy arrays without importing or running anything the file names.

The pickles the originals ship:

* FLAME's ``generic_model.pkl`` (FLAME's ``flame_model/flame.py`` loads it with chumpy): a
  Python-2, protocol-2 pickle of a dict of numpy arrays, where ``shapedirs`` is a chumpy ``Ch`` and
  ``J_regressor`` a ``scipy.sparse`` CSC matrix;
* DECA's ``landmark_embedding.npy`` (``decalib/models/FLAME.py``, ``np.load(..., allow_pickle=True)``):
  an ``.npy`` holding a pickled dict whose ``dynamic_*`` entries are pickled torch tensors;
* cydonia999's ``resnet50_ft_weight.pkl`` (VGGFace2 ResNet-50): a pickle of numpy arrays;
* the ``data.pkl`` of every ``torch.save`` file (:mod:`jface.files.torch_save` reads the containers).

``pickle.load`` on such a file runs whatever callables the file names. :class:`RestrictedUnpickler`
never does: ``find_class`` answers only for an allow-list, and every allowed name maps to a small
rebuilder *written here* (never to the named library's own code), so a file cannot make us import
chumpy / torch / scipy or call ``os.system`` / ``eval`` / ``exec``. Anything else raises
:class:`~jface.errors.UnsafePickleError` naming ``module.name`` before it is called.

Before the unpickler sees a byte, :func:`prescan` walks the opcodes without executing them and
refuses memo indices beyond what the pickle has stored so far (CPython grows its memo to twice the
largest index: a 9-byte pickle asking for index 2**27 would allocate 2 GB) and any length field
that runs past the data. Arrays are rebuilt from their raw bytes with explicit checks (the payload
must match ``prod(shape) * itemsize``); what a pickle *expands* to beyond its own bytes (a sparse
matrix densified, a torch tensor view wider than its storage) is charged to an
:class:`~jface.files.paths.ExpansionBudget` first.
"""

from __future__ import annotations

import dataclasses
import io
import math
import pickle
import pickletools
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy as np

from jface.errors import ModelFileError, UnsafePickleError
from jface.files.paths import ExpansionBudget, declared_bytes, read_file_bytes

__all__ = [
    "MAX_ELEMENTS",
    "MEMO_SLACK",
    "RestrictedUnpickler",
    "prescan",
    "load_one",
    "file_errors",
    "safe_loads",
    "load_numpy_pickle",
    "materialize",
    "ChumpyArray",
    "SparseMatrix",
    "TorchStorageType",
    "TorchStorage",
    "TORCH_STORAGE_DTYPES",
]

#: Largest array (in elements) a pickle may declare; FLAME's biggest is 5023*3*400 = 6.0e6.
MAX_ELEMENTS = 2**31
#: How far a memo index may run ahead of the entries stored so far (writers number them 0, 1, ...).
MEMO_SLACK = 1 << 16

#: torch storage classes and the numpy dtypes their bytes hold (native byte order).
TORCH_STORAGE_DTYPES = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}


class _AbsurdSize(ValueError):
    pass


# ---------------------------------------------------------------------------------------------
# Stand-ins for the classes the pickles name. They only store state; nothing of theirs runs code
# from the file.


class _Sealed(type):
    """Metaclass that refuses attribute assignment on the class itself.

    The classes below are handed to the unpickler; a ``BUILD`` opcode aimed at the class object
    must not be able to rewrite its methods for later loads.
    """

    def __setattr__(cls, name, value):
        raise TypeError(f"{cls.__name__} is sealed")


class _NdarrayToken(metaclass=_Sealed):
    """Stands for ``numpy.ndarray`` as the subtype argument of ``_reconstruct``."""


class _PendingArray:
    """Result of ``numpy.core.multiarray._reconstruct``; keeps the ``__setstate__`` state.

    The array is built (and its declared size checked) by :func:`materialize`, which knows the
    dict key it sits under, so errors can name the field.
    """

    def __init__(self):
        self.state = None

    def __setstate__(self, state):
        self.state = state


class ChumpyArray(metaclass=_Sealed):
    """Stand-in for chumpy's ``Ch``: keeps the pickled ``__dict__``.

    chumpy 0.70's ``Ch.__getstate__`` pickles the instance ``__dict__`` minus ``_parents`` and
    ``_cache``; a plain ``Ch`` keeps its value in the ``x`` entry (``dterms = ['x']``).
    """

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise TypeError(f"chumpy Ch state must be a dict, got {type(state).__name__}")
        self.state = state

    @property
    def value(self):
        return getattr(self, "state", {}).get("x")


class SparseMatrix(metaclass=_Sealed):
    """Stand-in for ``scipy.sparse.csc_matrix``/``csr_matrix``: keeps the pickled state dict.

    Both old (``scipy.sparse.csc``) and new (``scipy.sparse._csc``) module paths pickle the
    instance ``__dict__``: ``_shape`` (older scipy: ``shape``), ``indptr``, ``indices``, ``data``.
    :meth:`declared_shape` reads the shape without densifying; :meth:`toarray` densifies.
    """

    format = "csc"
    state = None
    _csc = None  # set below (type.__setattr__, the class is sealed)
    _csr = None

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise TypeError(f"sparse matrix state must be a dict, got {type(state).__name__}")
        self.state = state

    def _get(self, path, field, *names):
        state = self.state or {}
        for name in names:
            if name in state:
                return state[name]
        raise ModelFileError(path, f"{self.format} matrix state lacks {names[0]!r}", field)

    def declared_shape(self, path="<pickle>", field=None) -> tuple[int, int]:
        """The ``(rows, cols)`` the matrix says it has (nothing is allocated)."""
        shape = self._get(path, field, "_shape", "shape")
        try:
            rows, cols = (int(s) for s in shape)
        except (TypeError, ValueError):
            raise ModelFileError(path, f"sparse matrix shape {shape!r} is not two integers",
                                 field) from None
        if rows < 0 or cols < 0 or rows * cols > MAX_ELEMENTS:
            raise ModelFileError(
                path, f"sparse matrix declares an absurd shape {(rows, cols)}", field
            )
        return rows, cols

    def toarray(self, path="<pickle>", field=None,
                budget: ExpansionBudget | None = None) -> np.ndarray:
        """Densify with bounds checks (raises ModelFileError naming ``path``/``field``); the
        dense size is charged to ``budget`` (default: a fresh one for ``path``) first."""
        rows, cols = self.declared_shape(path, field)
        indptr = materialize(self._get(path, field, "indptr"), path)
        indices = materialize(self._get(path, field, "indices"), path)
        data = materialize(self._get(path, field, "data"), path)
        for name, arr in (("indptr", indptr), ("indices", indices), ("data", data)):
            if not isinstance(arr, np.ndarray) or arr.ndim != 1:
                raise ModelFileError(path, f"sparse matrix {name} is not a 1-D array", field)
        if indptr.dtype.kind not in "iu" or indices.dtype.kind not in "iu":
            raise ModelFileError(path, "sparse matrix indptr/indices are not integer arrays", field)
        major, minor = (cols, rows) if self.format == "csc" else (rows, cols)
        if indptr.shape[0] != major + 1 or indices.shape[0] != data.shape[0]:
            raise ModelFileError(
                path,
                f"inconsistent {self.format} matrix: shape {(rows, cols)}, indptr {indptr.shape}, "
                f"indices {indices.shape}, data {data.shape}",
                field,
            )
        indptr = indptr.astype(np.int64)
        if indptr[0] != 0 or np.any(np.diff(indptr) < 0) or indptr[-1] != indices.shape[0]:
            raise ModelFileError(path, "sparse matrix indptr is not a valid offset array", field)
        if indices.size and (indices.min() < 0 or indices.max() >= minor):
            raise ModelFileError(path, "sparse matrix indices are out of range", field)
        budget = ExpansionBudget(path) if budget is None else budget
        budget.take(declared_bytes((rows, cols), data.dtype), field,
                    what=f"a sparse matrix of shape {(rows, cols)} densifies to")
        dense = np.zeros((major, minor), dtype=data.dtype)
        major_index = np.repeat(np.arange(major), np.diff(indptr))
        np.add.at(dense, (major_index, indices.astype(np.int64)), data)  # duplicates sum, as scipy
        return dense.T.copy() if self.format == "csc" else dense


class _CscStub(SparseMatrix):
    format = "csc"


class _CsrStub(SparseMatrix):
    format = "csr"


type.__setattr__(SparseMatrix, "_csc", _CscStub)
type.__setattr__(SparseMatrix, "_csr", _CsrStub)


@dataclasses.dataclass(frozen=True, slots=True)
class TorchStorageType:
    """Stands for ``torch.FloatStorage`` etc.: the name and the dtype of its elements."""

    name: str

    @property
    def dtype(self) -> np.dtype:
        return TORCH_STORAGE_DTYPES[self.name]


@dataclasses.dataclass
class TorchStorage:
    """A torch storage: ``numel`` elements of ``dtype``, or a view of ``numel`` elements from
    ``view_offset`` of the root storage ``key``. ``array`` (1-D, the root's elements) is filled by
    the container reader (after the pickle, for legacy streams)."""

    key: str
    dtype: np.dtype
    numel: int
    view_offset: int = 0
    array: np.ndarray | None = None


@dataclasses.dataclass
class _TorchTensor:
    storage: Any
    offset: Any
    size: Any
    stride: Any


# ---------------------------------------------------------------------------------------------
# Rebuilders


def _as_bytes(data, what):
    # Python-2 pickles carry raw bytes as ``str``; loading with encoding='latin1' maps each byte
    # to one code point, so latin1 encoding gives the bytes back (what numpy itself does).
    if isinstance(data, str):
        return data.encode("latin1")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"{what}: expected raw bytes, got {type(data).__name__}")


def _check_shape(shape, what):
    if not isinstance(shape, (tuple, list)) or not all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in shape
    ):
        raise ValueError(f"{what}: shape {shape!r} is not a tuple of integers")
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"{what}: negative dimension in shape {shape}")
    if len(shape) > 32:
        raise ValueError(f"{what}: {len(shape)} dimensions")
    count = math.prod(shape)
    if count > MAX_ELEMENTS:
        raise _AbsurdSize(
            f"{what} declares shape {shape} = {count} elements (limit {MAX_ELEMENTS})"
        )
    return shape, count


def _array_from_state(state) -> np.ndarray:
    """``ndarray.__setstate__`` re-done: ``(version, shape, dtype, is_fortran, raw)``."""
    if not isinstance(state, tuple) or len(state) not in (4, 5):
        raise ValueError(f"ndarray state must be a 4- or 5-tuple, got {type(state).__name__}")
    if len(state) == 5:
        state = state[1:]
    shape, dtype, is_fortran, raw = state
    if not isinstance(dtype, np.dtype):
        raise ValueError(f"ndarray state dtype is {type(dtype).__name__}, not a numpy dtype")
    shape, count = _check_shape(shape, "ndarray")
    if dtype.hasobject:
        if not isinstance(raw, list) or len(raw) != count:
            raise ValueError("object array state must be a list with one item per element")
        out = np.empty(count, dtype=object)
        for i, item in enumerate(raw):
            out[i] = item
    else:
        if dtype.itemsize == 0:
            raise ValueError(f"ndarray dtype {dtype} has no size")
        raw = _as_bytes(raw, "ndarray data")
        if len(raw) != count * dtype.itemsize:
            raise ValueError(
                f"ndarray declares shape {shape} {dtype} ({count * dtype.itemsize} bytes) "
                f"but carries {len(raw)} bytes"
            )
        out = np.frombuffer(raw, dtype=dtype, count=count).copy()
    return out.reshape(shape, order="F" if is_fortran else "C")


def _is_index(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _tensor_array(t: _TorchTensor, path, where, budget: ExpansionBudget) -> np.ndarray:
    """Bounds-checked numpy copy of a tensor view. Fields are re-validated here: a pickle's BUILD
    opcode could have replaced them after ``_rebuild_tensor_v2`` checked them."""
    storage = t.storage
    if isinstance(storage, TorchStorage) and storage.array is None:
        raise ModelFileError(path, f"storage {storage.key!r} has no data (truncated or malformed "
                             "file)", where)
    ok = (
        isinstance(storage, TorchStorage)
        and isinstance(t.size, tuple)
        and isinstance(t.stride, tuple)
        and len(t.size) == len(t.stride)
        and all(_is_index(v) for v in t.size + t.stride + (t.offset,))
        and _is_index(storage.view_offset)
        and _is_index(storage.numel)
        and isinstance(storage.array, np.ndarray)
        and storage.array.ndim == 1
    )
    if not ok:
        raise ModelFileError(path, "malformed tensor record (bad storage, size, stride or offset)",
                             where)
    lo, hi = storage.view_offset, storage.view_offset + storage.numel
    if hi > storage.array.size:
        raise ModelFileError(path, f"storage view {storage.key!r} [{lo}:{hi}] runs past its "
                             "storage", where)
    base = storage.array[lo:hi]
    try:
        _, count = _check_shape(t.size, "torch tensor")
    except _AbsurdSize as exc:
        raise ModelFileError(path, f"absurd array size: {exc}", where) from None
    if count > base.size:  # a view wider than its storage (stride 0) expands the file
        budget.take((count - base.size) * base.dtype.itemsize, where,
                    what=f"a tensor of size {t.size} over a storage of {base.size} elements adds")
    if count == 0:
        return np.zeros(t.size, base.dtype)
    last = t.offset + sum((n - 1) * st for n, st in zip(t.size, t.stride))
    if last >= base.size:
        raise ModelFileError(
            path,
            f"tensor of size {t.size} stride {t.stride} offset {t.offset} runs past its storage "
            f"{storage.key!r} of {base.size} elements",
            where,
        )
    strides = tuple(st * base.dtype.itemsize for st in t.stride)
    view = np.lib.stride_tricks.as_strided(base[t.offset:], shape=t.size, strides=strides,
                                           writeable=False)
    return np.array(view, order="C", copy=True)  # (np.ascontiguousarray would make 0-d 1-d)


def materialize(obj: Any, path="<pickle>", budget: ExpansionBudget | None = None) -> Any:
    """Replace the rebuild placeholders in a loaded structure by plain numpy arrays.

    Pickled ndarrays, torch tensors and bare torch storages become numpy arrays. ``Ch`` and sparse
    stand-ins are kept (callers decide how to read them), but their inner arrays are materialised
    too. A malformed array raises :class:`ModelFileError` naming ``path`` and the field (dict key
    path, e.g. ``J_regressor.indices``).
    """
    budget = ExpansionBudget(path) if budget is None else budget
    seen: dict[int, Any] = {}

    def walk(x, where):
        key = id(x)
        if key in seen:
            return seen[key]
        if isinstance(x, _PendingArray):
            if x.state is None:
                raise ModelFileError(path, "an array placeholder was never given its state", where)
            try:
                array = _array_from_state(x.state)
            except _AbsurdSize as exc:
                raise ModelFileError(path, f"absurd array size: {exc}", where) from None
            except (ValueError, TypeError) as exc:
                raise ModelFileError(path, f"malformed pickled array: {exc}", where) from None
            out = walk(array, where)
        elif isinstance(x, _TorchTensor):
            out = _tensor_array(x, path, where, budget)
        elif isinstance(x, TorchStorage):
            if not isinstance(x.array, np.ndarray):
                raise ModelFileError(path, f"storage {x.key!r} has no data", where)
            out = x.array
        elif isinstance(x, dict):
            out = type(x)() if isinstance(x, OrderedDict) else {}
            seen[key] = out
            for k, v in x.items():
                name = str(k) if where is None else f"{where}.{k}"
                out[walk(k, where)] = walk(v, name)
            return out
        elif isinstance(x, list):
            out = []
            seen[key] = out
            out.extend(walk(v, f"{where or ''}[{i}]") for i, v in enumerate(x))
            return out
        elif isinstance(x, tuple):
            out = tuple(walk(v, f"{where or ''}[{i}]") for i, v in enumerate(x))
        elif isinstance(x, ChumpyArray):
            state = getattr(x, "state", None)
            if isinstance(state, dict):  # Ch's array is reported under the Ch's own name
                x.state = {k: walk(v, where) for k, v in state.items()}
            out = x
        elif isinstance(x, SparseMatrix):
            state = getattr(x, "state", None)
            if isinstance(state, dict):
                x.state = {k: walk(v, f"{where}.{k}") for k, v in state.items()}
            out = x
        elif isinstance(x, np.ndarray) and x.dtype == object:
            out = np.empty(x.shape, dtype=object)
            for index in np.ndindex(x.shape):
                out[index] = walk(x[index], where)
        else:
            out = x
        seen[key] = out
        return out

    return walk(obj, None)


# ---------------------------------------------------------------------------------------------
# The unpickler


def _reconstruct(subtype, shape, typecode):
    if subtype is not _NdarrayToken:
        raise ValueError("numpy _reconstruct is only allowed for numpy.ndarray")
    return _PendingArray()


def _frombuffer(buf, dtype, shape, order):
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise ValueError("numpy _frombuffer needs a plain numeric dtype")
    shape, count = _check_shape(shape, "ndarray")
    raw = _as_bytes(buf, "ndarray data")
    if len(raw) != count * dtype.itemsize:
        raise ValueError(f"ndarray declares shape {shape} {dtype} but carries {len(raw)} bytes")
    return np.frombuffer(raw, dtype=dtype, count=count).copy().reshape(shape, order=order)


def _scalar(dtype, raw=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject or raw is None:
        raise ValueError("numpy scalar needs a plain numeric dtype and raw bytes")
    raw = _as_bytes(raw, "numpy scalar")
    if len(raw) != dtype.itemsize:
        raise ValueError(f"numpy scalar {dtype} carries {len(raw)} bytes")
    return np.frombuffer(raw, dtype=dtype, count=1)[0]


def _codecs_encode(text, encoding="utf-8", errors="strict"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "iso-8859-1"):
        raise ValueError("_codecs.encode is only allowed for latin-1 text (pickled bytes)")
    return text.encode("latin1")


def _copyreg_reconstructor(cls, base, state):
    if cls not in (ChumpyArray, SparseMatrix._csc, SparseMatrix._csr) or base is not object:
        raise ValueError("copy_reg._reconstructor is only allowed for chumpy/scipy stand-ins")
    if state is not None:
        raise ValueError("copy_reg._reconstructor with a base state is not allowed")
    return cls()


def _empty_bytes(*args):
    # Protocol 2 writes b"" as a call of bytes() with no arguments; bytes(n) would allocate n.
    if args:
        raise ValueError("bytes() is only allowed without arguments (an empty byte string)")
    return b""


def _ordered_dict(*args):
    if len(args) > 1:
        raise TypeError("OrderedDict takes at most one argument")
    return OrderedDict(*args)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    if not isinstance(storage, TorchStorage):
        raise TypeError("torch tensor rebuilt from something that is not a storage")
    if not (isinstance(storage_offset, int) and isinstance(size, tuple)
            and isinstance(stride, tuple)):
        raise TypeError("tensor offset/size/stride have the wrong types")
    if len(size) != len(stride) or not all(_is_index(v) for v in size + stride):
        raise TypeError(f"bad tensor size {size!r} / stride {stride!r}")
    return _TorchTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    return data


_NUMPY_MULTIARRAY = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMPY_NUMERIC = ("numpy.core.numeric", "numpy._core.numeric")

# (module, name) -> rebuilder, for every file.
_ALLOWED = {
    **{(m, "_reconstruct"): _reconstruct for m in _NUMPY_MULTIARRAY},
    **{(m, "scalar"): _scalar for m in _NUMPY_MULTIARRAY},
    **{(m, "_frombuffer"): _frombuffer for m in _NUMPY_NUMERIC},
    ("numpy", "ndarray"): _NdarrayToken,
    ("_codecs", "encode"): _codecs_encode,
    ("__builtin__", "set"): set, ("builtins", "set"): set,
    ("__builtin__", "frozenset"): frozenset, ("builtins", "frozenset"): frozenset,
    ("__builtin__", "object"): object, ("builtins", "object"): object,
    ("__builtin__", "bytes"): _empty_bytes, ("builtins", "bytes"): _empty_bytes,
    ("copy_reg", "_reconstructor"): _copyreg_reconstructor,
    ("copyreg", "_reconstructor"): _copyreg_reconstructor,
    ("collections", "OrderedDict"): _ordered_dict,
    ("chumpy.ch", "Ch"): ChumpyArray,
    ("scipy.sparse.csc", "csc_matrix"): _CscStub, ("scipy.sparse._csc", "csc_matrix"): _CscStub,
    ("scipy.sparse.csr", "csr_matrix"): _CsrStub, ("scipy.sparse._csr", "csr_matrix"): _CsrStub,
}
# Only where torch tensors are expected (torch.save files, DECA's landmark file).
_ALLOWED_TORCH = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` maps an allow-list to the rebuilders above.

    Allowed everywhere (with Python-2 module spellings): numpy's ``_reconstruct`` / ``_frombuffer``
    / ``scalar`` / ``dtype`` / ``ndarray`` (``numpy.core`` and ``numpy._core``), ``_codecs.encode``
    (only latin-1, as protocol-2 pickles of ``bytes`` use it), ``bytes()`` (only without
    arguments: protocol 2's empty byte string), ``set`` / ``frozenset`` / ``object``,
    ``copy_reg._reconstructor`` (only for the stand-in classes), ``collections.OrderedDict``,
    chumpy's ``Ch`` and scipy's CSC/CSR matrices (stand-ins).

    With ``torch=True`` also ``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter[_with_state]``
    and the ``torch.<Type>Storage`` classes; ``persistent_load(pid)`` resolves torch's storage ids
    and ``load_from_bytes(data)`` answers ``torch.storage._load_from_bytes`` (a storage pickled
    inside a pickle, as DECA's landmark file has them); without them those are refused too.
    ``objects=False`` refuses object dtypes (files that should hold numbers only).
    """

    def __init__(self, file, path="<pickle>", *, torch: bool = False, objects: bool = True,
                 persistent_load: Callable | None = None,
                 load_from_bytes: Callable | None = None):
        super().__init__(file, encoding="latin1")
        self.path = str(path)
        self.torch = torch
        self.objects = objects
        self._persistent = persistent_load
        self._load_from_bytes = load_from_bytes

    def _dtype(self, spec, align=False, copy=False):
        if not isinstance(spec, str):
            raise ValueError(f"numpy dtype spec must be a string, got {type(spec).__name__}")
        dtype = np.dtype(spec)  # numpy's own parser: builds a dtype, runs nothing from the file
        if dtype.hasobject and not self.objects:
            raise ValueError("object dtypes (Python objects inside arrays) are not allowed in "
                             "this file")
        return dtype

    def _storage_from_bytes(self, data):
        return self._load_from_bytes(_as_bytes(data, "torch storage bytes"))

    def find_class(self, module, name):
        found = _ALLOWED.get((module, name))
        if found is None and module == "numpy" and name == "dtype":
            found = self._dtype
        if found is None and self.torch:
            found = _ALLOWED_TORCH.get((module, name))
            if module == "torch" and name in TORCH_STORAGE_DTYPES:
                found = TorchStorageType(name)  # a fresh, slotted one: a BUILD cannot alter it
            if (module, name) == ("torch.storage", "_load_from_bytes") and self._load_from_bytes:
                found = self._storage_from_bytes
        if found is None:
            raise UnsafePickleError(
                self.path,
                f"refusing to load global {module}.{name}: it is not on the allow-list of safe "
                "array / sparse / chumpy / torch-storage rebuilders (nothing was executed)",
            )
        return found

    def persistent_load(self, pid):
        if self._persistent is None:
            raise UnsafePickleError(self.path, f"unexpected persistent id {pid!r}")
        return self._persistent(pid)


_MEMO_STORES = {"PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"}
_MEMO_INDEXED = {"PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"}


def prescan(stream: io.BytesIO, path="<pickle>") -> None:
    """Walk one pickle's opcodes from the stream's position without executing them.

    Refuses memo indices that run more than :data:`MEMO_SLACK` ahead of the entries stored so far
    and length fields that run past the data (``pickletools`` checks them); leaves the stream
    where it was.
    """
    start = stream.tell()
    stores = 0
    try:
        for opcode, arg, _pos in pickletools.genops(stream):
            if opcode.name in _MEMO_INDEXED:
                if not isinstance(arg, int) or arg < 0 or arg > stores + MEMO_SLACK:
                    raise ModelFileError(
                        path,
                        f"pickle memo index {arg!r} is out of range ({stores} entries stored "
                        "before it); refusing it before the unpickler allocates its memo",
                    )
            if opcode.name in _MEMO_STORES:
                stores += 1
    finally:
        stream.seek(start)


def load_one(stream: io.BytesIO, path="<pickle>", **options) -> Any:
    """The next pickle of ``stream`` through :func:`prescan` and :class:`RestrictedUnpickler`
    (``options`` are its keyword arguments); errors are raised as they come (see
    :func:`safe_loads` for the wrapped form)."""
    prescan(stream, path)
    return RestrictedUnpickler(stream, path, **options).load()


def file_errors(path, what: str = "pickle of arrays"):
    """A context manager turning whatever a malformed byte stream raises into
    :class:`ModelFileError` naming ``path`` (ModelFileError itself passes through)."""
    return _FileErrors(path, what)


class _FileErrors:
    def __init__(self, path, what):
        self.path, self.what = path, what

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or isinstance(exc, ModelFileError) or not isinstance(exc, Exception):
            return False
        if isinstance(exc, _AbsurdSize):
            raise ModelFileError(self.path, f"absurd array size: {exc}") from None
        if isinstance(exc, RecursionError):
            raise ModelFileError(self.path, "pickle nests too deeply") from None
        if isinstance(exc, MemoryError):
            raise ModelFileError(self.path, "pickle asks for more memory than is available") from None
        raise ModelFileError(
            self.path, f"not a readable {self.what} ({type(exc).__name__}: {exc})"
        ) from None


def safe_loads(data: bytes, path="<pickle>", *, objects: bool = True,
               budget: ExpansionBudget | None = None) -> Any:
    """Unpickle ``data`` (no torch tensors) and :func:`materialize` the result.

    Raises :class:`UnsafePickleError` for a global outside the allow-list and
    :class:`ModelFileError` (naming ``path``) for anything else wrong with the bytes. Pickles
    holding torch tensors are read by :func:`jface.files.torch_save.loads_with_tensors`.
    """
    with file_errors(path):
        obj = load_one(io.BytesIO(data), path, objects=objects)
        return materialize(obj, path, budget)


def load_numpy_pickle(path):
    """A pickle file of numpy arrays in dicts / lists (e.g. ``resnet50_ft_weight.pkl``); object
    arrays are refused, nothing is executed."""
    data = read_file_bytes(path)
    with file_errors(path, "numpy pickle"):
        obj = load_one(io.BytesIO(data), path, objects=False)
        return materialize(obj, path)
