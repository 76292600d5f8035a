"""Memory bombs against the file readers: ``python -m jface.bench bombs [--json PATH] [--keep DIR]``.

Each crafted file (a few bytes to a few MB that declare gigabytes: a pickle memo index, a sparse
shape, zip members, a ``.mat`` variable, a torch storage or tensor view) is loaded in a child
process under an address-space limit: ``RLIMIT_AS`` = the child's size after importing the reader
(and starting JAX where the reader uses it), plus :data:`HEADROOM`. A reader that allocates what
the file declares then dies with ``MemoryError`` instead of swapping. Printed per bomb: file size,
what it declares, the outcome and error, wall time, and the child's peak RSS before and after the
load (``resource.getrusage``; the ``.mat`` reader's own child is reported separately).

The builders are also what ``tests/test_files_bombs.py`` loads.
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import scipy.sparse as sp

__all__ = ["HEADROOM", "BOMBS", "MEMO_BOMB", "build", "deflate_zeros", "write_zip", "run_in_child",
           "run_bomb", "main"]

#: Address space a child may use beyond what it holds after its imports.
HEADROOM = 512 << 20
_BLOCK = 1 << 24  # deflate a 16 MiB block of zeros once, repeat its bytes

# ---------------------------------------------------------------------------------------------
# Deflate streams of zeros without deflating gigabytes: after a full flush the decoder needs no
# history, so one compressed block of zeros can be repeated; the checksums are extended
# arithmetically (CRC-32 by GF(2) matrix powers as zlib's crc32_combine, Adler-32 in closed form).


def _gf2_times(mat, vec):
    out, i = 0, 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def _gf2_square(mat):
    return [_gf2_times(mat, m) for m in mat]


def _crc32_add_zeros(crc: int, n: int) -> int:
    odd = [0xEDB88320] + [1 << i for i in range(31)]  # one zero bit
    odd = _gf2_square(_gf2_square(odd))  # four zero bits
    reg = crc ^ 0xFFFFFFFF
    while n:
        even = _gf2_square(odd)
        if n & 1:
            reg = _gf2_times(even, reg)
        n >>= 1
        if not n:
            break
        odd = _gf2_square(even)
        if n & 1:
            reg = _gf2_times(odd, reg)
        n >>= 1
    return reg ^ 0xFFFFFFFF


def _adler32_add_zeros(adler: int, n: int) -> int:
    a, b = adler & 0xFFFF, adler >> 16
    return (((b + n * a) % 65521) << 16) | a


def deflate_zeros(prefix: bytes, n_zeros: int, *, zlib_wrapper: bool) -> tuple[bytes, int]:
    """(compressed ``prefix + b"\\0" * n_zeros``, its CRC-32 or, with ``zlib_wrapper``, the
    stream carries its Adler-32 and the CRC-32 is returned anyway)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 15 if zlib_wrapper else -15)
    parts = [comp.compress(prefix), comp.flush(zlib.Z_FULL_FLUSH)]
    block = comp.compress(b"\0" * _BLOCK) + comp.flush(zlib.Z_FULL_FLUSH)
    full, rest = divmod(n_zeros, _BLOCK)
    parts.append(block * full)
    parts.append(comp.compress(b"\0" * rest) + comp.flush(zlib.Z_FULL_FLUSH))
    end = comp.flush(zlib.Z_FINISH)
    crc = _crc32_add_zeros(zlib.crc32(prefix), n_zeros)
    if zlib_wrapper:  # replace the trailer: the compressor saw only one block of zeros
        adler = _adler32_add_zeros(zlib.adler32(prefix), n_zeros)
        end = end[:-4] + struct.pack(">I", adler)
    return b"".join(parts) + end, crc


def write_zip(path: Path, members: list) -> Path:
    """A zip of ``(name, data)`` (stored) or ``(name, (deflated bytes, crc, size))`` members."""
    out, central = bytearray(), bytearray()
    for name, data in members:
        name = name.encode()
        if isinstance(data, tuple):
            payload, crc, size = data
            method = 8
        else:
            payload, crc, size, method = data, zlib.crc32(data), len(data), 0
        offset = len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, len(payload),
                           size, len(name), 0) + name + payload
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21, crc,
                               len(payload), size, len(name), 0, 0, 0, 0, 0, offset) + name
    out += central + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members),
                                 len(central), len(out), 0)
    Path(path).write_bytes(bytes(out))
    return Path(path)


def _npy_header(shape, dtype="<f8") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False,
                                               "shape": tuple(shape)})
    return buf.getvalue()


def _npy_bomb(n_bytes: int):
    """A deflated ``.npy`` member of float64 zeros of about ``n_bytes``."""
    count = n_bytes // 8
    header = _npy_header((count,))
    payload, crc = deflate_zeros(header, count * 8, zlib_wrapper=False)
    return payload, crc, len(header) + count * 8


def _zeros_member(n_bytes: int):
    """A deflated zip member of ``n_bytes`` zero bytes."""
    payload, crc = deflate_zeros(b"", n_bytes, zlib_wrapper=False)
    return payload, crc, n_bytes


def _npy_small(array) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(array), allow_pickle=False)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# The bombs

MEMO_BOMB = b"\x80\x02Nr" + (2**27).to_bytes(4, "little") + b"."  # LONG_BINPUT, memo index 2**27


def _sparse_pickle(shape, fields=None) -> bytes:
    """A FLAME-style pickled dict whose ``J_regressor`` is an empty scipy CSC matrix of ``shape``."""
    rows, cols = shape
    j_reg = sp.csc_matrix((np.zeros(0), np.zeros(0, np.int32), np.zeros(cols + 1, np.int32)),
                          shape=(rows, cols))
    return pickle.dumps({**(fields or {}), "J_regressor": j_reg}, protocol=2)


def _tiny_flame_fields():
    n_v, n_j = 12, 5
    return {"f": np.array([[0, 1, 2]], np.uint32), "v_template": np.zeros((n_v, 3)),
            "shapedirs": np.zeros((n_v, 3, 400)), "posedirs": np.zeros((n_v, 3, 9 * (n_j - 1))),
            "kintree_table": np.array([[-1, 0, 1, 1, 1], [0, 1, 2, 3, 4]]),
            "weights": np.zeros((n_v, n_j))}


def _mat_bomb(path: Path, n_bytes: int) -> Path:
    """A MATLAB v5 file with one compressed double column of ``n_bytes`` of zeros."""
    rows = n_bytes // 8
    name = b"x" + b"\0" * 7
    body = (struct.pack("<II", 6, 8) + struct.pack("<II", 6, 0)  # array flags: mxDOUBLE_CLASS
            + struct.pack("<II", 5, 8) + struct.pack("<ii", rows, 1)  # dims
            + struct.pack("<II", 1, 1) + name  # name 'x'
            + struct.pack("<II", 9, rows * 8))  # miDOUBLE data follows
    matrix_head = struct.pack("<II", 14, len(body) + rows * 8) + body
    payload, _ = deflate_zeros(matrix_head, rows * 8, zlib_wrapper=True)
    header = b"MATLAB 5.0 MAT-file, jface memory bomb".ljust(116, b" ") + b"\0" * 8 + b"\x00\x01IM"
    path.write_bytes(header + struct.pack("<II", 15, len(payload)) + payload)
    return path


def _torch_zip(path: Path, data_pkl: bytes, storages=()) -> Path:
    members = [("archive/data.pkl", data_pkl), ("archive/byteorder", b"little")]
    members += list(storages)
    return write_zip(path, members)


def _tensor_pickle(size, stride, numel) -> bytes:
    """data.pkl of ``{'x': tensor}`` over FloatStorage '0' of ``numel`` elements."""
    return (b"\x80\x02}X\x01\x00\x00\x00xctorch._utils\n_rebuild_tensor_v2\n("
            b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpu"
            + b"J" + struct.pack("<i", numel) + b"tQ"
            + b"K\x00" + b"(" + b"".join(b"J" + struct.pack("<i", s) for s in size) + b"t"
            + b"(" + b"".join(b"J" + struct.pack("<i", s) for s in stride) + b"t"
            + b"\x89ccollections\nOrderedDict\n)RtRs.")


# name -> (builder(folder) -> path, "module:function", extra args, phrase the error must contain)
BOMBS = {
    "memo-numpy-pickle": (lambda d: _write(d / "memo.pkl", MEMO_BOMB),
                          "jface.files.pickles:load_numpy_pickle", [], "memo index"),
    "memo-cli-vggface2": (lambda d: _write(d / "resnet50_ft_weight.pkl", MEMO_BOMB),
                          "jface.weights.__main__:main", ["convert", "vggface2"], "memo index"),
    "memo-cli-vgg19": (lambda d: _write(d / "vgg19.pth", MEMO_BOMB),
                       "jface.weights.__main__:main", ["convert", "vgg19"], "memo index"),
    "memo-cli-deca": (lambda d: _torch_zip(d / "deca_model.tar", MEMO_BOMB),
                      "jface.weights.__main__:main", ["convert", "deca"], "memo index"),
    "flame-sparse-16384": (lambda d: _write(d / "generic_model.pkl",
                                            _sparse_pickle((16384, 16384), _tiny_flame_fields())),
                           "jface.models.loaders:load_flame", [], "J_regressor"),
    "flame-sparse-16GiB": (lambda d: _write(d / "j_regressor.pkl", _sparse_pickle((65536, 32768))),
                           "jface.models.loaders:read_flame_fields", [], "J_regressor"),
    "npz-load_model": (lambda d: write_zip(d / "model.npz", [
                           ("__jface_meta__.npy", _npy_small(np.frombuffer(b"{}", np.uint8))),
                           ("mean.npy", _npy_bomb(2_200_000_000))]),
                       "jface.models.store:load_model", [], "mean"),
    "npz-load_flame": (lambda d: write_zip(d / "flame.npz", [
                           ("v_template.npy", _npy_small(np.zeros((5023, 3)))),
                           ("shapedirs.npy", _npy_bomb(2_200_000_000)),
                           ("posedirs.npy", _npy_bomb(2_200_000_000))]),
                       "jface.models.loaders:load_flame", [], "shapedirs"),
    "npz-load_variables": (lambda d: write_zip(d / "weights.npz", [
                               ("__jface_weights__.npy", _npy_small(np.array('{"format_version": 1}'))),
                               ("E_flame/params/conv/kernel.npy", _npy_bomb(2_200_000_000))]),
                           "jface.files.weights:load_variables", [], "kernel"),
    "mat-1.3GB": (lambda d: _mat_bomb(d / "01_MorphableModel.mat", 1_300_000_000),
                  "jface.models.loaders:load_bfm2009", [], "limit"),
    "torch-storage-2.2GB": (lambda d: _torch_zip(d / "storage.tar", _tensor_pickle((1,), (1,), 550_000_000),
                                                 [("archive/data/0", _zeros_member(2_200_000_000))]),
                            "jface.files.torch_save:load_torch_file", [], "archive/data/0"),
    "torch-view-8GiB": (lambda d: _torch_zip(d / "view.tar", _tensor_pickle((32768, 32768), (0, 0), 1),
                                             [("archive/data/0", b"\0" * 4)]),
                        "jface.files.torch_save:load_torch_file", [], "tensor of size"),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def build(name: str, folder) -> Path:
    """Write bomb ``name`` into ``folder``; returns its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return BOMBS[name][0](folder)


# ---------------------------------------------------------------------------------------------
# The child


_CHILD = r"""
import contextlib, importlib, io, json, resource, sys, time
spec = json.loads(sys.argv[1])
module, _, function = spec["target"].partition(":")
fn = getattr(importlib.import_module(module), function)
from jface.errors import ModelFileError
if "jax" in sys.modules:  # start the backend (its threads and arenas) before measuring
    import jax.numpy as jnp
    jnp.zeros(1).block_until_ready()
vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize:")).split()[1]) * 1024
limit = vm + spec["headroom"]
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
out = {"vm_before": vm, "limit": limit,
       "rss_before_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
err = io.StringIO()
start = time.perf_counter()
try:
    with contextlib.redirect_stderr(err):
        value = fn(spec["argv"]) if "argv" in spec else fn(*spec["args"])
    out.update(outcome="returned", value=repr(value)[:200])
except ModelFileError as exc:
    out.update(outcome="ModelFileError", error=str(exc))
except MemoryError as exc:
    out.update(outcome="MemoryError", error=str(exc)[:300])
except BaseException as exc:
    out.update(outcome=type(exc).__name__, error=str(exc)[:300])
out["seconds"] = time.perf_counter() - start
out["stderr"] = err.getvalue()[-2000:]
out["rss_peak_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out["children_rss_peak_kb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print("JFACE-BOMB " + json.dumps(out))
"""


def run_in_child(target: str, args: list, *, argv: list | None = None, headroom: int = HEADROOM,
                 timeout: float = 300) -> dict:
    """Call ``module:function(*args)`` (or ``function(argv)``) in a fresh interpreter under
    ``RLIMIT_AS`` (its size after the imports plus ``headroom``); the outcome, error, stderr, time
    and peak RSS as a dict."""
    spec = {"target": target, "args": [str(a) if isinstance(a, Path) else a for a in args],
            "headroom": headroom}
    if argv is not None:
        spec["argv"] = [str(a) for a in argv]
    spec = json.dumps(spec)
    proc = subprocess.run([sys.executable, "-c", _CHILD, spec], capture_output=True, text=True,
                          timeout=timeout, cwd=Path(__file__).resolve().parents[2])
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("JFACE-BOMB ")), None)
    if line is None:
        return {"outcome": f"child exited {proc.returncode}", "error": proc.stderr[-2000:]}
    return json.loads(line[len("JFACE-BOMB "):])


def run_bomb(name: str, folder) -> dict:
    """Build bomb ``name`` in ``folder`` and load it in a child; the child's report plus the file.

    A command line (``jface.weights.__main__:main``) gets ``[*extra, FILE, "-o", OUT]`` as its argv.
    """
    _, target, extra, phrase = BOMBS[name]
    path = build(name, folder)
    if target.endswith(":main"):
        report = run_in_child(target, [], argv=[*extra, str(path), "-o",
                                                str(Path(folder) / f"{name}.out.npz")])
    else:
        report = run_in_child(target, [*extra, path])
    report.update(name=name, file=str(path), file_bytes=path.stat().st_size, phrase=phrase)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jface.bench bombs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the reports here")
    parser.add_argument("--keep", help="build the files in this folder (default: a temporary one)")
    parser.add_argument("--only", help="comma-separated bomb names")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(BOMBS)
    reports = []
    with tempfile.TemporaryDirectory(prefix="jface-bombs-") as tmp:
        folder = Path(args.keep or tmp)
        for name in names:
            t0 = time.perf_counter()
            report = run_bomb(name, folder)
            report["total_seconds"] = time.perf_counter() - t0
            reports.append(report)
            delta = (report.get("rss_peak_kb", 0) - report.get("rss_before_kb", 0)) / 1024
            message = report.get("error") or report.get("stderr", "").strip() or report.get("value", "")
            print(f"{name:22s} {report['file_bytes']:>10,d} B  {report['outcome']:15s} "
                  f"{report.get('seconds', float('nan')):6.3f} s  peak RSS "
                  f"{report.get('rss_peak_kb', 0) / 1024:7.1f} MiB (+{delta:.1f})  {message[:160]}",
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
