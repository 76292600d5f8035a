"""Per-face screen planes shared by the hard rasterizer's jnp pass and its Pallas kernel.

Both :mod:`jface.render.rasterize` (the dense jnp z-buffer pass) and :mod:`jface.render.kernels`
(the Triton kernel) evaluate the same expressions from here, so the two paths agree except where a
compiler's fused multiply-add moves a value across an edge or a depth tie by one ulp.

Frame: DECA's NDC after the y/z flip (x right, y down, smaller z = closer), mapped to pixel units
with DECA's pixel-centre convention (``decalib/utils/rasterizer/standard_rasterize_cuda_kernel.cu``):
col = (x + 1) W/2 - 0.5, row = (y + 1) H/2 - 0.5, so integer pixel coordinates are pixel centres.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["NO_FACE", "ndc_to_pixel", "nonzero_area", "face_planes", "plane_depth_key"]

# Face id of "no face yet" in the z-min reductions: larger than every real id, so ties between a
# real face and the sentinel keep the real one.
NO_FACE = int(np.iinfo(np.int32).max)


def ndc_to_pixel(xy: jax.Array, image_hw: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
    """DECA's pixel-centre mapping: NDC ``(..., 2)`` (x right, y down) -> ``(col, row)`` in pixels."""
    height, width = image_hw
    col = (xy[..., 0] + 1.0) * (width / 2.0) - 0.5
    row = (xy[..., 1] + 1.0) * (height / 2.0) - 0.5
    return col, row


def nonzero_area(e1c, e1r, e2c, e2r) -> jax.Array:
    """Exact "screen area != 0" test of a triangle with edge vectors e1, e2 (from corner 0).

    Comparing the two products (rather than testing their difference) keeps exactly degenerate
    faces degenerate when XLA contracts a*b - c*d into an FMA, which leaves a rounding residue
    instead of 0 (e.g. faces with a repeated vertex)."""
    return (e1c * e2r) != (e1r * e2c)


def face_planes(vertices: jax.Array, faces: jax.Array, image_hw: tuple[int, int]):
    """Per-face affine planes in pixel units: ``(F, 9)`` params, ``(F,)`` validity and the corners.

    ``vertices (V, 3)`` NDC, ``faces (F, 3)`` int32. params = (c0, r0, a1, b1, a2, b2, z0, z1 - z0,
    z2 - z0) with, for d = p - p0, w1 = a1 dc + b1 dr, w2 = a2 dc + b2 dr (relative to corner 0 for
    float32 accuracy). A face is valid when its corners are finite and its screen area is not 0.
    Returns ``(params, valid, corner cols (F, 3), corner rows (F, 3))``.
    """
    col, row = ndc_to_pixel(vertices[:, :2], image_hw)
    z = vertices[:, 2]
    fc, fr, fz = col[faces], row[faces], z[faces]
    e1c, e1r = fc[:, 1] - fc[:, 0], fr[:, 1] - fr[:, 0]
    e2c, e2r = fc[:, 2] - fc[:, 0], fr[:, 2] - fr[:, 0]
    area = e1c * e2r - e1r * e2c
    finite = jnp.all(jnp.isfinite(fc) & jnp.isfinite(fr) & jnp.isfinite(fz), axis=1)
    valid = finite & nonzero_area(e1c, e1r, e2c, e2r)
    inv = jnp.where(valid, 1.0 / jnp.where(valid, area, 1.0), 0.0)
    params = jnp.stack(
        [fc[:, 0], fr[:, 0], e2r * inv, -e2c * inv, -e1r * inv, e1c * inv,
         fz[:, 0], fz[:, 1] - fz[:, 0], fz[:, 2] - fz[:, 0]],
        axis=1,
    )
    params = jnp.where(valid[:, None], params, 0.0)
    return params, valid, fc, fr


def plane_depth_key(p, ok, col, row, znear):
    """Depth of each (pixel, face) where the pixel centre is inside the face, inf elsewhere.

    ``p``: the nine plane parameters of :func:`face_planes` as a list of arrays broadcasting
    against the pixel ``col``/``row`` (pixel units), ``ok`` the faces' validity. Inside (DECA's
    standard kernel): w2 >= 0, w1 >= 0, w0 > 0 (strict) and z >= znear.
    """
    dc = col - p[0]
    dr = row - p[1]
    w1 = p[2] * dc + p[3] * dr
    w2 = p[4] * dc + p[5] * dr
    w0 = 1.0 - w1 - w2
    z = p[6] + w1 * p[7] + w2 * p[8]
    inside = ok & (w1 >= 0) & (w2 >= 0) & (w0 > 0) & (z >= znear)
    return jnp.where(inside, z, jnp.inf)
