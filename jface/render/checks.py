"""Argument checks shared by the render primitives (rasterize, soft_rasterize, interpolate).

Shapes and dtypes are checked on the static shapes, so the checks are free under ``jit``. Index
values (faces out of range) are checked only when the array is concrete: a traced argument under
``jit`` / ``vmap`` / ``grad`` passes untouched. Every error is a ``ValueError`` that names the
argument and what was expected.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.typing import ArrayLike

from jface.arrays import as_float
from jface.geometry import check_faces

__all__ = ["check_mesh", "check_image_hw", "is_concrete", "check_faces"]


def check_mesh(vertices: ArrayLike, faces: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """``(vertices (V, 3) float, faces (F, 3) int32)``; faces must index [0, V) (when concrete)."""
    vertices = as_float(vertices)
    if vertices.ndim != 2 or vertices.shape[-1] != 3:
        raise ValueError(f"vertices: expected (V, 3), got shape {tuple(vertices.shape)}")
    if vertices.shape[0] == 0 and np.shape(faces)[:1] not in ((), (0,)):
        raise ValueError("vertices: got 0 vertices for a non-empty faces array")
    return vertices, check_faces(faces, vertices.shape[0])


def check_image_hw(image_hw) -> tuple[int, int]:
    """``(H, W)`` as two positive Python ints (static; an image of 0 x 0 pixels is an error)."""
    try:
        height, width = (int(s) for s in image_hw)
    except Exception as err:  # noqa: BLE001 - any malformed size gets the same message
        raise ValueError(f"image_hw: expected (H, W) ints, got {image_hw!r}") from err
    if height <= 0 or width <= 0:
        raise ValueError(f"image_hw: expected positive sizes (at least one pixel), got {image_hw!r}")
    return height, width


def is_concrete(*arrays) -> bool:
    """True when the values are known now (none is traced under jit / vmap / grad)."""
    return not any(isinstance(a, jax.core.Tracer) for a in arrays)
