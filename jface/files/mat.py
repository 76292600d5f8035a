"""MATLAB ``.mat`` files as dicts of numpy arrays, parsed in a child process with bounded memory.

scipy's MAT v5 reader is C code; on some corrupt files (flipped bytes) it crashes the whole
interpreter with a segmentation fault instead of raising (seen in tests/test_faults.py). So the
file is parsed in a child process: a crash there becomes a :class:`~jface.errors.ModelFileError`
here and loses nothing. The child first lists the variables' declared sizes (``scipy.io.whosmat``
reads only their headers) and refuses a file that declares more than the limit on what one file
may expand to; it then loads under an address-space limit, so cells and structs, whose contents
the headers do not size, are bounded too, and checks the loaded total once more.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from jface.errors import ModelFileError
from jface.files import paths
from jface.files.paths import check_path

__all__ = ["load_mat"]

# Bytes per element of each MATLAB class as loaded; cells and structs count one pointer per
# element here (their contents are counted after loading), sparse matrices count nothing (their
# data is counted after loading).
_CHILD = r"""
import resource, sys
import numpy as np, scipy.io

path, out, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
ITEM = {"double": 8, "single": 4, "int8": 1, "uint8": 1, "int16": 2, "uint16": 2, "int32": 4,
        "uint32": 4, "int64": 8, "uint64": 8, "logical": 1, "char": 4, "cell": 8, "struct": 8,
        "object": 8, "function_handle": 8, "opaque": 8, "sparse": 0}

def fail(code, message):
    sys.stderr.write(message[:500])
    sys.exit(code)

def vm_bytes():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0

def size(x, seen):
    if id(x) in seen:
        return 0
    seen.add(id(x))
    if isinstance(x, np.ndarray):
        total = x.nbytes
        if x.dtype.hasobject:
            total += sum(size(v, seen) for v in x.ravel(order="K"))
        elif x.dtype.names:
            total += sum(size(x[name], seen) for name in x.dtype.names if x.dtype[name].hasobject)
        return total
    if hasattr(x, "data") and hasattr(x, "indices") and hasattr(x, "indptr"):
        return x.data.nbytes + x.indices.nbytes + x.indptr.nbytes
    return sys.getsizeof(x)

try:
    declared = [(name, tuple(shape), cls) for name, shape, cls in scipy.io.whosmat(path)]
except Exception as exc:
    fail(3, f"{type(exc).__name__}: {exc}")
total = 0
for name, shape, cls in declared:
    nbytes = int(np.prod(shape, dtype=np.float64)) * ITEM.get(cls, 8)
    total += nbytes
    if total > limit:
        fail(4, f"variable {name!r} declares {cls} {list(shape)} ({nbytes} bytes; {total} in all "
                f"so far), more than the {limit}-byte limit on what one file may expand to; "
                "refusing to read it")
# Loading may take about twice the data (compressed stream + arrays) on top of scipy; only the
# soft limit is lowered (never above a limit the parent already set).
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
want = vm_bytes() + 2 * limit + (256 << 20)
if hard != resource.RLIM_INFINITY:
    want = min(want, hard)
try:
    resource.setrlimit(resource.RLIMIT_AS, (want, hard))
except (ValueError, OSError):
    pass
try:
    d = scipy.io.loadmat(path, mat_dtype=False, squeeze_me=False)
except MemoryError:
    fail(4, f"loading it needs more than the {limit}-byte limit on what one file may expand to")
except Exception as exc:
    fail(3, f"{type(exc).__name__}: {exc}")
d = {k: v for k, v in d.items() if not k.startswith("__")}
loaded = sum(size(v, set()) for v in d.values())
if loaded > limit:
    fail(4, f"its variables hold {loaded} bytes, more than the {limit}-byte limit on what one "
            "file may expand to")
np.savez(out, **d)
"""


def load_mat(path, *, limit: int | None = None) -> dict:
    """Variables of a MATLAB v5 (or v4/v6/v7) ``.mat`` file as numpy arrays.

    ``limit``: the most the variables may hold in all (default
    :data:`~jface.files.paths.MAX_EXPANDED_BYTES`). MATLAB v7.3 files are HDF5: read with ``h5py``
    when installed (datasets transposed back to MATLAB's order), otherwise a
    :class:`ModelFileError` says so.
    """
    path = check_path(path)
    limit = paths.MAX_EXPANDED_BYTES if limit is None else int(limit)
    with open(path, "rb") as f:
        head = f.read(128)
        f.seek(512)
        hdf5_signature = f.read(8)
    if head.startswith(b"MATLAB 7.3") or hdf5_signature == b"\x89HDF\r\n\x1a\n":
        return _load_mat73(path, limit)
    return _loadmat_isolated(path, limit)


def _loadmat_isolated(path: Path, limit: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="jface-mat-") as tmp:
        out = Path(tmp) / "vars.npz"
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, str(path), str(out), str(limit)],
            capture_output=True,
            text=True,
        )
        if proc.returncode == 4:
            raise ModelFileError(path, proc.stderr.strip())
        if proc.returncode != 0:
            if proc.returncode < 0:
                why = f"the MAT reader crashed on it (signal {-proc.returncode}); the file is corrupt"
            else:
                why = (proc.stderr.strip().splitlines()[-1] if proc.stderr.strip()
                       else f"exit {proc.returncode}")
            raise ModelFileError(path, f"not a readable MATLAB v5 .mat file ({why})")
        # The npz was written by our own child from scipy's parse (numpy arrays, and object
        # arrays only for MATLAB cells/structs), so unpickling its object arrays is safe.
        with np.load(out, allow_pickle=True) as z:
            return {k: z[k] for k in z.files}


def _load_mat73(path: Path, limit: int) -> dict:
    try:
        import h5py  # optional
    except ImportError:
        raise ModelFileError(
            path,
            "this is a MATLAB v7.3 (HDF5) .mat file; install h5py to read it, or re-save it in "
            "MATLAB with save(..., '-v7')",
        ) from None
    out = {}
    try:
        with h5py.File(path, "r") as f:
            datasets = [(key, item) for key, item in f.items()
                        if isinstance(item, h5py.Dataset) and not key.startswith("#")]
            total = sum(int(np.prod(item.shape, dtype=np.float64)) * item.dtype.itemsize
                        for _, item in datasets)
            if total > limit:
                raise ModelFileError(path, f"its datasets declare {total} bytes, more than the "
                                     f"{limit}-byte limit on what one file may expand to")
            for key, item in datasets:
                # HDF5 stores MATLAB's column-major arrays with the axes reversed.
                out[key] = np.asarray(item[()]).T
    except ModelFileError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ModelFileError(path, f"unreadable MATLAB v7.3 (HDF5) file ({exc})") from None
    return out
