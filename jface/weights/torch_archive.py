"""Read ``torch.save`` files without torch and without executing pickled code.

Supported layouts:

* the zip archive (torch >= 1.6 default): ``<root>/data.pkl`` (protocol-2 pickle whose tensors refer to
  storages through persistent ids ``('storage', StorageType, key, location, numel)``),
  ``<root>/data/<key>`` (raw storage bytes), ``<root>/byteorder`` (optional, 'little' / 'big');
* the legacy stream (``_use_new_zipfile_serialization=False``, torch 0.4-1.5; e.g. the old torchvision
  ``*.pth`` downloads): magic number, protocol version and sys-info pickles, the main pickle with
  persistent ids ``('storage', StorageType, root_key, location, numel, view_metadata)``, a pickle of the
  storage-key list, then per key an int64 element count followed by the raw bytes.

The very old tar layout (torch < 0.4) is detected and refused with a clear error.

The unpickler resolves only an allow-list of globals, each to a stand-in written here (never the real
torch function): ``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2``,
``torch._utils._rebuild_parameter`` / ``_rebuild_parameter_with_state``, the ``torch.*Storage`` types
and ``_codecs.encode`` (latin-1 only; protocol 2 uses it for ``bytes``). Anything else raises
:class:`~jface.models.errors.UnsafePickleError` before it is called. Tensors come back as numpy arrays
(copies, C-contiguous), parameters as plain arrays.
"""

from __future__ import annotations

import codecs
import collections
import io
import os
import pickle
import re
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np

from jface.models.errors import ModelFileError, UnsafePickleError
from jface.weights.numpy_pickle import MALFORMED_PICKLE_ERRORS

__all__ = ["load_torch_file", "is_torch_zip"]

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_KEY_RE = re.compile(r"^[A-Za-z0-9_]{1,64}$")


@dataclass(frozen=True)
class _StorageType:
    name: str

    @property
    def dtype(self):
        return np.dtype(_STORAGE_DTYPES[self.name])


@dataclass
class _LazyStorage:
    """A storage whose bytes are resolved after unpickling (legacy files store them after the pickle)."""

    key: str
    dtype: np.dtype
    numel: int
    view_offset: int = 0  # legacy storage views: element offset into the root storage
    array: np.ndarray | None = None


@dataclass
class _LazyTensor:
    storage: _LazyStorage
    offset: int
    size: tuple
    stride: tuple


def _rebuild_tensor_v2(
    storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None
):
    if not isinstance(storage, _LazyStorage):
        raise TypeError("tensor storage is not a storage reference")
    if not (isinstance(storage_offset, int) and isinstance(size, tuple) and isinstance(stride, tuple)):
        raise TypeError("tensor offset/size/stride have the wrong types")
    if len(size) != len(stride) or not all(isinstance(v, int) and v >= 0 for v in size + stride):
        raise TypeError(f"bad tensor size {size!r} / stride {stride!r}")
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    return data


def _ordered_dict(*args):
    if len(args) > 1:
        raise TypeError("OrderedDict takes at most one argument")
    return collections.OrderedDict(*args)


def _codecs_encode(text, encoding="utf-8"):
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise TypeError(f"_codecs.encode only with latin1 text is allowed, got {encoding!r}")
    return codecs.encode(text, "latin1")


def _allowed_global(module: str, name: str):
    if module == "collections" and name == "OrderedDict":
        return _ordered_dict
    if module == "torch._utils" and name == "_rebuild_tensor_v2":
        return _rebuild_tensor_v2
    if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
        return _rebuild_parameter
    if module == "torch" and name in _STORAGE_DTYPES:
        return _StorageType(name)
    if module == "_codecs" and name == "encode":
        return _codecs_encode
    return None


class _TorchUnpickler(pickle.Unpickler):
    def __init__(self, file, path, persistent):
        super().__init__(file, encoding="latin1")
        self._path = path
        self._persistent = persistent

    def find_class(self, module, name):
        obj = _allowed_global(module, name)
        if obj is None:
            raise UnsafePickleError(
                self._path,
                f"refusing to load global {module}.{name}: only state dicts of tensors (OrderedDict, "
                "torch._utils._rebuild_tensor_v2/_rebuild_parameter, torch.*Storage) are allowed; nothing was executed",
            )
        return obj

    def persistent_load(self, pid):
        return self._persistent(pid)


def _check_pid(path, pid, legacy: bool):
    n = 6 if legacy else 5
    if not (isinstance(pid, tuple) and len(pid) == n and pid[0] == "storage"):
        raise UnsafePickleError(
            path, f"unexpected persistent id {pid!r} (expected ('storage', ...) of length {n})"
        )
    _, storage_type, key, location, numel = pid[:5]
    if not isinstance(storage_type, _StorageType):
        raise UnsafePickleError(path, f"persistent id names no allowed storage type: {storage_type!r}")
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise UnsafePickleError(
            path,
            f"persistent id has an invalid storage key {key!r} (must be a plain name inside the archive)",
        )
    if not isinstance(location, str) or not isinstance(numel, int) or numel < 0:
        raise UnsafePickleError(path, f"persistent id has a bad location/size: {pid!r}")
    return storage_type, key, numel


def _is_index(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _tensor_array(t: _LazyTensor, path) -> np.ndarray:
    """Bounds-checked numpy copy of a tensor view. Fields are re-validated here: a pickle's BUILD
    opcode could have replaced them after ``_rebuild_tensor_v2`` checked them."""
    storage = t.storage
    if isinstance(storage, _LazyStorage) and storage.array is None:
        raise ModelFileError(path, f"storage {storage.key!r} has no data (truncated or malformed file)")
    ok = (
        isinstance(storage, _LazyStorage)
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
        raise ModelFileError(path, "malformed tensor record (bad storage, size, stride or offset)")
    lo, hi = storage.view_offset, storage.view_offset + storage.numel
    if hi > storage.array.size:
        raise ModelFileError(path, f"storage view {storage.key!r} [{lo}:{hi}] runs past its storage")
    base = storage.array[lo:hi]
    if any(n == 0 for n in t.size):
        return np.zeros(t.size, base.dtype)
    last = t.offset + sum((n - 1) * st for n, st in zip(t.size, t.stride))
    if last >= base.size:
        raise ModelFileError(
            path,
            f"tensor of size {t.size} stride {t.stride} offset {t.offset} runs past its storage "
            f"{storage.key!r} of {base.size} elements",
        )
    strides = tuple(st * base.dtype.itemsize for st in t.stride)
    view = np.lib.stride_tricks.as_strided(base[t.offset :], shape=t.size, strides=strides, writeable=False)
    return np.array(view, order="C", copy=True)  # (np.ascontiguousarray would make 0-d 1-d)


def _materialize(obj, path):
    """Replace lazy tensors by numpy arrays throughout dicts / lists / tuples."""
    if isinstance(obj, _LazyTensor):
        return _tensor_array(obj, path)
    if isinstance(obj, dict):
        out = type(obj)() if isinstance(obj, collections.OrderedDict) else {}
        for k, v in obj.items():
            out[k] = _materialize(v, path)
        return out
    if isinstance(obj, list):
        return [_materialize(v, path) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_materialize(v, path) for v in obj)
    return obj


def is_torch_zip(path) -> bool:
    """True if ``path`` is a zip archive with a ``<root>/data.pkl`` (torch >= 1.6 ``torch.save``)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.count("/") == 1 and n.endswith("/data.pkl") for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _load_zip(path, fileobj):
    try:
        return _load_zip_checked(path, fileobj)
    except (UnsafePickleError, ModelFileError):
        raise
    except (zipfile.BadZipFile, zlib.error, UnicodeDecodeError, NotImplementedError, OSError, EOFError,
            RuntimeError) as e:
        # A damaged container (bad CRC, truncated deflate stream, garbled names, unknown compression).
        raise ModelFileError(path, f"damaged torch zip archive ({type(e).__name__}: {e})") from None


def _load_zip_checked(path, fileobj):
    try:
        zf = zipfile.ZipFile(fileobj)
    except zipfile.BadZipFile as e:
        raise ModelFileError(path, f"not a readable torch zip archive ({e})") from None
    with zf:
        names = zf.namelist()
        roots = [n[: -len("data.pkl")] for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(roots) != 1:
            raise ModelFileError(
                path, "zip archive has no (or several) '<root>/data.pkl': not a torch.save file"
            )
        root = roots[0]
        byteorder = "little"
        if root + "byteorder" in names:
            byteorder = zf.read(root + "byteorder").decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise ModelFileError(path, f"unknown byteorder record {byteorder!r}")
        storages: dict[str, _LazyStorage] = {}

        def persistent(pid):
            storage_type, key, numel = _check_pid(path, pid, legacy=False)
            if key in storages:
                return storages[key]
            entry = f"{root}data/{key}"
            if entry not in names:
                raise UnsafePickleError(
                    path, f"persistent id points to {entry!r}, which is not in the archive"
                )
            dtype = storage_type.dtype.newbyteorder("<" if byteorder == "little" else ">")
            info = zf.getinfo(entry)
            if info.file_size < numel * dtype.itemsize:
                raise ModelFileError(
                    path, f"storage {entry!r} holds {info.file_size} bytes, expected {numel * dtype.itemsize}"
                )
            try:
                raw = zf.read(entry)
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise ModelFileError(
                    path, f"cannot read {entry!r} ({e}); the archive is damaged or truncated"
                ) from None
            array = np.frombuffer(raw, dtype=dtype, count=numel).astype(dtype.newbyteorder("="))
            storages[key] = _LazyStorage(key, array.dtype, numel, array=array)
            return storages[key]

        try:
            data = zf.read(root + "data.pkl")
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise ModelFileError(
                path, f"cannot read data.pkl ({e}); the archive is damaged or truncated"
            ) from None
        obj = _unpickle(path, io.BytesIO(data), persistent)
    return _materialize(obj, path)


def _unpickle(path, stream, persistent):
    try:
        return _TorchUnpickler(stream, path, persistent).load()
    except (UnsafePickleError, ModelFileError):
        raise
    except MALFORMED_PICKLE_ERRORS as e:
        raise ModelFileError(path, f"malformed torch pickle ({type(e).__name__}: {e})") from None


def _load_legacy(path, f):
    def plain(stream):
        return _unpickle(
            path,
            stream,
            lambda pid: (_ for _ in ()).throw(UnsafePickleError(path, f"unexpected persistent id {pid!r}")),
        )

    magic = plain(f)
    if magic != _LEGACY_MAGIC:
        raise ModelFileError(path, "not a torch.save file (bad magic number)")
    protocol = plain(f)
    if protocol != _LEGACY_PROTOCOL:
        raise ModelFileError(
            path, f"unsupported legacy torch protocol {protocol!r} (expected {_LEGACY_PROTOCOL})"
        )
    sys_info = plain(f)
    little = True
    if isinstance(sys_info, dict):
        little = bool(sys_info.get("little_endian", True))
    roots: dict[str, _LazyStorage] = {}
    views: list[_LazyStorage] = []

    def persistent(pid):
        storage_type, key, numel = _check_pid(path, pid, legacy=True)
        root = roots.get(key)
        if root is None:
            root = roots[key] = _LazyStorage(key, storage_type.dtype, numel)
        view_metadata = pid[5]
        if view_metadata is None:
            return root
        if not (
            isinstance(view_metadata, tuple)
            and len(view_metadata) == 3
            and all(isinstance(v, (int, str)) for v in view_metadata)
        ):
            raise UnsafePickleError(path, f"bad storage view metadata {view_metadata!r}")
        _, offset, size = view_metadata
        view = _LazyStorage(key, storage_type.dtype, size, view_offset=offset)
        views.append(view)
        return view

    obj = _unpickle(path, f, persistent)
    keys = plain(f)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ModelFileError(path, "legacy torch file: storage key list is malformed")
    remaining = os.fstat(f.fileno()).st_size - f.tell() if hasattr(f, "fileno") else None
    for key in keys:
        if key not in roots:
            raise ModelFileError(path, f"legacy torch file: data for unknown storage {key!r}")
        storage = roots[key]
        head = f.read(8)
        if len(head) != 8:
            raise ModelFileError(path, f"legacy torch file truncated before storage {key!r}")
        (numel,) = struct.unpack("<q" if little else ">q", head)
        nbytes = numel * storage.dtype.itemsize
        if numel != storage.numel or (remaining is not None and nbytes > remaining):
            raise ModelFileError(
                path, f"legacy torch file: storage {key!r} claims {numel} elements, expected {storage.numel}"
            )
        raw = f.read(nbytes)
        if len(raw) != nbytes:
            raise ModelFileError(path, f"legacy torch file truncated inside storage {key!r}")
        dtype = storage.dtype.newbyteorder("<" if little else ">")
        storage.array = np.frombuffer(raw, dtype=dtype).astype(storage.dtype.newbyteorder("="))
    for view in views:
        view.array = roots[view.key].array
    return _materialize(obj, path)


def load_torch_file(path):
    """Load a ``torch.save`` file (zip or legacy layout) as Python containers of numpy arrays.

    No torch import, no pickled code executed. Raises :class:`UnsafePickleError` for any global outside
    the allow-list or a storage reference outside the archive, and :class:`ModelFileError` (naming the
    file) for truncated, malformed or unsupported files.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(path, "file not found")
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(0)
        if head.startswith(b"PK"):
            return _load_zip(path, f)
        if tarfile.is_tarfile(path):
            raise ModelFileError(
                path,
                "this is the pre-0.4 torch tar serialization, which is not supported; re-save it with a "
                "current torch (torch.save(torch.load(f), g)) and convert g",
            )
        if head[:1] == b"\x80":
            return _load_legacy(path, f)
    raise ModelFileError(path, "not a torch.save file (neither a zip archive nor a legacy torch pickle)")
