"""Face models: the model pytrees, loaders of the original model files, the project's model file,
UV flattening, 3DMM-STN's model preparation and the embedded default models (``jface.models``).

* :mod:`jface.models.morphable`: :class:`MorphableModel`, :class:`FlameModel`;
* :mod:`jface.models.loaders`: BFM 2009, 3DDFA, ``.anl``, FLAME ``generic_model.pkl`` and DECA's
  landmark embedding (through the bounded readers of :mod:`jface.files`);
* :mod:`jface.models.store`: :func:`save_model` / :func:`load_model`, the project's npz;
* :mod:`jface.models.tutte`, :mod:`jface.models.resample`, :mod:`jface.models.prepare`: UV
  flattening and the original ``prepareExpressionBFM`` + ``resampleModel``;
* :mod:`jface.models.defaults`: the embedded procedural models.

UV flattening, model preparation and the default models are resolved on first use (their scipy
solvers and interpolators add about 0.5-1 s, +40 %, to ``import jface.models``, measured with
``python -X importtime -c "import jface.models"`` on 2 cores); everything else is imported here.
"""

from __future__ import annotations

import importlib

from jface.errors import ModelFileError, UnsafePickleError
from jface.files.mat import load_mat
from jface.files.obj import load_obj
from jface.models.loaders import (
    load_anl,
    load_bfm2009,
    load_bfm_uv,
    load_flame,
    load_flame_pkl,
    load_landmark_embedding,
    load_map_tddfa_to_basel,
    load_tddfa_expression,
    read_flame_fields,
)
from jface.models.morphable import FlameModel, MorphableModel, synthesize
from jface.models.store import load_model, save_model

_ON_FIRST_USE = {
    "tutte_embedding": "jface.models.tutte",
    "resample_model": "jface.models.resample",
    "prepare_stn_model": "jface.models.prepare",
    "laplace_beltrami": "jface.models.prepare",
    "default_stn_model": "jface.models.defaults",
    "default_flame_model": "jface.models.defaults",
}

__all__ = [
    "MorphableModel",
    "FlameModel",
    "synthesize",
    "load_bfm2009",
    "load_tddfa_expression",
    "load_map_tddfa_to_basel",
    "load_anl",
    "load_bfm_uv",
    "load_flame",
    "load_flame_pkl",
    "read_flame_fields",
    "load_landmark_embedding",
    "load_obj",
    "load_mat",
    "ModelFileError",
    "UnsafePickleError",
    "save_model",
    "load_model",
    "tutte_embedding",
    "resample_model",
    "prepare_stn_model",
    "laplace_beltrami",
    "default_stn_model",
    "default_flame_model",
]


def __getattr__(name):
    module = _ON_FIRST_USE.get(name)
    if module is None:
        raise AttributeError(f"module 'jface.models' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
