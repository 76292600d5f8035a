"""Loaders for the model files of the original pipelines, with strict layout checks.

Every loader reads one file, checks field names, shapes, dtypes and index ranges, and converts to
this project's conventions: vertices row-major ``(N, 3)``, bases ``(N, 3, K)``, faces ``(F, 3)``
int32 **0-based**. Anything wrong raises :class:`~jface.models.errors.ModelFileError` naming the
file, the field and what was expected. Pickled files are read with
:mod:`jface.models.safe_pickle` (no chumpy, no torch, nothing executed from the file).

Files, loaders, units and index bases (in the file):

* BFM 2009 ``01_MorphableModel.mat`` -> :func:`load_bfm2009`: µm, ``tl`` 1-based.
* 3DDFA ``Model_Expression.mat`` -> :func:`load_tddfa_expression`: µm, 3DDFA vertex order.
* ``map_tddfa_to_basel.mat`` -> :func:`load_map_tddfa_to_basel`: 0-based BFM indices.
* ``Landmarks*.anl`` -> :func:`load_anl`: 1-based vertex indices.
* ``BFM_UV.mat`` -> :func:`load_bfm_uv`: UV in [0, 1].
* FLAME ``generic_model.pkl`` -> :func:`load_flame_pkl` / :func:`load_flame`: metres, ``f`` 0-based.
* DECA ``landmark_embedding.npy`` -> :func:`load_landmark_embedding`: 0-based FLAME face indices.
* DECA ``head_template.obj`` -> :func:`load_obj`: 1-based ``f v/vt``.

All loaders return 0-based indices; faces and index maps are int32 (the landmark embedding keeps
its stored int64, so it equals DECA's arrays exactly).
"""

from __future__ import annotations

import ast
import io
import os
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from jface.models import safe_pickle
from jface.models.errors import ModelFileError

__all__ = [
    "ModelArrays",
    "load_bfm2009",
    "load_tddfa_expression",
    "load_map_tddfa_to_basel",
    "load_anl",
    "load_bfm_uv",
    "read_flame_fields",
    "load_flame_pkl",
    "load_flame",
    "load_landmark_embedding",
    "load_obj",
    "load_mat",
    "read_file_bytes",
]

#: Upper bound on a file read whole into memory (the real FLAME pkl is ~50 MB).
MAX_FILE_BYTES = 4 * 2**30


class ModelArrays(dict):
    """A dict of arrays that also allows attribute access (``bfm.mean`` == ``bfm["mean"]``)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self):
        parts = []
        for k, v in self.items():
            if isinstance(v, np.ndarray):
                parts.append(f"{k}={v.dtype}{list(v.shape)}")
            else:
                parts.append(f"{k}={v!r}")
        return "ModelArrays(" + ", ".join(parts) + ")"


# ----------------------------------------------------------------------------------------------
# Small checks shared by the loaders


def _check_path(path) -> Path:
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
    path = _check_path(path)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelFileError(path, f"cannot read: {exc}") from None


def _require(fields: Mapping, name: str, path, what: str = "") -> Any:
    if name not in fields:
        present = sorted(k for k in fields if not str(k).startswith("__"))
        raise ModelFileError(
            path,
            f"missing field {name!r}{' (' + what + ')' if what else ''}; the file has {present}",
            field=name,
        )
    return fields[name]


def _array(value, path, field, *, kinds="f", ndim=None) -> np.ndarray:
    """``value`` as an ndarray of dtype kind in ``kinds`` ('f' float, 'i'/'u' integer, 'b')."""
    if not isinstance(value, np.ndarray):
        raise ModelFileError(path, f"expected an array, got {type(value).__name__}", field)
    if value.dtype.kind not in kinds:
        names = {"f": "floating", "i": "signed integer", "u": "unsigned integer", "b": "bool"}
        want = " or ".join(names[k] for k in kinds)
        raise ModelFileError(path, f"expected a {want} array, got dtype {value.dtype}", field)
    if ndim is not None and value.ndim != ndim:
        raise ModelFileError(
            path, f"expected a {ndim}-D array, got shape {value.shape}", field
        )
    if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
        raise ModelFileError(path, "contains NaN or infinite values", field)
    return value


def _shape_error(path, field, expected, got):
    raise ModelFileError(path, f"expected shape {expected}, got {tuple(got)}", field)


def _vector(value, path, field, *, kinds="f", length=None) -> np.ndarray:
    """A vector stored as (K,), (K, 1) or (1, K) (MATLAB keeps everything 2-D)."""
    value = _array(value, path, field, kinds=kinds)
    if value.ndim == 2 and 1 in value.shape:
        value = value.reshape(-1)
    if value.ndim != 1:
        _shape_error(path, field, "(K,) or a (K, 1) / (1, K) column", value.shape)
    if length is not None and value.shape[0] != length:
        _shape_error(path, field, f"({length},)", value.shape)
    return value


def _faces_from(value, path, field, *, n_vertices, base) -> np.ndarray:
    """Integer-valued ``(F, 3)`` triangle list in ``base`` (0 or 1) -> int32 0-based."""
    value = _array(value, path, field, kinds="fiu", ndim=2)
    if value.shape[1] != 3 or value.shape[0] == 0:
        _shape_error(path, field, "(F, 3) triangles", value.shape)
    if value.dtype.kind == "f" and np.any(value != np.round(value)):
        raise ModelFileError(path, "triangle indices are not integers", field)
    faces = value.astype(np.int64) - base
    lo, hi = faces.min(), faces.max()
    if lo < 0 or hi >= n_vertices:
        raise ModelFileError(
            path,
            f"{base}-based triangle indices must lie in [{base}, {n_vertices - 1 + base}] "
            f"({n_vertices} vertices), got [{lo + base}, {hi + base}]",
            field,
        )
    return faces.astype(np.int32)


# ----------------------------------------------------------------------------------------------
# MATLAB files


def load_mat(path) -> dict:
    """Variables of a MATLAB v5 (or v4/v6/v7) ``.mat`` file as numpy arrays.

    MATLAB v7.3 files are HDF5: read with ``h5py`` when installed (datasets transposed back to
    MATLAB's order), otherwise a :class:`ModelFileError` says so.
    """
    path = _check_path(path)
    with open(path, "rb") as f:
        head = f.read(128)
        f.seek(512)
        hdf5_signature = f.read(8)
    if head.startswith(b"MATLAB 7.3") or hdf5_signature == b"\x89HDF\r\n\x1a\n":
        return _load_mat73(path)
    return _loadmat_isolated(path)


# scipy's MAT v5 reader is C code; on some corrupt files (flipped bytes) it crashes the whole
# interpreter with a segmentation fault instead of raising (seen in tests/test_faults.py). So the
# file is parsed in a child process: a crash there becomes a ModelFileError here and loses nothing.
_LOADMAT_CHILD = (
    "import sys, numpy as np, scipy.io\n"
    "try:\n"
    "    d = scipy.io.loadmat(sys.argv[1], mat_dtype=False, squeeze_me=False)\n"
    "except Exception as exc:\n"
    "    sys.stderr.write(f'{type(exc).__name__}: {exc}'[:500]); sys.exit(3)\n"
    "np.savez(sys.argv[2], **{k: v for k, v in d.items() if not k.startswith('__')})\n"
)


def _loadmat_isolated(path: Path) -> dict:
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="jface-mat-") as tmp:
        out = Path(tmp) / "vars.npz"
        proc = subprocess.run(
            [sys.executable, "-c", _LOADMAT_CHILD, str(path), str(out)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            if proc.returncode < 0:
                why = f"the MAT reader crashed on it (signal {-proc.returncode}); the file is corrupt"
            else:
                why = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
            raise ModelFileError(path, f"not a readable MATLAB v5 .mat file ({why})")
        # The npz was written by our own child from scipy's parse (numpy arrays, and object
        # arrays only for MATLAB cells/structs), so unpickling its object arrays is safe.
        with np.load(out, allow_pickle=True) as z:
            return {k: z[k] for k in z.files}


def _load_mat73(path: Path) -> dict:
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
            for key, item in f.items():
                if isinstance(item, h5py.Dataset) and not key.startswith("#"):
                    # HDF5 stores MATLAB's column-major arrays with the axes reversed.
                    out[key] = np.asarray(item[()]).T
    except Exception as exc:  # noqa: BLE001
        raise ModelFileError(path, f"unreadable MATLAB v7.3 (HDF5) file ({exc})") from None
    return out


def load_bfm2009(path) -> ModelArrays:
    """Basel Face Model 2009 ``01_MorphableModel.mat`` (spec 3dmm_stn.md §7.1).

    The file stores ``shapeMU`` ``(3N, 1)`` and ``shapePC`` ``(3N, K)`` **interleaved**
    (x0 y0 z0 x1 ...), in µm; ``shapeEV`` ``(K, 1)`` per-component standard deviations; ``tl``
    ``(F, 3)`` **1-based** triangles; optionally ``texMU``/``texPC``/``texEV`` (RGB 0-255).

    Returns a :class:`ModelArrays` with (dtypes as stored, usually float32):
      ``mean (N, 3)``, ``shape_basis (N, 3, K)`` (unit-variance PCs as stored, *not* scaled by EV),
      ``shape_ev (K,)``, ``faces (F, 3)`` int32 0-based, ``units = "um"``, and when present
      ``tex_mean (N, 3)``, ``tex_basis (N, 3, Kt)``, ``tex_ev (Kt,)`` (0-255 RGB).
    """
    fields = load_mat(path)
    mu = _array(_require(fields, "shapeMU", path, "mean shape"), path, "shapeMU")
    if mu.ndim == 2 and mu.shape[1] == 1:
        mu = mu[:, 0]
    if mu.ndim != 1 or mu.shape[0] % 3 or mu.shape[0] == 0:
        _shape_error(path, "shapeMU", "(3N, 1) interleaved xyz", mu.shape)
    n = mu.shape[0] // 3
    pc = _array(_require(fields, "shapePC", path, "shape PCs"), path, "shapePC", ndim=2)
    if pc.shape[0] != 3 * n:
        _shape_error(path, "shapePC", f"({3 * n}, K) matching shapeMU", pc.shape)
    k = pc.shape[1]
    ev = _vector(_require(fields, "shapeEV", path, "shape std devs"), path, "shapeEV", length=k)
    faces = _faces_from(_require(fields, "tl", path, "triangles"), path, "tl", n_vertices=n, base=1)
    out = ModelArrays(
        mean=mu.reshape(n, 3),
        shape_basis=pc.reshape(n, 3, k),
        shape_ev=ev,
        faces=faces,
        units="um",
        source=str(path),
    )
    tex = [name for name in ("texMU", "texPC", "texEV") if name in fields]
    if tex:
        if len(tex) != 3:
            missing = sorted({"texMU", "texPC", "texEV"} - set(tex))
            raise ModelFileError(path, f"texture fields incomplete: missing {missing}", missing[0])
        tmu = _vector(fields["texMU"], path, "texMU", length=3 * n)
        tpc = _array(fields["texPC"], path, "texPC", ndim=2)
        if tpc.shape[0] != 3 * n:
            _shape_error(path, "texPC", f"({3 * n}, Kt)", tpc.shape)
        tev = _vector(fields["texEV"], path, "texEV", length=tpc.shape[1])
        out.update(tex_mean=tmu.reshape(n, 3), tex_basis=tpc.reshape(n, 3, -1), tex_ev=tev)
    return out


def load_tddfa_expression(path) -> ModelArrays:
    """3DDFA ``Model_Expression.mat`` (spec 3dmm_stn.md §7.1).

    ``w_exp`` ``(3M, K)`` interleaved expression PCs over 3DDFA's M = 53215 vertices (µm; the
    original uses its columns as is), ``mu_exp`` ``(3M, 1)``, ``sigma_exp`` ``(K, 1)``.

    Returns :class:`ModelArrays`: ``w_exp (M, 3, K)``, ``mu_exp (M, 3)`` and ``sigma_exp (K,)``
    when present, ``units = "um"``. Rows are in 3DDFA vertex order (see
    :func:`load_map_tddfa_to_basel`).
    """
    fields = load_mat(path)
    w = _array(_require(fields, "w_exp", path, "expression PCs"), path, "w_exp", ndim=2)
    if w.shape[0] % 3 or w.shape[0] == 0 or w.shape[1] == 0:
        _shape_error(path, "w_exp", "(3M, K) interleaved xyz", w.shape)
    m, k = w.shape[0] // 3, w.shape[1]
    out = ModelArrays(w_exp=w.reshape(m, 3, k), units="um", source=str(path))
    if "mu_exp" in fields:
        out["mu_exp"] = _vector(fields["mu_exp"], path, "mu_exp", length=3 * m).reshape(m, 3)
    if "sigma_exp" in fields:
        out["sigma_exp"] = _vector(fields["sigma_exp"], path, "sigma_exp")
    return out


def load_map_tddfa_to_basel(path, n_vertices: Optional[int] = None) -> np.ndarray:
    """``map_tddfa_to_basel.mat``: ``(M,)`` int32 **0-based** BFM vertex of each 3DDFA vertex.

    Stored ``1 x 53215`` uint16, sorted and unique (spec 3dmm_stn.md §7.4); the original adds 1
    for MATLAB. ``n_vertices`` (e.g. 53490) additionally checks the upper bound.
    """
    fields = load_mat(path)
    value = _vector(
        _require(fields, "map_tddfa_to_basel", path), path, "map_tddfa_to_basel", kinds="iu"
    )
    index = value.astype(np.int64)
    if index.size == 0:
        raise ModelFileError(path, "empty index map", "map_tddfa_to_basel")
    if index.min() < 0:
        raise ModelFileError(path, "negative vertex index", "map_tddfa_to_basel")
    if np.any(np.diff(index) <= 0):
        raise ModelFileError(
            path, "indices must be sorted and unique (strictly increasing)", "map_tddfa_to_basel"
        )
    if n_vertices is not None and index.max() >= n_vertices:
        raise ModelFileError(
            path, f"0-based index {index.max()} >= n_vertices={n_vertices}", "map_tddfa_to_basel"
        )
    return index.astype(np.int32)


def load_bfm_uv(path, n_vertices: Optional[int] = None) -> np.ndarray:
    """``BFM_UV.mat``: ``UV`` ``(N, 2)`` float64 per-BFM-vertex (u, v) in [0, 1] (spec §7.3).

    u grows towards the model's +x, v towards +y (up).
    """
    fields = load_mat(path)
    uv = _array(_require(fields, "UV", path), path, "UV", ndim=2)
    if uv.shape[1] != 2 or uv.shape[0] == 0:
        _shape_error(path, "UV", "(N, 2)", uv.shape)
    if n_vertices is not None and uv.shape[0] != n_vertices:
        _shape_error(path, "UV", f"({n_vertices}, 2)", uv.shape)
    if uv.min() < 0 or uv.max() > 1:
        raise ModelFileError(
            path, f"UV coordinates must lie in [0, 1], got [{uv.min()}, {uv.max()}]", "UV"
        )
    return uv


def load_anl(path) -> np.ndarray:
    """A 3DMM-STN ``.anl`` landmark file -> ``(L,)`` int32 **0-based** vertex indices.

    Text: lines starting with ``%`` are comments; every other non-blank line is one **1-based**
    index (spec 3dmm_stn.md §7.4). Repeats are kept (``Landmarks68_112`` repeats 6667).
    """
    data = read_file_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        try:
            text = data.decode("latin1")
        except UnicodeDecodeError:  # pragma: no cover - latin1 decodes anything
            raise ModelFileError(path, "not a text file") from None
    if "\x00" in text:
        raise ModelFileError(path, "not a text landmark file (contains NUL bytes)")
    index = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("%"):
            continue
        try:
            value = int(line)
        except ValueError:
            raise ModelFileError(
                path, f"line {lineno}: expected one 1-based vertex index, got {line[:40]!r}"
            ) from None
        if value < 1:
            raise ModelFileError(
                path, f"line {lineno}: index {value} is not 1-based (must be >= 1)"
            )
        if value > np.iinfo(np.int32).max:
            raise ModelFileError(path, f"line {lineno}: index {value} is too large for a vertex index")
        index.append(value - 1)
    if not index:
        raise ModelFileError(path, "no landmark indices (only comments/blank lines)")
    return np.asarray(index, dtype=np.int32)


# ----------------------------------------------------------------------------------------------
# FLAME


_FLAME_FIELDS = ("f", "v_template", "shapedirs", "posedirs", "J_regressor", "kintree_table",
                 "weights")


def read_flame_fields(path) -> ModelArrays:
    """The arrays of FLAME's ``generic_model.pkl`` (spec deca.md §2.2), safely, as stored.

    ``shapedirs`` comes out of its chumpy ``Ch`` wrapper and ``J_regressor`` is densified from its
    ``scipy.sparse`` CSC state; other entries (``J``, ``bs_style``, ...) are passed through. No
    chumpy, scipy.sparse or other code named by the file is imported or run.
    """
    data = read_file_bytes(path)
    if not data.startswith(b"\x80"):
        raise ModelFileError(path, "not a binary pickle (FLAME's generic_model.pkl is protocol 2)")
    obj = safe_pickle.safe_loads(data, path)
    if not isinstance(obj, dict):
        raise ModelFileError(
            path, f"expected a pickled dict of FLAME arrays, got {type(obj).__name__}"
        )
    out = ModelArrays()
    for key, value in obj.items():
        key = key.decode("latin1") if isinstance(key, bytes) else str(key)
        if isinstance(value, safe_pickle.ChumpyArray):
            inner = value.value
            if not isinstance(inner, np.ndarray):
                raise ModelFileError(path, "chumpy Ch object holds no array in its 'x' state", key)
            value = inner
        elif isinstance(value, safe_pickle.SparseMatrix):
            value = value.toarray(path, key)
        out[key] = value
    return out


def _flame_from_fields(fields: Mapping, path, *, n_shape=None, landmark_embedding=None,
                       dtype=np.float32):
    """Validate FLAME's pkl-named arrays and build a :class:`~jface.models.FlameModel`."""
    import jax.numpy as jnp

    from jface.models.morphable import FlameModel

    for name in _FLAME_FIELDS:
        _require(fields, name, path, "FLAME generic_model.pkl field")
    v_template = _array(np.asarray(fields["v_template"]), path, "v_template", ndim=2)
    if v_template.shape[1] != 3 or v_template.shape[0] == 0:
        _shape_error(path, "v_template", "(V, 3)", v_template.shape)
    n_v = v_template.shape[0]
    faces = _faces_from(np.asarray(fields["f"]), path, "f", n_vertices=n_v, base=0)
    shapedirs = _array(np.asarray(fields["shapedirs"]), path, "shapedirs", ndim=3)
    if shapedirs.shape[:2] != (n_v, 3):
        _shape_error(path, "shapedirs", f"({n_v}, 3, K)", shapedirs.shape)
    kintree = _array(np.asarray(fields["kintree_table"]), path, "kintree_table", kinds="iuf",
                     ndim=2)
    if kintree.shape[0] != 2 or kintree.shape[1] == 0:
        _shape_error(path, "kintree_table", "(2, J)", kintree.shape)
    n_j = kintree.shape[1]
    parents = [-1] + [int(p) for p in kintree[0, 1:]]
    for j, p in enumerate(parents[1:], start=1):
        if not 0 <= p < j:
            raise ModelFileError(
                path, f"joint {j} has parent {p}; parents must precede their children",
                "kintree_table",
            )
    posedirs = _array(np.asarray(fields["posedirs"]), path, "posedirs", ndim=3)
    if posedirs.shape != (n_v, 3, 9 * (n_j - 1)):
        _shape_error(path, "posedirs", (n_v, 3, 9 * (n_j - 1)), posedirs.shape)
    j_reg = fields["J_regressor"]
    if isinstance(j_reg, safe_pickle.SparseMatrix):
        j_reg = j_reg.toarray(path, "J_regressor")
    j_reg = _array(np.asarray(j_reg), path, "J_regressor", ndim=2)
    if j_reg.shape != (n_j, n_v):
        _shape_error(path, "J_regressor", (n_j, n_v), j_reg.shape)
    weights = _array(np.asarray(fields["weights"]), path, "weights", ndim=2)
    if weights.shape != (n_v, n_j):
        _shape_error(path, "weights", (n_v, n_j), weights.shape)
    k = shapedirs.shape[2]
    if n_shape is None:
        if k != 400:
            raise ModelFileError(
                path,
                f"shapedirs has {k} components; FLAME 2017-2020 has 400 (300 identity + 100 "
                "expression). Pass n_shape= to say how many are identity components",
                "shapedirs",
            )
        n_shape = 300
    if not 0 <= int(n_shape) <= k:
        raise ModelFileError(path, f"n_shape={n_shape} outside [0, {k}]", "shapedirs")

    def f(x, field):
        with np.errstate(over="ignore"):
            out = np.asarray(x, dtype=dtype)
        if out.dtype.kind == "f" and not np.all(np.isfinite(out)):
            raise ModelFileError(path, f"values overflow {np.dtype(dtype).name}", field)
        return jnp.asarray(out)

    lmk = {}
    if landmark_embedding is not None:
        emb = landmark_embedding
        if not isinstance(emb, Mapping):
            emb = load_landmark_embedding(emb)
        lmk = _embedding_for_model(emb, n_faces=faces.shape[0])
        lmk = {
            k_: (jnp.asarray(v.astype(np.int32)) if v.dtype.kind in "iu" else f(v, k_))
            for k_, v in lmk.items()
        }
    return FlameModel(
        v_template=f(v_template, "v_template"),
        shapedirs=f(shapedirs, "shapedirs"),
        posedirs=f(posedirs, "posedirs"),
        j_regressor=f(j_reg, "J_regressor"),
        lbs_weights=f(weights, "weights"),
        faces=jnp.asarray(faces),
        parents=tuple(parents),
        n_shape=int(n_shape),
        **lmk,
    )


def load_flame_pkl(path, landmark_embedding=None, *, n_shape=None, dtype=np.float32):
    """FLAME ``generic_model.pkl`` -> :class:`~jface.models.FlameModel` (spec deca.md §1.2, §2.2).

    Arrays keep the pkl layouts, cast to ``dtype`` (float32 like DECA); ``parents`` is
    ``kintree_table[0]`` with element 0 set to -1; ``J_regressor`` is densified. ``n_shape``
    (identity columns of ``shapedirs``) defaults to 300 for FLAME's 400-column ``shapedirs``.
    ``landmark_embedding``: a path to DECA's ``landmark_embedding.npy`` (or its npz) or the
    dict :func:`load_landmark_embedding` returns.
    """
    fields = read_flame_fields(path)
    return _flame_from_fields(fields, path, n_shape=n_shape,
                              landmark_embedding=landmark_embedding, dtype=dtype)


def _npz_arrays(path) -> dict:
    data = read_file_bytes(path)
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:  # noqa: BLE001
        raise ModelFileError(
            path, f"not a readable .npz without pickles ({type(exc).__name__}: {exc})"
        ) from None
    for name, value in arrays.items():
        if not isinstance(value, np.ndarray):  # NpzFile returns raw bytes for non-.npy members
            raise ModelFileError(path, "entry is not an .npy array", name)
    return arrays


def load_flame(path, landmark_embedding=None, *, n_shape=None, dtype=np.float32):
    """FLAME from ``generic_model.pkl``, from this project's npz (:func:`~jface.models.save_model`),
    or from an npz with the pkl's field names (``f``, ``v_template``, ``shapedirs``, ...).

    Returns a :class:`~jface.models.FlameModel` (metres; pkl layouts; float32 by default).
    ``landmark_embedding`` (path or dict) replaces any embedding stored in the file.
    """
    path = _check_path(path)
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic.startswith(b"PK"):
        from jface.models import format as model_format

        try:
            with np.load(path, allow_pickle=False) as z:
                own_format = model_format.META_KEY in z.files
        except Exception as exc:  # noqa: BLE001
            raise ModelFileError(path, f"unreadable .npz ({type(exc).__name__}: {exc})") from None
        if own_format:
            model = model_format.load_model(path)
            from jface.models.morphable import FlameModel

            if not isinstance(model, FlameModel):
                raise ModelFileError(path, f"holds a {type(model).__name__}, not a FlameModel")
            if landmark_embedding is not None:
                import jax.numpy as jnp

                emb = landmark_embedding
                if not isinstance(emb, Mapping):
                    emb = load_landmark_embedding(emb)
                lmk = _embedding_for_model(emb, n_faces=model.faces.shape[0])
                model = model.replace(**{
                    k: jnp.asarray(v.astype(np.int32) if v.dtype.kind in "iu" else v.astype(dtype))
                    for k, v in lmk.items()
                })
            return model
        return _flame_from_fields(_npz_arrays(path), path, n_shape=n_shape,
                                  landmark_embedding=landmark_embedding, dtype=dtype)
    if magic.startswith(b"\x80"):
        return load_flame_pkl(path, landmark_embedding, n_shape=n_shape, dtype=dtype)
    raise ModelFileError(
        path,
        "neither a pickle (generic_model.pkl) nor an .npz; cannot tell what FLAME file this is",
    )


# ----------------------------------------------------------------------------------------------
# DECA's landmark embedding


_EMBEDDING_KEYS = (
    "static_lmk_faces_idx",
    "static_lmk_bary_coords",
    "dynamic_lmk_faces_idx",
    "dynamic_lmk_bary_coords",
    "full_lmk_faces_idx",
    "full_lmk_bary_coords",
)


def _read_npy_header(data: bytes, path):
    """(header dict, offset) of an .npy, parsed with ``ast.literal_eval`` only."""
    if not data.startswith(b"\x93NUMPY") or len(data) < 10:
        raise ModelFileError(path, "not an .npy file (bad magic)")
    major = data[6]
    if major == 1:
        hlen = int.from_bytes(data[8:10], "little")
        start = 10
    elif major in (2, 3):
        hlen = int.from_bytes(data[8:12], "little")
        start = 12
    else:
        raise ModelFileError(path, f"unknown .npy format version {major}")
    raw = data[start:start + hlen]
    if len(raw) != hlen:
        raise ModelFileError(path, ".npy header is truncated")
    try:
        header = ast.literal_eval(raw.decode("latin1"))
    except (ValueError, SyntaxError) as exc:
        raise ModelFileError(path, f".npy header is not a literal dict ({exc})") from None
    if not isinstance(header, dict) or not {"descr", "shape", "fortran_order"} <= set(header):
        raise ModelFileError(path, ".npy header lacks descr/shape/fortran_order")
    return header, start + hlen


def load_landmark_embedding(path) -> dict:
    """DECA's ``landmark_embedding.npy`` without torch (spec deca.md §2.3).

    The ``.npy`` holds one pickled dict; its ``dynamic_*`` entries are pickled torch tensors, which
    are rebuilt with numpy from their pickled storages (allow-listed unpickling, nothing executed).
    An ``.npz`` with the same six keys is accepted too.

    Returns a dict with six arrays, **shapes and dtypes as stored** (so it equals DECA's arrays):
    ``static_lmk_faces_idx (51,)`` int64, ``static_lmk_bary_coords (51, 3)`` float64,
    ``dynamic_lmk_faces_idx (79, 17)`` int64, ``dynamic_lmk_bary_coords (79, 17, 3)`` float32,
    ``full_lmk_faces_idx (1, 68)`` int64, ``full_lmk_bary_coords (1, 68, 3)`` float32.
    Face indices are 0-based into FLAME's ``f``. (:func:`load_flame` squeezes the ``full_*`` leading
    1 when attaching the embedding to a :class:`~jface.models.FlameModel`.)
    """
    data = read_file_bytes(path)
    if data.startswith(b"PK"):
        obj = _npz_arrays(path)
    else:
        header, offset = _read_npy_header(data, path)
        if header["descr"] != "|O" or tuple(header["shape"]) != ():
            raise ModelFileError(
                path,
                f"expected a 0-d object .npy holding a pickled dict, got descr "
                f"{header['descr']!r} shape {header['shape']}",
            )
        obj = safe_pickle.safe_loads(data[offset:], path, allow_torch=True)
        if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
            obj = obj[()]
    if not isinstance(obj, Mapping):
        raise ModelFileError(path, f"expected a dict of landmark arrays, got {type(obj).__name__}")
    out = {}
    for key in _EMBEDDING_KEYS:
        value = _require(obj, key, path, "DECA landmark embedding")
        kinds = "iu" if key.endswith("idx") else "f"
        out[key] = _array(value, path, key, kinds=kinds)
    _check_embedding(out, path)
    return out


def _check_embedding(emb, path):
    def shape(key):
        return emb[key].shape

    n_static = shape("static_lmk_faces_idx")
    if len(n_static) != 1 or shape("static_lmk_bary_coords") != (*n_static, 3):
        raise ModelFileError(path, f"expected (L,) / (L, 3), got {n_static} / "
                             f"{shape('static_lmk_bary_coords')}", "static_lmk_bary_coords")
    dyn = shape("dynamic_lmk_faces_idx")
    if len(dyn) != 2 or shape("dynamic_lmk_bary_coords") != (*dyn, 3):
        raise ModelFileError(path, f"expected (Y, K) / (Y, K, 3), got {dyn} / "
                             f"{shape('dynamic_lmk_bary_coords')}", "dynamic_lmk_bary_coords")
    full = emb["full_lmk_faces_idx"].reshape(-1)
    if emb["full_lmk_bary_coords"].reshape(-1, 3).shape[0] != full.shape[0] or (
        emb["full_lmk_bary_coords"].shape[-1] != 3
    ):
        raise ModelFileError(path, f"expected (1, L) / (1, L, 3), got {shape('full_lmk_faces_idx')}"
                             f" / {shape('full_lmk_bary_coords')}", "full_lmk_bary_coords")
    for key in ("static_lmk_faces_idx", "dynamic_lmk_faces_idx", "full_lmk_faces_idx"):
        if emb[key].size and emb[key].min() < 0:
            raise ModelFileError(path, "negative face index", key)


def _embedding_for_model(emb: Mapping, *, n_faces: int) -> dict:
    """Embedding arrays in FlameModel's shapes (full_* squeezed to (68,), (68, 3))."""
    where = "<landmark embedding>"
    out = {}
    for key in _EMBEDDING_KEYS:
        if key not in emb:
            raise ModelFileError(where, "missing landmark-embedding entry", key)
        out[key] = np.asarray(emb[key])
    out["full_lmk_faces_idx"] = out["full_lmk_faces_idx"].reshape(-1)
    out["full_lmk_bary_coords"] = out["full_lmk_bary_coords"].reshape(-1, 3)
    for key in ("static_lmk_faces_idx", "dynamic_lmk_faces_idx", "full_lmk_faces_idx"):
        if out[key].size and out[key].max() >= n_faces:
            raise ModelFileError(
                where, f"face index {out[key].max()} >= the model's {n_faces} faces", key
            )
    return out


# ----------------------------------------------------------------------------------------------
# OBJ with UVs


def load_obj(path) -> ModelArrays:
    """A Wavefront OBJ with texture coordinates (DECA's ``head_template.obj``, spec deca.md §2.4).

    Returns :class:`ModelArrays`: ``vertices (V, 3)`` float64, ``uv_coords (T, 2)`` float64
    (``vt``; v up), ``faces (F, 3)`` int32 and ``uv_faces (F, 3)`` int32 (``ft``), both **0-based**
    (the file is 1-based; negative, relative indices are resolved). Polygons are fan-triangulated.
    ``uv_coords``/``uv_faces`` are None when the file has no ``vt``.

    The text is parsed here rather than with ``trimesh``: trimesh keeps one UV per vertex (with
    ``process=False``) or splits vertices at UV seams, so the separate ``ft`` indices of the 95 seam
    vertices, which DECA's UV rasterisation needs, cannot be recovered from it.
    """
    data = read_file_bytes(path)
    if b"\x00" in data:
        raise ModelFileError(path, "not a text OBJ file (contains NUL bytes)")
    text = data.decode("utf-8", errors="replace")
    verts, uvs, faces, uv_faces = [], [], [], []
    any_face_without_uv = False
    for lineno, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        tag = parts[0]
        try:
            if tag == "v":
                if len(parts) < 4:
                    raise ValueError("a vertex needs x y z")
                verts.append([float(p) for p in parts[1:4]])
            elif tag == "vt":
                if len(parts) < 3:
                    raise ValueError("a texture coordinate needs u v")
                uvs.append([float(p) for p in parts[1:3]])
            elif tag == "f":
                corners = parts[1:]
                if len(corners) < 3:
                    raise ValueError("a face needs at least 3 corners")
                vi, ti = [], []
                for corner in corners:
                    fields = corner.split("/")
                    vi.append(_obj_index(fields[0], len(verts)))
                    if len(fields) > 1 and fields[1]:
                        ti.append(_obj_index(fields[1], len(uvs)))
                if ti and len(ti) != len(vi):
                    raise ValueError("some corners have a texture index and some do not")
                if not ti:
                    any_face_without_uv = True
                for k in range(1, len(vi) - 1):
                    faces.append([vi[0], vi[k], vi[k + 1]])
                    if ti:
                        uv_faces.append([ti[0], ti[k], ti[k + 1]])
        except ValueError as exc:
            raise ModelFileError(path, f"line {lineno}: {exc}: {line.strip()[:60]!r}") from None
    if not verts:
        raise ModelFileError(path, "no vertices ('v' lines): not an OBJ mesh")
    if not faces:
        raise ModelFileError(path, "no faces ('f' lines)")
    vertices = np.asarray(verts, dtype=np.float64)
    if not np.all(np.isfinite(vertices)):
        raise ModelFileError(path, "vertex coordinates contain NaN or infinity", "v")
    out = ModelArrays(vertices=vertices, faces=np.asarray(faces, dtype=np.int32),
                      uv_coords=None, uv_faces=None, source=str(path))
    if uv_faces:
        if any_face_without_uv:
            raise ModelFileError(path, "some faces have texture indices and others do not", "f")
        out["uv_coords"] = np.asarray(uvs, dtype=np.float64)
        out["uv_faces"] = np.asarray(uv_faces, dtype=np.int32)
    return out


def _obj_index(token: str, count: int) -> int:
    """1-based (or negative, relative) OBJ index -> 0-based, checked against ``count`` so far."""
    value = int(token)
    if value > 0:
        index = value - 1
    elif value < 0:
        index = count + value
    else:
        raise ValueError("index 0 (OBJ indices are 1-based)")
    if not 0 <= index < count:
        raise ValueError(f"index {value} refers to an element not defined yet ({count} so far)")
    return index
