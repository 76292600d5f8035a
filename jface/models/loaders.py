"""Loaders for the face-model files of the original pipelines, with strict layout checks.

Every loader reads one file through :mod:`jface.files` (bounded readers, the restricted unpickler),
checks field names, shapes, dtypes and index ranges, and converts to this project's conventions:
vertices row-major ``(N, 3)``, bases ``(N, 3, K)``, faces ``(F, 3)`` int32 **0-based**. Anything
wrong raises :class:`~jface.errors.ModelFileError` naming the file, the field and what was
expected.

Files, loaders, units and index bases (in the file):

* BFM 2009 ``01_MorphableModel.mat`` -> :func:`load_bfm2009`: µm, ``tl`` 1-based.
* 3DDFA ``Model_Expression.mat`` -> :func:`load_tddfa_expression`: µm, 3DDFA vertex order.
* ``map_tddfa_to_basel.mat`` -> :func:`load_map_tddfa_to_basel`: 0-based BFM indices.
* ``Landmarks*.anl`` -> :func:`load_anl`: 1-based vertex indices.
* ``BFM_UV.mat`` -> :func:`load_bfm_uv`: UV in [0, 1].
* FLAME ``generic_model.pkl`` -> :func:`load_flame_pkl` / :func:`load_flame`: metres, ``f`` 0-based.
* DECA ``landmark_embedding.npy`` -> :func:`load_landmark_embedding`: 0-based FLAME face indices.
* DECA ``head_template.obj`` -> :func:`jface.files.obj.load_obj`: 1-based ``f v/vt``.

All loaders return 0-based indices; faces and index maps are int32 (the landmark embedding keeps
its stored int64, so it equals DECA's arrays exactly).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jface.errors import ModelFileError
from jface.files.checks import ModelArrays, checked_array, faces_from, require, shape_error, vector
from jface.files.mat import load_mat
from jface.files.npy import read_npy_header
from jface.files.npz import npz_member_names, read_npz
from jface.files.paths import ExpansionBudget, check_path, read_file_bytes
from jface.files.pickles import ChumpyArray, SparseMatrix, safe_loads
from jface.files.torch_save import loads_with_tensors
from jface.models import store
from jface.models.morphable import FlameModel

__all__ = [
    "load_bfm2009",
    "load_tddfa_expression",
    "load_map_tddfa_to_basel",
    "load_anl",
    "load_bfm_uv",
    "read_flame_fields",
    "load_flame_pkl",
    "load_flame",
    "load_landmark_embedding",
]


def load_bfm2009(path) -> ModelArrays:
    """Basel Face Model 2009 ``01_MorphableModel.mat``, as the original's ``prepareExpressionBFM.m``
    reads it.

    The file stores ``shapeMU`` ``(3N, 1)`` and ``shapePC`` ``(3N, K)`` **interleaved**
    (x0 y0 z0 x1 ...), in µm; ``shapeEV`` ``(K, 1)`` per-component standard deviations; ``tl``
    ``(F, 3)`` **1-based** triangles; optionally ``texMU``/``texPC``/``texEV`` (RGB 0-255).

    Returns a :class:`ModelArrays` with (dtypes as stored, usually float32):
      ``mean (N, 3)``, ``shape_basis (N, 3, K)`` (unit-variance PCs as stored, *not* scaled by EV),
      ``shape_ev (K,)``, ``faces (F, 3)`` int32 0-based, ``units = "um"``, and when present
      ``tex_mean (N, 3)``, ``tex_basis (N, 3, Kt)``, ``tex_ev (Kt,)`` (0-255 RGB).
    """
    fields = load_mat(path)
    mu = checked_array(require(fields, "shapeMU", path, "mean shape"), path, "shapeMU")
    if mu.ndim == 2 and mu.shape[1] == 1:
        mu = mu[:, 0]
    if mu.ndim != 1 or mu.shape[0] % 3 or mu.shape[0] == 0:
        shape_error(path, "shapeMU", "(3N, 1) interleaved xyz", mu.shape)
    n = mu.shape[0] // 3
    pc = checked_array(require(fields, "shapePC", path, "shape PCs"), path, "shapePC", ndim=2)
    if pc.shape[0] != 3 * n:
        shape_error(path, "shapePC", f"({3 * n}, K) matching shapeMU", pc.shape)
    k = pc.shape[1]
    ev = vector(require(fields, "shapeEV", path, "shape std devs"), path, "shapeEV", length=k)
    faces = faces_from(require(fields, "tl", path, "triangles"), path, "tl", n_vertices=n, base=1)
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
        tmu = vector(fields["texMU"], path, "texMU", length=3 * n)
        tpc = checked_array(fields["texPC"], path, "texPC", ndim=2)
        if tpc.shape[0] != 3 * n:
            shape_error(path, "texPC", f"({3 * n}, Kt)", tpc.shape)
        tev = vector(fields["texEV"], path, "texEV", length=tpc.shape[1])
        out.update(tex_mean=tmu.reshape(n, 3), tex_basis=tpc.reshape(n, 3, -1), tex_ev=tev)
    return out


def load_tddfa_expression(path) -> ModelArrays:
    """3DDFA ``Model_Expression.mat``, as the original's ``prepareExpressionBFM.m`` reads it.

    ``w_exp`` ``(3M, K)`` interleaved expression PCs over 3DDFA's M = 53215 vertices (µm; the
    original uses its columns as is), ``mu_exp`` ``(3M, 1)``, ``sigma_exp`` ``(K, 1)``.

    Returns :class:`ModelArrays`: ``w_exp (M, 3, K)``, ``mu_exp (M, 3)`` and ``sigma_exp (K,)``
    when present, ``units = "um"``. Rows are in 3DDFA vertex order (see
    :func:`load_map_tddfa_to_basel`).
    """
    fields = load_mat(path)
    w = checked_array(require(fields, "w_exp", path, "expression PCs"), path, "w_exp", ndim=2)
    if w.shape[0] % 3 or w.shape[0] == 0 or w.shape[1] == 0:
        shape_error(path, "w_exp", "(3M, K) interleaved xyz", w.shape)
    m, k = w.shape[0] // 3, w.shape[1]
    out = ModelArrays(w_exp=w.reshape(m, 3, k), units="um", source=str(path))
    if "mu_exp" in fields:
        out["mu_exp"] = vector(fields["mu_exp"], path, "mu_exp", length=3 * m).reshape(m, 3)
    if "sigma_exp" in fields:
        out["sigma_exp"] = vector(fields["sigma_exp"], path, "sigma_exp")
    return out


def load_map_tddfa_to_basel(path, n_vertices: int | None = None) -> np.ndarray:
    """``map_tddfa_to_basel.mat``: ``(M,)`` int32 **0-based** BFM vertex of each 3DDFA vertex.

    Stored ``1 x 53215`` uint16, sorted and unique; ``prepareExpressionBFM.m`` adds 1
    for MATLAB. ``n_vertices`` (e.g. 53490) additionally checks the upper bound.
    """
    fields = load_mat(path)
    value = vector(
        require(fields, "map_tddfa_to_basel", path), path, "map_tddfa_to_basel", kinds="iu"
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


def load_bfm_uv(path, n_vertices: int | None = None) -> np.ndarray:
    """``BFM_UV.mat``: ``UV`` ``(N, 2)`` float64 per-BFM-vertex (u, v) in [0, 1] (the UV map
    the original's ``prepareExpressionBFM.m`` passes to ``resampleModel.m``).

    u grows towards the model's +x, v towards +y (up).
    """
    fields = load_mat(path)
    uv = checked_array(require(fields, "UV", path), path, "UV", ndim=2)
    if uv.shape[1] != 2 or uv.shape[0] == 0:
        shape_error(path, "UV", "(N, 2)", uv.shape)
    if n_vertices is not None and uv.shape[0] != n_vertices:
        shape_error(path, "UV", f"({n_vertices}, 2)", uv.shape)
    if uv.min() < 0 or uv.max() > 1:
        raise ModelFileError(
            path, f"UV coordinates must lie in [0, 1], got [{uv.min()}, {uv.max()}]", "UV"
        )
    return uv


def load_anl(path) -> np.ndarray:
    """A 3DMM-STN ``.anl`` landmark file -> ``(L,)`` int32 **0-based** vertex indices.

    Text: lines starting with ``%`` are comments; every other non-blank line is one **1-based**
    index (the original repository's ``Landmarks*.anl`` files). Repeats are kept (``Landmarks68_112`` repeats 6667).
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


def _unwrap_chumpy(value, path, key):
    if isinstance(value, ChumpyArray):
        inner = value.value
        if not isinstance(inner, np.ndarray):
            raise ModelFileError(path, "chumpy Ch object holds no array in its 'x' state", key)
        return inner
    return value


def _j_regressor_shape(fields: Mapping) -> tuple[int, int] | None:
    """(joints, vertices) that ``J_regressor`` must have, from ``kintree_table`` (2, J) and
    ``v_template`` (V, 3), when both are there with those layouts."""
    kintree, v_template = fields.get("kintree_table"), fields.get("v_template")
    if (isinstance(kintree, np.ndarray) and kintree.ndim == 2 and kintree.shape[0] == 2
            and isinstance(v_template, np.ndarray) and v_template.ndim == 2):
        return kintree.shape[1], v_template.shape[0]
    return None


def read_flame_fields(path) -> ModelArrays:
    """The arrays of FLAME's ``generic_model.pkl`` (read by FLAME's ``flame_model/flame.py`` and
    DECA's ``decalib/models/FLAME.py``), safely, as stored.

    ``shapedirs`` comes out of its chumpy ``Ch`` wrapper and ``J_regressor`` is densified from its
    ``scipy.sparse`` CSC state; other entries (``J``, ``bs_style``, ...) are passed through. No
    chumpy, scipy.sparse or other code named by the file is imported or run. A sparse
    ``J_regressor`` whose declared shape is not (joints of ``kintree_table``, vertices of
    ``v_template``), or whose dense size passes the limit on what a file may expand to, is refused
    before it is densified.
    """
    data = read_file_bytes(path)
    if not data.startswith(b"\x80"):
        raise ModelFileError(path, "not a binary pickle (FLAME's generic_model.pkl is protocol 2)")
    budget = ExpansionBudget(path)
    obj = safe_loads(data, path, budget=budget)
    if not isinstance(obj, dict):
        raise ModelFileError(
            path, f"expected a pickled dict of FLAME arrays, got {type(obj).__name__}"
        )
    out = ModelArrays()
    for key, value in obj.items():
        key = key.decode("latin1") if isinstance(key, bytes) else str(key)
        out[key] = _unwrap_chumpy(value, path, key)
    expected = _j_regressor_shape(out)
    for key, value in out.items():
        if isinstance(value, SparseMatrix):
            declared = value.declared_shape(path, key)
            if key == "J_regressor" and expected is not None and declared != expected:
                raise ModelFileError(
                    path,
                    f"the sparse matrix declares shape {declared}, expected {expected} (joints "
                    "of kintree_table x vertices of v_template); refused before densifying",
                    key,
                )
            out[key] = value.toarray(path, key, budget)
    return out


def _flame_from_fields(fields: Mapping, path, *, n_shape=None, landmark_embedding=None,
                       dtype=np.float32):
    """Validate FLAME's pkl-named arrays and build a :class:`~jface.models.FlameModel`."""
    for name in _FLAME_FIELDS:
        require(fields, name, path, "FLAME generic_model.pkl field")
    v_template = checked_array(np.asarray(fields["v_template"]), path, "v_template", ndim=2)
    if v_template.shape[1] != 3 or v_template.shape[0] == 0:
        shape_error(path, "v_template", "(V, 3)", v_template.shape)
    n_v = v_template.shape[0]
    faces = faces_from(np.asarray(fields["f"]), path, "f", n_vertices=n_v, base=0)
    shapedirs = checked_array(np.asarray(fields["shapedirs"]), path, "shapedirs", ndim=3)
    if shapedirs.shape[:2] != (n_v, 3):
        shape_error(path, "shapedirs", f"({n_v}, 3, K)", shapedirs.shape)
    kintree = checked_array(np.asarray(fields["kintree_table"]), path, "kintree_table", kinds="iuf",
                     ndim=2)
    if kintree.shape[0] != 2 or kintree.shape[1] == 0:
        shape_error(path, "kintree_table", "(2, J)", kintree.shape)
    n_j = kintree.shape[1]
    parents = [-1] + [int(p) for p in kintree[0, 1:]]
    for j, p in enumerate(parents[1:], start=1):
        if not 0 <= p < j:
            raise ModelFileError(
                path, f"joint {j} has parent {p}; parents must precede their children",
                "kintree_table",
            )
    posedirs = checked_array(np.asarray(fields["posedirs"]), path, "posedirs", ndim=3)
    if posedirs.shape != (n_v, 3, 9 * (n_j - 1)):
        shape_error(path, "posedirs", (n_v, 3, 9 * (n_j - 1)), posedirs.shape)
    j_reg = fields["J_regressor"]
    if isinstance(j_reg, SparseMatrix):
        declared = j_reg.declared_shape(path, "J_regressor")
        if declared != (n_j, n_v):
            shape_error(path, "J_regressor", (n_j, n_v), declared)
        j_reg = j_reg.toarray(path, "J_regressor")
    j_reg = checked_array(np.asarray(j_reg), path, "J_regressor", ndim=2)
    if j_reg.shape != (n_j, n_v):
        shape_error(path, "J_regressor", (n_j, n_v), j_reg.shape)
    weights = checked_array(np.asarray(fields["weights"]), path, "weights", ndim=2)
    if weights.shape != (n_v, n_j):
        shape_error(path, "weights", (n_v, n_j), weights.shape)
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
        return jax.device_put(out)  # (jnp.asarray compiles a conversion per new shape: ~30 ms each)

    lmk = {}
    if landmark_embedding is not None:
        emb = landmark_embedding
        if not isinstance(emb, Mapping):
            emb = load_landmark_embedding(emb)
        lmk = _embedding_for_model(emb, n_faces=faces.shape[0])
        lmk = {
            k_: (jax.device_put(v.astype(np.int32)) if v.dtype.kind in "iu" else f(v, k_))
            for k_, v in lmk.items()
        }
    return FlameModel(
        v_template=f(v_template, "v_template"),
        shapedirs=f(shapedirs, "shapedirs"),
        posedirs=f(posedirs, "posedirs"),
        j_regressor=f(j_reg, "J_regressor"),
        lbs_weights=f(weights, "weights"),
        faces=jax.device_put(np.asarray(faces, np.int32)),
        parents=tuple(parents),
        n_shape=int(n_shape),
        **lmk,
    )


def load_flame_pkl(path, landmark_embedding=None, *, n_shape=None, dtype=np.float32):
    """FLAME ``generic_model.pkl`` -> :class:`~jface.models.FlameModel` (the buffers DECA's
    ``decalib/models/FLAME.py`` ``FLAME.__init__`` builds from it).

    Arrays keep the pkl layouts, cast to ``dtype`` (float32 like DECA); ``parents`` is
    ``kintree_table[0]`` with element 0 set to -1; ``J_regressor`` is densified. ``n_shape``
    (identity columns of ``shapedirs``) defaults to 300 for FLAME's 400-column ``shapedirs``.
    ``landmark_embedding``: a path to DECA's ``landmark_embedding.npy`` (or its npz) or the
    dict :func:`load_landmark_embedding` returns.
    """
    fields = read_flame_fields(path)
    return _flame_from_fields(fields, path, n_shape=n_shape,
                              landmark_embedding=landmark_embedding, dtype=dtype)


def load_flame(path, landmark_embedding=None, *, n_shape=None, dtype=np.float32):
    """FLAME from ``generic_model.pkl``, from this project's npz (:func:`~jface.models.save_model`),
    or from an npz with the pkl's field names (``f``, ``v_template``, ``shapedirs``, ...).

    Returns a :class:`~jface.models.FlameModel` (metres; pkl layouts; float32 by default).
    ``landmark_embedding`` (path or dict) replaces any embedding stored in the file.
    """
    path = check_path(path)
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic.startswith(b"PK"):
        if store.META_KEY in npz_member_names(path):
            model = store.load_model(path)
            if not isinstance(model, FlameModel):
                raise ModelFileError(path, f"holds a {type(model).__name__}, not a FlameModel")
            if landmark_embedding is not None:
                emb = landmark_embedding
                if not isinstance(emb, Mapping):
                    emb = load_landmark_embedding(emb)
                lmk = _embedding_for_model(emb, n_faces=model.faces.shape[0])
                model = model.replace(**{
                    k: jnp.asarray(v.astype(np.int32) if v.dtype.kind in "iu" else v.astype(dtype))
                    for k, v in lmk.items()
                })
            return model
        return _flame_from_fields(read_npz(path), path, n_shape=n_shape,
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


def load_landmark_embedding(path) -> dict:
    """DECA's ``landmark_embedding.npy`` without torch (``decalib/models/FLAME.py`` loads it with
    ``np.load(..., allow_pickle=True)``).

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
        obj = read_npz(path)
    else:
        header, offset = read_npy_header(data, path)
        if header["descr"] != "|O" or tuple(header["shape"]) != ():
            raise ModelFileError(
                path,
                f"expected a 0-d object .npy holding a pickled dict, got descr "
                f"{header['descr']!r} shape {header['shape']}",
            )
        obj = loads_with_tensors(data[offset:], path)
        if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
            obj = obj[()]
    if not isinstance(obj, Mapping):
        raise ModelFileError(path, f"expected a dict of landmark arrays, got {type(obj).__name__}")
    out = {}
    for key in _EMBEDDING_KEYS:
        value = require(obj, key, path, "DECA landmark embedding")
        kinds = "iu" if key.endswith("idx") else "f"
        out[key] = checked_array(value, path, key, kinds=kinds)
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
