"""Bilinear image sampling with the two conventions the originals use.

* :func:`bilinear_sample`: MatConvNet's ``vl_nnbilinearsampler`` (``dagnn.BilinearSampler``) as
  used by 3DMM-STN: grid channel 0 vertical, channel 1 horizontal, align-corners
  (-1/+1 are the centres of the border pixels), zero padding. The default ``padding="symmetric"``
  is the GPU/cuDNN behaviour (= PyTorch ``grid_sample(align_corners=True)`` with swapped
  channels); ``padding="matconvnet_cpu"`` reproduces the CPU build's quirk, where a sample whose
  floor is -1 (within one pixel outside the top or left edge) gives 0 output and 0 gradient.
* :func:`grid_sample`: PyTorch ``F.grid_sample(..., mode='bilinear', padding_mode='zeros',
  align_corners=False)`` as DECA uses it (``decalib/utils/renderer.py``, ``SRenderY.forward``):
  grid channel 0 is x (columns), channel 1 is y (rows); -1/+1 are the outer *edges* of the border
  pixels.

Both are per item: ``image (H, W, C)``, ``grid (H', W', 2)`` -> ``(H', W', C)``. Gradients flow to
the image and to the grid (through the bilinear weights; the floor is piecewise constant, so at
exact integer positions the derivative is the one-sided one from the right, as in MatConvNet).
An image with no pixels (H or W = 0) or a wrong rank raises a ``ValueError`` naming the argument.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

__all__ = ["bilinear_sample", "grid_sample", "sample_pixels"]


def _check_image(image: jax.Array) -> None:
    if image.ndim != 3:
        raise ValueError(f"image: expected (H, W, C), got shape {tuple(image.shape)}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image: expected at least one pixel (H, W >= 1), got shape {tuple(image.shape)}")


def sample_pixels(image: ArrayLike, rows: ArrayLike, cols: ArrayLike, *, cpu_quirk: bool = False) -> jax.Array:
    """Bilinear sample at 0-based pixel coordinates (pixel centres at integers), zero padding.

    ``image (H, W, C)``, ``rows``/``cols`` any shape S -> ``S + (C,)``. Neighbours outside the
    image contribute 0.
    """
    image = jnp.asarray(image)
    _check_image(image)
    dtype = jnp.result_type(image.dtype, jnp.asarray(rows).dtype, jnp.float32)
    image = image.astype(dtype)
    rows = jnp.asarray(rows, dtype)
    cols = jnp.asarray(cols, dtype)
    height, width = image.shape[0], image.shape[1]
    r0 = jnp.floor(rows)
    c0 = jnp.floor(cols)
    wr = rows - r0
    wc = cols - c0
    r0 = r0.astype(jnp.int32)
    c0 = c0.astype(jnp.int32)
    out = 0.0
    for dr, weight_r in ((0, 1.0 - wr), (1, wr)):
        for dc, weight_c in ((0, 1.0 - wc), (1, wc)):
            r = r0 + dr
            c = c0 + dc
            inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
            # Outside neighbours are sent out of bounds of a fill-mode gather (not clamped to the
            # border): same values, and the backward's scatter drops them instead of adding
            # zeros into the border texels (atomic contention on a GPU).
            value = image.at[jnp.where(inside, r, height), jnp.where(inside, c, width)].get(
                mode="fill", fill_value=0
            )
            weight = jnp.where(inside, weight_r * weight_c, 0.0)
            out = out + weight[..., None] * value
    if cpu_quirk:
        # MatConvNet CPU build: the signed/unsigned comparison kills samples with floor == -1.
        dead = (r0 == -1) | (c0 == -1)
        out = jnp.where(dead[..., None], 0.0, out)
    return out


def bilinear_sample(image: ArrayLike, grid: ArrayLike, *, padding: str = "symmetric") -> jax.Array:
    """MatConvNet bilinear sampler (3DMM-STN, ``vl_nnbilinearsampler``), per item.

    ``image (H, W, C)``; ``grid (H', W', 2)`` with channel 0 = vertical, channel 1 = horizontal,
    both in [-1, 1], align-corners: row = (g0 + 1)/2 (H - 1), col = (g1 + 1)/2 (W - 1).
    ``padding``: ``"symmetric"`` (GPU/cuDNN; default) or ``"matconvnet_cpu"`` (CPU quirk).
    Returns ``(H', W', C)``.
    """
    if padding not in ("symmetric", "matconvnet_cpu"):
        raise ValueError(f"padding: expected 'symmetric' or 'matconvnet_cpu', got {padding!r}")
    image = jnp.asarray(image)
    grid = jnp.asarray(grid)
    _check_image(image)
    if grid.ndim != 3 or grid.shape[-1] != 2:
        raise ValueError(f"grid: expected (H', W', 2), got shape {grid.shape}")
    height, width = image.shape[0], image.shape[1]
    rows = (grid[..., 0] + 1.0) / 2.0 * (height - 1)
    cols = (grid[..., 1] + 1.0) / 2.0 * (width - 1)
    return sample_pixels(image, rows, cols, cpu_quirk=padding == "matconvnet_cpu")


def grid_sample(image: ArrayLike, grid_xy: ArrayLike) -> jax.Array:
    """PyTorch ``grid_sample(bilinear, zeros, align_corners=False)`` as in DECA, per item.

    ``image (H, W, C)``; ``grid_xy (H', W', 2)`` with channel 0 = x (columns), 1 = y (rows), in
    [-1, 1] where -1/+1 are the outer edges of the border pixels: col = ((x + 1) W - 1)/2,
    row = ((y + 1) H - 1)/2. Returns ``(H', W', C)``.
    """
    image = jnp.asarray(image)
    grid_xy = jnp.asarray(grid_xy)
    _check_image(image)
    if grid_xy.shape[-1] != 2:
        raise ValueError(f"grid_xy: expected (..., 2), got shape {grid_xy.shape}")
    height, width = image.shape[0], image.shape[1]
    cols = ((grid_xy[..., 0] + 1.0) * width - 1.0) / 2.0
    rows = ((grid_xy[..., 1] + 1.0) * height - 1.0) / 2.0
    return sample_pixels(image, rows, cols)
