"""A restricted unpickler for the pickled model files the originals ship (no chumpy, no torch).

Two files of the original pipelines are pickles:

* FLAME's ``generic_model.pkl`` (spec deca.md §2.2): a Python-2, protocol-2 pickle of a dict of
  numpy arrays, where ``shapedirs`` is a chumpy ``Ch`` and ``J_regressor`` a ``scipy.sparse`` CSC
  matrix;
* DECA's ``landmark_embedding.npy`` (spec deca.md §2.3): an ``.npy`` holding a pickled dict whose
  ``dynamic_*`` entries are pickled torch tensors (each storage is itself a legacy ``torch.save``
  stream wrapped in ``torch.storage._load_from_bytes``).

``pickle.load`` on such a file runs whatever callables the file names. This module never does: its
:class:`SafeUnpickler` answers ``find_class`` only for an allow-list, and every allowed name maps to
a small *rebuilder written here* (never to the named library's own code), so a file cannot make us
import chumpy/torch/scipy or call ``os.system``/``eval``/``exec``. Anything else raises
:class:`~jface.models.errors.UnsafePickleError` naming ``module.name`` before it is called.

Arrays are rebuilt from their raw bytes with explicit checks: the declared shape must have at most
``MAX_ELEMENTS`` elements and the byte payload must match ``prod(shape) * itemsize`` exactly, so a
file that declares an absurd array fails with a clear :class:`~jface.models.errors.ModelFileError`
instead of exhausting memory.
"""

from __future__ import annotations

import io
import math
import pickle
import pickletools
import struct as _struct
import zipfile
from collections import OrderedDict
from typing import Any

import numpy as np

from jface.models.errors import ModelFileError, UnsafePickleError

__all__ = [
    "MAX_ELEMENTS",
    "SafeUnpickler",
    "safe_loads",
    "ChumpyArray",
    "SparseMatrix",
    "materialize",
]

#: Largest array (in elements) a pickle may declare; FLAME's biggest is 5023*3*400 = 6.0e6.
MAX_ELEMENTS = 2**31
#: Largest memo index a pickle may use (CPython's unpickler allocates the memo up to the index).
MAX_MEMO_INDEX = 1 << 24


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

    def __init__(self, unpickler: "SafeUnpickler"):
        self._unpickler = unpickler
        self.state = None

    def __setstate__(self, state):
        self.state = state

    def build(self) -> np.ndarray:
        if self.state is None:
            raise ValueError("an array placeholder was never given its state")
        return self._unpickler.array_from_state(self.state)


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
    """

    format = "csc"
    state = None
    _csc = None  # set below (type.__setattr__, the class is sealed)
    _csr = None

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise TypeError(f"sparse matrix state must be a dict, got {type(state).__name__}")
        self.state = state

    def toarray(self, path="<pickle>", field=None) -> np.ndarray:
        """Densify with bounds checks (raises ModelFileError naming ``path``/``field``)."""
        state = self.state or {}

        def get(*names):
            for name in names:
                if name in state:
                    return state[name]
            raise ModelFileError(path, f"{self.format} matrix state lacks {names[0]!r}", field)

        shape = get("_shape", "shape")
        indptr = materialize(get("indptr"), path)
        indices = materialize(get("indices"), path)
        data = materialize(get("data"), path)
        try:
            rows, cols = (int(s) for s in shape)
        except (TypeError, ValueError):
            raise ModelFileError(path, f"sparse matrix shape {shape!r} is not two integers", field)
        if rows < 0 or cols < 0 or rows * cols > MAX_ELEMENTS:
            raise ModelFileError(
                path, f"sparse matrix declares an absurd shape {(rows, cols)}", field
            )
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
        dense = np.zeros((major, minor), dtype=data.dtype)
        major_index = np.repeat(np.arange(major), np.diff(indptr))
        np.add.at(dense, (major_index, indices.astype(np.int64)), data)  # duplicates sum, as scipy
        return dense.T.copy() if self.format == "csc" else dense


class _TorchStorageType:
    """Stands for ``torch.FloatStorage`` etc. inside a legacy ``torch.save`` stream."""

    def __init__(self, name: str, dtype):
        self.name = name
        self.dtype = np.dtype(dtype)


class TorchStorage:
    """A flat numpy array standing for a rebuilt torch storage."""

    def __init__(self, array: np.ndarray):
        self.array = array


_TORCH_STORAGES = {
    "DoubleStorage": "<f8",
    "FloatStorage": "<f4",
    "HalfStorage": "<f2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


# ---------------------------------------------------------------------------------------------


def materialize(obj: Any, path="<pickle>") -> Any:
    """Replace the rebuild placeholders in a loaded structure by plain numpy arrays.

    ``Ch`` stand-ins and sparse stand-ins are kept (callers decide how to read them), but their
    inner arrays are materialised too. A malformed array raises :class:`ModelFileError` naming
    ``path`` and the field (dict key path, e.g. ``J_regressor.indices``).
    """
    seen: dict[int, Any] = {}

    def walk(x, where):
        key = id(x)
        if key in seen:
            return seen[key]
        if isinstance(x, _PendingArray):
            try:
                array = x.build()
            except _AbsurdSize as exc:
                raise ModelFileError(path, f"absurd array size: {exc}", where) from None
            except (ValueError, TypeError) as exc:
                raise ModelFileError(path, f"malformed pickled array: {exc}", where) from None
            out = walk(array, where)
        elif isinstance(x, TorchStorage):
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


class _AbsurdSize(ValueError):
    pass


class SafeUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` maps an allow-list to local rebuilders.

    Allowed globals (with Python-2 module spellings): numpy's ``_reconstruct``/``_frombuffer``/
    ``scalar``/``dtype``/``ndarray`` (``numpy.core`` and ``numpy._core``), ``_codecs.encode`` (only
    latin-1, as protocol-2 pickles of ``bytes`` use it), ``set``/``frozenset``/``object``,
    ``copy_reg._reconstructor`` (only for the stand-in classes), ``collections.OrderedDict``,
    chumpy's ``Ch`` and scipy's CSC/CSR matrices (stand-ins), and, when ``allow_torch`` is set,
    ``torch._utils._rebuild_tensor[_v2]``/``_rebuild_parameter``, ``torch.storage._load_from_bytes``
    and ``torch.<Type>Storage`` (rebuilt with numpy from the raw storage bytes).
    """

    def __init__(self, file, *, allow_torch: bool = False, path="<pickle>", depth: int = 0):
        super().__init__(file, encoding="latin1")
        self.allow_torch = allow_torch
        self.path = str(path)
        self.depth = depth
        self._storages: dict[str, TorchStorage] = {}

    # -- arrays ---------------------------------------------------------------------------------

    def array_from_state(self, state) -> np.ndarray:
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

    def _reconstruct(self, subtype, shape, typecode):
        if subtype is not _NdarrayToken:
            raise ValueError("numpy _reconstruct is only allowed for numpy.ndarray")
        return _PendingArray(self)

    def _frombuffer(self, buf, dtype, shape, order):
        if not isinstance(dtype, np.dtype) or dtype.hasobject:
            raise ValueError("numpy _frombuffer needs a plain numeric dtype")
        shape, count = _check_shape(shape, "ndarray")
        raw = _as_bytes(buf, "ndarray data")
        if len(raw) != count * dtype.itemsize:
            raise ValueError(f"ndarray declares shape {shape} {dtype} but carries {len(raw)} bytes")
        return np.frombuffer(raw, dtype=dtype, count=count).copy().reshape(shape, order=order)

    @staticmethod
    def _scalar(dtype, raw=None):
        if not isinstance(dtype, np.dtype) or dtype.hasobject or raw is None:
            raise ValueError("numpy scalar needs a plain numeric dtype and raw bytes")
        raw = _as_bytes(raw, "numpy scalar")
        if len(raw) != dtype.itemsize:
            raise ValueError(f"numpy scalar {dtype} carries {len(raw)} bytes")
        return np.frombuffer(raw, dtype=dtype, count=1)[0]

    @staticmethod
    def _dtype(spec, align=False, copy=False):
        if not isinstance(spec, str):
            raise ValueError(f"numpy dtype spec must be a string, got {type(spec).__name__}")
        return np.dtype(spec)  # numpy's own parser: builds a dtype, runs nothing from the file

    @staticmethod
    def _codecs_encode(text, encoding="utf-8", errors="strict"):
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "iso-8859-1"):
            raise ValueError("_codecs.encode is only allowed for latin-1 text (pickled bytes)")
        return text.encode("latin1")

    @staticmethod
    def _copyreg_reconstructor(cls, base, state):
        if cls not in (ChumpyArray, SparseMatrix._csc, SparseMatrix._csr) or base is not object:
            raise ValueError("copy_reg._reconstructor is only allowed for chumpy/scipy stand-ins")
        if state is not None:
            raise ValueError("copy_reg._reconstructor with a base state is not allowed")
        return cls()

    # -- torch (landmark_embedding.npy) -----------------------------------------------------------

    def _rebuild_tensor(self, storage, offset, size, stride, *unused):
        if not isinstance(storage, TorchStorage):
            raise ValueError("torch tensor rebuilt from something that is not a storage")
        flat = storage.array
        size, count = _check_shape(size, "torch tensor")
        stride, _ = _check_shape(stride, "torch tensor stride")
        offset = int(offset)
        if len(stride) != len(size) or offset < 0:
            raise ValueError(
                f"torch tensor size {size} / stride {stride} / offset {offset} mismatch"
            )
        if count:
            last = offset + sum((s - 1) * st for s, st in zip(size, stride))
            if last >= flat.shape[0]:
                raise ValueError(
                    f"torch tensor of size {size} stride {stride} offset {offset} overruns its "
                    f"storage of {flat.shape[0]} elements"
                )
        view = np.lib.stride_tricks.as_strided(
            flat[offset:] if count else flat,
            shape=size,
            strides=tuple(st * flat.itemsize for st in stride),
            writeable=False,
        )
        return np.array(view)

    @staticmethod
    def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *unused):
        return data

    def _load_from_bytes(self, data):
        """``torch.storage._load_from_bytes``: a nested legacy (or zip) ``torch.save`` stream."""
        if self.depth > 2:
            raise ValueError("torch storages nested too deeply")
        data = _as_bytes(data, "torch storage bytes")
        return _load_torch_stream(data, path=self.path, depth=self.depth + 1)

    # -- the allow-list -------------------------------------------------------------------------

    def find_class(self, module, name):
        numpy_mods = {
            "numpy.core.multiarray",
            "numpy._core.multiarray",
        }
        if module in numpy_mods and name == "_reconstruct":
            return self._reconstruct
        if module in numpy_mods and name == "scalar":
            return self._scalar
        if module in ("numpy.core.numeric", "numpy._core.numeric") and name == "_frombuffer":
            return self._frombuffer
        if module == "numpy" and name == "ndarray":
            return _NdarrayToken
        if module == "numpy" and name == "dtype":
            return self._dtype
        if module == "_codecs" and name == "encode":
            return self._codecs_encode
        if module in ("__builtin__", "builtins") and name in ("set", "frozenset", "object"):
            return {"set": set, "frozenset": frozenset, "object": object}[name]
        if module in ("copy_reg", "copyreg") and name == "_reconstructor":
            return self._copyreg_reconstructor
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "chumpy.ch" and name == "Ch":
            return ChumpyArray
        if module in ("scipy.sparse.csc", "scipy.sparse._csc") and name == "csc_matrix":
            return SparseMatrix._csc
        if module in ("scipy.sparse.csr", "scipy.sparse._csr") and name == "csr_matrix":
            return SparseMatrix._csr
        if self.allow_torch:
            if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
                return self._rebuild_tensor
            if module == "torch._utils" and name == "_rebuild_parameter":
                return self._rebuild_parameter
            if module == "torch.storage" and name == "_load_from_bytes":
                return self._load_from_bytes
            if module == "torch" and name in _TORCH_STORAGES:
                return _TorchStorageType(name, _TORCH_STORAGES[name])
        raise UnsafePickleError(
            self.path,
            f"the pickle asks for {module}.{name}, which is not on the allow-list of safe "
            "array/sparse/chumpy/torch-storage rebuilders; refusing to load it "
            "(nothing was executed)",
        )

    def persistent_load(self, pid):
        raise UnsafePickleError(
            self.path, f"unexpected persistent id {pid!r} outside a torch storage stream"
        )


class _CscStub(SparseMatrix):
    format = "csc"


class _CsrStub(SparseMatrix):
    format = "csr"


type.__setattr__(SparseMatrix, "_csc", _CscStub)
type.__setattr__(SparseMatrix, "_csr", _CsrStub)


class _TorchStreamUnpickler(SafeUnpickler):
    """The object pickle inside a ``torch.save`` stream: storages come as persistent ids."""

    def __init__(self, file, storages, **kwargs):
        super().__init__(file, allow_torch=True, **kwargs)
        self._storage_specs = storages

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel[, view_metadata])
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise ValueError(f"unsupported torch persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _TorchStorageType):
            raise ValueError(f"torch storage type {storage_type!r} is not a known storage class")
        if len(pid) > 5 and pid[5] is not None:
            raise ValueError("torch storage views (view_metadata) are not supported")
        _check_shape((int(numel),), "torch storage")
        self._storage_specs[str(key)] = (storage_type.dtype, int(numel))
        return _StorageRef(str(key))


class _StorageRef(TorchStorage):
    def __init__(self, key):
        super().__init__(None)
        self.key = key


def _prescan(f: io.BytesIO) -> None:
    """Walk one pickle's opcodes without executing them; reject huge memo indices.

    CPython's unpickler grows (and zero-fills) its memo array up to the largest ``PUT`` index, so
    a corrupt index of 2**31 would allocate gigabytes before anything else fails.
    """
    start = f.tell()
    try:
        for opcode, arg, _pos in pickletools.genops(f):
            if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"):
                if not isinstance(arg, int) or arg < 0 or arg > MAX_MEMO_INDEX:
                    raise ValueError(f"memo index {arg!r} out of range")
    finally:
        f.seek(start)


def _load_one(unpickler_factory, f: io.BytesIO):
    _prescan(f)
    return unpickler_factory(f).load()


def _load_torch_stream(data: bytes, *, path, depth) -> TorchStorage:
    """Read one ``torch.save`` stream that holds a single storage.

    Legacy format (what ``TypedStorage.__reduce__`` writes): pickles of the magic number, the
    protocol version and the sys-info dict; the object pickle (storages as persistent ids); a pickle
    of the storage keys; then for each key its element count (little-endian int64) and raw bytes.
    """
    if data[:2] == b"PK":
        return _load_torch_zip(data, path=path, depth=depth)
    f = io.BytesIO(data)
    header = []
    for _ in range(3):
        header.append(_load_one(lambda fh: SafeUnpickler(fh, path=path, depth=depth), f))
    if header[0] != 0x1950A86A20F9469CFC6C or header[1] != 1001:
        raise ValueError(
            "torch storage bytes are not a legacy torch.save stream (bad magic number)"
        )
    if not isinstance(header[2], dict) or not header[2].get("little_endian", True):
        raise ValueError("big-endian torch streams are not supported")
    specs: dict[str, tuple] = {}
    obj = _load_one(lambda fh: _TorchStreamUnpickler(fh, specs, path=path, depth=depth), f)
    keys = _load_one(lambda fh: SafeUnpickler(fh, path=path, depth=depth), f)
    if not isinstance(keys, list) or set(map(str, keys)) != set(specs):
        raise ValueError(f"torch stream storage keys {keys!r} do not match its storages")
    arrays = {}
    for key in keys:
        dtype, numel = specs[str(key)]
        head = f.read(8)
        if len(head) != 8:
            raise ValueError("torch storage stream is truncated")
        (stored,) = _struct.unpack("<q", head)
        if stored != numel:
            raise ValueError(f"torch storage {key}: header says {stored} elements, pickle {numel}")
        raw = f.read(numel * dtype.itemsize)
        if len(raw) != numel * dtype.itemsize:
            raise ValueError(f"torch storage {key} is truncated")
        arrays[str(key)] = np.frombuffer(raw, dtype=dtype).copy()
    if not isinstance(obj, _StorageRef):
        raise ValueError("torch stream does not hold a single storage")
    return TorchStorage(arrays[obj.key])


def _load_torch_zip(data: bytes, *, path, depth) -> TorchStorage:
    """Zip-format ``torch.save`` of one storage (``<root>/data.pkl`` + ``<root>/data/<key>``)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl")]
        if len(pkl) != 1:
            raise ValueError("zip torch stream without a single data.pkl")
        root = pkl[0][: -len("data.pkl")]
        specs: dict[str, tuple] = {}
        obj = _load_one(lambda fh: _TorchStreamUnpickler(fh, specs, path=path, depth=depth),
                        io.BytesIO(archive.read(pkl[0])))
        if not isinstance(obj, _StorageRef):
            raise ValueError("torch stream does not hold a single storage")
        dtype, numel = specs[obj.key]
        info = archive.getinfo(f"{root}data/{obj.key}")
        if info.file_size != numel * dtype.itemsize:
            raise ValueError(f"torch storage {obj.key} has {info.file_size} bytes, expected "
                             f"{numel * dtype.itemsize}")
        raw = archive.read(info)
    return TorchStorage(np.frombuffer(raw, dtype=dtype).copy())


def safe_loads(data: bytes, path="<pickle>", *, allow_torch: bool = False) -> Any:
    """Unpickle ``data`` with :class:`SafeUnpickler` and :func:`materialize` the result.

    Raises :class:`UnsafePickleError` for a global outside the allow-list and
    :class:`ModelFileError` (naming ``path``) for anything else wrong with the bytes.
    """
    try:
        obj = _load_one(lambda fh: SafeUnpickler(fh, allow_torch=allow_torch, path=path),
                        io.BytesIO(data))
        return materialize(obj, path)
    except ModelFileError:
        raise
    except _AbsurdSize as exc:
        raise ModelFileError(path, f"absurd array size: {exc}") from None
    except RecursionError:
        raise ModelFileError(path, "pickle nests too deeply") from None
    except MemoryError:
        raise ModelFileError(path, "pickle asks for more memory than is available") from None
    except Exception as exc:  # noqa: BLE001 - any malformed byte stream becomes a file error
        raise ModelFileError(
            path, f"not a readable pickle of arrays ({type(exc).__name__}: {exc})"
        ) from None
