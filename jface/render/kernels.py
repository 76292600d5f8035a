"""Pallas (Triton) kernel for the hard rasterizer's z-buffer pass, with the jnp path as reference.

:func:`zbuffer_tiles` evaluates, for every screen tile, *all* its candidate faces (the tile's run
of the binning's tile-sorted pair list, :func:`jface.render.binning.window_candidates`) in blocks
of ``block`` faces inside one program per tile, keeping per pixel the nearest inside face (ties
to the lower face index). Unlike the dense jnp pass (:func:`jface.render.rasterize._eval_chunk`
over a static ``capacity`` plus overflow rounds in a ``while_loop``), the loop runs exactly as many
blocks as the tile holds, so there is no capacity, no overflow round and no host round trip.

The arithmetic is :func:`jface.render.planes.plane_depth_key`, the jnp pass's own (w1, w2
relative to corner 0, w0 = 1 - w1 - w2, inside = w2 >= 0, w1 >= 0, w0 > 0, z >= znear), so the
two paths agree except where a compiler's fused multiply-add moves a value across an edge or a
depth tie by one ulp. Interpret mode (``interpret=True``) runs the same kernel on any backend; the tests use
it on the CPU against the jnp path, and :func:`jface.render.rasterize` uses the compiled kernel
only on GPUs (``impl="auto"``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jface.render import binning
from jface.render.planes import NO_FACE, plane_depth_key

__all__ = ["zbuffer_tiles", "soft_silhouette_tiles", "pallas_available"]


def pallas_available() -> bool:
    """Whether ``jax.experimental.pallas`` with its Triton primitives imports here."""
    try:
        from jax.experimental import pallas  # noqa: F401
        from jax.experimental.pallas import triton  # noqa: F401
    except Exception:  # noqa: BLE001 - any import problem means "use the jnp path"
        return False
    return True


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


@functools.partial(jax.jit, static_argnames=("tile_size", "nx", "block", "interpret", "num_warps"))
def zbuffer_tiles(params, valid, faces_sorted, tile_start, tile_count, znear, *, tile_size: int, nx: int,
                  block: int = 16, interpret: bool = False, num_warps: int = 2):
    """Nearest inside face per pixel of every tile, per item (batch with ``jax.vmap``).

    Args:
      params: ``(F, 9)`` face planes of :func:`jface.render.planes.face_planes` (pixel units).
      valid: ``(F,)`` bool.
      faces_sorted, tile_start, tile_count: the binning of one pair window; tile t's candidates
        are ``faces_sorted[tile_start[t] : tile_start[t] + tile_count[t]]`` in ascending face order.
      znear: scalar; pixels whose interpolated z is below it are clipped.
      tile_size, nx: the tile grid (tile t covers columns ``(t % nx) * tile_size + ...``).
      block: faces evaluated together (a power of two).

    Returns ``(depth (T, tile_size²), face (T, tile_size²))``: inf / -1 where no face covers.
    """
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu

    if block & (block - 1):
        raise ValueError(f"block: expected a power of two, got {block}")
    dtype = params.dtype
    num_tiles = tile_start.shape[0]
    pixels = tile_size * tile_size
    lanes = _next_pow2(pixels)
    flat = params.reshape(-1)
    valid_i = valid.astype(jnp.int32)
    znear = jnp.reshape(znear.astype(dtype), (1,))
    if faces_sorted.shape[0] == 0:
        faces_sorted = jnp.zeros((1,), jnp.int32)

    def kernel(params_ref, valid_ref, faces_ref, start_ref, count_ref, znear_ref, depth_ref, face_ref):
        t = pl.program_id(0)
        start = start_ref[t]
        count = count_ref[t]
        local = jnp.arange(lanes, dtype=jnp.int32)
        col = ((t % nx) * tile_size + local % tile_size).astype(dtype)[:, None]
        row = ((t // nx) * tile_size + local // tile_size).astype(dtype)[:, None]
        zn = znear_ref[0]

        def body(j, carry):
            best_z, best_f = carry
            k = j * block + jnp.arange(block, dtype=jnp.int32)
            live = k < count
            fid = plgpu.load(faces_ref.at[start + k], mask=live, other=0)
            ok = live & (plgpu.load(valid_ref.at[fid], mask=live, other=0) != 0)
            p = [plgpu.load(params_ref.at[fid * 9 + i], mask=live, other=0.0)[None, :] for i in range(9)]
            key = plane_depth_key(p, ok[None, :], col, row, zn)
            zmin = jnp.min(key, axis=1)
            fmin = jnp.min(jnp.where(key == zmin[:, None], fid[None, :], NO_FACE), axis=1)
            # later blocks hold higher face ids: strictly nearer only, so ties keep the lower id
            better = zmin < best_z
            return jnp.where(better, zmin, best_z), jnp.where(better, fmin, best_f)

        init = (jnp.full((lanes,), jnp.inf, dtype), jnp.full((lanes,), NO_FACE, jnp.int32))
        best_z, best_f = lax.fori_loop(0, (count + block - 1) // block, body, init)
        depth_ref[...] = best_z
        face_ref[...] = jnp.where(best_z < jnp.inf, best_f, -1)

    row_spec = pl.BlockSpec((None, lanes), lambda t: (t, 0))
    kwargs = {} if interpret else {"compiler_params": plgpu.CompilerParams(num_warps=num_warps, num_stages=1)}
    call = pl.pallas_call(
        kernel,
        out_shape=(jax.ShapeDtypeStruct((num_tiles, lanes), dtype),
                   jax.ShapeDtypeStruct((num_tiles, lanes), jnp.int32)),
        grid=(num_tiles,),
        out_specs=(row_spec, row_spec),
        interpret=interpret,
        **kwargs,
    )
    depth, face = call(flat, valid_i, faces_sorted, tile_start, tile_count, znear)
    return depth[:, :pixels], face[:, :pixels]


# --------------------------------------------------------------------------------------------
# Soft silhouette (SoftRas): forward and backward kernels over the soft binning's pair list.
# --------------------------------------------------------------------------------------------


def _sil_block(cx, cy, ok, px, py, thr):
    """Per (pixel, candidate) silhouette geometry, shared by the kernels and the jnp path
    (:func:`jface.render.soft._sil_geometry`): ``cx/cy`` lists of 3 corner arrays broadcasting
    against the pixels ``px/py`` (``(1, C)`` and ``(P, 1)`` in a kernel), ``ok`` like the corners.
    Returns ``(inside, live, dist2, seg, t, dx, dy)`` of the broadcast shape: the squared distance
    to the nearest edge ``seg`` (0: corners 0-1, 1: 1-2, 2: 2-0), its clamped parameter ``t`` and
    ``(dx, dy) = p - a - t e``. Inside is strict (w0, w1, w2 > 0); a zero-length edge measures
    the distance to its first corner."""
    ex1, ey1 = cx[1] - cx[0], cy[1] - cy[0]
    ex2, ey2 = cx[2] - cx[0], cy[2] - cy[0]
    area = ex1 * ey2 - ey1 * ex2
    inv_area = 1.0 / jnp.where(ok, area, 1.0)
    qx, qy = px - cx[0], py - cy[0]
    w1 = (qx * ey2 - qy * ex2) * inv_area
    w2 = (ex1 * qy - ey1 * qx) * inv_area
    inside = (1.0 - w1 - w2 > 0) & (w1 > 0) & (w2 > 0)
    best = None
    for k in range(3):
        a, b = k, (k + 1) % 3
        sx, sy = cx[b] - cx[a], cy[b] - cy[a]
        len2 = sx * sx + sy * sy
        inv_len2 = jnp.where(len2 > 0, 1.0 / jnp.where(len2 > 0, len2, 1.0), 0.0)
        t = jnp.clip(((px - cx[a]) * sx + (py - cy[a]) * sy) * inv_len2, 0.0, 1.0)
        dx, dy = px - cx[a] - t * sx, py - cy[a] - t * sy
        d2 = dx * dx + dy * dy
        if best is None:
            best = (d2, jnp.zeros(d2.shape, jnp.int32), t, dx, dy)
        else:
            take = d2 < best[0]
            candidate = (d2, jnp.full(d2.shape, k, jnp.int32), t, dx, dy)
            best = tuple(jnp.where(take, new, old) for new, old in zip(candidate, best))
    dist2, seg, t, dx, dy = best
    live = ok & (inside | (dist2 < thr))
    return inside, live, dist2, seg, t, dx, dy


def _softplus(x):
    return jnp.maximum(x, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


def _sil_call(kind, fxy, valid, faces_sorted, tile_start, tile_count, g, *, tile_size, nx, image_hw, sigma, thr,
              block, interpret, num_warps):
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as plgpu

    height, width = image_hw
    dtype = fxy.dtype
    num_tiles = tile_start.shape[0]
    lanes = _next_pow2(tile_size * tile_size)
    num_pairs = faces_sorted.shape[0]
    flat = fxy.reshape(-1)
    valid_i = valid.astype(jnp.int32)

    def geometry(t):
        local = jnp.arange(lanes, dtype=jnp.int32)
        col = ((t % nx) * tile_size + local % tile_size).astype(dtype)[:, None]
        row = ((t // nx) * tile_size + local // tile_size).astype(dtype)[:, None]
        px = (2.0 * col + 1.0) / width - 1.0
        py = (2.0 * row + 1.0) / height - 1.0
        return px, py

    def load_block(refs, t, j):
        fxy_ref, valid_ref, faces_ref, start_ref, count_ref = refs
        start = start_ref[t]
        k = j * block + jnp.arange(block, dtype=jnp.int32)
        live = k < count_ref[t]
        fid = plgpu.load(faces_ref.at[start + k], mask=live, other=0)
        ok = live & (plgpu.load(valid_ref.at[fid], mask=live, other=0) != 0)
        c = [plgpu.load(fxy_ref.at[fid * 6 + i], mask=live, other=0.0)[None, :] for i in range(6)]
        return start + k, live, ok[None, :], c[0::2], c[1::2]

    def n_blocks(count_ref, t):
        return (count_ref[t] + block - 1) // block

    if kind == "fwd":
        def kernel(fxy_ref, valid_ref, faces_ref, start_ref, count_ref, out_ref):
            refs = (fxy_ref, valid_ref, faces_ref, start_ref, count_ref)
            t = pl.program_id(0)
            px, py = geometry(t)

            def body(j, acc):
                _, _, ok, cx, cy = load_block(refs, t, j)
                inside, live, dist2, *_ = _sil_block(cx, cy, ok, px, py, thr)
                logit = jnp.where(inside, dist2, -dist2) / sigma
                return acc + jnp.sum(jnp.where(live, -_softplus(logit), 0.0), axis=1)

            out_ref[...] = lax.fori_loop(0, n_blocks(count_ref, t), body, jnp.zeros((lanes,), dtype))

        out_shape = jax.ShapeDtypeStruct((num_tiles, lanes), dtype)
        out_specs = pl.BlockSpec((None, lanes), lambda t: (t, 0))
        operands = (flat, valid_i, faces_sorted, tile_start, tile_count)
    else:
        def kernel(fxy_ref, valid_ref, faces_ref, start_ref, count_ref, g_ref, out_ref):
            refs = (fxy_ref, valid_ref, faces_ref, start_ref, count_ref)
            t = pl.program_id(0)
            px, py = geometry(t)
            gp = plgpu.load(g_ref.at[t * lanes + jnp.arange(lanes)])[:, None]

            def body(j, carry):
                slot, live_k, ok, cx, cy = load_block(refs, t, j)
                inside, live, dist2, seg, tt, dx, dy = _sil_block(cx, cy, ok, px, py, thr)
                logit = jnp.where(inside, dist2, -dist2) / sigma
                sig = 1.0 / (1.0 + jnp.exp(-logit))
                gd = jnp.where(live, -sig * jnp.where(inside, 1.0, -1.0) / sigma, 0.0) * gp
                ga, gb = -2.0 * gd * (1.0 - tt), -2.0 * gd * tt
                for corner in range(3):
                    coef = jnp.where(seg == corner, ga, jnp.where(seg == (corner + 2) % 3, gb, 0.0))
                    plgpu.store(out_ref.at[slot * 6 + 2 * corner], jnp.sum(coef * dx, axis=0), mask=live_k)
                    plgpu.store(out_ref.at[slot * 6 + 2 * corner + 1], jnp.sum(coef * dy, axis=0), mask=live_k)
                return carry

            lax.fori_loop(0, n_blocks(count_ref, t), body, jnp.int32(0))

        out_shape = jax.ShapeDtypeStruct((num_pairs * 6,), dtype)
        out_specs = None
        operands = (flat, valid_i, faces_sorted, tile_start, tile_count, g.reshape(-1))
    kwargs = {} if interpret else {"compiler_params": plgpu.CompilerParams(num_warps=num_warps, num_stages=1)}
    if out_specs is not None:
        kwargs["out_specs"] = out_specs
    call = pl.pallas_call(kernel, out_shape=out_shape, grid=(num_tiles,), interpret=interpret, **kwargs)
    return call(*operands)


def _windows(ft, grid, pair_budget, body, init):
    """Run ``body(window, faces_sorted, start, count, acc)`` over every pair window: the first one
    unconditionally, further ones (meshes with more pairs than ``pair_budget``) in a while loop."""
    def step(window, acc):
        faces_sorted, start, count = binning.window_candidates(ft, grid, window, pair_budget)
        return body(faces_sorted, start, count, acc)

    acc = step(jnp.int32(0), init)
    num_windows = (ft.total + pair_budget - 1) // pair_budget
    _, acc = lax.while_loop(lambda c: c[0] < num_windows, lambda c: (c[0] + 1, step(c[0], c[1])), (jnp.int32(1), acc))
    return acc


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def soft_silhouette_tiles(fxy, valid, ft, static):
    """``sum_j log(1 - D_j)`` per pixel of every tile: ``(T, lanes)`` (lanes = tile_size² rounded
    up to a power of two), per item, over all of each tile's candidates.

    ``fxy (F, 3, 2)`` corner NDC (differentiable), ``valid (F,)``, ``ft`` the faces' tile ranges
    (:func:`jface.render.binning.face_tiles` with the cut-off radius), ``static`` = (grid,
    image_hw, sigma, thr, pair_budget, block, interpret, num_warps). The pairs are sorted by tile
    one window of ``pair_budget`` at a time; log-transmittances add over windows, so any mesh is
    exact (further windows cost one extra kernel each, and a ``while_loop`` check).

    The backward kernel recomputes the geometry and reduces every candidate's corner gradient
    over its tile's pixels into that pair's own slot (each pair belongs to one tile: plain
    stores, no atomics); the pairs are then summed into their faces.
    """
    return _sil_forward(fxy, valid, ft, static)


def _kernel_kwargs(static):
    grid, image_hw, sigma, thr, _, block, interpret, num_warps = static
    return dict(tile_size=grid.size, nx=grid.nx, image_hw=image_hw, sigma=sigma, thr=thr, block=block,
                interpret=interpret, num_warps=num_warps)


def _sil_forward(fxy, valid, ft, static):
    grid, pair_budget = static[0], static[4]
    lanes = _next_pow2(grid.size * grid.size)

    def body(faces_sorted, start, count, acc):
        return acc + _sil_call("fwd", fxy, valid, faces_sorted, start, count, None, **_kernel_kwargs(static))

    return _windows(ft, grid, pair_budget, body, jnp.zeros((grid.num_tiles, lanes), fxy.dtype))


def _sil_tiles_fwd(fxy, valid, ft, static):
    return _sil_forward(fxy, valid, ft, static), (fxy, valid, ft)


def _sil_tiles_bwd(static, res, g):
    fxy, valid, ft = res
    grid, pair_budget = static[0], static[4]
    num_faces = fxy.shape[0]
    g = g.astype(fxy.dtype)

    def body(faces_sorted, start, count, acc):
        pair = _sil_call("bwd", fxy, valid, faces_sorted, start, count, g, **_kernel_kwargs(static)).reshape(-1, 6)
        # slots past this window's pairs were never written (uninitialised): select, don't scale
        written = jnp.arange(pair.shape[0]) < jnp.sum(count)
        face = jnp.where(written, faces_sorted, num_faces)
        return acc.at[face].add(jnp.where(written[:, None], pair, 0.0), mode="drop")

    grad = _windows(ft, grid, pair_budget, body, jnp.zeros((num_faces, 6), fxy.dtype))
    zeros_ft = jax.tree_util.tree_map(lambda x: np.zeros(x.shape, jax.dtypes.float0), ft)
    return grad.reshape(fxy.shape), np.zeros(valid.shape, jax.dtypes.float0), zeros_ft


soft_silhouette_tiles.defvjp(_sil_tiles_fwd, _sil_tiles_bwd)
