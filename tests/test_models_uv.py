"""UV flattening (jface.models.tutte, the layout of BFM_UV.mat) and grid resampling (jface.models.resample,
the original resampleModel.m)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io as sio
from PIL import Image
from scipy.spatial import Delaunay

from jface.models.resample import grid_faces, grid_uv, locate_points, resample_model
from jface.models.tutte import (
    boundary_loop,
    mirror_map,
    mirror_map_from_uv,
    plot_uv,
    tutte_embedding,
    uv_signed_areas,
)

# ------------------------------------------------------------------------------------------------
# test meshes (made-up geometry)
# ------------------------------------------------------------------------------------------------


def face_disc(cols=15, rows=17, middle_quads=False):
    """Mirror-symmetric bumpy face-like disc (a square grid warped to a disc, with a 'nose').

    Odd ``cols``: a vertex column on x = 0 (the symmetry line is a path of edges). Even ``cols``
    with ``middle_quads``: the middle cells are split in 4 around a centre vertex, so edges
    (a, m(a)) straddle x = 0 and the boundary meets the symmetry line at edge mid-points (as in
    the real BFM, which has 14 straddling triangles). Faces wind counter-clockwise seen from +z.
    """
    s, t = np.meshgrid(np.linspace(-1, 1, cols), np.linspace(-1, 1, rows))
    x = s * np.sqrt(1 - t**2 / 2)
    y = 1.3 * t * np.sqrt(1 - s**2 / 2)
    z = 0.5 * np.exp(-(x**2 + y**2)) + 0.4 * np.exp(-(x**2 + (y + 0.1) ** 2) / 0.04) - 0.2 * y**2
    verts = [np.c_[x.ravel(), y.ravel(), z.ravel()]]
    faces = []
    mid = (cols - 2) / 2
    nv = rows * cols
    for r in range(rows - 1):
        for c in range(cols - 1):
            a, b, cc, d = r * cols + c, r * cols + c + 1, (r + 1) * cols + c + 1, (r + 1) * cols + c
            if middle_quads and c == mid:
                verts.append(verts[0][[a, b, cc, d]].mean(0, keepdims=True))
                k = nv
                nv += 1
                faces += [[a, b, k], [b, cc, k], [cc, d, k], [d, a, k]]
            elif c < mid:
                faces += [[a, b, cc], [a, cc, d]]
            else:
                faces += [[a, b, d], [b, cc, d]]
    return np.concatenate(verts), np.asarray(faces)


def delaunay_disc(seed=0, n_inner=150, n_boundary=48):
    """Random Delaunay disc (not symmetric), faces counter-clockwise from +z."""
    rng = np.random.default_rng(seed)
    ang = np.linspace(0, 2 * np.pi, n_boundary, endpoint=False) + 0.1
    ring = 0.93 * np.c_[np.cos(ang + np.pi / n_boundary), np.sin(ang + np.pi / n_boundary)]
    r = 0.85 * np.sqrt(rng.uniform(size=n_inner))
    th = rng.uniform(0, 2 * np.pi, n_inner)
    pts = np.r_[np.c_[np.cos(ang), np.sin(ang)], ring, np.c_[r * np.cos(th), r * np.sin(th)]]
    tri = Delaunay(pts).simplices
    p = pts[tri]
    e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    neg = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0] < 0
    tri[neg] = tri[neg][:, ::-1]
    z = 0.3 * np.sin(3 * pts[:, 0]) * np.cos(2 * pts[:, 1])
    return np.c_[pts, z], tri


def _on_square_edge(uv):
    return np.any((uv == 0.0) | (uv == 1.0), axis=1)


def _corner_count(uv):
    return int(np.sum(np.all((uv == 0.0) | (uv == 1.0), axis=1)))


def _assert_square_embedding(uv, faces):
    assert uv.dtype == np.float64
    assert np.all(np.isfinite(uv)) and uv.min() >= 0.0 and uv.max() <= 1.0
    assert np.all(uv_signed_areas(uv, faces) > 0), "fold-over or degenerate triangle"
    loop = boundary_loop(faces)
    assert np.all(_on_square_edge(uv[loop]))
    interior = np.setdiff1d(np.arange(len(uv)), loop)
    assert not np.any(_on_square_edge(uv[interior]))
    corners = {tuple(c) for c in uv[loop][np.all((uv[loop] == 0) | (uv[loop] == 1), axis=1)]}
    assert corners == {(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)}


# ------------------------------------------------------------------------------------------------
# tutte_embedding
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cols,middle_quads", [(15, False), (16, True)])
def test_tutte_symmetric_face_disc(cols, middle_quads):
    verts, faces = face_disc(cols=cols, middle_quads=middle_quads)
    uv = tutte_embedding(verts, faces)
    _assert_square_embedding(uv, faces)
    mirror = mirror_map(verts)
    fixed = mirror == np.arange(len(verts))
    # exact mirror symmetry and symmetry line on u = 0.5
    np.testing.assert_allclose(uv[mirror, 0], 1.0 - uv[:, 0], rtol=0, atol=1e-15)
    np.testing.assert_array_equal(uv[mirror, 1], uv[:, 1])
    assert np.all(uv[fixed, 0] == 0.5)
    assert fixed.sum() == (17 if cols % 2 else 16)
    # x <= 0 half on [0, 0.5], u toward +x, v toward +y
    assert np.all(uv[verts[:, 0] < 0, 0] < 0.5) and np.all(uv[verts[:, 0] > 0, 0] > 0.5)
    assert np.corrcoef(uv[:, 0], verts[:, 0])[0, 1] > 0.95
    assert np.corrcoef(uv[:, 1], verts[:, 1])[0, 1] > 0.95
    # the boundary meets the symmetry line at (0.5, 0) and (0.5, 1)
    if cols % 2:
        on_line = uv[fixed]
        assert {(0.5, 0.0), (0.5, 1.0)} <= {tuple(p) for p in on_line}


def test_tutte_mirror_argument_and_weights():
    verts, faces = face_disc(cols=11, rows=9)
    mirror = mirror_map(verts)
    uv_default = tutte_embedding(verts, faces)
    uv_given = tutte_embedding(verts, faces, mirror=mirror)
    np.testing.assert_array_equal(uv_default, uv_given)
    for kind in ("mean_value", "uniform"):
        uv = tutte_embedding(verts, faces, weights=kind)
        _assert_square_embedding(uv, faces)
        np.testing.assert_allclose(uv[mirror, 0], 1.0 - uv[:, 0], atol=1e-15)
    # symmetric=False on a symmetric mesh is still (numerically) symmetric: the problem is
    uv_full = tutte_embedding(verts, faces, symmetric=False)
    _assert_square_embedding(uv_full, faces)
    np.testing.assert_allclose(uv_full, uv_default, atol=1e-9)


def test_tutte_cotangent_system_is_solved():
    """Interior vertices are the weighted average of their neighbours, with the cotangent weights
    (cot a + cot b), negative ones clamped to 1e-6 x the mean positive weight (module docstring)."""
    import scipy.sparse as sp

    from jface.models.prepare import laplace_beltrami

    verts, faces = delaunay_disc(seed=1)
    w = (-laplace_beltrami(verts, faces)).tocoo()
    off = w.row != w.col
    rows, cols, vals = w.row[off], w.col[off], w.data[off]
    assert np.any(vals < 0)  # this bumpy mesh needs the clamp
    vals = np.maximum(vals, 1e-6 * vals[vals > 0].mean())
    wc = sp.csr_matrix((vals, (rows, cols)), shape=w.shape)
    lap = sp.diags(np.asarray(wc.sum(1)).ravel()) - wc
    uv = tutte_embedding(verts, faces, symmetric=False, fallback=False)
    _assert_square_embedding(uv, faces)
    interior = np.setdiff1d(np.arange(len(verts)), boundary_loop(faces))
    residual = (lap @ uv)[interior]
    assert np.abs(residual).max() < 1e-12


def test_tutte_delaunay_disc_and_png(tmp_path):
    verts, faces = delaunay_disc()
    uv = tutte_embedding(verts, faces, symmetric=False)
    _assert_square_embedding(uv, faces)
    assert np.corrcoef(uv[:, 0], verts[:, 0])[0, 1] > 0.9
    assert np.corrcoef(uv[:, 1], verts[:, 1])[0, 1] > 0.9
    # corners at the boundary vertices extreme in the diagonal directions
    loop = boundary_loop(faces)
    for (sx, sy), target in zip(((-1, -1), (1, -1), (1, 1), (-1, 1)),
                                ((0, 0), (1, 0), (1, 1), (0, 1))):
        k = loop[np.argmax(sx * verts[loop, 0] + sy * verts[loop, 1])]
        assert tuple(uv[k]) == target
    path = tmp_path / "uv.png"
    plot_uv(uv, faces, path, size=256, highlight=loop)
    with Image.open(path) as img:
        img.load()
        assert img.size == (256, 256) and img.mode == "RGB"
        assert np.asarray(img).min() < 100  # something was drawn


def test_tutte_ear_corner_is_relieved():
    """Corner candidates next to an 'ear' vertex would flatten its triangle; a corner moves."""
    verts, faces = face_disc(cols=9, rows=11)  # grid corners are ears (one triangle each)
    uv = tutte_embedding(verts, faces, fallback=False)
    _assert_square_embedding(uv, faces)


def test_tutte_asymmetric_geometry_with_given_mirror():
    """Real scans are only nearly symmetric: an explicit mirror map still gives an exactly
    symmetric, fold-free embedding (weights symmetrised, left-half boundary reflected)."""
    verts, faces = face_disc(cols=13, rows=11)
    mirror = mirror_map(verts)
    noisy = verts + 0.01 * np.random.default_rng(0).normal(size=verts.shape)
    with pytest.raises(ValueError, match="not mirror-symmetric"):
        tutte_embedding(noisy, faces)
    uv = tutte_embedding(noisy, faces, mirror=mirror)
    _assert_square_embedding(uv, faces)
    np.testing.assert_allclose(uv[mirror, 0], 1 - uv[:, 0], atol=1e-15)
    assert np.all(uv[mirror == np.arange(len(verts)), 0] == 0.5)
    np.testing.assert_array_equal(mirror_map_from_uv(uv), mirror)
    with pytest.raises(ValueError, match="uv"):
        mirror_map_from_uv(uv + [0.01, 0.0])


def test_tutte_errors():
    verts, faces = face_disc(cols=9, rows=7)
    asym = verts.copy()
    asym[:, 0] += 0.05 * asym[:, 1] ** 2
    with pytest.raises(ValueError, match="not mirror-symmetric"):
        tutte_embedding(asym, faces)
    tutte_embedding(asym, faces, symmetric=False)  # fine without symmetry
    with pytest.raises(ValueError, match="faces"):
        tutte_embedding(verts, faces + 1)
    with pytest.raises(ValueError, match="vertices"):
        tutte_embedding(verts[:, :2], faces)
    with pytest.raises(ValueError, match="not used by any face"):
        tutte_embedding(np.r_[verts, [[5.0, 5.0, 5.0]]], faces, symmetric=False)
    # two disjoint discs: two boundary loops
    two = np.r_[verts, verts + [10.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match="several loops"):
        tutte_embedding(two, np.r_[faces, faces + len(verts)], symmetric=False)
    with pytest.raises(ValueError, match="involution"):
        tutte_embedding(verts, faces, mirror=np.zeros(len(verts), dtype=int))
    with pytest.raises(ValueError, match="weights"):
        tutte_embedding(verts, faces, weights="harmonic")
    flat = verts.copy()
    flat[faces[0]] = flat[faces[0][0]]  # a zero-area triangle
    with pytest.raises(ValueError, match="degenerate"):
        tutte_embedding(flat, faces, symmetric=False, weights="mean_value")


# ------------------------------------------------------------------------------------------------
# real BFM_UV.mat structure and the same structure for our embedding
# ------------------------------------------------------------------------------------------------


def _load_tl_and_uv(realdata):
    mm = sio.loadmat(realdata / "synthetic_bfm" / "synth_01_MorphableModel.mat",
                     variable_names=["tl", "shapeMU"])
    faces = mm["tl"].astype(np.int64) - 1
    mean = mm["shapeMU"].reshape(-1, 3).astype(np.float64)
    uv = sio.loadmat(realdata / "3dmmasstn" / "BFM_UV.mat")["UV"]
    return faces, mean, uv


def _structure(uv, faces):
    loop = boundary_loop(faces)
    return {
        "boundary": len(loop),
        "on_edges": bool(np.all(_on_square_edge(uv[loop]))),
        "corners": _corner_count(uv[loop]),
        "sides": [int(np.sum(uv[:, a] == c)) for a, c in ((0, 0.0), (0, 1.0), (1, 0.0), (1, 1.0))],
        "line": int(np.sum(uv[:, 0] == 0.5)),
        "folds": int(np.sum(uv_signed_areas(uv, faces) <= 0)),
    }


def test_bfm_uv_structure_and_our_embedding(realdata):
    faces, synth_mean, bfm_uv = _load_tl_and_uv(realdata)
    ref = _structure(bfm_uv, faces)
    assert ref == {"boundary": 512, "on_edges": True, "corners": 4, "sides": [173, 173, 65, 105],
                   "line": 220, "folds": 0}
    # our embedding of a symmetric test mesh has the same structural properties
    verts, tfaces = face_disc(cols=15)
    ours = _structure(tutte_embedding(verts, tfaces), tfaces)
    assert ours["on_edges"] and ours["corners"] == 4 and ours["folds"] == 0
    assert ours["line"] == 17 and ours["sides"][0] == ours["sides"][1]
    # and of the synthetic BFM stand-in (exact BFM topology, mirror-symmetric made-up geometry,
    # 14 triangles straddling the symmetry line): same structure as BFM_UV up to the corners
    uv = tutte_embedding(synth_mean, faces)
    got = _structure(uv, faces)
    assert got["boundary"] == 512 and got["on_edges"] and got["corners"] == 4
    assert got["line"] == 220 and got["folds"] == 0
    assert got["sides"][0] == got["sides"][1] and sum(got["sides"]) == 512 + 4
    # the mirror pairing of our embedding is BFM_UV's (both are the geometric mirror here)
    mirror = mirror_map_from_uv(bfm_uv)
    assert np.sum(mirror == np.arange(len(mirror))) == 220
    np.testing.assert_array_equal(mirror, mirror_map(synth_mean))
    np.testing.assert_allclose(uv[mirror, 0], 1 - uv[:, 0], atol=1e-15)
    # qualitative agreement with BFM_UV (the stand-in geometry is a lift of BFM_UV)
    assert np.mean(np.abs(uv - bfm_uv)) < 0.05


# ------------------------------------------------------------------------------------------------
# resample_model (resampleModel.m)
# ------------------------------------------------------------------------------------------------


def test_grid_layout_and_faces():
    res = 112
    faces = grid_faces(res)
    assert faces.shape == (24642, 3) and faces.dtype == np.int32
    np.testing.assert_array_equal(faces[:3], [[0, 1, 112], [113, 112, 1], [112, 113, 224]])
    # literal transcription of the original double loop (1-based sub2ind, i outer, j inner)
    small = 5
    ref = []
    for i in range(1, small):
        for j in range(1, small):
            n = lambda a, b: a + small * (b - 1)  # noqa: E731
            ref.append([n(i, j), n(i + 1, j), n(i, j + 1)])
            ref.append([n(i + 1, j + 1), n(i, j + 1), n(i + 1, j)])
    np.testing.assert_array_equal(grid_faces(small), np.asarray(ref) - 1)
    uv = grid_uv(res)
    assert uv.shape == (res * res, 2)
    np.testing.assert_array_equal(uv[0], [0.0, 1.0])  # top-left texel: U = 0, V = 1
    np.testing.assert_array_equal(uv[res - 1], [1.0, 1.0])
    np.testing.assert_array_equal(uv[-1], [1.0, 0.0])
    np.testing.assert_allclose(uv.reshape(res, res, 2)[5, 7], [7 / 111, 1 - 5 / 111])
    with pytest.raises(ValueError, match="res"):
        grid_faces(1)


def _planar_mesh(seed=0):
    rng = np.random.default_rng(seed)
    edge = np.linspace(0, 1, 7)[1:-1]
    border = np.r_[[[0, 0], [1, 0], [1, 1], [0, 1]],
                   np.c_[edge, 0 * edge], np.c_[edge, 0 * edge + 1],
                   np.c_[0 * edge, edge], np.c_[0 * edge + 1, edge]]
    pts = np.r_[border, rng.uniform(0.02, 0.98, size=(80, 2))]
    return pts, Delaunay(pts).simplices


@pytest.mark.parametrize("res", [8, 9])
def test_resample_planar_identity(res):
    """uv = xy: the resampled mean is the grid itself; linear attributes are reproduced."""
    pts, faces = _planar_mesh()
    mean = np.c_[pts, 2 * pts[:, 0] - 3 * pts[:, 1] + 0.5]
    basis = np.stack([np.c_[pts, pts[:, :1]] * k for k in (1.0, -2.0)], axis=-1)
    out = resample_model(mean, basis, faces, pts, res)
    grid = grid_uv(res)
    assert out["mean"].shape == (res * res, 3) and out["basis"].shape == (res * res, 3, 2)
    assert not out["outside"].any()
    np.testing.assert_allclose(out["mean"][:, :2], grid, atol=1e-15)
    np.testing.assert_allclose(out["mean"][:, 2], 2 * grid[:, 0] - 3 * grid[:, 1] + 0.5, atol=1e-14)
    np.testing.assert_allclose(out["basis"][:, :, 1], -2 * np.c_[grid, grid[:, :1]], atol=1e-14)
    np.testing.assert_array_equal(out["faces"], grid_faces(res))
    np.testing.assert_allclose(out["barycentric"].sum(1), 1.0, atol=1e-15)


def _brute_force_locate(points, uv, faces):
    """Independent reference: loop over points, test every triangle (float64)."""
    idx = np.full(len(points), -1)
    bary = np.full((len(points), 3), np.nan)
    for p, q in enumerate(points):
        best = -np.inf
        for f, (a, b, c) in enumerate(faces):
            m = np.array([[uv[a, 0] - uv[c, 0], uv[b, 0] - uv[c, 0]],
                          [uv[a, 1] - uv[c, 1], uv[b, 1] - uv[c, 1]]])
            l1, l2 = np.linalg.solve(m, q - uv[c])
            lam = np.array([l1, l2, 1 - l1 - l2])
            if lam.min() >= -1e-10 and lam.min() > best:
                best, idx[p], bary[p] = lam.min(), f, lam
    return idx, bary


def test_resample_matches_brute_force_on_curved_uv():
    verts, faces = face_disc(cols=9, rows=9)
    uv = tutte_embedding(verts, faces)
    res = 7  # odd: the 0.5 column is shifted by eps, as in the original
    out = resample_model(verts, None, faces, uv, res)
    shifted = uv.copy()
    shifted[shifted == 0.0] = -np.finfo(float).eps
    shifted[shifted == 1.0] = 1 + np.finfo(float).eps
    shifted[shifted[:, 0] == 0.5, 0] = 0.5 + np.finfo(float).eps
    ref_idx, ref_bary = _brute_force_locate(grid_uv(res), shifted, faces)
    assert np.all(ref_idx >= 0)
    ref_mean = np.einsum("pk,pkc->pc", ref_bary, verts[faces[ref_idx]])
    np.testing.assert_allclose(out["mean"], ref_mean, atol=1e-14)
    assert out["basis"] is None


def test_resample_outside_points():
    pts, faces = _planar_mesh()
    uv = 0.1 + 0.8 * pts  # covers only [0.1, 0.9]^2
    mean = np.c_[pts, np.zeros(len(pts))]
    out = resample_model(mean, None, faces, uv, 6)
    assert out["outside"].sum() == 20  # the grid's outer ring
    # nearest point of the UV domain: clamp the grid to [0.1, 0.9], map back to xy
    expected = (np.clip(grid_uv(6), 0.1, 0.9) - 0.1) / 0.8
    np.testing.assert_allclose(out["mean"][:, :2], expected, atol=1e-12)
    nan = resample_model(mean, None, faces, uv, 6, outside="nan")
    assert np.isnan(nan["mean"][nan["outside"]]).all()
    assert np.isfinite(nan["mean"][~nan["outside"]]).all()
    with pytest.raises(ValueError, match="outside every UV triangle"):
        resample_model(mean, None, faces, uv, 6, outside="raise")
    with pytest.raises(ValueError, match="uv"):
        resample_model(mean, None, faces, uv[:-1], 6)
    with pytest.raises(ValueError, match="basis"):
        resample_model(mean, np.zeros((len(pts), 2, 1)), faces, uv, 6)
    with pytest.raises(ValueError, match="faces"):
        resample_model(mean, None, faces + 1000, uv, 6)
    with pytest.raises(ValueError, match="outside"):
        locate_points(grid_uv(3), uv, faces, outside="clamp")


def test_resample_real_bfm_uv(realdata):
    faces, mean, uv = _load_tl_and_uv(realdata)
    out = resample_model(mean, None, faces, uv, 112)
    assert out["mean"].shape == (12544, 3) and out["faces"].shape == (24642, 3)
    assert not out["outside"].any()  # BFM_UV covers the square (after the eps hack)
    assert out["barycentric"].min() > -1e-12
    # the synthetic geometry is mirror-symmetric and BFM_UV is exactly symmetric, so the
    # resampled mesh is symmetric under the texture's left-right flip (BUILD_NOTES.md, Frames and conventions)
    grid = out["mean"].reshape(112, 112, 3)
    np.testing.assert_allclose(grid[:, ::-1, 0], -grid[:, :, 0], atol=1e-6 * np.abs(grid).max())
    np.testing.assert_allclose(grid[:, ::-1, 1:], grid[:, :, 1:], atol=1e-6 * np.abs(grid).max())
