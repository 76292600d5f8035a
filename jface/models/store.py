"""The project's own model file: an ``.npz`` container of plain arrays plus one JSON metadata entry
(:func:`jface.files.npz.write_container` / :func:`~jface.files.npz.read_container`).

Layout (format version 1), readable with ``np.load(path, allow_pickle=False)``:

* ``__jface_meta__``: uint8 array holding UTF-8 JSON::

    {"format": "jface-model", "version": 1, "model_type": "MorphableModel" | "FlameModel",
     "units": "mm" | "um" | "m", "static": {...static dataclass fields...},
     "arrays": {"<name>": {"shape": [...], "dtype": "float32"}, ...},
     "landmarks": ["aflw21", ...],              # MorphableModel only
     "sources": [{"name": "01_MorphableModel.mat", "sha256": "..."}, ...],
     "licence": "...", "created_by": "jface <version>"}

* one entry per non-None array field, named as the dataclass field (``mean``, ``shapedirs``, ...);
* ``landmarks/<name>`` for each entry of ``MorphableModel.landmarks``.

No pickles anywhere, so loading a model file cannot run code; members are read with their declared
sizes checked first. Files are written to a temporary file in the destination folder and renamed
over the target, so a failed save never destroys an existing model file.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from jface.errors import ModelFileError
from jface.files.npz import read_container, sha256_file, write_container
from jface.models.morphable import FlameModel, MorphableModel

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "META_KEY", "save_model", "load_model",
           "read_metadata", "sha256_file"]

FORMAT_NAME = "jface-model"
FORMAT_VERSION = 1
META_KEY = "__jface_meta__"

DEFAULT_LICENCE = (
    "Derived from third-party model files; the licence of each source file (e.g. BFM 2009, "
    "3DDFA, FLAME, DECA) applies to this file. Do not redistribute unless those licences allow it."
)

# Required/optional array fields and the static fields of each model type.
_SPEC = {
    "MorphableModel": {
        "required": ("mean", "shape_basis", "expression_basis", "faces"),
        "optional": ("uv", "albedo_mean", "albedo_basis", "vertex_mirror"),
        "static": ("units", "grid_hw"),
    },
    "FlameModel": {
        "required": ("v_template", "shapedirs", "posedirs", "j_regressor", "lbs_weights", "faces"),
        "optional": (
            "static_lmk_faces_idx", "static_lmk_bary_coords", "dynamic_lmk_faces_idx",
            "dynamic_lmk_bary_coords", "full_lmk_faces_idx", "full_lmk_bary_coords",
            "uv_coords", "uv_faces", "albedo_mean", "albedo_basis", "uv_face_eye_mask",
        ),
        "static": ("units", "parents", "n_shape"),
    },
}


_MODEL_CLASSES = {"MorphableModel": MorphableModel, "FlameModel": FlameModel}


def save_model(model, path, *, sources: Iterable = (), licence: str | None = None,
               extra: dict | None = None) -> Path:
    """Write a :class:`MorphableModel` or :class:`FlameModel` to ``path`` (npz, format v1).

    Args:
      model: the model pytree (jax or numpy arrays).
      path: destination file (written exactly there, no suffix added).
      sources: files the model was made from; each is recorded by name and sha256 (or pass
        ``{"name": ..., "sha256": ...}`` dicts directly).
      licence: a licence note stored in the metadata (default: the source files' licences apply).
      extra: additional JSON-serialisable metadata (stored under ``"extra"``).

    The write is atomic: temporary file in the same folder, fsync, then ``os.replace``.
    """
    model_type = next((name for name, cls in _MODEL_CLASSES.items() if isinstance(model, cls)),
                      None)
    if model_type is None:
        raise TypeError(
            f"model: expected a MorphableModel or FlameModel, got {type(model).__name__}"
        )
    spec = _SPEC[model_type]
    arrays: dict[str, np.ndarray] = {}
    for name in spec["required"] + spec["optional"]:
        value = getattr(model, name)
        if value is None:
            if name in spec["required"]:
                raise ValueError(f"model.{name} is None but required")
            continue
        arrays[name] = np.asarray(value)
    landmark_names = []
    if model_type == "MorphableModel":
        for key, value in dict(model.landmarks or {}).items():
            key = str(key)
            if "/" in key or not key:
                raise ValueError(f"model.landmarks: invalid name {key!r}")
            arrays[f"landmarks/{key}"] = np.asarray(value)
            landmark_names.append(key)
    for name, value in arrays.items():
        if value.dtype == object:
            raise ValueError(f"model.{name}: object arrays cannot be saved")
    static = {}
    for name in spec["static"]:
        value = getattr(model, name)
        static[name] = list(value) if isinstance(value, tuple) else value
    source_list = []
    for src in sources:
        if isinstance(src, dict):
            source_list.append({"name": str(src["name"]), "sha256": str(src.get("sha256", ""))})
        else:
            source_list.append({"name": Path(src).name, "sha256": sha256_file(src)})
    try:
        creator = f"jface {version('jface')}"
    except PackageNotFoundError:  # not installed as a distribution
        creator = "jface"
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "model_type": model_type,
        "units": model.units,
        "static": static,
        "arrays": {k: {"shape": list(v.shape), "dtype": v.dtype.str} for k, v in arrays.items()},
        "landmarks": landmark_names,
        "sources": source_list,
        "licence": DEFAULT_LICENCE if licence is None else str(licence),
        "created_by": creator,
    }
    if extra:
        meta["extra"] = extra
    return write_container(path, arrays, meta, META_KEY)


def read_metadata(path) -> dict:
    """The JSON metadata of a model file (validated: format name and supported version)."""
    meta, _ = _open(path, arrays=False)
    return meta


def _open(path, *, arrays: bool):
    meta, content = read_container(
        path, META_KEY, format_name=FORMAT_NAME, max_version=FORMAT_VERSION, arrays=arrays,
        missing_hint=" (for FLAME's pkl-named npz or the original files use "
                     "jface.models.load_flame / the load_* loaders)")
    if meta.get("model_type") not in _SPEC:
        raise ModelFileError(path, f"unknown model_type {meta.get('model_type')!r}; expected one "
                             f"of {sorted(_SPEC)}", META_KEY)
    return meta, content


def load_model(path):
    """Read a model written by :func:`save_model` -> :class:`MorphableModel` / :class:`FlameModel`.

    Checks the format name and version, that every required array is present with the shape and
    dtype recorded in the metadata, that shapes agree with each other (vertex counts, face index
    ranges), and rebuilds the static fields. Raises :class:`ModelFileError` naming the file and
    field otherwise.
    """
    meta, arrays = _open(path, arrays=True)
    model_type = meta["model_type"]
    spec = _SPEC[model_type]
    recorded = meta.get("arrays", {})
    if not isinstance(recorded, dict):
        raise ModelFileError(path, "metadata 'arrays' is not a JSON object", META_KEY)
    for name in spec["required"]:
        if name not in arrays:
            raise ModelFileError(path, f"missing array for required field of {model_type}", name)
    for name, value in arrays.items():
        info = recorded.get(name)
        if info is None:
            raise ModelFileError(path, "array not listed in the metadata", name)
        if list(value.shape) != list(info.get("shape", [])) or value.dtype.str != info.get("dtype"):
            raise ModelFileError(
                path,
                f"array is {value.dtype.str}{list(value.shape)} but the metadata records "
                f"{info.get('dtype')}{info.get('shape')}",
                name,
            )
        if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
            raise ModelFileError(path, "contains NaN or infinite values", name)
    missing = sorted(set(recorded) - set(arrays))
    if missing:
        raise ModelFileError(path, "arrays listed in the metadata are missing", missing[0])
    unknown = sorted(k for k in arrays if k not in spec["required"] + spec["optional"]
                     and not k.startswith("landmarks/"))
    if unknown:
        raise ModelFileError(path, f"unknown arrays for {model_type}: {unknown}", unknown[0])

    static = dict(meta.get("static", {}))
    if model_type == "MorphableModel":
        return _build_morphable(path, arrays, static)
    return _build_flame(path, arrays, static)


def _check(cond, path, field, message):
    if not cond:
        raise ModelFileError(path, message, field)


def _check_faces(path, faces, n_vertices, field="faces"):
    _check(faces.ndim == 2 and faces.shape[1] == 3, path, field,
           f"expected (F, 3), got {faces.shape}")
    _check(faces.dtype.kind in "iu", path, field, f"expected integers, got {faces.dtype}")
    if faces.size:
        _check(faces.min() >= 0 and faces.max() < n_vertices, path, field,
               f"0-based indices must lie in [0, {n_vertices})")


def _build_morphable(path, arrays, static):
    mean = arrays["mean"]
    _check(mean.ndim == 2 and mean.shape[1] == 3, path, "mean",
           f"expected (N, 3), got {mean.shape}")
    n = mean.shape[0]
    for name in ("shape_basis", "expression_basis", "albedo_basis"):
        if name in arrays:
            b = arrays[name]
            _check(b.ndim == 3 and b.shape[:2] == (n, 3), path, name,
                   f"expected ({n}, 3, K), got {b.shape}")
    _check_faces(path, arrays["faces"], n)
    for name, shape in (("uv", (n, 2)), ("albedo_mean", (n, 3)), ("vertex_mirror", (n,))):
        if name in arrays:
            _check(arrays[name].shape == shape, path, name,
                   f"expected {shape}, got {arrays[name].shape}")
    landmarks = {}
    for key, value in arrays.items():
        if key.startswith("landmarks/"):
            _check(value.ndim == 1 and value.dtype.kind in "iu", path, key,
                   f"expected (L,) integer indices, got {value.dtype}{value.shape}")
            if value.size:
                _check(value.min() >= 0 and value.max() < n, path, key,
                       f"vertex indices must lie in [0, {n})")
            landmarks[key[len("landmarks/"):]] = jnp.asarray(value)
    grid_hw = static.get("grid_hw")
    if grid_hw is not None:
        _check(isinstance(grid_hw, list) and len(grid_hw) == 2
               and all(isinstance(v, int) for v in grid_hw) and grid_hw[0] * grid_hw[1] == n,
               path, "grid_hw", f"static grid_hw {grid_hw!r} does not match {n} vertices")
        grid_hw = tuple(grid_hw)
    kwargs = {k: jnp.asarray(v) for k, v in arrays.items() if not k.startswith("landmarks/")}
    return MorphableModel(**kwargs, landmarks=landmarks, units=str(static.get("units", "mm")),
                          grid_hw=grid_hw)


def _build_flame(path, arrays, static):
    v = arrays["v_template"]
    _check(v.ndim == 2 and v.shape[1] == 3, path, "v_template", f"expected (V, 3), got {v.shape}")
    n_v = v.shape[0]
    parents = static.get("parents")
    _check(isinstance(parents, list) and parents and parents[0] == -1
           and all(isinstance(p, int) and 0 <= p < j for j, p in enumerate(parents[1:], 1)),
           path, "parents", f"static parents {parents!r} are not a valid kinematic tree")
    n_j = len(parents)
    sd = arrays["shapedirs"]
    _check(sd.ndim == 3 and sd.shape[:2] == (n_v, 3), path, "shapedirs",
           f"expected ({n_v}, 3, K), got {sd.shape}")
    n_shape = static.get("n_shape")
    _check(isinstance(n_shape, int) and 0 <= n_shape <= sd.shape[2], path, "n_shape",
           f"static n_shape {n_shape!r} outside [0, {sd.shape[2]}]")
    for name, shape in (("posedirs", (n_v, 3, 9 * (n_j - 1))), ("j_regressor", (n_j, n_v)),
                        ("lbs_weights", (n_v, n_j))):
        _check(arrays[name].shape == shape, path, name,
               f"expected {shape}, got {arrays[name].shape}")
    _check_faces(path, arrays["faces"], n_v)
    kwargs = {k: jnp.asarray(val) for k, val in arrays.items()}
    return FlameModel(**kwargs, parents=tuple(parents), n_shape=n_shape,
                      units=str(static.get("units", "m")))
