"""The project's own model file: an ``.npz`` of plain arrays plus one JSON metadata entry.

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

No pickles anywhere, so loading a model file cannot run code. Files are written to a temporary file
in the destination folder and renamed over the target, so a failed save never destroys an existing
model file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from jface.models.errors import ModelFileError

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


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _model_classes():
    from jface.models.morphable import FlameModel, MorphableModel

    return {"MorphableModel": MorphableModel, "FlameModel": FlameModel}


def save_model(model, path, *, sources: Iterable = (), licence: Optional[str] = None,
               extra: Optional[dict] = None) -> Path:
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
    classes = _model_classes()
    model_type = next((name for name, cls in classes.items() if isinstance(model, cls)), None)
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
        from importlib.metadata import version

        creator = f"jface {version('jface')}"
    except Exception:  # noqa: BLE001 - not installed as a distribution
        creator = "jface"
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "model_type": model_type,
        "units": getattr(model, "units"),
        "static": static,
        "arrays": {k: {"shape": list(v.shape), "dtype": v.dtype.str} for k, v in arrays.items()},
        "landmarks": landmark_names,
        "sources": source_list,
        "licence": DEFAULT_LICENCE if licence is None else str(licence),
        "created_by": creator,
    }
    if extra:
        meta["extra"] = extra
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
            np.savez(f, **{META_KEY: payload}, **arrays)
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


def read_metadata(path) -> dict:
    """The JSON metadata of a model file (validated: format name and supported version)."""
    meta, _ = _open(path, arrays=False)
    return meta


def _open(path, *, arrays: bool):
    from jface.models.io import read_file_bytes

    data = read_file_bytes(path)
    if not data.startswith(b"PK"):
        raise ModelFileError(path, "not an .npz (zip) file; expected a jface model file")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            if META_KEY not in z.files:
                raise ModelFileError(
                    path,
                    f"no {META_KEY!r} entry: not a jface model file (for FLAME's pkl-named npz or "
                    "the original files use jface.models.load_flame / the load_* loaders)",
                    META_KEY,
                )
            raw = z[META_KEY]
            content = {k: z[k] for k in z.files if k != META_KEY} if arrays else None
    except ModelFileError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ModelFileError(path, f"unreadable .npz ({type(exc).__name__}: {exc})") from None
    # NpzFile hands back raw bytes for members that are not .npy data
    for name, value in [(META_KEY, raw), *(content or {}).items()]:
        if not isinstance(value, np.ndarray):
            raise ModelFileError(path, "entry is not an .npy array", name)
    try:
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise ValueError("metadata is not a uint8 byte array")
        meta = json.loads(raw.tobytes().decode("utf-8"))
        if not isinstance(meta, dict):
            raise ValueError("metadata is not a JSON object")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFileError(path, f"corrupt metadata ({exc})", META_KEY) from None
    if meta.get("format") != FORMAT_NAME:
        raise ModelFileError(path, f"format is {meta.get('format')!r}, expected {FORMAT_NAME!r}",
                             META_KEY)
    version = meta.get("version")
    if not isinstance(version, int) or version < 1:
        raise ModelFileError(path, f"invalid format version {version!r}", META_KEY)
    if version > FORMAT_VERSION:
        raise ModelFileError(
            path,
            f"format version {version} is newer than this jface supports ({FORMAT_VERSION}); "
            "upgrade jface or regenerate the file",
            META_KEY,
        )
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
    import jax.numpy as jnp

    meta, arrays = _open(path, arrays=True)
    model_type = meta["model_type"]
    spec = _SPEC[model_type]
    recorded = meta.get("arrays", {})
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
        model = _build_morphable(path, arrays, static, jnp)
    else:
        model = _build_flame(path, arrays, static, jnp)
    return model


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


def _build_morphable(path, arrays, static, jnp):
    from jface.models.morphable import MorphableModel

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


def _build_flame(path, arrays, static, jnp):
    from jface.models.morphable import FlameModel

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
