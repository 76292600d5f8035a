"""Model formats, loaders, UV flattening and the embedded default models (``jface.models``).

Names are resolved lazily so that importing ``jface.models`` stays cheap and optional
dependencies (trimesh, scipy.sparse solvers) load only when used.
"""

from __future__ import annotations

import importlib

from jface.models.morphable import FlameModel, MorphableModel, synthesize

_LAZY = {
    # real-file loaders (spec 3dmm_stn.md §7, deca.md §2)
    "load_bfm2009": "jface.models.io",
    "load_tddfa_expression": "jface.models.io",
    "load_map_tddfa_to_basel": "jface.models.io",
    "load_anl": "jface.models.io",
    "load_bfm_uv": "jface.models.io",
    "load_flame": "jface.models.io",
    "load_flame_pkl": "jface.models.io",
    "read_flame_fields": "jface.models.io",
    "load_landmark_embedding": "jface.models.io",
    "load_obj": "jface.models.io",
    "ModelFileError": "jface.models.errors",
    "UnsafePickleError": "jface.models.errors",
    # the project's own format
    "save_model": "jface.models.format",
    "load_model": "jface.models.format",
    # UV flattening and 3DMM-STN preparation
    "tutte_embedding": "jface.models.tutte",
    "resample_model": "jface.models.resample",
    "prepare_stn_model": "jface.models.prepare",
    "laplace_beltrami": "jface.models.prepare",
    # embedded procedural defaults
    "default_stn_model": "jface.models.defaults",
    "default_flame_model": "jface.models.defaults",
}

__all__ = ["MorphableModel", "FlameModel", "synthesize", *_LAZY]


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'jface.models' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
