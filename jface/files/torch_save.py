"""``torch.save`` files read without torch, through the restricted unpickler of
:mod:`jface.files.pickles` (nothing the file names is imported or run).

Layouts (torch's ``torch/serialization.py``):

* the zip archive (torch >= 1.6 default): ``<root>/data.pkl`` (a pickle whose tensors refer to
  storages through persistent ids ``('storage', StorageType, key, location, numel)``),
  ``<root>/data/<key>`` (raw storage bytes), ``<root>/byteorder`` (optional, 'little' / 'big');
* the legacy stream (``_use_new_zipfile_serialization=False``, torch 0.4-1.5; e.g. the old
  torchvision ``*.pth`` downloads, and each storage inside DECA's ``landmark_embedding.npy``):
  pickles of the magic number, the protocol version and the sys-info dict, the main pickle with
  persistent ids ``('storage', StorageType, root_key, location, numel, view_metadata)``, a pickle
  of the storage-key list, then per key an int64 element count followed by the raw bytes.

The very old tar layout (torch < 0.4) is detected and refused with a clear error. Storage sizes
are checked against the bytes present and charged to an :class:`~jface.files.paths.ExpansionBudget`
before they are read; tensors come back as numpy arrays (copies, C-contiguous), parameters as
plain arrays.
"""

from __future__ import annotations

import io
import re
import struct
import tarfile
import zipfile

import numpy as np

from jface.errors import ModelFileError, UnsafePickleError
from jface.files.paths import ExpansionBudget, check_path, read_file_bytes
from jface.files.pickles import (
    TorchStorage,
    TorchStorageType,
    file_errors,
    load_one,
    materialize,
)

__all__ = ["load_torch_file", "is_torch_zip", "loads_with_tensors"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_KEY_RE = re.compile(r"^[A-Za-z0-9_]{1,64}$")


def _check_pid(path, pid, legacy: bool):
    """(storage type, key, numel) of a storage persistent id, or UnsafePickleError."""
    n = 6 if legacy else 5
    if not (isinstance(pid, tuple) and len(pid) == n and pid[0] == "storage"):
        raise UnsafePickleError(
            path, f"unexpected persistent id {pid!r} (expected ('storage', ...) of length {n})"
        )
    _, storage_type, key, location, numel = pid[:5]
    if not isinstance(storage_type, TorchStorageType):
        raise UnsafePickleError(path, f"persistent id names no allowed storage type: "
                                f"{storage_type!r}")
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise UnsafePickleError(
            path,
            f"persistent id has an invalid storage key {key!r} (must be a plain name inside the "
            "archive)",
        )
    if not isinstance(location, str) or not isinstance(numel, int) or numel < 0:
        raise UnsafePickleError(path, f"persistent id has a bad location/size: {pid!r}")
    return storage_type, key, numel


def is_torch_zip(path) -> bool:
    """True if ``path`` is a zip archive with a ``<root>/data.pkl`` (torch >= 1.6 ``torch.save``)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.count("/") == 1 and n.endswith("/data.pkl") for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _read_zip(fileobj, path, budget: ExpansionBudget):
    """The (not yet materialised) object of a zip-layout ``torch.save`` in ``fileobj``."""
    try:
        zf = zipfile.ZipFile(fileobj)
    except zipfile.BadZipFile as exc:
        raise ModelFileError(path, f"not a readable torch zip archive ({exc})") from None
    with zf:
        names = set(zf.namelist())
        roots = [n[: -len("data.pkl")] for n in names
                 if n.count("/") == 1 and n.endswith("/data.pkl")]
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
        storages: dict[str, TorchStorage] = {}

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
                    path, f"storage {entry!r} holds {info.file_size} bytes, expected "
                    f"{numel * dtype.itemsize}"
                )
            budget.take(info.file_size, entry, what="zip entry declares")
            raw = zf.read(entry)
            array = np.frombuffer(raw, dtype=dtype, count=numel).astype(dtype.newbyteorder("="))
            storages[key] = TorchStorage(key, array.dtype, numel, array=array)
            return storages[key]

        info = zf.getinfo(root + "data.pkl")
        budget.take(info.file_size, info.filename, what="zip entry declares")
        data = zf.read(info)
        return load_one(io.BytesIO(data), path, torch=True, persistent_load=persistent)


def _read_legacy(data: bytes, path, budget: ExpansionBudget):
    """The (not yet materialised) object of the legacy ``torch.save`` stream ``data``."""
    stream = io.BytesIO(data)

    def plain():
        return load_one(stream, path)

    if plain() != _LEGACY_MAGIC:
        raise ModelFileError(path, "not a torch.save file (bad magic number)")
    protocol = plain()
    if protocol != _LEGACY_PROTOCOL:
        raise ModelFileError(
            path, f"unsupported legacy torch protocol {protocol!r} (expected {_LEGACY_PROTOCOL})"
        )
    sys_info = plain()
    little = bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True
    roots: dict[str, tuple] = {}  # key -> (dtype, numel, storage)
    views: list[TorchStorage] = []

    def persistent(pid):
        storage_type, key, numel = _check_pid(path, pid, legacy=True)
        if key not in roots:
            roots[key] = (storage_type.dtype, numel, TorchStorage(key, storage_type.dtype, numel))
        dtype, _, root = roots[key]
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
        view = TorchStorage(key, dtype, size, view_offset=offset)
        views.append(view)
        return view

    obj = load_one(stream, path, torch=True, persistent_load=persistent)
    keys = plain()
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ModelFileError(path, "legacy torch file: storage key list is malformed")
    total = len(data)
    for key in keys:
        if key not in roots:
            raise ModelFileError(path, f"legacy torch file: data for unknown storage {key!r}")
        dtype, declared, storage = roots[key]
        head = stream.read(8)
        if len(head) != 8:
            raise ModelFileError(path, f"legacy torch file truncated before storage {key!r}")
        (numel,) = struct.unpack("<q" if little else ">q", head)
        nbytes = numel * dtype.itemsize
        if numel != declared or nbytes > total - stream.tell():
            raise ModelFileError(
                path, f"legacy torch file: storage {key!r} claims {numel} elements, expected "
                f"{declared}"
            )
        budget.take(nbytes, key, what="a storage declares")
        stored = dtype.newbyteorder("<" if little else ">")
        # a view of the file's bytes, copied once into native order (no intermediate slice)
        storage.array = np.frombuffer(data, dtype=stored, count=numel,
                                      offset=stream.tell()).astype(dtype.newbyteorder("="))
        stream.seek(nbytes, io.SEEK_CUR)
    for view in views:
        view.array = roots[view.key][2].array
    return obj


def _storage_from_bytes(data: bytes, path, budget: ExpansionBudget) -> TorchStorage:
    """``torch.storage._load_from_bytes``: a storage saved with ``torch.save`` inside a pickle."""
    obj = _read_zip(io.BytesIO(data), path, budget) if data[:2] == b"PK" else _read_legacy(
        data, path, budget)
    if not isinstance(obj, TorchStorage) or not isinstance(obj.array, np.ndarray):
        raise ModelFileError(path, "a torch storage stream does not hold a single storage")
    return obj


def loads_with_tensors(data: bytes, path="<pickle>", *, limit=None):
    """Unpickle ``data`` whose torch tensors keep their storages as nested ``torch.save`` bytes
    (``torch.storage._load_from_bytes``, as in DECA's ``landmark_embedding.npy``); tensors become
    numpy arrays."""
    budget = ExpansionBudget(path, limit)
    with file_errors(path):
        obj = load_one(io.BytesIO(data), path, torch=True,
                       load_from_bytes=lambda raw: _storage_from_bytes(raw, path, budget))
        return materialize(obj, path, budget)


def load_torch_file(path, *, limit=None):
    """Load a ``torch.save`` file (zip or legacy layout) as Python containers of numpy arrays.

    No torch import, no pickled code executed. Raises :class:`UnsafePickleError` for any global
    outside the allow-list or a storage reference outside the archive, and
    :class:`ModelFileError` (naming the file) for truncated, malformed, unsupported or oversized
    (``limit`` bytes of storages, default :data:`~jface.files.paths.MAX_EXPANDED_BYTES`) files.
    """
    path = check_path(path)
    budget = ExpansionBudget(path, limit)
    with open(path, "rb") as f:
        head = f.read(4)
    with file_errors(path, "torch.save file"):
        if head.startswith(b"PK"):
            with open(path, "rb") as f:
                return materialize(_read_zip(f, path, budget), path, budget)
        if tarfile.is_tarfile(path):
            raise ModelFileError(
                path,
                "this is the pre-0.4 torch tar serialization, which is not supported; re-save it "
                "with a current torch (torch.save(torch.load(f), g)) and convert g",
            )
        if head[:1] == b"\x80":
            return materialize(_read_legacy(read_file_bytes(path), path, budget), path, budget)
    raise ModelFileError(path, "not a torch.save file (neither a zip archive nor a legacy torch "
                         "pickle)")
