"""Differentiable rasterization and DECA's renderer (``jface.render``), pure JAX.

Pipeline pieces (per item; batch with ``jax.vmap``), in DECA's NDC after the y/z flip
(x right, y down, smaller z = closer; spec deca.md §3, §5.2):

* :func:`rasterize` -> :class:`Fragments` (hard z-buffer, tiled, deterministic);
  :func:`barycentrics` recomputes differentiable barycentrics for given face ids.
* :func:`interpolate` vertex or face-corner attributes with the fragments.
* :func:`soft_rasterize` SoftRas soft silhouettes / colours.
* :func:`world2uv`, :func:`render`, :func:`render_shape`, :func:`composite`, :func:`pos_mask`:
  DECA's ``SRenderY`` stages (spec §5.4-§5.7).
* :func:`procedural_head`: a FLAME-sized procedural head mesh with UVs (demos, benchmarks).
"""

from jface.render.interpolate import face_attributes, interpolate
from jface.render.mesh import procedural_head, demo_head
from jface.render.rasterize import (
    CapacityError,
    Fragments,
    barycentrics,
    ndc_to_pixel,
    rasterize,
    rasterize_face_index,
)
from jface.render.renderer import composite, pos_mask, render, render_shape, uv_ndc, world2uv
from jface.render.soft import soft_rasterize

__all__ = [
    "Fragments",
    "CapacityError",
    "rasterize",
    "rasterize_face_index",
    "barycentrics",
    "ndc_to_pixel",
    "interpolate",
    "face_attributes",
    "soft_rasterize",
    "uv_ndc",
    "world2uv",
    "composite",
    "pos_mask",
    "render",
    "render_shape",
    "procedural_head",
    "demo_head",
]
