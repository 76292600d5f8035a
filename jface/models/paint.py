"""The one painter of generated images: z-buffered nearest-sample splats, in numpy or under JAX.

A surface is drawn as dense samples -- barycentric points of every triangle
(:func:`barycentric_grid`) or a bilinearly supersampled UV grid (:func:`supersample_grid`) --
each rounded to its nearest pixel; per pixel the sample nearest the camera (the largest depth: +z
points towards the camera) wins (:func:`splat`). There is no rasteriser and no gradient: this makes
labelled training images and pictures of models; :mod:`jface.render` is the differentiable
rasteriser.

Its users: the 3DMM-STN training images of :mod:`jface.data.synthetic_stn` (JAX, under ``jit`` and
``vmap``), :func:`jface.stn.toy.render_image` (numpy) and :func:`paint_mesh` here, which draws the
pictures of ``python -m jface.models show`` (Lambert shading with a fixed light from the viewer's
upper left, orthographic, uint8 ``(H, W, 3)`` images with row 0 at the top and y up in the model
frame).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

__all__ = [
    "splat",
    "barycentric_grid",
    "supersample_grid",
    "rotation_y",
    "rotation_x",
    "paint_mesh",
    "paint_points",
    "paint_uv",
    "save_png",
    "tile",
]


def splat(cols, rows, depth, colours, background):
    """Write each sample's colour to its nearest pixel where it is the nearest sample there.

    ``cols (S,)``, ``rows (S,)``: the samples' 0-based pixel coordinates (column right, row 0 at
    the top; pixel (r, c) covers [r - 0.5, r + 0.5) x [c - 0.5, c + 0.5), rounding half to even);
    samples outside the image are dropped. ``depth (S,)``: larger = nearer the camera.
    ``colours (S, C)``; ``background (H, W, C)``, whose dtype the result takes. Returns
    ``(H, W, C)``: the background with every pixel that a sample reached set to the colour of its
    nearest sample.

    numpy inputs are painted in numpy (float64 stays float64) and among samples of equal depth the
    later one wins. Any jax array among them (or a tracer, under ``jit`` / ``vmap``) paints with
    JAX scatters, where the order of equal-depth writes is XLA's.
    """
    if all(isinstance(a, np.ndarray) for a in (cols, rows, depth, colours, background)):
        return _splat_numpy(cols, rows, depth, colours, background)
    height, width, channels = background.shape
    cols = jnp.round(cols).astype(jnp.int32)
    rows = jnp.round(rows).astype(jnp.int32)
    inside = (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
    pixel = jnp.where(inside, rows * width + cols, height * width)  # a dump slot for the outside
    depth = jnp.where(inside, depth, -jnp.inf)
    zbuffer = jnp.full((height * width + 1,), -jnp.inf, depth.dtype).at[pixel].max(depth)
    winner = inside & (depth >= zbuffer[pixel])
    pixel = jnp.where(winner, pixel, height * width)
    flat = jnp.concatenate([background.reshape(-1, channels), jnp.zeros((1, channels), background.dtype)])
    flat = flat.at[pixel].set(colours.astype(background.dtype))
    return flat[:-1].reshape(height, width, channels)


def _splat_numpy(cols, rows, depth, colours, background):
    height, width, channels = background.shape
    cols = np.round(cols).astype(np.int64)
    rows = np.round(rows).astype(np.int64)
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    pixel = (rows * width + cols)[inside]
    depth, colours = depth[inside], colours[inside]
    order = np.lexsort((depth, pixel))  # by pixel, then depth ascending: the last per pixel is nearest
    pixel, colours = pixel[order], colours[order]
    last = np.r_[pixel[1:] != pixel[:-1], True]
    image = background.reshape(-1, channels).copy()
    image[pixel[last]] = colours[last]
    return image.reshape(height, width, channels)


def barycentric_grid(steps: int) -> np.ndarray:
    """``(S, 3)`` barycentric weights (a, b, steps - a - b) / steps of the triangle's points on a
    regular grid, a, b = 0..steps with a + b <= steps (S = (steps + 1)(steps + 2) / 2), in the
    order of a then b. Sample spacing is edge / steps."""
    a, b = np.meshgrid(np.arange(steps + 1), np.arange(steps + 1), indexing="ij")
    keep = a + b <= steps
    return np.stack([a[keep], b[keep], steps - a[keep] - b[keep]], -1) / steps


def supersample_grid(values, grid_hw, factor: int):
    """Bilinear supersampling of per-vertex ``(N, C)`` values laid out on a UV grid (vertex k <->
    texel (k // W', k % W')): ``((H' - 1) factor + 1) ((W' - 1) factor + 1), C)``, grid points
    included (JAX)."""
    height, width = grid_hw
    grid = values.reshape(height, width, -1)
    rows = jnp.linspace(0.0, height - 1.0, (height - 1) * factor + 1)
    cols = jnp.linspace(0.0, width - 1.0, (width - 1) * factor + 1)
    r0 = jnp.clip(jnp.floor(rows).astype(jnp.int32), 0, height - 2)
    c0 = jnp.clip(jnp.floor(cols).astype(jnp.int32), 0, width - 2)
    fr = (rows - r0)[:, None, None]
    fc = (cols - c0)[None, :, None]
    top = grid[r0][:, c0] * (1 - fc) + grid[r0][:, c0 + 1] * fc
    bottom = grid[r0 + 1][:, c0] * (1 - fc) + grid[r0 + 1][:, c0 + 1] * fc
    return (top * (1 - fr) + bottom * fr).reshape(-1, values.shape[-1])


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
        bary = barycentric_grid(int(k))[:, [2, 0, 1]]  # (S, 3)
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
    colours = 255.0 * np.clip(np.concatenate(cvs) * np.concatenate(shs)[:, None], 0, 1)
    # reversed, so that of equal-depth samples the first triangle's wins (splat keeps the later)
    img = splat(pc[::-1], pr[::-1], pz[::-1], colours[::-1], np.full((size, size, 3), float(background)))
    return img.astype(np.uint8), extent


def paint_points(img, points, extent, *, color=(220, 30, 30), radius=2, labels=False):
    """Draw model-frame points ``(L, 2|3)`` (already rotated) onto ``img`` in place."""
    size = img.shape[0]
    col, row, _ = _frame(np.asarray(points, np.float64), extent, size)
    for c, r in zip(col, row):
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
