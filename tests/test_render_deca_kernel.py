"""Acceptance (issue 6): jface's rasterizer and renderer against DECA's own on the same mesh and camera.

DECA's standard CUDA kernel (``decalib/utils/rasterizer/standard_rasterize_cuda_kernel.cu``) is
transcribed (one pass per triangle over its pixel bounding box, dot-product barycentrics,
inside = w2 >= 0, w1 >= 0, w0 > 0, depth key the harmonic 1 / sum(w / z) of z + 10 scaled by W/2,
nearest wins; degenerate triangles paint their
box with w = (1, 0, 0)) and ``SRenderY.forward`` on top of it. The meshes: DECA's real
``head_template.obj`` (when ../shared is present) and the procedural FLAME-sized head, posed with
DECA's camera. Face ids must agree on >= 99 % of covered pixels (the degenerate-triangle artefact
and exact depth ties aside), barycentrics to 1e-9 and shaded images to 1e-9 where they agree.
"""

from __future__ import annotations

import numpy as np
import pytest

from jface.deca.render import render
from jface.flame.heads import deca_camera, procedural_head
from jface.render import rasterize

HW = (112, 112)


def deca_standard_rasterize(trans_verts, faces, hw):
    """DECA's standard kernel in float64 numpy. Returns (face id, w (H, W, 3), painted-by-degenerate mask,
    exact-tie mask); ties keep the first face (DECA's are racy: such pixels are excluded)."""
    h, w = hw
    x = (trans_verts[:, 0] + 1.0) * w / 2.0 - 0.5
    y = (trans_verts[:, 1] + 1.0) * h / 2.0 - 0.5
    z = (trans_verts[:, 2] + 10.0) * w / 2.0
    zbuf = np.full((h, w), np.inf)
    fid = np.full((h, w), -1)
    bary = np.zeros((h, w, 3))
    degenerate = np.zeros((h, w), bool)
    tie = np.zeros((h, w), bool)
    for f, (a, b, c) in enumerate(faces):
        xs, ys = x[[a, b, c]], y[[a, b, c]]
        x0, x1 = max(int(np.ceil(xs.min())), 0), min(int(np.floor(xs.max())), w - 1)
        y0, y1 = max(int(np.ceil(ys.min())), 0), min(int(np.floor(ys.max())), h - 1)
        if x0 > x1 or y0 > y1:
            continue
        px, py = np.meshgrid(np.arange(x0, x1 + 1, dtype=float), np.arange(y0, y1 + 1, dtype=float))
        v0 = (xs[2] - xs[0], ys[2] - ys[0])
        v1 = (xs[1] - xs[0], ys[1] - ys[0])
        v2 = (px - xs[0], py - ys[0])
        d00 = v0[0] * v0[0] + v0[1] * v0[1]
        d01 = v0[0] * v1[0] + v0[1] * v1[1]
        d11 = v1[0] * v1[0] + v1[1] * v1[1]
        d02 = v0[0] * v2[0] + v0[1] * v2[1]
        d12 = v1[0] * v2[0] + v1[1] * v2[1]
        den = d00 * d11 - d01 * d01
        inv = 0.0 if den == 0 else 1.0 / den
        u = (d11 * d02 - d01 * d12) * inv
        v = (d00 * d12 - d01 * d02) * inv
        w0, w1, w2 = 1.0 - u - v, v, u
        inside = (w2 >= 0) & (w1 >= 0) & (w0 > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            zp = 1.0 / (w0 / z[a] + w1 / z[b] + w2 / z[c])
        sub = (slice(y0, y1 + 1), slice(x0, x1 + 1))
        cur = zbuf[sub]
        tie[sub] |= inside & (zp == cur)
        win = inside & (zp < cur)
        zbuf[sub] = np.where(win, zp, cur)
        fid[sub] = np.where(win, f, fid[sub])
        bary[sub] = np.where(win[..., None], np.stack([w0, w1, w2], -1), bary[sub])
        if den == 0:
            degenerate[sub] |= inside
    return fid, bary, degenerate, tie


def deca_render_images(fid, bary, world, faces, uv_coords, uv_faces, albedo, sh):
    """SRenderY.forward (decalib/utils/renderer.py) on given fragments: albedo ⊙ SH(normals) ⊙ alpha, float64."""
    from jface.lighting import SH_CONSTANTS

    fn = np.cross(world[faces[:, 1]] - world[faces[:, 0]], world[faces[:, 2]] - world[faces[:, 0]])
    vn = np.zeros_like(world)
    for k in range(3):
        np.add.at(vn, faces[:, k], fn)
    vn = vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-6)
    covered = fid >= 0
    sel = np.maximum(fid, 0)
    uvn = np.stack([2 * uv_coords[:, 0] - 1, 1 - 2 * uv_coords[:, 1]], -1)
    grid = np.einsum("hwk,hwkd->hwd", bary, uvn[uv_faces[sel]]) * covered[..., None]
    normals = np.einsum("hwk,hwkd->hwd", bary, vn[faces[sel]]) * covered[..., None]
    # grid_sample, bilinear, zeros, align_corners=False
    hu, wu = albedo.shape[:2]
    col = ((grid[..., 0] + 1) * wu - 1) / 2
    row = ((grid[..., 1] + 1) * hu - 1) / 2
    c0, r0 = np.floor(col).astype(int), np.floor(row).astype(int)
    sampled = np.zeros(grid.shape[:2] + (3,))
    for dr in (0, 1):
        for dc in (0, 1):
            r, c = r0 + dr, c0 + dc
            wgt = (1 - np.abs(row - r)) * (1 - np.abs(col - c))
            ok = (r >= 0) & (r < hu) & (c >= 0) & (c < wu)
            sampled += np.where(ok, wgt, 0)[..., None] * albedo[np.clip(r, 0, hu - 1), np.clip(c, 0, wu - 1)]
    x, y, z = normals[..., 0], normals[..., 1], normals[..., 2]
    basis = np.stack([np.ones_like(x), x, y, z, x * y, x * z, y * z, x * x - y * y, 3 * z * z - 1], -1) * SH_CONSTANTS
    shading = basis @ sh
    return sampled * shading * covered[..., None]


def _meshes(realdata_dir):
    head = procedural_head(n_rings=40, n_lon=60, num_vertices=0)
    out = [("procedural", head["vertices"].astype(np.float64), head["faces"], head["uv_coords"], head["uv_faces"])]
    template = realdata_dir / "deca" / "head_template.obj" if realdata_dir is not None else None  # real DECA file
    if template is not None and template.exists():
        from jface.files.obj import load_obj

        obj = load_obj(template)
        out.append(("head_template.obj", obj.vertices, obj.faces, obj.uv_coords, obj.uv_faces))
    return out


def _pose(vertices, yaw):
    c, s = np.cos(yaw), np.sin(yaw)
    rot = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    centre = 0.5 * (vertices.min(0) + vertices.max(0))
    world = (vertices - centre) @ rot.T
    scale = 1.7 / np.ptp(world[:, 1])
    return world, deca_camera(world, scale)


@pytest.fixture(scope="module")
def shared_dir():
    from conftest import REALDATA

    return REALDATA if REALDATA.is_dir() else None


def test_face_ids_barycentrics_and_images_agree_with_deca(shared_dir):
    rng = np.random.default_rng(0)
    albedo = rng.uniform(0.2, 0.9, (32, 32, 3))
    sh = np.zeros((9, 3))
    sh[0], sh[1:4] = 2.0, rng.normal(size=(3, 3)) * 0.3
    seen = []
    for name, vertices, faces, uv_coords, uv_faces in _meshes(shared_dir):
        for yaw in (0.0, 0.6):
            world, ndc = _pose(vertices, yaw)
            ref_id, ref_bary, degenerate, tie = deca_standard_rasterize(ndc, faces, HW)
            frags = rasterize(ndc, faces, HW)
            fid = np.asarray(frags.face_index)
            judged = ((ref_id >= 0) | (fid >= 0)) & ~degenerate & ~tie
            agree = judged & (fid == ref_id)
            assert agree.sum() >= 0.99 * judged.sum(), (name, yaw, agree.sum() / judged.sum())
            assert judged.sum() > 0.2 * HW[0] * HW[1]
            np.testing.assert_allclose(np.asarray(frags.bary)[agree], ref_bary[agree], atol=1e-9)
            out = render(world, ndc, faces, uv_coords, uv_faces, albedo, sh, image_hw=HW)
            ref_img = deca_render_images(ref_id, ref_bary, world, faces, uv_coords, uv_faces, albedo, sh)
            close = np.all(np.abs(np.asarray(out["images"]) - ref_img) < 1e-9, axis=-1)
            assert close[agree].mean() >= 0.99, (name, yaw, close[agree].mean())
            seen.append((name, yaw, float(agree.sum() / judged.sum()), int(degenerate.sum())))
    assert len(seen) >= 2
