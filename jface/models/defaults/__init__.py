"""jface's embedded default models: **synthetic stand-ins** generated from code.

FLAME and the Basel Face Model are licence-gated, so a fresh machine has no real face model. jface
therefore generates two procedural models itself, deterministically (fixed seeds, no clocks), the
first time they are asked for:

* :func:`default_stn_model` -> :class:`~jface.models.MorphableModel`: a procedural face on the
  112 x 112 UV grid, structured like the 3DMM-STN's prepared BFM (``prepareExpressionBFM.m`` +
  ``resampleModel.m``).
* :func:`default_flame_model` -> :class:`~jface.models.FlameModel`: a FLAME-structured head
  (5 joints, 300 + 100 blendshapes, DECA's landmark embedding, UV layout and albedo), written to
  disk in the real FLAME / DECA file layouts and loaded back through jface's real-file loaders.

Neither is a statistical model of real faces; they exist so that every demo, test and training
script runs without licensed data. Use the real files (``jface.models.prepare_stn_model`` for the
BFM, ``jface.models.load_flame`` for FLAME) for real work.

**Asset cache.** Generated files live in ``$JFACE_CACHE`` or, when unset, ``~/.cache/jface``
(file names carry a format version, e.g. ``default_stn_v1.npz``; they are written atomically and
rebuilt when missing, of another version, or made by different generator code). Within a process
the loaded models are memoised with ``functools.lru_cache`` (the documented asset cache; call
:func:`clear_memory_cache` after changing ``$JFACE_CACHE``). ``python -m jface.models regenerate``
rebuilds the files.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from jface.models.defaults.cache import atomic_savez, cache_dir, generation_lock, generator_fingerprint
from jface.models.defaults.flame_default import (
    FLAME_VERSION,
    ensure_flame_files,
    load_flame_files,
    write_flame_files,
)
from jface.models.defaults.stn_default import STN_GENERATOR_MODULES, STN_VERSION, generate_stn_arrays
from jface.models.morphable import MorphableModel

__all__ = [
    "cache_dir",
    "default_stn_model",
    "default_flame_model",
    "regenerate",
    "clear_memory_cache",
    "stn_cache_path",
    "flame_cache_dir",
    "load_stn_arrays",
    "generation_lock",
]


# ------------------------------------------------------------------------------------------------
# STN default


def stn_cache_path(directory=None) -> Path:
    return Path(directory or cache_dir()) / f"default_stn_v{STN_VERSION}.npz"


def _stn_fingerprint() -> str:
    return generator_fingerprint(STN_GENERATOR_MODULES)


def _write_stn(path: Path) -> None:
    arrays = generate_stn_arrays()
    out = {}
    for k, v in arrays.items():
        v = np.asarray(v)
        out[k] = v.astype(np.float32) if v.dtype == np.float64 else v
    out["fingerprint"] = np.asarray(_stn_fingerprint())
    atomic_savez(path, out)


def _stn_file_ok(path: Path) -> bool:
    if not path.exists():
        return False
    try:
        with np.load(path) as z:
            return (int(z["version"]) == STN_VERSION
                    and str(z["fingerprint"]) == _stn_fingerprint())
    except Exception:
        return False


def load_stn_arrays(directory=None) -> dict:
    """The default STN model's arrays from the cache (generated first if needed)."""
    path = stn_cache_path(directory)
    with generation_lock(path):
        if not _stn_file_ok(path):
            _write_stn(path)
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


@functools.lru_cache(maxsize=4)
def _default_stn_model_cached(directory: str):
    a = load_stn_arrays(directory)
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    return MorphableModel(
        mean=f32(a["mean"]),
        shape_basis=f32(a["shape_basis"]),
        expression_basis=f32(a["expression_basis"]),
        faces=jnp.asarray(a["faces"], jnp.int32),
        uv=f32(a["uv"]),
        landmarks={
            "aflw21": jnp.asarray(a["landmarks_aflw21"], jnp.int32),
            "ibug68": jnp.asarray(a["landmarks_ibug68"], jnp.int32),
        },
        albedo_mean=f32(a["albedo_mean"]),
        albedo_basis=f32(a["albedo_basis"]),
        vertex_mirror=jnp.asarray(a["vertex_mirror"], jnp.int32),
        units="mm",
        grid_hw=tuple(int(v) for v in a["grid_hw"]),
    )


def default_stn_model():
    """The synthetic default 3DMM-STN model (a :class:`MorphableModel`, float32, mm, 112-grid).

    A procedural face, NOT the BFM: 30 identity components (N(0, 1) coefficients), 12 expression
    components (``jaw_open, smile, lip_pucker, brow_raise, eye_close, brow_frown, mouth_stretch,
    cheek_puff, lip_press, nose_wrinkle, mouth_left, wink_left``), per-vertex albedo, landmarks
    ``"aflw21"`` / ``"ibug68"`` and ``vertex_mirror``. ``grid_hw = (112, 112)``. Generated into
    :func:`cache_dir` on first use (a few seconds) and memoised in-process.
    The 3DMM-STN uses the first 5 + 5 components: slice with ``shape_basis[..., :5]``.
    """
    return _default_stn_model_cached(str(cache_dir()))


# ------------------------------------------------------------------------------------------------
# FLAME default


def flame_cache_dir(directory=None) -> Path:
    return Path(directory or cache_dir()) / f"default_flame_v{FLAME_VERSION}"


def default_flame_model():
    """The synthetic FLAME-structured default head (a :class:`FlameModel`, float32, metres).

    NOT FLAME: a procedural head with FLAME's structure (5 joints, 300 + 100 blendshapes,
    posedirs, DECA's 51 + 17 dynamic + 68 landmark embedding, UV layout, UV face/eye mask and a
    UV albedo model). It is written to :func:`cache_dir` in the real file layouts
    (``generic_model.pkl``, ``landmark_embedding.npy``, ``head_template.obj``,
    ``FLAME_albedo_from_BFM.npz``, ``uv_face_eye_mask.png``) and loaded back through the same
    loaders real files use.
    """
    return _default_flame_model_cached(str(cache_dir()))


@functools.lru_cache(maxsize=4)
def _default_flame_model_cached(directory: str):
    folder = ensure_flame_files(flame_cache_dir(directory))
    return load_flame_files(folder)


# ------------------------------------------------------------------------------------------------


def clear_memory_cache() -> None:
    """Forget the in-process (lru_cache) copies of the default models."""
    _default_stn_model_cached.cache_clear()
    _default_flame_model_cached.cache_clear()


def regenerate(directory=None, which=("stn", "flame")) -> list:
    """(Re)build the default model files in ``directory`` (default :func:`cache_dir`).

    Returns the paths written. Deterministic: two calls produce identical arrays.
    """
    directory = Path(directory) if directory is not None else cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    if "stn" in which:
        path = stn_cache_path(directory)
        with generation_lock(path):
            _write_stn(path)
        written.append(path)
    if "flame" in which:
        folder = flame_cache_dir(directory)
        with generation_lock(folder):
            written.append(write_flame_files(folder))
    clear_memory_cache()
    return written
