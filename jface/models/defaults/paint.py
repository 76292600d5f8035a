"""A tiny numpy painter for looking at the default models (no dependency on ``jface.render``).

Triangles are drawn as z-buffered point splats: every triangle is sampled at barycentric points
dense enough to cover its pixels, and the nearest sample (largest z, camera looking down -z) wins
each pixel. Shading is Lambertian with a fixed light from the viewer's upper left. Orthographic
projection; images are uint8 ``(H, W, 3)`` with row 0 at the top (y up in the model frame).
"""

from __future__ import annotations

import numpy as np

__all__ = ["rotation_y", "rotation_x", "paint_mesh", "paint_points", "paint_uv", "save_png", "tile"]


def rotation_y(deg):
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def rotation_x(deg):
    a = np.deg2rad(deg)
    return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


def _frame(points, extent, size):
    """Model (x, y) -> pixel (col, row) with ``extent`` = (cx, cy, half_size)."""
    cx, cy, half = extent
    scale = (size - 1) / (2.0 * half)
    col = (points[..., 0] - cx) * scale + (size - 1) / 2.0
    row = (cy - points[..., 1]) * scale + (size - 1) / 2.0
    return col, row, scale


def paint_mesh(vertices, faces, *, colors=None, rotation=None, extent=None, size=384,
               background=255):
    """Shaded picture ``(size, size, 3)`` uint8 of a mesh and the extent used.

    ``vertices (N, 3)``, ``faces (F, 3)``, ``colors (N, 3)`` in [0, 1] or None (grey);
    ``rotation (3, 3)`` applied first; ``extent`` = (centre x, centre y, half size) in model units.
    """
    v = np.asarray(vertices, np.float64)
    if rotation is not None:
        v = v @ np.asarray(rotation).T
    f = np.asarray(faces)
    if extent is None:
        lo, hi = v[:, :2].min(0), v[:, :2].max(0)
        extent = ((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, 0.55 * float(np.max(hi - lo)))
    col, row, scale = _frame(v, extent, size)
    tri = v[f]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-12
    light = np.array([-0.35, 0.45, 0.82])
    light /= np.linalg.norm(light)
    n = n * np.where(n[:, 2:3] < 0, -1.0, 1.0)  # two-sided: either winding convention
    shade = 0.25 + 0.75 * np.clip(n @ light, 0.0, 1.0)
    # samples per edge from each triangle's longest projected edge (grouped by count)
    c2 = np.stack([col[f], row[f]], -1)
    edge = np.max(np.linalg.norm(c2 - np.roll(c2, 1, axis=1), axis=-1), axis=1)
    ks = np.clip(np.ceil(edge * 1.4), 1, 24).astype(int)
    pcs, prs, pzs, cvs, shs = [], [], [], [], []
    base = np.array([0.82, 0.80, 0.78])
    for k in np.unique(ks):
        idx = np.nonzero(ks == k)[0]
        fk = f[idx]
        i, j = np.meshgrid(np.arange(k + 1), np.arange(k + 1), indexing="ij")
        keep = i + j <= k
        b1, b2 = i[keep] / k, j[keep] / k
        bary = np.stack([1 - b1 - b2, b1, b2], -1)  # (S, 3)
        pcs.append(np.einsum("sk,fk->fs", bary, col[fk]).ravel())
        prs.append(np.einsum("sk,fk->fs", bary, row[fk]).ravel())
        pzs.append(np.einsum("sk,fk->fs", bary, v[fk][..., 2]).ravel())
        if colors is not None:
            ck = np.asarray(colors, np.float64)[fk]
            cvs.append(np.einsum("sk,fkc->fsc", bary, ck).reshape(-1, 3))
        else:
            cvs.append(np.broadcast_to(base, (len(idx) * len(bary), 3)))
        shs.append(np.repeat(shade[idx], len(bary)))
    pc, pr, pz = np.concatenate(pcs), np.concatenate(prs), np.concatenate(pzs)
    cv, sh = np.concatenate(cvs), np.concatenate(shs)
    ci, ri = np.rint(pc).astype(np.int64), np.rint(pr).astype(np.int64)
    ok = (ci >= 0) & (ci < size) & (ri >= 0) & (ri < size)
    ci, ri, pz, cv, sh = ci[ok], ri[ok], pz[ok], cv[ok], sh[ok]
    pix = ri * size + ci
    order = np.lexsort((-pz, pix))  # per pixel, nearest (largest z) first
    pix, first = np.unique(pix[order], return_index=True)
    sel = order[first]
    img = np.full((size * size, 3), float(background))
    img[pix] = 255.0 * np.clip(cv[sel] * sh[sel, None], 0, 1)
    return img.reshape(size, size, 3).astype(np.uint8), extent


def paint_points(img, points, extent, *, color=(220, 30, 30), radius=2, labels=False):
    """Draw model-frame points ``(L, 2|3)`` (already rotated) onto ``img`` in place."""
    size = img.shape[0]
    col, row, _ = _frame(np.asarray(points, np.float64), extent, size)
    for idx, (c, r) in enumerate(zip(col, row)):
        c, r = int(round(c)), int(round(r))
        img[max(r - radius, 0):r + radius + 1, max(c - radius, 0):c + radius + 1] = color
    return img


def paint_uv(uv, faces, *, size=512, mask=None):
    """Wireframe-ish picture of a UV layout (u right, v up; row 0 = v = 1)."""
    img = np.full((size, size, 3), 255, np.uint8)
    if mask is not None:
        m = np.asarray(mask, np.float64)
        from PIL import Image

        m = np.asarray(Image.fromarray((255 * m).astype(np.uint8)).resize((size, size)))
        img[..., 1] = 255 - (m * 0.3).astype(np.uint8)
        img[..., 2] = 255 - (m * 0.3).astype(np.uint8)
    uv = np.asarray(uv, np.float64)
    f = np.asarray(faces)
    t = np.linspace(0, 1, 12)
    for a, b in ((0, 1), (1, 2), (2, 0)):
        tt = t[None, :, None]
        p = uv[f[:, a]][:, None, :] * (1 - tt) + uv[f[:, b]][:, None, :] * tt
        c = np.clip(np.rint(p[..., 0] * (size - 1)), 0, size - 1).astype(int)
        r = np.clip(np.rint((1 - p[..., 1]) * (size - 1)), 0, size - 1).astype(int)
        img[r, c] = (40, 60, 160)
    return img


def tile(images, cols):
    """Grid of equally sized images."""
    h, w = images[0].shape[:2]
    rows = (len(images) + cols - 1) // cols
    out = np.full((rows * h, cols * w, 3), 255, np.uint8)
    for k, im in enumerate(images):
        r, c = divmod(k, cols)
        out[r * h:(r + 1) * h, c * w:(c + 1) * w] = im
    return out


def save_png(path, img):
    from PIL import Image

    Image.fromarray(np.asarray(img, np.uint8)).save(path)
