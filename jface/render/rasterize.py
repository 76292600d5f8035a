"""Hard z-buffer rasterization in DECA's NDC, tiled and deterministic.

Reproduces DECA's hard rasterizers (``decalib/utils/renderer.py``: pytorch3d's ``rasterize_meshes``
and the standard kernel ``decalib/utils/rasterizer/standard_rasterize_cuda_kernel.cu``).

Frames
------
``vertices (V, 3)`` are DECA's ``trans_verts`` *after* the y/z flip (``decalib/deca.py``,
``decode``): x right, y down, z smaller = closer, all in NDC. Pixel centres (the standard kernel's
mapping, :func:`jface.render.planes.ndc_to_pixel`):

    col = (x + 1) W/2 - 0.5,   row = (y + 1) H/2 - 0.5,

so NDC -1 is the left/top *edge* of pixel 0 (the ``grid_sample(align_corners=False)`` convention).
DECA adds +10 to z before rasterizing; the depth used here is the affine (barycentric) interpolation
of the input z, which a constant offset shifts uniformly, so the nearest face is the same. (DECA's
standard kernel keys on the harmonic interpolation 1/sum(w/z); for orthographic cameras pytorch3d,
DECA's training rasterizer, keys on the affine one, as here.) ``Fragments.depth`` is in the input
frame (no +10).

Rules (the standard kernel's): a pixel is inside when w2 >= 0, w1 >= 0 and w0 > 0 (strict), with
(w0, w1, w2) the screen-space barycentrics of corners (0, 1, 2); the smallest depth wins; exact
depth ties go to the lower face index (DECA's kernel is racy there). No back-face culling.
Triangles whose screen area is exactly 0 cover nothing (DECA's kernel paints their bounding box,
a quirk not reproduced). Pixels whose depth is below ``znear`` (default -10: DECA's camera plane
after its +10 offset) are clipped, as pytorch3d clips z < 0.

Algorithm
---------
The discrete part (which face wins each pixel) runs on ``stop_gradient`` inputs with static
shapes: faces are binned into ``tile_size`` tiles (:mod:`jface.render.binning`), and each tile
evaluates a dense ``(tile pixels x capacity)`` block of candidates, taking the z-min with one
variadic reduction over (depth, face id) that breaks exact ties to the lower face id. Tiles with
more than ``capacity`` candidates, or meshes with more (face, tile) pairs than ``pair_budget``, are
handled by further rounds/windows inside a ``lax.while_loop`` whose trip count is zero in the common
case (``on_overflow="grow"``), or raise :class:`CapacityError` (``on_overflow="raise"``). The
barycentrics are then recomputed differentiably from the vertices for the chosen faces
(:func:`barycentrics`), so gradients flow to vertex positions as in pytorch3d.

Arguments are checked before tracing (:mod:`jface.render.checks`): shapes, an integer face dtype
and a positive image size always; face indices in [0, V) when ``faces`` is concrete.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import struct
from jax import lax
from jax.typing import ArrayLike

from jface.render import binning, kernels
from jface.render.checks import check_image_hw, check_mesh, is_concrete
from jface.render.planes import NO_FACE, face_planes, ndc_to_pixel, nonzero_area, plane_depth_key

__all__ = [
    "Fragments",
    "CapacityError",
    "rasterize",
    "rasterize_face_index",
    "barycentrics",
    "ndc_to_pixel",
    "take_rows",
    "DEFAULT_TILE_SIZE",
    "DEFAULT_CAPACITY",
]

DEFAULT_TILE_SIZE = 8
DEFAULT_CAPACITY = 64


class CapacityError(RuntimeError):
    """A tile received more candidate faces (or the mesh more face-tile pairs) than allowed."""


@struct.dataclass
class Fragments:
    """Per-pixel rasterization output (per item; batch with ``jax.vmap``).

    * ``face_index (H, W)`` int32: winning face, -1 = background.
    * ``bary (H, W, 3)``: screen-space barycentrics (w0, w1, w2) of that face's corners, 0 on the
      background; differentiable w.r.t. the vertices.
    * ``depth (H, W)``: interpolated NDC z of the input frame (no +10), 0 on the background.
    * ``mask (H, W)``: coverage, 1.0 where ``face_index >= 0`` (DECA's ``vismask``), float dtype.
    """

    face_index: jax.Array
    bary: jax.Array
    depth: jax.Array
    mask: jax.Array


def _eval_chunk(params, valid, cand, cols, rows, znear):
    """Dense z-test of candidates ``cand (T, C)`` at pixels ``cols/rows (T, P)``.

    Returns per-pixel ``(depth (T, P), face (T, P))`` of the nearest inside candidate (inf / -1).
    """
    safe = jnp.maximum(cand, 0)
    p = params[safe]  # (T, C, 9)
    ok = (cand >= 0) & valid[safe]
    key = plane_depth_key([p[:, None, :, i] for i in range(9)], ok[:, None, :], cols[:, :, None],
                          rows[:, :, None], znear)
    ids = jnp.broadcast_to(jnp.where(cand >= 0, cand, NO_FACE)[:, None, :], key.shape)
    depth, face = _zmin(key, ids, axis=2)
    face = jnp.where(depth < jnp.inf, face, -1)
    return depth, face


def take_rows(table, index, fill=0):
    """``table[index]`` along axis 0 where negative ``index`` means "none" (rows of ``fill``).

    The gather is ``mode="fill"`` with the missing rows sent out of bounds, so its transpose (the
    backward of every per-pixel / per-candidate gather in the renderer) is a scatter that *drops*
    them. Clamping to row 0 instead (``table[max(index, 0)]`` then masking) gives the same forward,
    but its backward adds a zero for every background pixel / empty candidate slot into row 0: on
    a GPU that is hundreds of thousands of atomic adds to one address per item, serialised.
    """
    index = jnp.asarray(index)
    out_of_range = table.shape[0]
    return table.at[jnp.where(index >= 0, index, out_of_range)].get(mode="fill", fill_value=fill)


def _zmin(depth, face, axis):
    """Nearest (smallest depth) with ties to the lower face id, as one variadic reduction (so XLA
    fuses the per-candidate arithmetic into it without materialising pixels x candidates)."""

    def pick(a, b):
        (za, fa), (zb, fb) = a, b
        take_b = (zb < za) | ((zb == za) & (fb < fa))
        return jnp.where(take_b, zb, za), jnp.where(take_b, fb, fa)

    init = (jnp.array(jnp.inf, depth.dtype), jnp.array(NO_FACE, face.dtype))
    return lax.reduce((depth, face), init, pick, (axis,))


def _merge(state, new):
    depth, face = state
    new_depth, new_face = new
    # Strictly nearer only: later passes hold higher face ids of the same tile, so ties keep the
    # lower one.
    better = new_depth < depth
    return jnp.where(better, new_depth, depth), jnp.where(better, new_face, face)


def _overflow_message(max_count, total, capacity, pair_budget):
    return (
        f"rasterize: tile capacity overflow (a tile has {int(max_count)} candidate faces, "
        f"capacity={capacity}; {int(total)} face-tile pairs, pair_budget={pair_budget}). "
        "Pass a larger capacity=/pair_budget= (or a smaller tile_size=), or on_overflow='grow'."
    )


def _raise_if(flag, max_count, total, capacity, pair_budget):
    if bool(flag):
        raise CapacityError(_overflow_message(max_count, total, capacity, pair_budget))


def default_pair_budget(num_faces: int, grid: binning.TileGrid) -> int:
    """A window size that holds every pair of typical meshes (small faces touch 1-4 tiles)."""
    return int(max(4 * num_faces, 4 * grid.num_tiles, 1024))


def default_overflow_tiles(grid: binning.TileGrid) -> int:
    return max(1, grid.num_tiles // 8)


def _resolve_budgets(num_faces, grid, capacity, overflow_tiles, overflow_capacity, pair_budget):
    if int(capacity) <= 0:
        raise ValueError(f"capacity: expected a positive int, got {capacity!r}")
    capacity = int(capacity)
    pair_budget = default_pair_budget(num_faces, grid) if pair_budget is None else int(pair_budget)
    slots = default_overflow_tiles(grid) if overflow_tiles is None else int(overflow_tiles)
    extra = 2 * capacity if overflow_capacity is None else int(overflow_capacity)
    for name, value in (("pair_budget", pair_budget), ("overflow_tiles", slots), ("overflow_capacity", extra)):
        if value <= 0:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return capacity, slots, extra, pair_budget


IMPLS = ("auto", "jnp", "pallas", "interpret")


def _resolve_impl(impl: str) -> str:
    """``"auto"``: the Pallas kernel on GPUs (when Pallas imports), the jnp path elsewhere."""
    if impl not in IMPLS:
        raise ValueError(f"impl: expected one of {IMPLS}, got {impl!r}")
    if impl != "auto":
        return impl
    return "pallas" if jax.default_backend() == "gpu" and kernels.pallas_available() else "jnp"


@functools.partial(
    jax.jit, static_argnames=("image_hw", "tile_size", "capacity", "slots", "extra", "pair_budget", "grow", "impl")
)
def _face_index_core(vertices, faces, znear, *, image_hw, tile_size, capacity, slots, extra, pair_budget, grow,
                     impl="jnp"):
    """Jitted discrete pass; returns ``(face_index (H, W), overflow flag, max tile count, pairs)``."""
    grid = binning.tile_grid(image_hw, tile_size)
    vertices = lax.stop_gradient(vertices)
    params, valid, fc, fr = face_planes(vertices, faces, image_hw)
    ft = binning.face_tiles(fc, fr, valid, grid)
    cols, rows = grid.pixel_centres(params.dtype)
    znear = znear.astype(params.dtype)

    def run_window(state, window):
        faces_sorted, start, count = binning.window_candidates(ft, grid, window, pair_budget)
        if impl != "jnp":
            # One program per tile loops over all its candidates: no capacity, no overflow rounds.
            new = kernels.zbuffer_tiles(params, valid, faces_sorted, start, count, znear, tile_size=grid.size,
                                nx=grid.nx, interpret=impl == "interpret")
            return _merge(state, new), count
        every = jnp.arange(grid.num_tiles, dtype=jnp.int32)
        cand = binning.tile_candidates(faces_sorted, start, count, every, jnp.zeros_like(every), capacity)
        state = _merge(state, _eval_chunk(params, valid, cand, cols, rows, znear))
        if not grow:
            return state, count

        # Tiles with more than `capacity` candidates: up to `slots` of them per round, `extra`
        # further candidates each (unique tiles per round, so the scatter is race-free).
        def round_body(carry):
            st, processed = carry
            tiles, _ = binning.overflow_tiles(count, processed, slots)
            safe = jnp.minimum(tiles, grid.num_tiles - 1)
            cand = binning.tile_candidates(faces_sorted, start, count, tiles, processed[safe], extra)
            new = _eval_chunk(params, valid, cand, cols[safe], rows[safe], znear)
            merged = _merge((st[0][safe], st[1][safe]), new)
            st = (st[0].at[tiles].set(merged[0], mode="drop"), st[1].at[tiles].set(merged[1], mode="drop"))
            return st, processed.at[tiles].add(extra, mode="drop")

        processed = jnp.full((grid.num_tiles,), capacity, jnp.int32)
        state, _ = lax.while_loop(lambda c: jnp.any(count > c[1]), round_body, (state, processed))
        return state, count

    init = (
        jnp.full((grid.num_tiles, grid.size * grid.size), jnp.inf, params.dtype),
        jnp.full((grid.num_tiles, grid.size * grid.size), -1, jnp.int32),
    )
    total = ft.total
    if grow:
        # Every window, the first included, in one loop: ``run_window`` is traced (and compiled)
        # once rather than once before the loop and again inside it.
        num_windows = jnp.maximum((total + pair_budget - 1) // pair_budget, 1)

        def window_body(carry):
            window, st, first_max = carry
            st, count = run_window(st, window)
            return window + 1, st, jnp.where(window == 0, jnp.max(count), first_max)

        _, state, max_count = lax.while_loop(lambda c: c[0] < num_windows, window_body,
                                             (jnp.int32(0), init, jnp.int32(0)))
    else:
        state, count0 = run_window(init, jnp.int32(0))
        max_count = jnp.max(count0)
    # the kernel has no per-tile capacity: only more pairs than one window is an overflow
    flag = (total > pair_budget) if impl != "jnp" else (max_count > capacity) | (total > pair_budget)
    return grid.untile(state[1]), flag, max_count, total


def rasterize_face_index(
    vertices: ArrayLike,
    faces: ArrayLike,
    image_hw: tuple[int, int],
    *,
    tile_size: int = DEFAULT_TILE_SIZE,
    capacity: int = DEFAULT_CAPACITY,
    overflow_tiles: int | None = None,
    overflow_capacity: int | None = None,
    pair_budget: int | None = None,
    znear: float = -10.0,
    on_overflow: str = "grow",
    impl: str = "auto",
) -> jax.Array:
    """The discrete part of :func:`rasterize`: ``(H, W)`` int32 face ids (-1 background).

    Not differentiable (inputs are ``stop_gradient``-ed). See :func:`rasterize` for arguments.
    """
    if on_overflow not in ("grow", "raise"):
        raise ValueError(f"on_overflow: expected 'grow' or 'raise', got {on_overflow!r}")
    vertices, faces = check_mesh(vertices, faces)
    height, width = check_image_hw(image_hw)
    grid = binning.tile_grid((height, width), tile_size)
    capacity, slots, extra, pair_budget = _resolve_budgets(
        faces.shape[0], grid, capacity, overflow_tiles, overflow_capacity, pair_budget
    )
    if faces.shape[0] == 0:
        return jnp.full((height, width), -1, jnp.int32)
    face_index, flag, max_count, total = _face_index_core(
        vertices, faces, jnp.asarray(znear, vertices.dtype), image_hw=(height, width),
        tile_size=grid.size, capacity=capacity, slots=slots, extra=extra, pair_budget=pair_budget,
        grow=on_overflow == "grow", impl=_resolve_impl(impl),
    )
    if on_overflow == "raise":
        if is_concrete(flag):
            _raise_if(flag, max_count, total, capacity, pair_budget)
        else:
            jax.debug.callback(_raise_if, flag, max_count, total, capacity, pair_budget)
    return face_index


def barycentrics(vertices: ArrayLike, faces: ArrayLike, face_index: ArrayLike,
                 image_hw: tuple[int, int]) -> jax.Array:
    """Differentiable screen-space barycentrics of the given faces at every pixel centre.

    ``vertices (V, 3)`` NDC (the frame of :func:`rasterize`), ``faces (F, 3)``, ``face_index (H, W)``
    int (-1 background) -> ``(H, W, 3)`` weights (w0, w1, w2) of corners (0, 1, 2), 0 on the
    background. Gradients flow to the vertex positions (face_index is a constant).
    """
    vertices, faces = check_mesh(vertices, faces)
    height, width = check_image_hw(image_hw)
    face_index = jnp.asarray(face_index)
    if face_index.shape != (height, width):
        raise ValueError(f"face_index: expected shape {(height, width)}, got {face_index.shape}")
    dtype = vertices.dtype
    if faces.shape[0] == 0:
        return jnp.zeros((height, width, 3), dtype)
    covered = face_index >= 0
    # background pixels get corners -1 ("none"), so the backward scatters nothing for them
    tri = take_rows(faces, face_index, fill=-1)  # (H, W, 3)
    col, row = ndc_to_pixel(vertices[:, :2], (height, width))
    # one gather of (col, row) pairs: its transpose is one scatter (window 2), not two
    cr = take_rows(jnp.stack([col, row], axis=-1), tri)  # (H, W, 3, 2)
    c, r = cr[..., 0], cr[..., 1]
    pc = jnp.arange(width, dtype=dtype)[None, :]
    pr = jnp.arange(height, dtype=dtype)[:, None]
    e1c, e1r = c[..., 1] - c[..., 0], r[..., 1] - r[..., 0]
    e2c, e2r = c[..., 2] - c[..., 0], r[..., 2] - r[..., 0]
    dc, dr = pc - c[..., 0], pr - r[..., 0]
    area = e1c * e2r - e1r * e2c
    ok = covered & nonzero_area(e1c, e1r, e2c, e2r)
    area = jnp.where(ok, area, 1.0)
    w1 = (dc * e2r - dr * e2c) / area
    w2 = (e1c * dr - e1r * dc) / area
    bary = jnp.stack([1.0 - w1 - w2, w1, w2], axis=-1)
    return jnp.where(ok[..., None], bary, 0.0)


def rasterize(
    vertices: ArrayLike,
    faces: ArrayLike,
    image_hw: tuple[int, int],
    *,
    tile_size: int = DEFAULT_TILE_SIZE,
    capacity: int = DEFAULT_CAPACITY,
    overflow_tiles: int | None = None,
    overflow_capacity: int | None = None,
    pair_budget: int | None = None,
    znear: float = -10.0,
    on_overflow: str = "grow",
    impl: str = "auto",
) -> Fragments:
    """Hard z-buffer rasterization (DECA's hard rasterizers), per item; batch with ``jax.vmap``.

    Args:
      vertices: ``(V, 3)`` DECA NDC after the y/z flip (x right, y down, smaller z = closer).
      faces: ``(F, 3)`` int vertex indices in [0, V) (F may be 0: all background). Float faces, a
        wrong shape or (when ``faces`` is concrete) an index outside [0, V) raise ``ValueError``.
      image_hw: static ``(H, W)``.
      tile_size: screen tile edge in pixels (static).
      capacity: candidate faces every tile evaluates in the dense first pass (static).
        With ``on_overflow="grow"`` tiles holding more are evaluated again in rounds of at most
        ``overflow_tiles`` tiles (default num_tiles // 8) x ``overflow_capacity`` further
        candidates (default 2 capacity) until none is left: exact for any mesh, and free when
        nothing overflows. With ``"raise"`` an overflow raises :class:`CapacityError` (under
        ``jit`` a runtime error carrying the same message).
      pair_budget: face-tile pairs per window (static); default ``max(4F, 4 tiles, 1024)``.
      znear: pixels whose interpolated z is below this are clipped (-10 = DECA's camera plane).
      on_overflow: ``"grow"`` (default, exact for any mesh) or ``"raise"``.
      impl: the z-buffer pass: ``"jnp"`` (dense tiles of ``capacity`` candidates + overflow
        rounds), ``"pallas"`` (:mod:`jface.render.kernels`: one Triton program per tile looping
        over all its candidates, so ``capacity`` and the overflow rounds do not apply),
        ``"interpret"`` (the same kernel in Pallas interpret mode, any backend; for tests) or
        ``"auto"`` (default: ``"pallas"`` on GPUs, ``"jnp"`` elsewhere). Same face ids up to
        one-ulp differences at exact edges/ties.

    Returns:
      :class:`Fragments`; ``bary``, ``depth`` and ``mask`` carry the vertices' dtype. ``bary`` and
      ``depth`` are differentiable w.r.t. ``vertices`` (through :func:`barycentrics`).
    """
    vertices, faces = check_mesh(vertices, faces)
    height, width = check_image_hw(image_hw)
    face_index = rasterize_face_index(
        vertices, faces, (height, width), tile_size=tile_size, capacity=capacity,
        overflow_tiles=overflow_tiles, overflow_capacity=overflow_capacity,
        pair_budget=pair_budget, znear=znear, on_overflow=on_overflow, impl=impl,
    )
    return _fragments(vertices, faces, face_index)


@jax.jit
def _fragments(vertices, faces, face_index):
    bary = barycentrics(vertices, faces, face_index, face_index.shape)
    if faces.shape[0]:
        zc = take_rows(vertices[:, 2], take_rows(faces, face_index, fill=-1))
        depth = jnp.sum(bary * zc, axis=-1)
    else:
        depth = jnp.zeros(face_index.shape, vertices.dtype)
    mask = (face_index >= 0).astype(vertices.dtype)
    return Fragments(face_index=face_index, bary=bary, depth=depth, mask=mask)
