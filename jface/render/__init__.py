"""Differentiable rasterization primitives (``jface.render``), pure JAX.

Pipeline pieces (per item; batch with ``jax.vmap``), in DECA's NDC after the y/z flip
(x right, y down, smaller z = closer; BUILD_NOTES.md, Frames and conventions):

* :func:`rasterize` -> :class:`Fragments` (hard z-buffer, tiled, deterministic);
  :func:`barycentrics` recomputes differentiable barycentrics for given face ids.
* :func:`interpolate` vertex or face-corner attributes with the fragments.
* :func:`soft_rasterize` SoftRas soft silhouettes / colours.
* :func:`antialias` analytic edge coverage at silhouette / occlusion edges of a hard-rasterized
  image (nvdiffrast's ``antialias``): vertex-position gradients at those edges.
* :func:`uv_ndc`, :func:`world2uv`: the UV layout as a mesh, attributes into UV maps. DECA's
  shading stages built on these primitives live in :mod:`jface.deca.render`.

The primitives know nothing of heads or models: the procedural and demo heads used by the demo,
the benchmarks and the tests are in :mod:`jface.flame.heads`.
"""

from jface.render.antialias import antialias, edge_neighbours
from jface.render.interpolate import face_attributes, interpolate
from jface.render.rasterize import (
    CapacityError,
    Fragments,
    barycentrics,
    ndc_to_pixel,
    rasterize,
    rasterize_face_index,
)
from jface.render.soft import soft_rasterize
from jface.render.uv import layout_fragments, uv_ndc, world2uv

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
    "antialias",
    "edge_neighbours",
    "uv_ndc",
    "world2uv",
    "layout_fragments",
]
