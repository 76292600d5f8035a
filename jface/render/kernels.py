"""Pallas (Triton) kernel for the hard rasterizer's z-buffer pass, with the jnp path as reference.

:func:`zbuffer_tiles` evaluates, for every screen tile, *all* its candidate faces (the tile's run
of the binning's tile-sorted pair list, :func:`jface.render.binning.window_candidates`) in blocks
of ``block`` faces inside one program per tile, keeping per pixel the nearest inside face (ties
to the lower face index). Unlike the dense jnp pass (:func:`jface.render.rasterize._eval_chunk`
over a static ``capacity`` plus overflow rounds in a ``while_loop``), the loop runs exactly as many
blocks as the tile holds, so there is no capacity, no overflow round and no host round trip.

The arithmetic is :func:`~jface.render.rasterize._eval_chunk`'s, term for term (w1, w2 relative
to corner 0, w0 = 1 - w1 - w2, inside = w2 >= 0, w1 >= 0, w0 > 0, z >= znear), so the two paths
agree except where a compiler's fused multiply-add moves a value across an edge or a depth tie by
one ulp. Interpret mode (``interpret=True``) runs the same kernel on any backend; the tests use
it on the CPU against the jnp path, and :func:`jface.render.rasterize` uses the compiled kernel
only on GPUs (``impl="auto"``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["zbuffer_tiles", "pallas_available"]

_NO_FACE = np.iinfo(np.int32).max


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
      params: ``(F, 9)`` face planes of :func:`jface.render.rasterize._face_planes` (pixel units).
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
            dc = col - p[0]
            dr = row - p[1]
            w1 = p[2] * dc + p[3] * dr
            w2 = p[4] * dc + p[5] * dr
            w0 = 1.0 - w1 - w2
            z = p[6] + w1 * p[7] + w2 * p[8]
            inside = ok[None, :] & (w1 >= 0) & (w2 >= 0) & (w0 > 0) & (z >= zn)
            key = jnp.where(inside, z, jnp.inf)
            zmin = jnp.min(key, axis=1)
            fmin = jnp.min(jnp.where(key == zmin[:, None], fid[None, :], _NO_FACE), axis=1)
            # later blocks hold higher face ids: strictly nearer only, so ties keep the lower id
            better = zmin < best_z
            return jnp.where(better, zmin, best_z), jnp.where(better, fmin, best_f)

        init = (jnp.full((lanes,), jnp.inf, dtype), jnp.full((lanes,), _NO_FACE, jnp.int32))
        best_z, best_f = lax.fori_loop(0, (count + block - 1) // block, body, init)
        depth_ref[...] = best_z
        face_ref[...] = jnp.where(best_z < jnp.inf, best_f, -1)

    row_spec = pl.BlockSpec((None, lanes), lambda t: (t, 0))
    kwargs = {} if interpret else {"compiler_params": plgpu.CompilerParams(num_warps=num_warps, num_stages=1)}
    call = pl.pallas_call(
        kernel,
        out_shape=(jax.ShapeDtypeStruct((num_tiles, lanes), dtype), jax.ShapeDtypeStruct((num_tiles, lanes), jnp.int32)),
        grid=(num_tiles,),
        out_specs=(row_spec, row_spec),
        interpret=interpret,
        **kwargs,
    )
    depth, face = call(flat, valid_i, faces_sorted, tile_start, tile_count, znear)
    return depth[:, :pixels], face[:, :pixels]
