"""Brute-force numpy (float64) references for the renderer tests, written from DECA's renderer
(``decalib/utils/renderer.py``, ``decalib/utils/rasterizer/standard_rasterize_cuda_kernel.cu``)."""

from __future__ import annotations

import numpy as np


def pixel_coords(vertices, hw):
    h, w = hw
    v = np.asarray(vertices, np.float64)
    return (v[:, 0] + 1) * w / 2 - 0.5, (v[:, 1] + 1) * h / 2 - 0.5, v[:, 2]


def brute_rasterize(vertices, faces, hw, znear=-10.0):
    """Dense over all pixels x all faces. Returns face ids, barycentrics, depth and the
    second-best depth gap (to exclude near-ties from comparisons)."""
    h, w = hw
    col, row, z = pixel_coords(vertices, hw)
    faces = np.asarray(faces)
    pc, pr = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    pc, pr = pc[..., None], pr[..., None]
    c, r, zz = col[faces], row[faces], z[faces]  # (F,3)
    e1c, e1r = c[:, 1] - c[:, 0], r[:, 1] - r[:, 0]
    e2c, e2r = c[:, 2] - c[:, 0], r[:, 2] - r[:, 0]
    area = e1c * e2r - e1r * e2c
    ok = area != 0
    safe = np.where(ok, area, 1.0)
    dc, dr = pc - c[:, 0], pr - r[:, 0]
    w1 = (dc * e2r - dr * e2c) / safe
    w2 = (e1c * dr - e1r * dc) / safe
    w0 = 1 - w1 - w2
    depth = zz[:, 0] + w1 * (zz[:, 1] - zz[:, 0]) + w2 * (zz[:, 2] - zz[:, 0])
    inside = ok & (w1 >= 0) & (w2 >= 0) & (w0 > 0) & (depth >= znear)
    key = np.where(inside, depth, np.inf)
    idx = np.argmin(key, axis=-1) if faces.shape[0] else np.zeros((h, w), int)
    best = np.take_along_axis(key, idx[..., None], -1)[..., 0] if faces.shape[0] else np.full((h, w), np.inf)
    fid = np.where(np.isfinite(best), idx, -1)
    if faces.shape[0] > 1:
        part = np.sort(key, axis=-1)[..., :2]
        with np.errstate(invalid="ignore"):
            gap = np.where(np.isinf(part[..., 1]), np.inf, part[..., 1] - part[..., 0])
    else:
        gap = np.full((h, w), np.inf)
    # how close the pixel centre is to any face's edge (in barycentric units)
    if faces.shape[0]:
        wmin = np.minimum(np.minimum(np.abs(w0), np.abs(w1)), np.abs(w2))
        margin = np.where(ok, wmin, np.inf).min(-1)
    else:
        margin = np.full((h, w), np.inf)
    sel = np.maximum(fid, 0)
    bary = np.stack([np.take_along_axis(a, sel[..., None], -1)[..., 0] for a in (w0, w1, w2)], -1)
    bary = np.where(fid[..., None] >= 0, bary, 0.0)
    return fid, bary, np.where(fid >= 0, best, 0.0), gap, margin


SH_CONSTANTS = np.array([
    1 / np.sqrt(4 * np.pi),
    (2 * np.pi / 3) * np.sqrt(3 / (4 * np.pi)),
    (2 * np.pi / 3) * np.sqrt(3 / (4 * np.pi)),
    (2 * np.pi / 3) * np.sqrt(3 / (4 * np.pi)),
    (np.pi / 4) * 3 * np.sqrt(5 / (12 * np.pi)),
    (np.pi / 4) * 3 * np.sqrt(5 / (12 * np.pi)),
    (np.pi / 4) * 3 * np.sqrt(5 / (12 * np.pi)),
    (np.pi / 4) * (3 / 2) * np.sqrt(5 / (12 * np.pi)),
    (np.pi / 4) * (1 / 2) * np.sqrt(5 / (4 * np.pi)),
])


def sh_shading(normals, sh):
    n = np.asarray(normals, np.float64)
    x, y, z = n[..., 0], n[..., 1], n[..., 2]
    basis = np.stack([np.ones_like(x), x, y, z, x * y, x * z, y * z, x**2 - y**2, 3 * z**2 - 1], -1)
    return np.einsum("...k,k,kc->...c", basis, SH_CONSTANTS, np.asarray(sh, np.float64))


def _seg_d2(px, py, ax, ay, bx, by):
    ex, ey = bx - ax, by - ay
    l2 = ex * ex + ey * ey
    t = np.clip(((px - ax) * ex + (py - ay) * ey) / np.where(l2 > 0, l2, 1), 0, 1)
    dx, dy = px - ax - t * ex, py - ay - t * ey
    return dx * dx + dy * dy


def brute_soft(vertices, faces, hw, colors=None, sigma=1e-4, gamma=1e-4, dist_eps=1e-4, eps=1e-3,
               znear=-10.0, zfar=10.0, background=None):
    """SoftRas (euclidean, prod, softmax) dense over all pixels x all faces, float64."""
    h, w = hw
    v = np.asarray(vertices, np.float64)
    faces = np.asarray(faces)
    cols, rows = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    px = ((2 * cols + 1) / w - 1)[..., None]
    py = ((2 * rows + 1) / h - 1)[..., None]
    x, y, z = v[faces, 0], v[faces, 1], v[faces, 2]  # (F, 3)
    area = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (y[:, 1] - y[:, 0]) * (x[:, 2] - x[:, 0])
    ok = area != 0
    a = np.where(ok, area, 1)
    dx, dy = px - x[:, 0], py - y[:, 0]
    w1 = (dx * (y[:, 2] - y[:, 0]) - dy * (x[:, 2] - x[:, 0])) / a
    w2 = ((x[:, 1] - x[:, 0]) * dy - (y[:, 1] - y[:, 0]) * dx) / a
    w0 = 1 - w1 - w2
    inside = (w0 > 0) & (w1 > 0) & (w2 > 0)
    d2 = np.minimum(np.minimum(_seg_d2(px, py, x[:, 0], y[:, 0], x[:, 1], y[:, 1]),
                               _seg_d2(px, py, x[:, 1], y[:, 1], x[:, 2], y[:, 2])),
                    _seg_d2(px, py, x[:, 2], y[:, 2], x[:, 0], y[:, 0]))
    thr = sigma * np.log(1 / dist_eps - 1)
    live = ok & (inside | (d2 < thr))
    with np.errstate(over="ignore"):
        D = 1 / (1 + np.exp(-np.where(inside, d2, -d2) / sigma))
    alpha = 1 - np.prod(np.where(live, 1 - D, 1.0), axis=-1)
    if colors is None:
        return alpha
    colors = np.asarray(colors, np.float64)
    cc = colors[faces] if colors.ndim == 2 else colors  # (F, 3, D)
    wc = np.clip(np.stack([w0, w1, w2], -1), 0, 1)
    wc = wc / wc.sum(-1, keepdims=True)
    zp = np.einsum("hwfk,fk->hwf", wc, z)
    zn = (zfar - zp) / (zfar - znear)
    rng_ok = live & (zp >= znear) & (zp <= zfar)
    m = np.maximum(np.max(np.where(rng_ok, zn, -np.inf), -1, keepdims=True), eps)
    wt = np.where(rng_ok, D * np.exp((zn - m) / gamma), 0)
    bgw = np.exp((eps - m[..., 0]) / gamma)
    col = np.einsum("hwfk,fkd->hwfd", wc, cc)
    bg = np.zeros(cc.shape[-1]) if background is None else np.asarray(background, np.float64)
    rgb = (np.einsum("hwf,hwfd->hwd", wt, col) + bgw[..., None] * bg) / (wt.sum(-1) + bgw)[..., None]
    return np.concatenate([rgb, alpha[..., None]], -1)


def test_reference_sanity():
    """The references themselves: barycentrics sum to 1 on covered pixels, SoftRas alpha in [0, 1]."""
    vertices = np.array([[-0.9, -0.9, 0.0], [0.9, -0.8, 0.0], [0.0, 0.9, 0.0]])
    fid, bary, _, _, _ = brute_rasterize(vertices, [[0, 1, 2]], (8, 8))
    assert 10 < np.sum(fid == 0) < 64
    np.testing.assert_allclose(bary.sum(-1)[fid == 0], 1.0)
    alpha = brute_soft(vertices, np.array([[0, 1, 2]]), (8, 8), sigma=1e-2)
    assert np.all((alpha >= 0) & (alpha <= 1)) and alpha[fid == 0].min() >= 0.5
