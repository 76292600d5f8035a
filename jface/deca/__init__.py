"""DECA (spec deca.md): encoders and detail generator, FLAME decoding, appearance, detail, losses.

* :func:`encode` / :func:`decode` (batched): images -> codes -> geometry, renders, detail maps.
* :mod:`jface.deca.appearance`: albedo model, camera (:func:`project`), SH shading.
* :mod:`jface.deca.detail`: dense UV triangles, displacement -> detail normals, :func:`animate`.
* :mod:`jface.deca.losses`: coarse and detail losses, the swapping batch construction.
* :mod:`jface.deca.networks`: the Flax networks (ResNetEncoder, DetailGenerator, ...).

Network names are resolved lazily so that importing ``jface.deca`` stays cheap.
"""

from __future__ import annotations

import importlib

from jface.deca import appearance, detail, losses
from jface.deca.appearance import albedo, albedo_from_file_layout, convert_albedo_model, project, shade
from jface.deca.detail import (
    animate,
    displacement_map,
    displacement_to_normals,
    generate_dense_triangles,
    load_fixed_displacement,
)
from jface.deca.losses import swap_within_identity
from jface.deca.model import decode, decode_geometry, detail_outputs, detail_uv_maps, encode, extract_texture

_NETWORK_NAMES = (
    "ResNet50",
    "ResNetEncoder",
    "DetailGenerator",
    "VGGFace2ResNet50",
    "VGG19Features",
    "CODE_SPLITS",
    "split_codes",
    "detail_latent",
    "imagenet_normalize",
    "vggface2_preprocess",
    "init_variables",
)

__all__ = [
    "encode",
    "decode",
    "decode_geometry",
    "detail_outputs",
    "detail_uv_maps",
    "extract_texture",
    "project",
    "albedo",
    "albedo_from_file_layout",
    "convert_albedo_model",
    "shade",
    "generate_dense_triangles",
    "displacement_to_normals",
    "displacement_map",
    "load_fixed_displacement",
    "animate",
    "swap_within_identity",
    "appearance",
    "detail",
    "losses",
    "networks",
    *_NETWORK_NAMES,
]


def __getattr__(name):
    if name == "networks":
        return importlib.import_module("jface.deca.networks")
    if name in _NETWORK_NAMES:
        return getattr(importlib.import_module("jface.deca.networks"), name)
    raise AttributeError(f"module 'jface.deca' has no attribute {name!r}")
