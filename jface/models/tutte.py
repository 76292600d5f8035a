"""Tutte embedding of a disc mesh onto the unit square, optionally mirror-symmetric (as the original's
``BFM_UV.mat``, whose generating code the 3DMM-STN repository does not provide).

``BFM_UV.mat`` (3DMM-STN) is described as a Tutte embedding with conformal (cotangent) weights,
the boundary mapped to the unit square, one half of the face flattened and the other half obtained
by reflection. The original code that produced it was never released; this module implements that
description:

* **Weights.** ``w_ij = cot a_ij + cot b_ij`` (minus the off-diagonal of
  :func:`jface.models.laplace_beltrami`). Cotangent weights can be negative (obtuse angles), and
  Tutte's theorem (Floater 2003: every interior vertex a convex combination of its neighbours with
  positive weights + boundary on a convex polygon => one-to-one) needs positive weights, so negative
  or tiny weights are **clamped** to ``1e-6 x`` the mean positive weight. The result is checked for
  fold-overs; if any triangle is folded or degenerate (which the theorem excludes, but rounding
  near clamped weights could produce), the embedding is recomputed with Floater's **mean-value
  weights** (always positive); if that still folds a ``ValueError`` is raised.
* **Boundary.** The boundary loop (edges used by exactly one face) must be a single loop (the mesh
  must be a disc). It goes to the square's edges by arc length (3D edge lengths), side by side,
  with the 4 corners at the boundary vertices extreme in the directions (-1,-1), (1,-1), (1,1),
  (-1,1) of the mesh's (horizontal, vertical) coordinates = (x, y) by default. u grows toward the
  model's +x, v toward +y.
* **Symmetric mode** (default). The mirror map ``m`` (an involution on vertices; by default the
  nearest neighbour of each vertex reflected across ``x = 0``) must be a mesh automorphism. Weights
  are symmetrised (``w_ij <- (w_ij + w_m(i)m(j)) / 2``), the corners are mirror pairs and the
  boundary parametrisation is mirror-symmetric, so the full embedding is symmetric. It is computed
  by flattening one half: the unknowns are the ``x < 0`` half and the fixed points of ``m`` (the
  symmetry line), which are constrained to ``u = 0.5``; neighbours on the other half enter through
  ``(u, v) = (1 - u_m(j), v_m(j))``. The ``x > 0`` half is then the exact reflection
  ``u -> 1 - u``. This also handles meshes whose symmetry line is not a path of edges (the real BFM
  has 14 triangles straddling it). The result lies in ``[0, 0.5] x [0, 1]`` for the ``x <= 0`` half.

Triangles are positively oriented in UV (counter-clockwise, u right / v up) when the faces wind
counter-clockwise seen from +z (BFM's convention).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from scipy.spatial import cKDTree

from jface.models.prepare import _as_mesh, corner_cotangents

__all__ = [
    "tutte_embedding",
    "boundary_loop",
    "mirror_map",
    "mirror_map_from_uv",
    "plot_uv",
    "uv_signed_areas",
]


# ----------------------------------------------------------------------------------------------
# mesh helpers
# ----------------------------------------------------------------------------------------------


def boundary_loop(faces, num_vertices: int | None = None) -> np.ndarray:
    """The boundary of a disc mesh as one loop of vertex indices.

    ``faces (F, 3)`` 0-based -> ``(B,)`` int64, following the boundary edges (edges used by
    exactly one face) in the direction they have in their face (counter-clockwise when faces wind
    counter-clockwise). Raises ``ValueError`` if the boundary is empty, branches, or has several
    loops (the mesh must be a topological disc).
    """
    faces = np.asarray(faces).astype(np.int64)
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    undirected = np.sort(directed, axis=1)
    base = int(faces.max()) + 1 if num_vertices is None else int(num_vertices)
    keys = undirected[:, 0] * base + undirected[:, 1]
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    if np.any(counts > 2):
        raise ValueError(f"faces: {int((counts > 2).sum())} edges are shared by more than two "
                         "faces (non-manifold mesh)")
    bedges = directed[counts[inverse] == 1]
    if len(bedges) == 0:
        raise ValueError("faces: the mesh has no boundary (closed surface); expected a disc")
    start, end = bedges[:, 0], bedges[:, 1]
    if len(np.unique(start)) != len(start):
        raise ValueError("faces: a boundary vertex has two outgoing boundary edges (the boundary "
                         "touches itself or faces are inconsistently oriented); expected a disc")
    nxt = dict(zip(start.tolist(), end.tolist()))
    loop = [int(start[0])]
    while True:
        v = nxt.get(loop[-1])
        if v is None:
            raise ValueError("faces: the boundary is not closed (inconsistent face orientation?)")
        if v == loop[0]:
            break
        loop.append(v)
        if len(loop) > len(bedges):
            raise ValueError("faces: could not trace the boundary loop")
    if len(loop) != len(bedges):
        raise ValueError(
            f"faces: the boundary has several loops ({len(bedges)} boundary edges, the first loop "
            f"has {len(loop)}); expected a disc with one boundary loop"
        )
    return np.asarray(loop, dtype=np.int64)


def mirror_map(vertices, *, axis: int = 0, tol: float = 1e-6) -> np.ndarray:
    """Vertex mirror map by nearest neighbour of the reflection across ``vertices[:, axis] = 0``.

    ``vertices (N, 3)`` -> ``(N,)`` int64 ``m`` with ``vertices[m[i]] ~ reflect(vertices[i])``.
    Raises ``ValueError`` if some reflected vertex is farther than ``tol x`` the bounding-box
    diagonal from every vertex, or if ``m`` is not an involution.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    flipped = vertices.copy()
    flipped[:, axis] *= -1.0
    dist, mirror = cKDTree(vertices).query(flipped)
    scale = float(np.linalg.norm(vertices.max(0) - vertices.min(0))) or 1.0
    worst = int(np.argmax(dist))
    if dist[worst] > tol * scale:
        raise ValueError(
            f"vertices: the mesh is not mirror-symmetric across coordinate {axis} = 0 within "
            f"tol={tol:g} x bbox diagonal: vertex {worst} reflected is {dist[worst]:.3g} from the "
            f"nearest vertex (allowed {tol * scale:.3g}); pass mirror= or symmetric=False"
        )
    _check_mirror(mirror, len(vertices))
    return mirror.astype(np.int64)


def mirror_map_from_uv(uv, *, tol: float = 1e-9) -> np.ndarray:
    """Vertex mirror map from a symmetric UV layout: nearest neighbour of ``(1 - u, v)``.

    For meshes whose geometry is only approximately symmetric (the real BFM mean), the exact
    pairing of ``BFM_UV.mat`` gives the mirror map to pass to :func:`tutte_embedding`.
    ``uv (N, 2)`` -> ``(N,)`` int64; ``ValueError`` if some vertex has no partner within ``tol``.
    """
    uv = np.asarray(uv, dtype=np.float64)
    if uv.ndim != 2 or uv.shape[1] != 2:
        raise ValueError(f"uv: expected (N, 2), got {uv.shape}")
    dist, mirror = cKDTree(uv).query(np.c_[1.0 - uv[:, 0], uv[:, 1]])
    if dist.max() > tol:
        k = int(np.argmax(dist))
        raise ValueError(f"uv: not mirror-symmetric about u = 0.5 within tol={tol:g} (vertex {k} "
                         f"is {dist[k]:.3g} from its reflection's nearest vertex)")
    _check_mirror(mirror, len(uv))
    return mirror.astype(np.int64)


def _check_mirror(mirror, n):
    if mirror.shape != (n,) or mirror.min() < 0 or mirror.max() >= n:
        raise ValueError(f"mirror: expected ({n},) vertex indices in [0, {n}), got shape "
                         f"{mirror.shape}")
    if not np.array_equal(mirror[mirror], np.arange(n)):
        bad = int(np.flatnonzero(mirror[mirror] != np.arange(n))[0])
        raise ValueError(f"mirror: not an involution (mirror[mirror[{bad}]] != {bad}); two "
                         "vertices may be (nearly) coincident")


def uv_signed_areas(uv, faces) -> np.ndarray:
    """``(F,)`` twice the signed area of each face in UV (positive = counter-clockwise)."""
    p = np.asarray(uv, dtype=np.float64)[np.asarray(faces)]
    e1 = p[:, 1] - p[:, 0]
    e2 = p[:, 2] - p[:, 0]
    return e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]


# ----------------------------------------------------------------------------------------------
# weights
# ----------------------------------------------------------------------------------------------


def _cotangent_weights(vertices, faces, n):
    cots = corner_cotangents(vertices, faces)
    rows, cols, vals = [], [], []
    for c in range(3):
        i = faces[:, (c + 1) % 3]
        j = faces[:, (c + 2) % 3]
        rows += [i, j]
        cols += [j, i]
        vals += [cots[:, c], cots[:, c]]
    w = sp.coo_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
    ).tocsr()
    w.sum_duplicates()
    positive = w.data[w.data > 0]
    floor = 1e-6 * (positive.mean() if positive.size else 1.0)
    w.data = np.maximum(w.data, floor)  # clamp (module docstring): keeps Tutte's guarantee
    return w


def _mean_value_weights(vertices, faces, n):
    """Floater's mean-value weights ``w_ij = (tan(d/2) + tan(g/2)) / |v_i - v_j|`` (> 0)."""
    p = vertices[faces]
    rows, cols, vals = [], [], []
    for c in range(3):
        a = p[:, (c + 1) % 3] - p[:, c]
        b = p[:, (c + 2) % 3] - p[:, c]
        la = np.linalg.norm(a, axis=1)
        lb = np.linalg.norm(b, axis=1)
        cos = np.clip(np.einsum("fi,fi->f", a, b) / (la * lb), -1.0, 1.0)
        tan_half = np.sqrt((1.0 - cos) / (1.0 + cos))
        rows += [faces[:, c], faces[:, c]]
        cols += [faces[:, (c + 1) % 3], faces[:, (c + 2) % 3]]
        vals += [tan_half / la, tan_half / lb]
    w = sp.coo_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
    ).tocsr()
    w.sum_duplicates()
    return w


def _weights(kind, vertices, faces, n):
    if kind == "cotangent":
        return _cotangent_weights(vertices, faces, n)
    if kind == "mean_value":
        return _mean_value_weights(vertices, faces, n)
    if kind == "uniform":
        w = _cotangent_weights(vertices, faces, n)
        w.data[:] = 1.0
        return w
    raise ValueError(f"weights: expected 'cotangent', 'mean_value' or 'uniform', got {kind!r}")


# ----------------------------------------------------------------------------------------------
# boundary parametrisation
# ----------------------------------------------------------------------------------------------


def _arc(points):
    """Cumulative arc length along a polyline ``(K, 3)`` -> ``(K,)`` starting at 0."""
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    return np.concatenate([[0.0], np.cumsum(seg)])


def _unit(s):
    total = s[-1]
    if not total > 0:
        raise ValueError("vertices: a side of the boundary has zero length")
    return s / total


def _relieve_ears(order, corners, movable, faces, n, closed):
    """Move corners so that no triangle has all three corners on one side of the square.

    A triangle whose three vertices lie on one straight side (typically an "ear": a boundary vertex
    used by one triangle only) would be flattened to zero area. Such a triangle's middle vertex is
    made a corner instead of the nearest movable corner of that side. ``order`` is the boundary
    path, ``corners`` positions along it (cyclic order; ``closed`` paths wrap around).
    """
    length = len(order)
    pos = np.full(n, -1, dtype=np.int64)
    pos[order] = np.arange(length)
    tri = pos[faces[(pos[faces] >= 0).all(axis=1)]]
    corners = list(corners)
    sides = len(corners) if closed else len(corners) - 1
    for _ in range(4 * len(corners)):
        bad = None
        for s in range(sides):
            lo, hi = corners[s], corners[(s + 1) % len(corners)]
            q = tri
            if closed:
                hi = hi if hi > lo else hi + length
                q = np.where(tri < lo, tri + length, tri)
            inside = np.all((q >= lo) & (q <= hi), axis=1)
            if inside.any():
                bad = (s, np.sort(q[inside][0])[1] % length, lo, hi)
                break
        if bad is None:
            return corners
        s, mid, lo, hi = bad
        options = [k for k in (s, (s + 1) % len(corners)) if movable[k]]
        if not options:
            break
        mid_unwrapped = mid if mid >= lo else mid + length
        k = min(options, key=lambda k: abs(mid_unwrapped - (lo if k == s else hi)))
        corners[k] = int(mid)
    raise ValueError(
        "faces: a triangle has all three vertices on one side of the square whatever the corner "
        "choice (an interior edge joins two vertices of one side); cannot embed without a "
        "degenerate triangle"
    )


def _square_boundary(vertices, faces, loop, hv):
    """Full-square boundary values ``(B, 2)`` for the loop (non-symmetric mode)."""
    h, v = hv[loop, 0], hv[loop, 1]
    # orient the loop counter-clockwise in the (h, v) plane (shoelace)
    if np.sum(h * np.roll(v, -1) - np.roll(h, -1) * v) < 0:
        loop = loop[::-1]
        h, v = h[::-1], v[::-1]
    corners = [int(np.argmax(sx * h + sy * v)) for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
    rel = [(c - corners[0]) % len(loop) for c in corners]
    if not (0 == rel[0] < rel[1] < rel[2] < rel[3]):
        raise ValueError(
            "vertices: the boundary vertices extreme in the directions (-1,-1), (1,-1), (1,1), "
            "(-1,1) are not distinct and in counter-clockwise order; cannot map the boundary to "
            "the unit square"
        )
    corners = _relieve_ears(loop, corners, [True] * 4, faces, len(vertices), closed=True)
    loop = np.roll(loop, -corners[0])
    corners = [(c - corners[0]) % len(loop) for c in corners]
    closed = np.concatenate([loop, loop[:1]])
    uv = np.zeros((len(loop), 2))
    ends = corners + [len(loop)]
    starts_uv = [(0, 0), (1, 0), (1, 1), (0, 1)]
    ends_uv = [(1, 0), (1, 1), (0, 1), (0, 0)]
    for side in range(4):
        idx = closed[ends[side]:ends[side + 1] + 1]
        t = _unit(_arc(vertices[idx]))[:-1]
        a, b = np.array(starts_uv[side], float), np.array(ends_uv[side], float)
        uv[ends[side]:ends[side + 1]] = a + t[:, None] * (b - a)
    uv[corners] = np.array(starts_uv, float)
    return loop, uv


def _half_boundary(vertices, faces, loop, hv, mirror, left):
    """Boundary values of the ``x <= 0`` half (symmetric mode).

    Returns ``(path, uv)``: the boundary vertices from the bottom to the top symmetry point along
    the ``x <= 0`` side, with their UV on the left, bottom and top edges of ``[0, 0.5] x [0, 1]``;
    the other half of the boundary follows by reflection.
    """
    h, v = hv[loop, 0], hv[loop, 1]
    if np.sum(h * np.roll(v, -1) - np.roll(h, -1) * v) < 0:
        loop = loop[::-1]
    b = len(loop)
    # the two points where the boundary meets the symmetry line: fixed vertices (position k) or
    # mid-points of boundary edges (a, m(a)) (position k + 0.5)
    sym = []
    for k in range(b):
        a, c = loop[k], loop[(k + 1) % b]
        if mirror[a] == a:
            sym.append((float(k), hv[a, 1]))
        elif mirror[a] == c:
            sym.append((k + 0.5, 0.5 * (hv[a, 1] + hv[c, 1])))
    if len(sym) != 2:
        raise ValueError(
            f"mirror: the boundary loop meets the symmetry line {len(sym)} times; expected 2 "
            "(a mirror-symmetric disc)"
        )
    (pos_bot, _), (pos_top, _) = sorted(sym, key=lambda t: t[1])
    # counter-clockwise from the top symmetry point runs along the x < 0 side down to the bottom
    start = int(np.ceil(pos_top))
    count = (int(np.floor(pos_bot)) - start) % b + 1
    path = loop[(start + np.arange(count)) % b][::-1]  # bottom -> top
    if not np.all(left[path] | (mirror[path] == path)):
        raise ValueError("mirror: the boundary between the symmetry points leaves the x < 0 half; "
                         "cannot flatten one half")
    bot_mid = pos_bot != np.floor(pos_bot)
    top_mid = pos_top != np.floor(pos_top)
    pts = [vertices[path]]
    if bot_mid:
        pts.insert(0, 0.5 * (vertices[path[0]] + vertices[mirror[path[0]]])[None])
    if top_mid:
        pts.append(0.5 * (vertices[path[-1]] + vertices[mirror[path[-1]]])[None])
    pts = np.concatenate(pts)
    head = int(bot_mid)
    hp, vp = hv[path, 0], hv[path, 1]
    cand = np.flatnonzero(mirror[path] != path)
    if len(cand) < 2:
        raise ValueError("vertices: fewer than 2 boundary vertices on the x < 0 half")
    bl = cand[np.argmax(-hp[cand] - vp[cand])] + head
    tl = cand[np.argmax(-hp[cand] + vp[cand])] + head
    if not bl < tl:
        raise ValueError(
            "vertices: the half-boundary vertices extreme in the directions (-1,-1) and (-1,1) are "
            "not distinct and ordered bottom -> top; cannot map the boundary to the square"
        )
    _, bl, tl, _ = _relieve_ears(path, [0, bl - head, tl - head, len(path) - 1],
                                 [False, True, True, False], faces, len(vertices), closed=False)
    bl, tl = bl + head, tl + head
    uv = np.zeros((len(pts), 2))
    t = _unit(_arc(pts[: bl + 1]))  # bottom edge: (0.5, 0) -> corner (0, 0)
    uv[: bl + 1] = np.c_[0.5 - 0.5 * t, np.zeros_like(t)]
    t = _unit(_arc(pts[bl: tl + 1]))  # left edge: (0, 0) -> (0, 1)
    uv[bl: tl + 1] = np.c_[np.zeros_like(t), t]
    t = _unit(_arc(pts[tl:]))  # top edge: (0, 1) -> (0.5, 1)
    uv[tl:] = np.c_[0.5 * t, np.ones_like(t)]
    uv[bl] = (0.0, 0.0)
    uv[tl] = (0.0, 1.0)
    uv = uv[head: head + len(path)]
    uv[mirror[path] == path, 0] = 0.5
    return path, uv


# ----------------------------------------------------------------------------------------------
# main entry point
# ----------------------------------------------------------------------------------------------


def tutte_embedding(
    vertices,
    faces,
    *,
    symmetric: bool = True,
    mirror=None,
    symmetry_axis: int = 0,
    up_axis: int = 1,
    weights: str = "cotangent",
    mirror_tol: float = 1e-6,
    fallback: bool = True,
) -> np.ndarray:
    """Fold-free Tutte embedding of a disc mesh into the unit square (the layout of ``BFM_UV.mat``).

    Args:
      vertices: ``(N, 3)`` model-space positions (BFM frame: x to the subject's left, y up).
      faces: ``(F, 3)`` int, 0-based; the mesh must be a topological disc with every vertex used.
      symmetric: flatten the ``x <= 0`` half onto ``[0, 0.5] x [0, 1]`` (symmetry line on
        ``u = 0.5``) and reflect it (``u -> 1 - u``) onto the other half (module docstring).
      mirror: ``(N,)`` vertex mirror map (an involution; fixed points = symmetry line). Default:
        nearest neighbour of each vertex reflected across ``vertices[:, symmetry_axis] = 0``,
        within ``mirror_tol x`` the bounding-box diagonal (else ``ValueError``).
      symmetry_axis: model axis that maps to u (and that the mirror reflects); default x.
      up_axis: model axis that maps to v; default y.
      weights: ``"cotangent"`` (conformal; negative weights clamped), ``"mean_value"`` or
        ``"uniform"`` (Tutte's original barycentric weights).
      fallback: with cotangent weights, recompute with mean-value weights if a fold is found.

    Returns:
      ``(N, 2)`` float64 UV in ``[0, 1]^2``, u toward +``symmetry_axis``, v toward +``up_axis``.
      Boundary vertices lie on the square's edges (4 corners included); in symmetric mode
      ``uv[mirror] == (1 - u, v)`` and fixed points have ``u == 0.5`` exactly.

    Raises:
      ValueError: the mesh is not a disc, not mirror-symmetric (symmetric mode), or the
        embedding folds even with mean-value weights.
    """
    vertices, faces = _as_mesh(vertices, faces)
    n = len(vertices)
    if symmetry_axis == up_axis or not (0 <= symmetry_axis < 3 and 0 <= up_axis < 3):
        raise ValueError(f"symmetry_axis/up_axis: expected two different axes in 0..2, got "
                         f"{symmetry_axis}, {up_axis}")
    used = np.zeros(n, dtype=bool)
    used[faces.ravel()] = True
    if not used.all():
        raise ValueError(f"faces: {int((~used).sum())} vertices are not used by any face (e.g. "
                         f"vertex {int(np.flatnonzero(~used)[0])}); remove them first")
    corner_cotangents(vertices, faces)  # raises a clear error for zero-area faces
    loop = boundary_loop(faces, n)
    hv = vertices[:, [symmetry_axis, up_axis]]

    if symmetric:
        if mirror is None:
            mirror = mirror_map(vertices, axis=symmetry_axis, tol=mirror_tol)
        else:
            mirror = np.asarray(mirror).astype(np.int64).ravel()
            _check_mirror(mirror, n)
    else:
        mirror = None

    kinds = [weights] + (["mean_value"] if fallback and weights == "cotangent" else [])
    last_error = None
    for kind in kinds:
        w = _weights(kind, vertices, faces, n)
        uv = _solve(vertices, faces, w, loop, hv, mirror)
        areas = uv_signed_areas(uv, faces)
        sign = 1.0 if areas.sum() >= 0 else -1.0
        folded = int(np.sum(sign * areas <= 0))
        if folded == 0:
            return uv
        last_error = (
            f"tutte_embedding: {folded} of {len(faces)} triangles are folded or degenerate in UV "
            f"with {kind} weights (e.g. a triangle with all three corners on one side of the "
            f"square, or an interior edge joining two vertices of one side)"
        )
    raise ValueError(last_error)


def _pattern(matrix):
    pattern = matrix.tocsr(copy=True)
    pattern.data = (pattern.data != 0).astype(np.int8)
    pattern.eliminate_zeros()
    return pattern


def _solve(vertices, faces, w, loop, hv, mirror):
    n = len(vertices)
    if mirror is not None:
        perm = sp.csr_matrix((np.ones(n), (np.arange(n), mirror)), shape=(n, n))
        mirrored = perm @ w @ perm.T  # [i, j] = w[m(i), m(j)]
        if (_pattern(mirrored) != _pattern(w)).nnz:
            raise ValueError("mirror: the mirror map is not a mesh automorphism (some edge (i, j) "
                             "has no mirror edge (m(i), m(j)))")
        w = ((w + mirrored) * 0.5).tocsr()
    w.eliminate_zeros()
    deg = np.asarray(w.sum(axis=1)).ravel()

    if mirror is None:
        loop, buv = _square_boundary(vertices, faces, loop, hv)
        rep = np.arange(n)
        flip = np.zeros(n, dtype=bool)
        known_u = np.zeros(n, dtype=bool)
        known_v = np.zeros(n, dtype=bool)
        val = np.zeros((n, 2))
        known_u[loop] = known_v[loop] = True
        val[loop] = buv
    else:
        x = hv[:, 0]
        idx = np.arange(n)
        fixed = mirror == idx
        left = (x < x[mirror]) | ((x == x[mirror]) & (idx < mirror))
        left &= ~fixed
        path, puv = _half_boundary(vertices, faces, loop, hv, mirror, left)
        rep = np.where(left | fixed, idx, mirror)
        flip = ~(left | fixed)
        known_u = fixed.copy()
        known_v = np.zeros(n, dtype=bool)
        val = np.zeros((n, 2))
        val[fixed, 0] = 0.5
        known_u[path] = known_v[path] = True
        val[path] = puv

    # rows/unknowns: representatives (left half + fixed points, or all vertices)
    reps = np.flatnonzero(rep == np.arange(n))
    uv = np.zeros((n, 2))
    for coord, known in ((0, known_u), (1, known_v)):
        # p_j = s_j p_rep(j) + c_j  (u on the mirrored half: 1 - u; v: v)
        s = np.where(flip & (coord == 0), -1.0, 1.0)
        c = np.where(flip & (coord == 0), 1.0, 0.0)
        subst = sp.csr_matrix((s, (np.arange(n), rep)), shape=(n, n))
        # equation i: deg_i p_i - sum_j w_ij (s_j p_rep(j) + c_j) = 0
        a = (sp.diags(deg) - w @ subst).tocsr()
        const = w @ c
        unknown = reps[~known[reps]]
        fixed_cols = reps[known[reps]]
        if len(unknown):
            a_uu = a[unknown][:, unknown].tocsc()
            rhs = const[unknown] - a[unknown][:, fixed_cols] @ val[fixed_cols, coord]
            sol = spla.splu(a_uu, permc_spec="COLAMD").solve(rhs)
        else:
            sol = np.zeros(0)
        p = val[:, coord].copy()
        p[unknown] = sol
        # exact reflection for the other half
        p = np.where(flip, 1.0 - p[rep], p[rep]) if coord == 0 else p[rep]
        uv[:, coord] = p
    return uv


# ----------------------------------------------------------------------------------------------
# plotting
# ----------------------------------------------------------------------------------------------


def plot_uv(uv, faces, path, *, size: int = 768, highlight=None) -> None:
    """Draw the UV triangulation as a PNG (PIL; v up, i.e. row 0 is v = 1).

    ``uv (N, 2)`` in [0, 1]^2, ``faces (F, 3)``. Folded (clockwise) triangles are filled red;
    ``highlight`` optional ``(K,)`` vertex indices drawn as blue dots.
    """
    from PIL import Image, ImageDraw

    uv = np.asarray(uv, dtype=np.float64)
    faces = np.asarray(faces).astype(np.int64)
    margin = 8
    scale = size - 2 * margin - 1
    px = np.c_[margin + uv[:, 0] * scale, margin + (1.0 - uv[:, 1]) * scale]
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    areas = uv_signed_areas(uv, faces)
    sign = 1.0 if areas.sum() >= 0 else -1.0
    for f, area in zip(faces, areas):
        pts = [tuple(px[k]) for k in f]
        if sign * area <= 0:
            draw.polygon(pts, fill=(255, 0, 0))
        draw.line(pts + pts[:1], fill=(40, 40, 40), width=1)
    if highlight is not None:
        for k in np.asarray(highlight).ravel():
            x, y = px[k]
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(0, 0, 255))
    img.save(str(path))
