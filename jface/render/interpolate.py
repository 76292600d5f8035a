"""Barycentric attribute interpolation (DECA's ``SRenderY.forward``, ``decalib/utils/renderer.py``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jface.render.checks import check_faces
from jface.render.rasterize import Fragments, take_rows

__all__ = ["interpolate", "face_attributes"]


def _vertex_rows(attributes: jax.Array, faces: ArrayLike) -> jax.Array:
    """Checked int32 faces for per-vertex ``attributes (V, D)``: every index must name a row."""
    rows = attributes.shape[0]
    return check_faces(faces, rows, rows=f"attributes has {rows} rows, one per vertex")


def face_attributes(attributes: ArrayLike, faces: ArrayLike) -> jax.Array:
    """Vertex attributes ``(V, D)`` -> per-face-corner ``(F, 3, D)`` (DECA's ``face_vertices``).

    ``faces (F, 3)`` int must index rows of ``attributes`` (checked when concrete).
    """
    attributes = jnp.asarray(attributes)
    if attributes.ndim != 2:
        raise ValueError(f"attributes: expected (V, D), got shape {attributes.shape}")
    return attributes[_vertex_rows(attributes, faces)]


def interpolate(fragments: Fragments, attributes: ArrayLike, faces: ArrayLike | None = None) -> jax.Array:
    """Interpolate attributes with the fragments' screen-space barycentrics, per item.

    Args:
      fragments: output of :func:`jface.render.rasterize` (or a :class:`Fragments` built from
        :func:`jface.render.barycentrics`).
      attributes: per-vertex ``(V, D)`` (then ``faces (F, 3)`` is required) or per-face-corner
        ``(F, 3, D)`` (DECA's layout; ``faces`` is then ignored and may be None).
      faces: ``(F, 3)`` int, indices into the rows of per-vertex ``attributes``. Float faces, a wrong
        shape or (when ``faces`` is concrete) an index outside [0, V) raise ``ValueError``: fewer
        attribute rows than the vertices the faces use is an error, never a silent zero.

    Returns:
      ``(H, W, D)`` = sum_k bary_k * attr[face, k] (affine, no perspective correction, as in DECA);
      background pixels are 0. Differentiable w.r.t. ``attributes`` and, through
      ``fragments.bary``, w.r.t. the vertex positions that were rasterized.
    """
    attributes = jnp.asarray(attributes)
    if attributes.ndim == 2:
        if faces is None:
            raise ValueError("faces: required for per-vertex attributes (V, D)")
        corner = attributes[_vertex_rows(attributes, faces)]
    elif attributes.ndim == 3 and attributes.shape[1] == 3:
        corner = attributes
    else:
        raise ValueError(
            f"attributes: expected per-vertex (V, D) or per-face-corner (F, 3, D), got shape {attributes.shape}"
        )
    face_index = fragments.face_index
    bary = fragments.bary
    dtype = jnp.result_type(bary.dtype, corner.dtype)
    height, width = face_index.shape
    if corner.shape[0] == 0:
        return jnp.zeros((height, width, corner.shape[-1]), dtype)
    values = take_rows(corner, face_index)  # (H, W, 3, D); background rows are 0, backward drops them
    # An explicit sum, not einsum: a dot would run in TF32 on GPUs by default.
    out = jnp.sum(bary.astype(dtype)[..., None] * values.astype(dtype), axis=-2)
    return jnp.where((face_index >= 0)[..., None], out, 0.0)
