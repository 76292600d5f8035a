"""``.npz`` archives read with bounds, and the project's npz container (arrays + JSON metadata).

:func:`read_npz` never hands a member to numpy's loader unchecked: each zip member's *declared*
uncompressed size is charged to an :class:`~jface.files.paths.ExpansionBudget`, and its ``.npy``
header's shape x itemsize must fill that size exactly, all before the array is allocated. A 2 MB
npz whose members claim gigabytes is refused at once with an error naming the file and member.
No pickles are read.

The container (:func:`write_container` / :func:`read_container`): one entry per array plus a
``uint8`` entry holding UTF-8 JSON metadata with at least ``"format"`` and ``"version"``, written
atomically (temporary file in the destination folder, fsync, rename), so a failed save never
destroys an existing file. The model files of :mod:`jface.models` are such containers.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from jface.errors import ModelFileError
from jface.files.npy import read_npy_array
from jface.files.paths import ExpansionBudget, check_path

__all__ = ["read_npz", "npz_member_names", "sha256_file", "write_container", "read_container"]

# What a damaged zip container raises while being read (bad CRC, truncated deflate stream,
# garbled names, unknown compression, a member running past the end of the file).
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, UnicodeDecodeError, NotImplementedError, OSError,
               EOFError, RuntimeError, ValueError, KeyError, IndexError, OverflowError)


def npz_member_names(path) -> list[str]:
    """The array names of an ``.npz`` (its members without ``.npy``), from the zip directory."""
    path = check_path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            return [n[:-4] if n.endswith(".npy") else n for n in archive.namelist()]
    except _ZIP_ERRORS as exc:
        raise ModelFileError(path, f"unreadable .npz ({type(exc).__name__}: {exc})") from None


def read_npz(path, *, names: Iterable[str] | None = None, limit: int | None = None,
             what: str = ".npz") -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` at ``path`` (all, or only ``names``), bounded by ``limit``
    bytes in all (default :data:`~jface.files.paths.MAX_EXPANDED_BYTES`).

    Raises :class:`ModelFileError` naming the file (and member) for anything but an npz of plain
    arrays whose declared sizes fit the limit.
    """
    path = check_path(path)
    budget = ExpansionBudget(path, limit)
    wanted = None if names is None else set(names)
    out: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    raise ModelFileError(path, "entry is not an .npy array", info.filename)
                name = info.filename[:-4]
                if wanted is not None and name not in wanted:
                    continue
                budget.take(info.file_size, name, what="zip entry declares")
                with archive.open(info) as member:
                    out[name] = read_npy_array(member, path, name, size=info.file_size)
    except ModelFileError:
        raise
    except MemoryError:
        raise ModelFileError(path, f"{what} asks for more memory than is available") from None
    except _ZIP_ERRORS as exc:
        raise ModelFileError(
            path, f"not a readable {what} without pickles ({type(exc).__name__}: {exc})"
        ) from None
    return out


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_container(path, arrays: Mapping[str, np.ndarray], meta: dict, meta_key: str) -> Path:
    """Write ``arrays`` and ``meta`` (JSON, under ``meta_key``) to the npz ``path`` atomically.

    ``path`` is written exactly (no suffix added); its folder must exist.
    """
    payload = np.frombuffer(json.dumps(meta, indent=1).encode("utf-8"), dtype=np.uint8)
    path = Path(os.fspath(path))
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise ModelFileError(path, "is a directory; give a file name for the model")
    if not folder.is_dir():
        raise ModelFileError(path, f"cannot write: folder {str(folder)!r} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{meta_key: payload}, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def read_container(path, meta_key: str, *, format_name: str, max_version: int,
                   arrays: bool = True, missing_hint: str = "") -> tuple[dict, dict | None]:
    """(metadata, arrays or None) of a container written by :func:`write_container`.

    Checks that ``meta_key`` is there and holds a JSON object whose ``format`` is
    ``format_name`` and whose integer ``version`` is between 1 and ``max_version``.
    """
    path = check_path(path)
    with open(path, "rb") as f:
        if f.read(2) != b"PK":
            raise ModelFileError(path, "not an .npz (zip) file; expected a jface model file")
    present = npz_member_names(path)
    if meta_key not in present:
        raise ModelFileError(path, f"no {meta_key!r} entry: not a jface model file{missing_hint}",
                             meta_key)
    content = read_npz(path, names=None if arrays else [meta_key])
    raw = content.pop(meta_key)
    try:
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise ValueError("metadata is not a uint8 byte array")
        meta = json.loads(raw.tobytes().decode("utf-8"))
        if not isinstance(meta, dict):
            raise ValueError("metadata is not a JSON object")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFileError(path, f"corrupt metadata ({exc})", meta_key) from None
    if meta.get("format") != format_name:
        raise ModelFileError(path, f"format is {meta.get('format')!r}, expected {format_name!r}",
                             meta_key)
    version = meta.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ModelFileError(path, f"invalid format version {version!r}", meta_key)
    if version > max_version:
        raise ModelFileError(
            path,
            f"format version {version} is newer than this jface supports ({max_version}); "
            "upgrade jface or regenerate the file",
            meta_key,
        )
    return meta, (content if arrays else None)

