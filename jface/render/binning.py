"""Screen-tile binning with static shapes (shared by the hard and the soft rasterizer).

The image is cut into ``tile_size x tile_size`` tiles. Every face is paired with each tile its
(optionally enlarged) pixel bounding box touches; the pairs are sorted by tile (stably, so the faces
of a tile stay in ascending face order) and each tile reads a window of ``capacity`` candidates
from the sorted list. Nothing here is ``batch x pixels x faces``: the largest arrays are the pair
list ``(pair_budget,)`` and the per-tile candidate table ``(num_tiles, capacity)``.

Two static budgets bound the shapes:

* ``pair_budget``: how many (face, tile) pairs one *window* holds. More pairs are processed in
  further windows (see :func:`window_candidates`).
* ``capacity``: how many candidates every tile evaluates in the dense first pass. Tiles with more
  candidates are then gathered (at most ``overflow_tiles`` of them at a time, each with a further
  ``overflow_capacity`` candidates) and evaluated again, so one dense tile does not make every
  tile pay.

The callers decide what an overflow does (more windows/chunks, a larger budget, or an error);
nothing is ever dropped silently.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

__all__ = [
    "TileGrid",
    "tile_grid",
    "FaceTiles",
    "face_tiles",
    "window_candidates",
    "chunk_candidates",
    "tile_candidates",
    "overflow_tiles",
]


class TileGrid(NamedTuple):
    """Static tiling of an ``(H, W)`` image: ``ny x nx`` tiles of ``size x size`` pixels."""

    height: int
    width: int
    size: int
    ny: int
    nx: int

    @property
    def num_tiles(self) -> int:
        return self.ny * self.nx

    def pixel_centres(self, dtype):
        """``(num_tiles, size*size)`` columns and rows (pixel units) of every tile's pixels."""
        local = jnp.arange(self.size * self.size, dtype=jnp.int32)
        lr, lc = local // self.size, local % self.size
        tiles = jnp.arange(self.num_tiles, dtype=jnp.int32)
        ty, tx = tiles // self.nx, tiles % self.nx
        cols = (tx[:, None] * self.size + lc[None, :]).astype(dtype)
        rows = (ty[:, None] * self.size + lr[None, :]).astype(dtype)
        return cols, rows

    def untile(self, values):
        """``(num_tiles, size*size, ...)`` per-tile pixels -> ``(H, W, ...)`` image."""
        rest = values.shape[2:]
        img = values.reshape((self.ny, self.nx, self.size, self.size) + rest)
        img = jnp.moveaxis(img, 2, 1).reshape((self.ny * self.size, self.nx * self.size) + rest)
        return img[: self.height, : self.width]


def tile_grid(image_hw, tile_size: int) -> TileGrid:
    height, width = (int(s) for s in image_hw)
    if height <= 0 or width <= 0:
        raise ValueError(f"image_hw: expected two positive ints, got {image_hw!r}")
    if int(tile_size) <= 0:
        raise ValueError(f"tile_size: expected a positive int, got {tile_size!r}")
    size = int(tile_size)
    return TileGrid(height, width, size, math.ceil(height / size), math.ceil(width / size))


class FaceTiles(NamedTuple):
    """Per-face tile ranges (inclusive) and pair offsets; all int32 ``(F,)``."""

    tx0: jax.Array
    ty0: jax.Array
    tx1: jax.Array
    ty1: jax.Array
    count: jax.Array  # tiles touched (0 for invalid faces)
    start: jax.Array  # exclusive cumulative sum of count
    total: jax.Array  # () total number of pairs


def face_tiles(cols, rows, valid, grid: TileGrid, radius_cols=0.0, radius_rows=0.0) -> FaceTiles:
    """Tile ranges of faces from their corner pixel coordinates.

    ``cols``/``rows`` ``(F, 3)`` pixel coordinates (integers = pixel centres), ``valid (F,)``.
    The candidate pixels of a face are the integer points of its bounding box enlarged by the
    radii (the soft rasterizer's cut-off); faces whose box holds no pixel of the image get 0 tiles.
    """
    cols = lax.stop_gradient(cols)
    rows = lax.stop_gradient(rows)
    big = float(max(grid.height, grid.width) + 2)
    # Clip in floating point first so that huge/inf coordinates never overflow the int cast.
    c0 = jnp.clip(jnp.ceil(jnp.min(cols, axis=1) - radius_cols), -1.0, big)
    c1 = jnp.clip(jnp.floor(jnp.max(cols, axis=1) + radius_cols), -1.0, big)
    r0 = jnp.clip(jnp.ceil(jnp.min(rows, axis=1) - radius_rows), -1.0, big)
    r1 = jnp.clip(jnp.floor(jnp.max(rows, axis=1) + radius_rows), -1.0, big)
    c0 = jnp.maximum(c0, 0.0).astype(jnp.int32)
    r0 = jnp.maximum(r0, 0.0).astype(jnp.int32)
    c1 = jnp.minimum(c1, grid.width - 1).astype(jnp.int32)
    r1 = jnp.minimum(r1, grid.height - 1).astype(jnp.int32)
    valid = valid & (c0 <= c1) & (r0 <= r1)
    tx0, tx1 = c0 // grid.size, c1 // grid.size
    ty0, ty1 = r0 // grid.size, r1 // grid.size
    count = jnp.where(valid, (tx1 - tx0 + 1) * (ty1 - ty0 + 1), 0).astype(jnp.int32)
    ends = jnp.cumsum(count, dtype=jnp.int32)
    start = ends - count
    total = ends[-1] if count.shape[0] else jnp.zeros((), jnp.int32)
    return FaceTiles(tx0, ty0, tx1, ty1, count, start, total)


def window_candidates(ft: FaceTiles, grid: TileGrid, window, pair_budget: int):
    """Sort the pairs ``[window*pair_budget, (window+1)*pair_budget)`` by tile.

    Returns ``(faces_sorted (pair_budget,), tile_start (num_tiles,), tile_count (num_tiles,))``:
    the faces of tile t in this window are ``faces_sorted[tile_start[t] : tile_start[t] +
    tile_count[t]]``, in ascending face order (pairs are generated face by face and the sort is
    stable), which is what makes ties resolve to the lower face index.
    """
    num_faces = ft.count.shape[0]
    offset = window * pair_budget
    slots = offset + jnp.arange(pair_budget, dtype=jnp.int32)
    face_ids = jnp.arange(num_faces, dtype=jnp.int32)
    has = ft.count > 0
    # Owner face of each slot: scatter every face id at its first slot, then a running max.
    first = jnp.where(has & (ft.start >= offset), ft.start - offset, pair_budget)
    owner = jnp.full((pair_budget,), -1, jnp.int32).at[first].max(face_ids, mode="drop")
    carry = jnp.max(jnp.where(has & (ft.start <= offset), face_ids, -1), initial=-1)
    owner = owner.at[0].max(carry)
    owner = lax.cummax(owner, axis=0)
    live = (slots < ft.total) & (owner >= 0)
    safe = jnp.maximum(owner, 0)
    local = slots - ft.start[safe]
    width = ft.tx1[safe] - ft.tx0[safe] + 1
    tx = ft.tx0[safe] + local % width
    ty = ft.ty0[safe] + local // width
    tile = jnp.where(live, ty * grid.nx + tx, grid.num_tiles)
    if (grid.num_tiles + 1) * max(num_faces, 1) < 2**31 - 1:
        # One packed int32 key (tile, face): a single-operand sort (radix sort on GPUs); the
        # (tile, face) pairs are unique, so the order equals the stable sort by tile.
        packed = lax.sort(tile * num_faces + safe)
        faces_sorted = packed % num_faces
    else:
        _, faces_sorted = lax.sort((tile, safe), num_keys=1, is_stable=True)
    tile_count = jnp.zeros((grid.num_tiles,), jnp.int32).at[tile].add(1, mode="drop")
    tile_start = jnp.cumsum(tile_count, dtype=jnp.int32) - tile_count
    return faces_sorted, tile_start, tile_count


def chunk_candidates(faces_sorted, tile_start, tile_count, chunk, capacity: int):
    """``(num_tiles, capacity)`` candidate faces of chunk ``chunk`` (-1 = empty slot)."""
    k = chunk * capacity + jnp.arange(capacity, dtype=jnp.int32)
    idx = jnp.clip(tile_start[:, None] + k[None, :], 0, faces_sorted.shape[0] - 1)
    return jnp.where(k[None, :] < tile_count[:, None], faces_sorted[idx], -1)


def tile_candidates(faces_sorted, tile_start, tile_count, tiles, offset, capacity: int):
    """Candidates ``[offset, offset + capacity)`` of the given tiles: ``(O, capacity)`` (-1 empty).

    ``tiles (O,)`` tile ids (ids >= num_tiles are padding and get no candidates), ``offset (O,)``.
    """
    num_tiles = tile_start.shape[0]
    live = tiles < num_tiles
    safe = jnp.where(live, tiles, 0)
    k = offset[:, None] + jnp.arange(capacity, dtype=jnp.int32)[None, :]
    idx = jnp.clip(tile_start[safe][:, None] + k, 0, faces_sorted.shape[0] - 1)
    ok = live[:, None] & (k < tile_count[safe][:, None])
    return jnp.where(ok, faces_sorted[idx], -1)


def overflow_tiles(tile_count, processed, num_slots: int):
    """Up to ``num_slots`` tile ids (ascending) with candidates beyond ``processed``; padding =
    ``num_tiles``. Returns ``(tiles (num_slots,), how_many ())``."""
    need = tile_count > processed
    (tiles,) = jnp.nonzero(need, size=num_slots, fill_value=tile_count.shape[0])
    return tiles.astype(jnp.int32), jnp.sum(need)
