"""SoftRas-style soft rasterization (Liu et al. 2019), tiled, in DECA's NDC.

Frame: ``vertices (V, 3)`` in DECA's NDC after the y/z flip (x right, y down, smaller z = closer),
as for :func:`jface.render.rasterize`. Pixel (row, col) has its centre at NDC
x = (2 col + 1)/W - 1, y = (2 row + 1)/H - 1 (DECA's standard kernel); SoftRas uses the same centres
(with y up). Distances are measured in NDC units, so ``sigma`` means what it means in SoftRas.

For every pixel p and face j (SoftRas' ``dist_func='euclidean'``, ``aggr_func_alpha='prod'``,
``aggr_func_rgb='softmax'``, double-sided):

* d_j = squared distance from p to the triangle's boundary; delta_j = +1 inside, -1 outside;
  D_j = sigmoid(delta_j d_j / sigma).
* Cut-off: a face contributes only where it contains p or d_j < sigma * log(1/dist_eps - 1)
  (i.e. D_j > dist_eps), SoftRas' threshold. So each face touches a bounded set of pixels: its
  bounding box enlarged by that radius, which is what the tile binning uses.
* alpha = 1 - prod_j (1 - D_j).
* colour = (sum_j D_j exp(z_j/gamma) c_j + exp(eps/gamma) bg) / (sum_j D_j exp(z_j/gamma) +
  exp(eps/gamma)) with the normalised inverse depth z_j = (zfar - z)/(zfar - znear) (closer =
  larger) taken at the clipped barycentrics of p, and c_j the colour interpolated there. Faces with
  z outside [znear, zfar] at p are left out of the colour (not of alpha), as in SoftRas.

Defaults: ``sigma=1e-4`` (SoftRas' training examples; its renderer default is 1e-5),
``gamma=1e-4``, ``dist_eps=1e-4``, ``eps=1e-3`` (SoftRas defaults), ``znear=-10`` (DECA's camera
plane after its +10 offset), ``zfar=10``. Faces of exactly zero screen area are left out (as in the
hard rasterizer).

Shapes are static: faces are binned into tiles (:mod:`jface.render.binning`) and each tile
evaluates ``(tile pixels x capacity)`` candidates densely; tiles with more candidates evaluate
more in static overflow levels (``overflow_tiles[k]`` tiles x ``overflow_capacity[k]``
candidates each). The candidate selection is discrete;
the evaluation is plain jnp, differentiable w.r.t. vertices and colours, and rematerialised in the
backward pass (the silhouette through a custom VJP, the colour path through ``jax.checkpoint``) so
no ``pixels x capacity`` residuals are stored. A tile with
more candidates than ``capacity + sum(overflow_capacity)``, more tiles at a level than its
``overflow_tiles``, or more face-tile pairs than ``pair_budget`` is an overflow:
with concrete inputs ``on_overflow="grow"`` re-runs with budgets that fit; under ``jit`` (or with
``on_overflow="raise"``) it raises :class:`~jface.render.rasterize.CapacityError` (a runtime error
with the same message under ``jit``).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from jface.render import binning, kernels
from jface.render.checks import check_image_hw, check_mesh, is_concrete
from jface.render.planes import ndc_to_pixel, nonzero_area
from jface.render.rasterize import CapacityError, _resolve_impl, default_pair_budget, take_rows

__all__ = ["soft_rasterize", "binning_stats", "plan_levels", "DEFAULT_SOFT_CAPACITY", "DEFAULT_SOFT_TILE_SIZE"]

# Tile 4 x capacity 32: measured fastest on an H100 (BUILD_NOTES.md, renderer section, 2026-11-21); tile 8 with the
# silhouette VJP compiled too slowly there (> 60 s).
DEFAULT_SOFT_TILE_SIZE = 4
DEFAULT_SOFT_CAPACITY = 32
# How the silhouette VJP reduces over a tile's pixels: "variadic" (one lax.reduce with six
# outputs) or "sums" (six jnp.sum); read at trace time (the benchmark compares them).
_VJP_REDUCE = "variadic"


def _cross(ax, ay, bx, by):
    return ax * by - ay * bx


def _segment_dist2(px, py, ax, ay, bx, by):
    ex, ey = bx - ax, by - ay
    len2 = ex * ex + ey * ey
    ok = len2 > 0
    t = jnp.clip(((px - ax) * ex + (py - ay) * ey) / jnp.where(ok, len2, 1.0), 0.0, 1.0)
    t = jnp.where(ok, t, 0.0)
    dx, dy = px - ax - t * ex, py - ay - t * ey
    return dx * dx + dy * dy


def _soft_part(xy, z, corner_colors, valid, cand, px, py, hyper):
    """Soft aggregation over the candidates ``cand (T, C)`` at pixels ``px/py (T, P)`` (NDC).

    xy ``(V, 2)`` NDC, z ``(V,)``, corner_colors ``(F, 3, D)`` or None. Returns
    ``log_transmit (T, P)`` = sum log(1 - D_j) and, with colours, the softmax partial sums
    ``num (T, P, D)``, ``den (T, P)`` taken relative to the shift ``zmax (T, P)`` (>= eps).
    """
    sigma, gamma, thr, eps, znear, zfar, faces = hyper
    safe = jnp.maximum(cand, 0)
    ok = (cand >= 0) & valid[safe]  # (T, C)
    tri = take_rows(faces, cand, fill=-1)  # (T, C, 3); empty slots -> -1, dropped by the backward
    cxyz = take_rows(jnp.concatenate([xy, z[:, None]], axis=-1), tri)
    cx, cy, cz = cxyz[..., 0], cxyz[..., 1], cxyz[..., 2]  # (T, C, 3)

    def corner(a, k):
        return a[:, None, :, k]  # (T, 1, C)

    x0, x1, x2 = corner(cx, 0), corner(cx, 1), corner(cx, 2)
    y0, y1, y2 = corner(cy, 0), corner(cy, 1), corner(cy, 2)
    pxe, pye = px[:, :, None], py[:, :, None]  # (T, P, 1)
    area = _cross(x1 - x0, y1 - y0, x2 - x0, y2 - y0)
    area = jnp.where(ok[:, None, :], area, 1.0)
    dx, dy = pxe - x0, pye - y0
    w1 = _cross(dx, dy, x2 - x0, y2 - y0) / area
    w2 = _cross(x1 - x0, y1 - y0, dx, dy) / area
    w0 = 1.0 - w1 - w2
    inside = (w0 > 0) & (w1 > 0) & (w2 > 0)
    dist2 = jnp.minimum(
        jnp.minimum(_segment_dist2(pxe, pye, x0, y0, x1, y1), _segment_dist2(pxe, pye, x1, y1, x2, y2)),
        _segment_dist2(pxe, pye, x2, y2, x0, y0),
    )
    live = ok[:, None, :] & (inside | (dist2 < thr))
    logit = jnp.where(inside, dist2, -dist2) / sigma
    # log(1 - D) = log(sigmoid(-logit)) = -softplus(logit)
    log_transmit = jnp.sum(jnp.where(live, -jax.nn.softplus(logit), 0.0), axis=-1)
    if corner_colors is None:
        return log_transmit, None, None, None
    soft = jax.nn.sigmoid(logit)
    wc = jnp.clip(jnp.stack([w0, w1, w2], axis=-1), 0.0, 1.0)
    wc = wc / jnp.sum(wc, axis=-1, keepdims=True)
    zp = sum(wc[..., k] * corner(cz, k) for k in range(3))
    zn = (zfar - zp) / (zfar - znear)
    in_range = live & (zp >= znear) & (zp <= zfar)
    zmax = jnp.max(jnp.where(in_range, zn, -jnp.inf), axis=-1)
    zmax = lax.stop_gradient(jnp.maximum(zmax, eps))  # the shift cancels; no gradient through it
    weight = jnp.where(in_range, soft * jnp.exp((zn - zmax[..., None]) / gamma), 0.0)  # (T, P, C)
    fc = take_rows(corner_colors, cand)  # (T, C, 3, D)
    color = sum(wc[..., k, None] * fc[:, None, :, k, :] for k in range(3))  # (T, P, C, D)
    num = jnp.sum(weight[..., None] * color, axis=-2)
    den = jnp.sum(weight, axis=-1)
    return log_transmit, num, den, zmax


def _sil_geometry(cx, cy, ok, px, py, thr):
    """Per pixel x candidate geometry of the silhouette: ``(T, P, C)`` arrays.

    Returns ``(inside, live, dist2, seg, t, dx, dy)``: the squared distance to the nearest edge
    ``seg`` (0: corners 0-1, 1: 1-2, 2: 2-0), its clamped parameter ``t`` and the offset
    ``(dx, dy) = p - a - t e`` from the nearest point. The formulas are the Pallas kernels' own
    (:func:`jface.render.kernels._sil_block`, broadcasting ``(T, 1, C)`` corners against
    ``(T, P, 1)`` pixels), so both paths evaluate the same expressions.
    """
    corners_x = [cx[:, None, :, k] for k in range(3)]
    corners_y = [cy[:, None, :, k] for k in range(3)]
    return kernels._sil_block(corners_x, corners_y, ok[:, None, :], px[:, :, None], py[:, :, None], thr)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _sil_log_transmit(cx, cy, ok, px, py, sigma, thr):
    """``sum_j log(1 - D_j)`` over the candidates: ``(T, P)``, from corner NDC ``cx/cy (T, C, 3)``.

    A custom VJP: the backward recomputes the geometry and reduces the per-pixel gradients to
    the candidates' corners, so neither pass stores ``pixels x candidates`` residuals and the
    backward is one reduction instead of autodiff's chain of selects through the clamps/minima.
    d dist2 / d(a, b) of the nearest segment is -2 (1 - t, t) (p - a - t e): t is either clamped
    (constant) or optimal (d dist2 / dt = 0).
    """
    inside, live, dist2, *_ = _sil_geometry(cx, cy, ok, px, py, thr)
    logit = jnp.where(inside, dist2, -dist2) / sigma
    return jnp.sum(jnp.where(live, -jax.nn.softplus(logit), 0.0), axis=-1)


def _sil_fwd(cx, cy, ok, px, py, sigma, thr):
    return _sil_log_transmit(cx, cy, ok, px, py, sigma, thr), (cx, cy, ok, px, py)


def _sil_bwd(sigma, thr, res, g):
    # The barrier keeps XLA from CSE-ing this recomputation with the forward's (which would make
    # the forward fusion write every (T, P, C) intermediate out for the backward: seen on an H100,
    # 14 ms and 5 GiB at B=32, 224²).
    cx, cy, ok, px, py = lax.optimization_barrier(res)
    inside, live, dist2, seg, t, dx, dy = _sil_geometry(cx, cy, ok, px, py, thr)
    logit = jnp.where(inside, dist2, -dist2) / sigma
    # d/d dist2 of -softplus(+-dist2 / sigma) = -sigmoid(logit) * (+-1 / sigma)
    gd = jnp.where(live, -jax.nn.sigmoid(logit) * jnp.where(inside, 1.0, -1.0) / sigma, 0.0) * g[:, :, None]
    ga, gb = -2.0 * gd * (1.0 - t), -2.0 * gd * t  # times (dx, dy): d dist2 / d(a, b)
    zero = jnp.zeros_like(ga)
    # corner k is endpoint a of segment k and endpoint b of segment k - 1
    coef = [jnp.where(seg == k, ga, jnp.where(seg == (k + 2) % 3, gb, zero)) for k in range(3)]
    # One variadic reduction over the tile's pixels with six outputs, so XLA fuses the whole
    # recomputation into it instead of materialising (T, P, C) intermediates.
    operands = tuple(c * d for d in (dx, dy) for c in coef)
    if _VJP_REDUCE == "variadic":
        zeros = tuple(jnp.zeros((), o.dtype) for o in operands)
        red = lax.reduce(operands, zeros, lambda u, v: tuple(a + b for a, b in zip(u, v)), (1,))
    else:  # six sibling reductions
        red = tuple(jnp.sum(o, axis=1) for o in operands)
    gcx, gcy = jnp.stack(red[:3], axis=-1), jnp.stack(red[3:], axis=-1)  # (T, C, 3)
    return gcx.astype(cx.dtype), gcy.astype(cy.dtype), None, jnp.zeros_like(px), jnp.zeros_like(py)


_sil_log_transmit.defvjp(_sil_fwd, _sil_bwd)


def _sil_part(xy, valid, cand, px, py, hyper):
    """Silhouette-only :func:`_soft_part`: ``log_transmit (T, P)`` via :func:`_sil_log_transmit`."""
    sigma, _, thr, _, _, _, faces = hyper
    safe = jnp.maximum(cand, 0)
    ok = (cand >= 0) & valid[safe]
    # Gather per face first, then per candidate: the backward then scatters candidates into
    # faces and faces into vertices (far less atomic contention than candidates into vertices).
    fxy = xy[faces]  # (F, 3, 2)
    cxy = take_rows(fxy, cand)  # (T, C, 3, 2); empty slots are dropped by the backward
    return _sil_log_transmit(cxy[..., 0], cxy[..., 1], ok, px, py, sigma, thr)


def soft_rasterize(
    vertices: ArrayLike,
    faces: ArrayLike,
    image_hw: tuple[int, int],
    colors: ArrayLike | None = None,
    *,
    sigma: float = 1e-4,
    gamma: float = 1e-4,
    dist_eps: float = 1e-4,
    eps: float = 1e-3,
    znear: float = -10.0,
    zfar: float = 10.0,
    background: ArrayLike | None = None,
    tile_size: int = DEFAULT_SOFT_TILE_SIZE,
    capacity: int = DEFAULT_SOFT_CAPACITY,
    overflow_tiles: int | tuple[int, ...] | None = None,
    overflow_capacity: int | tuple[int, ...] | None = None,
    pair_budget: int | None = None,
    on_overflow: str = "grow",
    impl: str = "auto",
) -> jax.Array:
    """Soft rasterization (SoftRas), per item; batch with ``jax.vmap``.

    Args:
      vertices: ``(V, 3)`` DECA NDC after the y/z flip.
      faces: ``(F, 3)`` int vertex indices in [0, V) (checked when concrete, as in
        :func:`jface.render.rasterize`).
      image_hw: static ``(H, W)``.
      colors: None (silhouette only), per-vertex ``(V, D)`` or per-face-corner ``(F, 3, D)``.
      sigma, gamma, dist_eps, eps, znear, zfar: see the module docstring.
      background: ``(D,)`` colour behind everything (default 0).
      tile_size, capacity, overflow_tiles, overflow_capacity, pair_budget, on_overflow: binning
        budgets (module docstring): every tile evaluates ``capacity`` candidates; then, level by
        level, up to ``overflow_tiles[k]`` tiles still holding more evaluate
        ``overflow_capacity[k]`` more (ints or tuples of levels; default num_tiles // (2, 4, 16,
        64) tiles x capacity * (1, 2, 4, 8)). :func:`plan_levels` sizes them from
        :func:`binning_stats`.
      impl: the silhouette's evaluation: ``"jnp"`` (dense tiles + levels above), ``"pallas"``
        (:func:`jface.render.kernels.soft_silhouette_tiles`: one Triton program per tile over all
        its candidates, forward and backward; ``capacity`` and the levels do not apply, only
        ``pair_budget``), ``"interpret"`` (the same kernels in interpret mode) or ``"auto"``
        (Pallas on GPUs for silhouettes, jnp otherwise). Colours always take the jnp path.

    Returns:
      ``colors is None``: the silhouette ``(H, W)`` = 1 - prod(1 - D). Otherwise ``(H, W, D + 1)``:
      the softmax-aggregated colour (D channels) then alpha. Differentiable w.r.t. ``vertices``
      and ``colors``.
    """
    if on_overflow not in ("grow", "raise"):
        raise ValueError(f"on_overflow: expected 'grow' or 'raise', got {on_overflow!r}")
    for name, value in (("sigma", sigma), ("gamma", gamma)):
        if not float(value) > 0:
            raise ValueError(f"{name}: expected > 0, got {value!r}")
    if not 0 < float(dist_eps) < 0.5:
        raise ValueError(f"dist_eps: expected in (0, 0.5), got {dist_eps!r}")
    if not float(zfar) > float(znear):
        raise ValueError(f"zfar: expected > znear, got znear={znear!r}, zfar={zfar!r}")
    vertices, faces = check_mesh(vertices, faces)
    height, width = check_image_hw(image_hw)
    dtype = vertices.dtype
    corner_colors = None
    if colors is not None:
        colors = jnp.asarray(colors)
        if colors.ndim == 2 and colors.shape[0] == vertices.shape[0]:
            corner_colors = colors[faces]
        elif colors.ndim == 3 and colors.shape[:2] == (faces.shape[0], 3):
            corner_colors = colors
        else:
            raise ValueError(
                f"colors: expected per-vertex ({vertices.shape[0]}, D) or per-face-corner "
                f"({faces.shape[0]}, 3, D), got shape {colors.shape}"
            )
        dtype = jnp.result_type(dtype, corner_colors.dtype)
        corner_colors = corner_colors.astype(dtype)
        vertices = vertices.astype(dtype)
        num_channels = corner_colors.shape[-1]
        bg = jnp.zeros((num_channels,), dtype) if background is None else jnp.asarray(background, dtype)
        if bg.shape != (num_channels,):
            raise ValueError(f"background: expected shape ({num_channels},), got {bg.shape}")
    grid = binning.tile_grid((height, width), tile_size)
    num_faces = faces.shape[0]
    if num_faces == 0:
        alpha = jnp.zeros((height, width), dtype)
        if corner_colors is None:
            return alpha
        return jnp.concatenate([jnp.broadcast_to(bg, (height, width, bg.shape[0])), alpha[..., None]], -1)

    thr = float(sigma) * math.log(1.0 / float(dist_eps) - 1.0)  # squared NDC distance
    radius = math.sqrt(thr)
    capacity = int(capacity)
    # the cut-off radius makes faces touch more tiles than in the hard rasterizer
    pair_budget = 2 * default_pair_budget(num_faces, grid) if pair_budget is None else int(pair_budget)
    if overflow_tiles is None:
        overflow_tiles = tuple(max(1, grid.num_tiles // d) for d in (2, 4, 16, 64))
    if overflow_capacity is None:
        overflow_capacity = tuple(capacity * m for m in (1, 2, 4, 8))
    slots = _as_levels(overflow_tiles, "overflow_tiles")
    extra = _as_levels(overflow_capacity, "overflow_capacity")
    if len(slots) != len(extra):
        raise ValueError(f"overflow_tiles, overflow_capacity: expected as many levels, got {slots} and {extra}")
    for name, value in (("capacity", capacity), ("pair_budget", pair_budget)):
        if value <= 0:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")

    radii = (radius * width / 2.0, radius * height / 2.0)
    impl = _resolve_impl(impl)
    if corner_colors is None and impl != "jnp":
        return _soft_silhouette_pallas(vertices, faces, (height, width), grid, radii, float(sigma), thr,
                                       pair_budget, on_overflow, impl)
    budgets = dict(capacity=capacity, slots=slots, extra=extra, pair_budget=pair_budget)
    cand, levels, max_count, n_over, total, valid, flag = _soft_candidates(
        vertices, faces, image_hw=(height, width), tile_size=grid.size, radii=radii, **budgets
    )
    if is_concrete(flag):
        if bool(flag):
            if on_overflow == "raise":
                raise CapacityError(_message(max_count, n_over, total, capacity, slots, extra, pair_budget))
            budgets = dict(
                capacity=capacity,
                extra=(max(sum(extra), 1 << int(max_count - capacity - 1).bit_length()),),
                slots=(max(max(slots), int(n_over)),),
                pair_budget=max(pair_budget, 1 << int(total - 1).bit_length()),
            )
            cand, levels, *_ = _soft_candidates(
                vertices, faces, image_hw=(height, width), tile_size=grid.size, radii=radii, **budgets
            )
    else:
        static = dict(capacity=capacity, slots=slots, extra=extra, pair_budget=pair_budget)
        jax.debug.callback(functools.partial(_raise_if, **static), flag, max_count, n_over, total)
    hyper = (float(sigma), float(gamma), thr, float(eps), float(znear), float(zfar))
    out = _soft_evaluate(
        vertices[:, :2], vertices[:, 2], corner_colors, bg if corner_colors is not None else None,
        faces, valid, cand, levels, image_hw=(height, width), tile_size=grid.size, hyper=hyper,
    )
    return out


def _faces_in_tiles(vertices, faces, image_hw, grid, radii):
    """Face validity (finite, non-zero screen area) and tile ranges within the cut-off radius."""
    vertices = lax.stop_gradient(vertices)
    col, row = ndc_to_pixel(vertices[:, :2], image_hw)
    fc, fr, fz = col[faces], row[faces], vertices[:, 2][faces]
    finite = jnp.all(jnp.isfinite(fc) & jnp.isfinite(fr) & jnp.isfinite(fz), axis=1)
    valid = finite & nonzero_area(fc[:, 1] - fc[:, 0], fr[:, 1] - fr[:, 0], fc[:, 2] - fc[:, 0], fr[:, 2] - fr[:, 0])
    return valid, binning.face_tiles(fc, fr, valid, grid, radii[0], radii[1])


@functools.partial(jax.jit, static_argnames=("image_hw", "tile_size", "radii"))
def _soft_face_tiles(vertices, faces, *, image_hw, tile_size, radii):
    """Discrete, jitted: :func:`_faces_in_tiles` on the soft tile grid."""
    return _faces_in_tiles(vertices, faces, image_hw, binning.tile_grid(image_hw, tile_size), radii)


def _soft_silhouette_pallas(vertices, faces, image_hw, grid, radii, sigma, thr, pair_budget, on_overflow, impl):
    """The silhouette through :func:`jface.render.kernels.soft_silhouette_tiles`: every pair
    window is evaluated (exact for any mesh); ``on_overflow="raise"`` still reports more pairs than
    ``pair_budget`` (eagerly, or at run time under jit through a host callback)."""
    valid, ft = _soft_face_tiles(vertices, faces, image_hw=image_hw, tile_size=grid.size, radii=radii)
    if on_overflow == "raise":
        if is_concrete(ft.total):
            _raise_pairs(ft.total, pair_budget)
        else:
            jax.debug.callback(lambda n: _raise_pairs(n, pair_budget), ft.total)
    fxy = vertices[:, :2][faces]  # (F, 3, 2); its transpose sums the corners into the vertices
    static = (grid, image_hw, sigma, thr, pair_budget, 16, impl == "interpret", 2)
    log_transmit = kernels.soft_silhouette_tiles(fxy, valid, ft, static)
    pixels = grid.size * grid.size
    return grid.untile(-jnp.expm1(log_transmit[:, :pixels]))


def _pair_message(total, pair_budget):
    return (f"soft_rasterize: {int(total)} (face, tile) pairs exceed pair_budget={pair_budget} "
            "(on_overflow='raise'); pass a larger pair_budget (binning_stats gives the count)")


def _raise_pairs(total, pair_budget):
    if int(total) > pair_budget:
        raise CapacityError(_pair_message(total, pair_budget))


@functools.partial(
    jax.jit, static_argnames=("image_hw", "tile_size", "radii", "capacity", "slots", "extra", "pair_budget")
)
def _soft_candidates(vertices, faces, *, image_hw, tile_size, radii, capacity, slots, extra, pair_budget):
    """Discrete, jitted: which faces each tile (and each overflow tile) evaluates."""
    grid = binning.tile_grid(image_hw, tile_size)
    valid, ft = _faces_in_tiles(vertices, faces, image_hw, grid, radii)
    faces_sorted, start, count = binning.window_candidates(ft, grid, jnp.int32(0), pair_budget)
    every = jnp.arange(grid.num_tiles, dtype=jnp.int32)
    cand = binning.tile_candidates(faces_sorted, start, count, every, jnp.zeros_like(every), capacity)
    # Overflow levels: level k takes (at most slots[k]) tiles with candidates beyond `offset` and
    # evaluates extra[k] more of them; tiles are unique within a level.
    offset, levels, flag = capacity, [], jnp.zeros((), bool)
    n_over = jnp.sum(count > capacity)
    for num_slots, num_extra in zip(slots, extra):
        tiles, n_k = binning.overflow_tiles(count, jnp.full_like(count, offset), num_slots)
        cand_k = binning.tile_candidates(
            faces_sorted, start, count, tiles, jnp.full_like(tiles, offset), num_extra
        )
        levels.append((tiles, cand_k))
        flag = flag | (n_k > num_slots)
        offset += num_extra
    max_count = jnp.max(count)
    flag = flag | (max_count > offset) | (ft.total > pair_budget)
    return cand, tuple(levels), max_count, n_over, ft.total, valid, flag


@functools.partial(jax.jit, static_argnames=("image_hw", "tile_size", "hyper"))
def _soft_evaluate(xy, z, corner_colors, bg, faces, valid, cand, levels, *, image_hw, tile_size, hyper):
    """Differentiable, jitted: soft aggregation of the binned candidates."""
    height, width = image_hw
    grid = binning.tile_grid(image_hw, tile_size)
    gamma, eps = hyper[1], hyper[3]
    cols, rows = grid.pixel_centres(xy.dtype)
    px = (2.0 * cols + 1.0) / width - 1.0
    py = (2.0 * rows + 1.0) / height - 1.0
    hyper = hyper + (faces,)

    def evaluate(xy_, z_, cc_, bg_):
        base = _soft_part(xy_, z_, cc_, valid, cand, px, py, hyper)
        parts = []
        for tiles, cand_k in levels:
            safe = jnp.minimum(tiles, grid.num_tiles - 1)
            parts.append((tiles, safe, _soft_part(xy_, z_, cc_, valid, cand_k, px[safe], py[safe], hyper)))
        # Tiles are unique within a level (padding ids are dropped), so each scatter is race-free.
        log_transmit = base[0]
        for tiles, _, part in parts:
            log_transmit = log_transmit.at[tiles].add(part[0], mode="drop")
        alpha = -jnp.expm1(log_transmit)
        if cc_ is None:
            return alpha
        zmax = base[3]
        for tiles, _, part in parts:
            zmax = zmax.at[tiles].max(part[3], mode="drop")
        scale = jnp.exp((base[3] - zmax) / gamma)
        num, den = base[1] * scale[..., None], base[2] * scale
        for tiles, safe, part in parts:
            scale = jnp.exp((part[3] - zmax[safe]) / gamma)
            num = num.at[tiles].add(part[1] * scale[..., None], mode="drop")
            den = den.at[tiles].add(part[2] * scale, mode="drop")
        bg_weight = jnp.exp((eps - zmax) / gamma)
        color = (num + bg_weight[..., None] * bg_) / (den + bg_weight)[..., None]
        return jnp.concatenate([color, alpha[..., None]], axis=-1)

    if corner_colors is None:
        # Silhouette: a custom VJP that recomputes in the backward (no checkpoint needed).
        log_transmit = _sil_part(xy, valid, cand, px, py, hyper)
        for tiles, cand_k in levels:
            safe = jnp.minimum(tiles, grid.num_tiles - 1)
            part = _sil_part(xy, valid, cand_k, px[safe], py[safe], hyper)
            log_transmit = log_transmit.at[tiles].add(part, mode="drop")
        return grid.untile(-jnp.expm1(log_transmit))
    out = jax.checkpoint(evaluate)(xy, z, corner_colors, bg)
    return grid.untile(out)


def _as_levels(value, name):
    levels = (value,) if isinstance(value, int) else tuple(value)
    if not levels or any(int(v) <= 0 for v in levels):
        raise ValueError(f"{name}: expected a positive int or a tuple of them, got {value!r}")
    return tuple(int(v) for v in levels)


def _message(max_count, n_over, total, capacity, slots, extra, pair_budget):
    return (
        f"soft_rasterize: tile capacity overflow (a tile has {int(max_count)} candidate faces, "
        f"capacity + overflow_capacity = {capacity} + {extra}; {int(n_over)} tiles exceed "
        f"capacity, overflow_tiles={slots}; {int(total)} face-tile pairs, pair_budget={pair_budget}). "
        "Pass larger budgets (or a smaller tile_size= or sigma=), or call it outside jit with "
        "on_overflow='grow'."
    )


def _raise_if(flag, max_count, n_over, total, *, capacity, slots, extra, pair_budget):
    if bool(flag):
        raise CapacityError(_message(max_count, n_over, total, capacity, slots, extra, pair_budget))


def binning_stats(vertices: ArrayLike, faces: ArrayLike, image_hw: tuple[int, int], *, sigma: float = 1e-4,
                  dist_eps: float = 1e-4, tile_size: int = DEFAULT_SOFT_TILE_SIZE,
                  capacity: int = DEFAULT_SOFT_CAPACITY) -> dict:
    """Concrete binning statistics of one item, to size the static budgets before ``jit``.

    Returns a dict of ints: ``max_count`` (most candidates in a tile), ``over`` (tiles with more
    than ``capacity``), ``pairs`` (face-tile pairs), ``num_tiles``. ``sigma=0`` gives the hard
    rasterizer's binning (no cut-off radius).
    """
    vertices, faces = check_mesh(vertices, faces)
    height, width = check_image_hw(image_hw)
    grid = binning.tile_grid((height, width), tile_size)
    if faces.shape[0] == 0:
        return dict(max_count=0, over=0, pairs=0, num_tiles=grid.num_tiles)
    radius = math.sqrt(float(sigma) * math.log(1.0 / float(dist_eps) - 1.0)) if sigma > 0 else 0.0
    radii = (radius * width / 2.0, radius * height / 2.0)
    pairs = 2 * default_pair_budget(faces.shape[0], grid)
    for _ in range(2):
        out = _soft_candidates(vertices, faces, image_hw=(height, width), tile_size=grid.size, radii=radii,
                               capacity=int(capacity), slots=(1,), extra=(1,), pair_budget=pairs)
        if int(out[4]) <= pairs:
            break
        pairs = 1 << int(out[4] - 1).bit_length()
    counts = _tile_counts(vertices, faces, (height, width), grid.size, radii, pairs)
    return dict(max_count=int(out[2]), over=int(out[3]), pairs=int(out[4]), num_tiles=grid.num_tiles,
                counts=sorted((int(c) for c in np.asarray(counts)), reverse=True))


@functools.partial(jax.jit, static_argnames=("image_hw", "tile_size", "radii", "pair_budget"))
def _tile_counts(vertices, faces, image_hw, tile_size, radii, pair_budget):
    grid = binning.tile_grid(image_hw, tile_size)
    _, ft = _faces_in_tiles(vertices, faces, image_hw, grid, radii)
    return binning.window_candidates(ft, grid, jnp.int32(0), pair_budget)[2]


def plan_levels(counts_per_item, capacity: int, granularity: int = 8) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Static overflow levels that fit every item: ``(overflow_tiles, overflow_capacity)`` tuples.

    ``counts_per_item``: per-tile candidate counts of each item (``binning_stats(...)["counts"]``).
    Level k adds ``capacity * 2**k`` candidates for the tiles still beyond the previous levels.
    """
    most = max((max(c) if len(c) else 0) for c in counts_per_item)
    slots, extra, offset, k = [], [], int(capacity), 0
    while offset < most:
        need = max(sum(1 for x in c if x > offset) for c in counts_per_item)
        slots.append(max(granularity, -(-need // granularity) * granularity))
        extra.append(int(capacity) * 2**k)
        offset += extra[-1]
        k += 1
    if not slots:  # nothing overflows: keep one minimal level
        slots, extra = [1], [1]
    return tuple(slots), tuple(extra)
