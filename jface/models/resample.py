"""Resampling a mesh model onto a regular UV grid: the original ``resampleModel.m``.

Grid convention (``resampleModel.m``; BUILD_NOTES.md, Frames and conventions): 1-based grid
vertex ``n = i + res (j - 1)`` has ``U = (i - 1) / (res - 1)``, ``V = 1 - (j - 1) / (res - 1)``;
0-based, vertex ``k`` is texel ``(row, col) = (k // res, k % res)`` with ``U = col / (res - 1)``,
``V = 1 - row / (res - 1)`` (top row = V = 1). A plain C-order reshape of a per-vertex array to
``(res, res, ...)`` gives the texture.

Point location is exact and vectorised (bucket grid over the query points, bounding boxes of the
triangles, barycentric test); it replaces MATLAB's ``triangulation`` + ``pointLocation``. The
original's boundary hack (UV values 0 -> -eps, 1 -> 1 + eps, and 0.5 -> 0.5 + eps for odd ``res``)
is reproduced, so the barycentric coordinates are the original's.

Grid points outside every triangle: MATLAB's ``pointLocation`` returns NaN there, so the original
would write NaN vertices into ``model.mat``. For ``BFM_UV`` the triangles cover the whole square and
this never happens (checked on the real ``BFM_UV.mat``); for other UV layouts the default
``outside="nearest"`` uses the closest point of the mesh's UV (on a boundary edge: barycentrics
clamped to that edge), which keeps the model finite; ``"nan"`` reproduces MATLAB, ``"raise"``
refuses.
"""

from __future__ import annotations

import numpy as np

__all__ = ["resample_model", "grid_uv", "grid_faces", "locate_points"]

_EPS = float(np.finfo(np.float64).eps)  # MATLAB eps = 2.2204e-16


def grid_uv(res: int) -> np.ndarray:
    """``(res**2, 2)`` float64 grid UV: vertex ``k`` -> ``(col / (res-1), 1 - row / (res-1))``."""
    res = _check_res(res)
    k = np.arange(res * res)
    row, col = np.divmod(k, res)
    return np.stack([col / (res - 1), 1.0 - row / (res - 1)], axis=1)


def grid_faces(res: int) -> np.ndarray:
    """``(2 (res-1)**2, 3)`` int32 grid triangles in the original's exact order (``resampleModel.m``).

    For ``i = 1..res-1`` (outer) and ``j = 1..res-1`` (inner), with ``n(i, j) = i + res (j - 1)``:
    ``[n(i,j), n(i+1,j), n(i,j+1)]`` then ``[n(i+1,j+1), n(i,j+1), n(i+1,j)]``; returned 0-based,
    so the first faces for ``res = 112`` are ``[0 1 112]``, ``[113 112 1]``, ``[112 113 224]``.
    """
    res = _check_res(res)
    i, j = np.meshgrid(np.arange(res - 1), np.arange(res - 1), indexing="ij")  # 0-based i-1, j-1
    i, j = i.ravel(), j.ravel()  # i outer, j inner

    def n(a, b):
        return a + res * b

    first = np.stack([n(i, j), n(i + 1, j), n(i, j + 1)], axis=1)
    second = np.stack([n(i + 1, j + 1), n(i, j + 1), n(i + 1, j)], axis=1)
    return np.stack([first, second], axis=1).reshape(-1, 3).astype(np.int32)


def _check_res(res):
    if isinstance(res, bool) or not isinstance(res, (int, np.integer)) or res < 2:
        raise ValueError(f"res: expected an integer >= 2, got {res!r}")
    return int(res)


def _boundary_edges(faces):
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    owner = np.tile(np.arange(len(faces)), 3)
    corner = np.repeat(np.arange(3), len(faces))  # edge starts at corner c, ends at c + 1
    und = np.sort(directed, axis=1)
    keys = und[:, 0] * (int(faces.max()) + 1) + und[:, 1]
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    sel = counts[inverse] == 1
    return directed[sel], owner[sel], corner[sel]


def locate_points(points, uv, faces, *, tol: float = 1e-10, outside: str = "nearest"):
    """Find the UV triangle containing each point and its barycentric coordinates.

    Args:
      points: ``(P, 2)`` query points in UV.
      uv: ``(N, 2)`` vertex UV; ``faces``: ``(F, 3)`` 0-based.
      tol: a point is inside a triangle if all barycentrics are ``>= -tol``; among several
        containing triangles (points on shared edges) the one with the largest minimum barycentric
        is taken (ties: lowest face index); barycentrics are interpolation-equivalent there.
      outside: ``"nearest"``, ``"nan"`` or ``"raise"`` for points in no triangle (module doc).

    Returns:
      ``(face_index (P,) int64, barycentric (P, 3) float64, is_outside (P,) bool)``; with
      ``outside="nan"`` outside points have ``face_index = -1`` and NaN barycentrics.
    """
    if outside not in ("nearest", "nan", "raise"):
        raise ValueError(f"outside: expected 'nearest', 'nan' or 'raise', got {outside!r}")
    points = np.asarray(points, dtype=np.float64)
    uv = np.asarray(uv, dtype=np.float64)
    faces = np.asarray(faces).astype(np.int64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points: expected (P, 2), got {points.shape}")
    if uv.ndim != 2 or uv.shape[1] != 2:
        raise ValueError(f"uv: expected (N, 2), got {uv.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3 or (faces.size and (faces.min() < 0 or
                                                                   faces.max() >= len(uv))):
        raise ValueError(f"faces: expected (F, 3) 0-based indices into uv ({len(uv)} vertices)")
    num_points = len(points)

    # bucket grid over the query points
    lo = points.min(axis=0)
    hi = points.max(axis=0)
    g = max(1, int(np.sqrt(num_points)))
    cell = np.maximum((hi - lo) / g, 1e-300)

    def bin_of(x, axis):
        return np.clip(np.floor((x - lo[axis]) / cell[axis]).astype(np.int64), 0, g - 1)

    pbin = bin_of(points[:, 0], 0) * g + bin_of(points[:, 1], 1)
    order = np.argsort(pbin, kind="stable")
    bin_count = np.bincount(pbin, minlength=g * g)
    bin_start = np.concatenate([[0], np.cumsum(bin_count)[:-1]])

    tri = uv[faces]  # (F, 3, 2)
    pad = tol * np.maximum(1.0, np.abs(tri).max(axis=(1, 2)))
    tmin = tri.min(axis=1) - pad[:, None]
    tmax = tri.max(axis=1) + pad[:, None]
    keep = np.all((tmax >= lo) & (tmin <= hi), axis=1)
    fidx = np.flatnonzero(keep)
    bx0, bx1 = bin_of(tmin[fidx, 0], 0), bin_of(tmax[fidx, 0], 0)
    by0, by1 = bin_of(tmin[fidx, 1], 1), bin_of(tmax[fidx, 1], 1)
    nx, ny = bx1 - bx0 + 1, by1 - by0 + 1
    # (face, bin) pairs
    nb = nx * ny
    pf = np.repeat(fidx, nb)
    off = np.arange(nb.sum()) - np.repeat(np.cumsum(nb) - nb, nb)
    rep_ny = np.repeat(ny, nb)
    pb = (np.repeat(bx0, nb) + off // rep_ny) * g + np.repeat(by0, nb) + off % rep_ny
    # (face, point) candidates
    cnt = bin_count[pb]
    cf = np.repeat(pf, cnt)
    coff = np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    cp = order[np.repeat(bin_start[pb], cnt) + coff]

    p0 = tri[cf, 0]
    e1 = tri[cf, 1] - p0
    e2 = tri[cf, 2] - p0
    d = points[cp] - p0
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    good = det != 0
    det = np.where(good, det, 1.0)
    l1 = (d[:, 0] * e2[:, 1] - d[:, 1] * e2[:, 0]) / det
    l2 = (e1[:, 0] * d[:, 1] - e1[:, 1] * d[:, 0]) / det
    l0 = 1.0 - l1 - l2
    score = np.minimum(np.minimum(l0, l1), l2)
    ok = good & (score >= -tol)
    cf, cp, score = cf[ok], cp[ok], score[ok]
    bary_c = np.stack([l0[ok], l1[ok], l2[ok]], axis=1)
    # best candidate per point: largest min-barycentric, then lowest face index
    sel = np.lexsort((cf, -score, cp))
    first = np.ones(len(sel), dtype=bool)
    first[1:] = cp[sel][1:] != cp[sel][:-1]
    sel = sel[first]

    face_index = np.full(num_points, -1, dtype=np.int64)
    bary = np.full((num_points, 3), np.nan)
    face_index[cp[sel]] = cf[sel]
    bary[cp[sel]] = bary_c[sel]
    is_out = face_index < 0
    if is_out.any():
        if outside == "raise":
            k = int(np.flatnonzero(is_out)[0])
            raise ValueError(
                f"uv: {int(is_out.sum())} grid points lie outside every UV triangle (e.g. point "
                f"{k} at {points[k].tolist()}); pass outside='nearest' or 'nan'"
            )
        if outside == "nearest":
            _nearest_on_boundary(points, uv, faces, is_out, face_index, bary)
    return face_index, bary, is_out


def _nearest_on_boundary(points, uv, faces, is_out, face_index, bary, chunk=4096):
    """Closest point on the UV boundary edges for the points outside the triangulation."""
    edges, owner, corner = _boundary_edges(faces)
    a = uv[edges[:, 0]]
    ab = uv[edges[:, 1]] - a
    ab2 = np.maximum(np.einsum("ei,ei->e", ab, ab), 1e-300)
    out_idx = np.flatnonzero(is_out)
    for s in range(0, len(out_idx), chunk):
        q = points[out_idx[s: s + chunk]]
        t = np.clip(np.einsum("pei,ei->pe", q[:, None, :] - a[None], ab) / ab2, 0.0, 1.0)
        closest = a[None] + t[..., None] * ab[None]
        dist = np.sum((q[:, None, :] - closest) ** 2, axis=-1)
        best = np.argmin(dist, axis=1)
        tb = t[np.arange(len(q)), best]
        rows = out_idx[s: s + chunk]
        face_index[rows] = owner[best]
        b = np.zeros((len(q), 3))
        c0 = corner[best]
        b[np.arange(len(q)), c0] = 1.0 - tb
        b[np.arange(len(q)), (c0 + 1) % 3] = tb
        bary[rows] = b


def resample_model(mean, basis, faces, uv, res: int, *, outside: str = "nearest") -> dict:
    """The original ``resampleModel.m``: barycentric resampling onto the UV grid.

    Args:
      mean: ``(N, 3)`` per-vertex positions (any per-vertex ``(N, C)`` attribute works).
      basis: ``(N, 3, K)`` basis (any ``(N, C, K)``), or None.
      faces: ``(F, 3)`` int, 0-based triangles of the source mesh.
      uv: ``(N, 2)`` per-vertex UV in [0, 1]^2 (u right, v up), e.g. ``BFM_UV``.
      res: grid size.
      outside: treatment of grid points in no UV triangle (module docstring).

    Returns:
      dict with ``mean (res**2, C)``, ``basis (res**2, C, K)`` (or None), ``faces
      (2 (res-1)**2, 3)`` int32 in the original's order (:func:`grid_faces`), ``uv (res**2, 2)``
      the grid UV (:func:`grid_uv`, without the eps shifts), ``face_index (res**2,)`` source
      triangle of each grid vertex, ``barycentric (res**2, 3)``, ``outside (res**2,)`` bool.
      All float64. Grid vertex k is texel ``(k // res, k % res)``.
    """
    res = _check_res(res)
    mean = np.asarray(mean, dtype=np.float64)
    if mean.ndim != 2:
        raise ValueError(f"mean: expected (N, C) per-vertex values, got shape {mean.shape}")
    n = len(mean)
    uv = np.asarray(uv, dtype=np.float64)
    if uv.shape != (n, 2):
        raise ValueError(f"uv: expected ({n}, 2) (one UV per vertex of mean), got {uv.shape}")
    if not np.all(np.isfinite(uv)):
        raise ValueError(
            f"uv: {int(np.sum(~np.isfinite(uv)))} coordinates are NaN or Inf (expected finite UV in [0, 1]^2)")
    if basis is not None:
        basis = np.asarray(basis, dtype=np.float64)
        if basis.ndim != 3 or basis.shape[:2] != mean.shape:
            raise ValueError(f"basis: expected ({n}, {mean.shape[1]}, K), got {basis.shape}")
    faces = np.asarray(faces)
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.size == 0:
        raise ValueError(f"faces: expected a non-empty (F, 3) array, got shape {faces.shape}")
    faces = faces.astype(np.int64)
    if faces.min() < 0 or faces.max() >= n:
        raise ValueError(f"faces: 0-based indices must lie in [0, {n}) (1-based MATLAB 'tl' "
                         "needs '- 1')")

    # the original's boundary hack (resampleModel.m: UV 0 -> -eps, 1 -> 1 + eps)
    uv_shifted = uv.copy()
    for axis in (0, 1):
        col = uv_shifted[:, axis]
        col[col == 0.0] = -_EPS
        col[col == 1.0] = 1.0 + _EPS
    if res % 2:
        col = uv_shifted[:, 0]
        col[col == 0.5] = 0.5 + _EPS

    grid = grid_uv(res)
    face_index, bary, is_out = locate_points(grid, uv_shifted, faces, outside=outside)
    corners = faces[np.maximum(face_index, 0)]  # (P, 3)
    new_mean = np.einsum("pk,pkc->pc", bary, mean[corners])
    new_basis = None
    if basis is not None:
        new_basis = np.einsum("pk,pkcj->pcj", bary, basis[corners])
    return {
        "mean": new_mean,
        "basis": new_basis,
        "faces": grid_faces(res),
        "uv": grid,
        "face_index": face_index,
        "barycentric": bary,
        "outside": is_out,
    }
