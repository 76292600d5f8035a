"""DECA (Feng et al. 2021; ``decalib/`` of the public PyTorch release): networks, FLAME decoding,
appearance, detail, the renderer stages, losses and the training stages.

* :func:`encode` / :func:`decode` (batched): images -> codes -> geometry, renders, detail maps.
* :mod:`jface.deca.appearance`: albedo model, camera (:func:`project`), SH shading.
* :mod:`jface.deca.detail`: dense UV triangles, displacement -> detail normals, :func:`animate`.
* :mod:`jface.deca.render`: DECA's renderer stages (``SRenderY``) on :mod:`jface.render`'s
  primitives: :func:`render`, :func:`render_shape`, :func:`composite`, :func:`pos_mask`.
* :mod:`jface.deca.losses`: coarse and detail losses, the swapping batch construction.
* :mod:`jface.deca.stages`: the training stages assembled once (encode -> decode -> stage forward
  -> stage losses), used by training, evaluation, reconstruction and the benchmarks.
* :mod:`jface.deca.networks`: the Flax networks (ResNetEncoder, DetailGenerator, ...).
"""

from __future__ import annotations

from jface.deca import appearance, detail, losses, networks, render, stages
from jface.deca.appearance import albedo, albedo_from_file_layout, convert_albedo_model, project, shade
from jface.deca.detail import (
    animate,
    displacement_map,
    displacement_to_normals,
    generate_dense_triangles,
    load_fixed_displacement,
)
from jface.deca.losses import swap_within_identity
from jface.deca.model import (
    decode,
    decode_geometry,
    decode_geometry_batch,
    detail_outputs,
    detail_uv_maps,
    encode,
    extract_texture,
)
from jface.deca.networks import (
    CODE_SPLITS,
    DetailGenerator,
    ResNet50,
    ResNetEncoder,
    VGG19Features,
    VGGFace2ResNet50,
    detail_latent,
    imagenet_normalize,
    init_variables,
    split_codes,
    vggface2_preprocess,
)
from jface.deca.render import composite, pos_mask, render_shape

__all__ = [
    "encode",
    "decode",
    "decode_geometry",
    "decode_geometry_batch",
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
    "render_shape",
    "composite",
    "pos_mask",
    "appearance",
    "detail",
    "losses",
    "networks",
    "render",
    "stages",
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
]
