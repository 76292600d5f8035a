"""The UV layout as a mesh: texture coordinates to UV NDC, and per-vertex attributes into UV maps.

Frames: ``uv_coords (T, 2)`` are texture coordinates in [0, 1] with v up; :func:`uv_ndc` maps them
to the UV NDC (2u - 1, 1 - 2v) that :func:`jface.render.rasterize` takes, so that UV image row 0
is v = 1 (DECA's ``SRenderY.__init__`` in ``decalib/utils/renderer.py``: ``uvcoords * 2 - 1``
with the y flip of its rasterizer).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jface.arrays import as_float, cpu_compiler_options
from jface.render.checks import check_faces, is_concrete
from jface.render.interpolate import face_attributes, interpolate
from jface.render.rasterize import DEFAULT_CAPACITY, DEFAULT_TILE_SIZE, Fragments, rasterize

__all__ = ["uv_ndc", "world2uv", "layout_fragments", "as_hw"]


def as_hw(size: int | Sequence[int], name: str) -> tuple:
    """An image size given as ``S`` (square) or ``(H, W)`` -> ``(H, W)`` ints; a clear error
    naming ``name`` otherwise."""
    if isinstance(size, int):
        return (size, size)
    try:
        h, w = (int(s) for s in size)
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"{name}: expected an int or (H, W), got {size!r}") from err
    return (h, w)


def uv_ndc(uv_coords) -> jax.Array:
    """``(T, 2)`` uv (v up) -> ``(T, 3)`` UV NDC (2u - 1, 1 - 2v, 1): the UV layout as vertices
    for :func:`jface.render.rasterize` (constant depth 1)."""
    uv_coords = as_float(uv_coords)
    if uv_coords.ndim != 2 or uv_coords.shape[-1] != 2:
        raise ValueError(f"uv_coords: expected (T, 2), got shape {uv_coords.shape}")
    u, v = uv_coords[:, 0], uv_coords[:, 1]
    return jnp.stack([2.0 * u - 1.0, 1.0 - 2.0 * v, jnp.ones_like(u)], axis=-1)


def world2uv(attributes, faces, uv_coords, uv_faces, uv_size=256, *, tile_size: int = DEFAULT_TILE_SIZE,
             capacity: int = DEFAULT_CAPACITY, impl: str = "auto", layout: Fragments | None = None) -> jax.Array:
    """Per-vertex attributes into a UV map (DECA's ``SRenderY.world2uv``), per item.

    The UV layout is rasterized as a mesh: vertices ``uv_ndc(uv_coords)`` (constant z = 1), faces
    ``uv_faces``; the per-face-corner attribute is ``attributes[faces]`` (mesh faces). Depth is
    constant, so overlapping UV triangles resolve to the lower face index (deterministic; DECA's
    kernel is racy there).

    ``attributes (V, D)``, ``faces (F, 3)``, ``uv_coords (T, 2)``, ``uv_faces (F, 3)``,
    ``uv_size`` int or ``(H, W)`` -> ``(H, W, D)`` in the UV image layout (row 0 = v = 1), 0
    outside the UV charts; differentiable w.r.t. ``attributes``. ``layout``: the layout's
    fragments from :func:`layout_fragments` (computed outside ``jit`` and passed in, when the
    layout is a traced argument of the caller's program), so that it is not rasterized again.
    """
    layout_known = is_concrete(uv_coords, uv_faces)  # before any jnp op stages them into a trace
    known = (np.asarray(uv_coords), np.asarray(uv_faces)) if layout_known else None
    attributes = jnp.asarray(attributes)
    faces = jnp.asarray(faces)
    uv_faces = jnp.asarray(uv_faces)
    if attributes.ndim != 2:
        raise ValueError(f"attributes: expected (V, D), got shape {attributes.shape}")
    if faces.ndim != 2 or faces.shape[-1] != 3:
        raise ValueError(f"faces: expected (F, 3), got shape {faces.shape}")
    if uv_faces.shape != faces.shape:
        raise ValueError(f"uv_faces: expected shape {faces.shape} (one uv face per face), got {uv_faces.shape}")
    hw = as_hw(uv_size, "uv_size")
    uv_vertices = uv_ndc(uv_coords)
    # indices checked here (when concrete) so that the errors name world2uv's own arguments
    uv_faces = check_faces(uv_faces, uv_vertices.shape[0], name="uv_faces",
                           rows=f"{uv_vertices.shape[0]} uv_coords")
    corners = face_attributes(attributes, faces)
    if layout is not None:
        if tuple(jnp.shape(layout.face_index)) != hw:
            raise ValueError(f"layout: expected fragments of size {hw}, got {jnp.shape(layout.face_index)}")
        fragments = layout
    elif layout_known:
        fragments = layout_fragments(*known, hw, tile_size=tile_size, capacity=capacity, impl=impl)
    else:
        fragments = rasterize(uv_vertices, uv_faces, hw, tile_size=tile_size, capacity=capacity, impl=impl)
    return interpolate(fragments, corners)


@partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _rasterize_layout(vertices, faces, hw, tile_size, capacity, impl):
    return rasterize(uv_ndc(vertices), faces, hw, tile_size=tile_size, capacity=capacity, impl=impl)


_LAYOUTS: dict = {}
_MAX_LAYOUTS = 8


def layout_fragments(uv_coords, uv_faces, hw, *, tile_size: int = DEFAULT_TILE_SIZE,
                     capacity: int = DEFAULT_CAPACITY, impl: str = "auto") -> Fragments:
    """The rasterized UV layout (``uv_coords (T, 2)``, ``uv_faces (F, 3)``, known values) at
    ``hw``, computed once per layout and size and kept (up to 8 layouts).

    A UV layout is a constant of its model, so :func:`world2uv` under ``jit`` takes its fragments
    as constants instead of compiling a rasterizer into every program that maps to UV (the
    same rasterizer, one small program run at once, even while an outer function is traced;
    op-by-op dispatch of it took ~2× longer).
    """
    vertices = np.asarray(uv_coords)
    faces = np.asarray(uv_faces)
    digest = hashlib.sha1(vertices.tobytes() + faces.tobytes()).hexdigest()
    key = (digest, vertices.shape, str(vertices.dtype), faces.shape, tuple(hw), tile_size, capacity, impl)
    cached = _LAYOUTS.get(key)
    if cached is None:
        # compiled ahead and called on the known arrays: concrete values even while an outer
        # function is traced (a plain call would be staged into that trace)
        faces = faces.astype(np.int32)
        lowered = _rasterize_layout.lower(vertices, faces, tuple(hw), tile_size, capacity, impl)
        # run once: compiled for a short compile (on CPU ~2x sooner; the same values)
        fragments = lowered.compile(cpu_compiler_options(run_once=True) or None)(vertices, faces)
        cached = Fragments(*(np.asarray(x) for x in (fragments.face_index, fragments.bary, fragments.depth,
                                                    fragments.mask)))
        if len(_LAYOUTS) >= _MAX_LAYOUTS:
            _LAYOUTS.pop(next(iter(_LAYOUTS)))
        _LAYOUTS[key] = cached
    return cached
