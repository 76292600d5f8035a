"""Tests of the synthetic default models (jface.models.defaults), the landmark tables
(jface.models.landmarks) and the painter (jface.models.paint).

Generation happens once per test session into the cache folder that conftest.py sets; the
determinism test regenerates into two temporary folders and compares hashes.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from jface.models import defaults, paint
from jface.models import landmarks as L


@pytest.fixture(scope="module")
def stn():
    return defaults.default_stn_model()


@pytest.fixture(scope="module")
def stn_arrays():
    return defaults.load_stn_arrays()


def _np(x):
    return np.asarray(x)


# ------------------------------------------------------------------------------------------------
# landmarks module


def test_mirror_permutations_are_involutions():
    for perm in (L.AFLW21_MIRROR, L.IBUG68_MIRROR):
        assert np.array_equal(perm[perm], np.arange(len(perm)))
    # refineData's lookup (dagnn_3dmmasstn.m), 1-based
    lookup = [6, 5, 4, 3, 2, 1, 12, 11, 10, 9, 8, 7, 17, 16, 15, 14, 13, 20, 19, 18, 21]
    assert np.array_equal(L.AFLW21_MIRROR + 1, lookup)
    assert L.IBUG68_MIRROR[0] == 16 and L.IBUG68_MIRROR[36] == 45 and L.IBUG68_MIRROR[30] == 30
    assert L.IBUG68_MIRROR[48] == 54 and L.IBUG68_MIRROR[66] == 66
    with pytest.raises(ValueError, match="layout"):
        L.mirror_permutation("dlib5")


def test_aflw21_from_ibug68_commutes_with_mirroring():
    table = L.AFLW21_FROM_IBUG68
    assert len(table) == 21 and all(0 <= i < 68 for group in table for i in group)
    for k, group in enumerate(table):
        # the AFLW point of the mirrored face is the mean of the mirrored iBUG points
        assert sorted(table[L.AFLW21_MIRROR[k]]) == sorted(int(L.IBUG68_MIRROR[i]) for i in group), k
    a, b = L.AFLW21_OUTER_EYE_CORNERS
    assert (table[a], table[b]) == tuple((i,) for i in L.IBUG68_OUTER_EYE_CORNERS)
    assert L.AFLW21_NAMES[a] == "eye_left_outer" and L.AFLW21_NAMES[b] == "eye_right_outer"
    assert [L.AFLW21_NAMES[k] for k in L.AFLW21_EARS] == ["ear_left", "ear_right"]
    assert L.IBUG68_MIRROR[L.IBUG68_OUTER_EYE_CORNERS[0]] == L.IBUG68_OUTER_EYE_CORNERS[1]


def test_landmark_tables_are_defined_once():
    from jface.data import loader, synthetic_deca, synthetic_stn
    from jface.stn import losses

    assert losses.AFLW21_MIRROR is L.AFLW21_MIRROR and synthetic_stn.AFLW21_MIRROR is L.AFLW21_MIRROR
    assert loader.AFLW21_MIRROR is L.AFLW21_MIRROR
    assert synthetic_deca.AFLW21_FROM_IBUG68 is L.AFLW21_FROM_IBUG68


# ------------------------------------------------------------------------------------------------
# default STN model


def test_stn_structure(stn):
    assert stn.grid_hw == (112, 112) and stn.units == "mm"
    n = 112 * 112
    assert stn.mean.shape == (n, 3) and stn.mean.dtype == np.float32
    assert stn.shape_basis.shape[:2] == (n, 3) and stn.num_shape >= 20
    assert stn.expression_basis.shape[:2] == (n, 3) and stn.num_expression >= 10
    assert stn.faces.shape == (2 * 111 * 111, 3)
    # the original resampleModel.m's face order: [1 2 113], [114 113 2]
    assert _np(stn.faces[:2]).tolist() == [[0, 1, 112], [113, 112, 1]]
    assert stn.albedo_mean.shape == (n, 3) and stn.albedo_basis.shape[:2] == (n, 3)
    assert set(stn.landmarks) == {"aflw21", "ibug68"}
    assert np.array_equal(_np(stn.landmarks["aflw21"]), L.DEFAULT_STN_AFLW21)
    assert np.array_equal(_np(stn.landmarks["ibug68"]), L.DEFAULT_STN_IBUG68)


def test_stn_proportions_fill_the_224_image(stn):
    mean = _np(stn.mean)
    # at s = 1, t = (112, 112): 1 mm = 1 px; the face must fit in the 224 image like the BFM
    lm = mean[_np(stn.landmarks["aflw21"])]
    pts = lm[:, :2] + 112.0
    assert pts.min() > 15 and pts.max() < 209
    assert np.abs(mean[:, :2]).max() < 125  # the whole mesh: sides and neck may just leave it
    cheek = np.abs(mean[np.abs(mean[:, 1] - 10.0) < 3.0, 0]).max() * 2
    assert 140 < cheek < 185  # ~150 mm across the cheeks (+ ears)
    assert 55 < lm[11, 0] - lm[6, 0] < 110  # outer eye corners


def test_stn_symmetry(stn):
    mean, mirror = _np(stn.mean), _np(stn.vertex_mirror)
    res = 112
    cols = np.arange(res * res) % res
    assert np.array_equal(mirror % res, res - 1 - cols)
    flipped = mean[mirror] * np.array([-1.0, 1.0, 1.0])
    assert np.abs(flipped - mean).max() < 1e-3
    # identity basis: symmetric or antisymmetric components only, mostly symmetric
    basis = _np(stn.shape_basis)
    kinds = []
    for k in range(basis.shape[-1]):
        b = basis[..., k]
        fb = b[mirror] * np.array([-1.0, 1.0, 1.0])
        scale = np.abs(b).max()
        kinds.append("s" if np.abs(fb - b).max() < 1e-3 * scale else
                     "a" if np.abs(fb + b).max() < 1e-3 * scale else "?")
    assert "?" not in kinds and kinds.count("s") >= 0.8 * len(kinds)
    # landmarks: mirrored landmark = mirror vertex (centre points use column 55 for both)
    for key, perm in (("aflw21", L.AFLW21_MIRROR), ("ibug68", L.IBUG68_MIRROR)):
        idx = _np(stn.landmarks[key])
        pair = perm != np.arange(len(perm))
        assert np.array_equal(mirror[idx[pair]], idx[perm][pair])
        assert np.all(idx[~pair] % res == 55)


def test_stn_basis_scales(stn):
    shape, expr = _np(stn.shape_basis), _np(stn.expression_basis)
    rms = np.sqrt((shape**2).sum(1).mean(0))  # per component, mm
    assert np.all(np.diff(rms[:20]) <= 1e-3 + 0.2 * rms[:19])  # roughly decreasing
    assert 1.0 < rms[0] < 15.0 and np.abs(shape).max() < 40.0
    assert np.all(np.abs(expr).max((0, 1)) > 1.0) and np.abs(expr).max() < 40.0
    alb, alb_basis = _np(stn.albedo_mean), _np(stn.albedo_basis)
    assert alb.min() >= 0.0 and alb.max() <= 1.0
    rng = np.random.default_rng(0)
    sample = alb + np.einsum("nck,k->nc", alb_basis, rng.normal(size=alb_basis.shape[-1]))
    assert -0.1 < sample.min() and sample.max() < 1.1


def test_stn_landmarks_anatomy(stn):
    p = _np(stn.mean)[_np(stn.landmarks["aflw21"])]
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    # image left (subject's right) is -x: brows, eyes, ear, nose, mouth ordered left -> right
    assert np.all(np.diff(x[0:6]) > 0) and np.all(np.diff(x[6:12]) > 0)
    assert x[12] < x[13] < x[14] < x[15] < x[16] and x[17] < x[18] < x[19]
    # vertical order: brows > eyes > nose tip > mouth > chin
    assert y[0:6].min() > y[6:12].max() > y[14] > y[18] > y[20]
    # nose tip is the most forward landmark; ears are far back
    assert np.argmax(z) == 14 and z[12] < 30 and z[16] < 30
    assert abs(x[14]) < 3 and abs(x[18]) < 3 and abs(x[20]) < 3
    ib = _np(stn.mean)[_np(stn.landmarks["ibug68"])]
    assert ib[8, 1] == ib[:, 1].min()  # chin is the lowest contour point
    assert ib[30, 2] == ib[:, 2].max()  # nose tip


def test_stn_uv_fold_free(stn_arrays):
    uv, faces = stn_arrays["source_uv"].astype(np.float64), stn_arrays["source_faces"]
    assert uv.min() >= 0 and uv.max() <= 1
    a, b, c = uv[faces[:, 0]], uv[faces[:, 1]], uv[faces[:, 2]]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    assert np.all(area > 0) or np.all(area < 0)  # one orientation: no folds
    assert abs(np.abs(area).sum() / 2 - 1.0) < 1e-6  # covers the unit square exactly once
    mirror = stn_arrays["source_mirror"]
    assert np.abs(uv[mirror, 0] - (1 - uv[:, 0])).max() < 1e-6


def test_stn_expressions_are_local(stn):
    mean, expr = _np(stn.mean), _np(stn.expression_basis)
    jaw = np.linalg.norm(expr[..., 0], axis=1)
    upper = mean[:, 1] > 10.0  # above the jaw joints
    assert jaw[upper].max() < 0.05 * jaw.max()  # jaw open moves only the lower face
    chin = _np(stn.landmarks["aflw21"])[20]
    assert expr[chin, 1, 0] < -3.0  # the chin goes down


def test_cache_and_determinism(tmp_path, stn_arrays):
    a, b = tmp_path / "a", tmp_path / "b"
    (pa,) = defaults.regenerate(a, which=("stn",))
    (pb,) = defaults.regenerate(b, which=("stn",))

    def digest(path):
        with np.load(path) as z:
            return {k: hashlib.sha256(np.ascontiguousarray(z[k]).tobytes()).hexdigest()
                    for k in z.files}

    assert digest(pa) == digest(pb)
    assert pa.name == "default_stn_v1.npz"
    with np.load(pa) as z:
        assert np.array_equal(z["mean"], stn_arrays["mean"])
    # a corrupt or stale file is rebuilt
    pa.write_bytes(b"not a zip")
    assert np.array_equal(defaults.load_stn_arrays(a)["mean"], stn_arrays["mean"])


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("JFACE_CACHE", str(tmp_path / "c"))
    assert defaults.cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()
    monkeypatch.delenv("JFACE_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert defaults.cache_dir() == tmp_path / ".cache" / "jface"


# ------------------------------------------------------------------------------------------------
# default FLAME-structured head


@pytest.fixture(scope="module")
def flame():
    return defaults.default_flame_model()


@pytest.fixture(scope="module")
def flame_folder(flame):
    return defaults.flame_cache_dir()


def _mirror_map(v):
    from scipy.spatial import cKDTree

    dist, idx = cKDTree(v).query(v * np.array([-1.0, 1.0, 1.0]))
    return dist, idx


def _components(faces, n):
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    f = np.asarray(faces)
    rows = np.concatenate([f[:, 0], f[:, 1], f[:, 2]])
    cols = np.concatenate([f[:, 1], f[:, 2], f[:, 0]])
    return connected_components(sp.coo_matrix((np.ones(len(rows)), (rows, cols)), (n, n)))


def test_flame_structure(flame):
    v = _np(flame.v_template)
    n = v.shape[0]
    assert flame.units == "m" and flame.n_shape == 300 and flame.n_expression == 100
    assert flame.shapedirs.shape == (n, 3, 400) and flame.posedirs.shape == (n, 3, 36)
    assert flame.j_regressor.shape == (5, n) and flame.lbs_weights.shape == (n, 5)
    assert flame.parents == (-1, 0, 1, 1, 1)
    assert np.allclose(_np(flame.j_regressor).sum(1), 1.0, atol=1e-5)
    assert np.allclose(_np(flame.lbs_weights).sum(1), 1.0, atol=1e-5)
    assert 0.13 < np.ptp(v[:, 0]) < 0.2 and 0.25 < np.ptp(v[:, 1]) < 0.36  # metres
    nose = v[np.argmax(v[:, 2])]
    assert np.allclose(nose, [0.0, 0.027, 0.09], atol=0.004)  # where FLAME's nose tip is
    # leading components meaningful (mm scale), the rest zero
    sd = _np(flame.shapedirs)
    norms = np.linalg.norm(sd, axis=(0, 1))
    assert np.all(norms[:20] > 1e-3) and np.all(norms[30:300] == 0)
    assert np.all(norms[300:310] > 1e-3) and np.all(norms[320:] == 0)
    # three connected components: head, left eyeball, right eyeball
    count, labels = _components(flame.faces, n)
    assert count == 3
    sizes = np.bincount(labels)
    w = _np(flame.lbs_weights)
    for comp in np.argsort(sizes)[:2]:  # the eyeballs: bound rigidly to one eye joint
        joint = np.argmax(w[labels == comp].mean(0))
        assert joint in (3, 4) and np.allclose(w[labels == comp, joint], 1.0)
    # faces wound counter-clockwise from outside: normals point away from the head centre
    f = _np(flame.faces)
    head = f[labels[f[:, 0]] == np.argmax(sizes)]
    tri = v[head]
    nrm = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    centre = v[labels == np.argmax(sizes)].mean(0)
    assert np.mean(np.sum(nrm * (tri.mean(1) - centre), 1) > 0) > 0.97


def test_flame_symmetry(flame):
    v = _np(flame.v_template).astype(np.float64)
    dist, mirror = _mirror_map(v)
    assert dist.max() < 1e-6
    for k in range(5):  # leading identity components are symmetric or antisymmetric
        b = _np(flame.shapedirs)[..., k].astype(np.float64)
        fb = b[mirror] * np.array([-1.0, 1.0, 1.0])
        scale = np.abs(b).max()
        assert min(np.abs(fb - b).max(), np.abs(fb + b).max()) < 1e-3 * scale


def _lmk(flame, vertices, yaw=0):
    from jface.models.defaults.flame_default import lmk_points

    static, contour = lmk_points(flame, vertices, yaw)
    return np.concatenate([contour, static], 0)  # DECA's landmarks2d order


def test_flame_landmarks_anatomy(flame):
    v = _np(flame.v_template).astype(np.float64)
    p = _lmk(flame, v)
    x, y, z = p.T
    assert x[36] < x[39] < 0 < x[42] < x[45]  # eye corners (image left = subject's right)
    assert abs(y[36] - y[45]) < 1e-6 and y[36] > y[30] > y[48]  # eyes above nose above mouth
    assert np.argmax(z) == 30  # nose tip is the most forward point
    assert x[48] < 0 < x[54] and abs(x[48] + x[54]) < 1e-6
    assert y[8] == y[:17].min()  # chin lowest on the contour
    assert np.all(np.diff(x[17:22]) > 0) and np.all(np.diff(x[22:27]) > 0)
    flipped = p[L.IBUG68_MIRROR] * np.array([-1.0, 1.0, 1.0])
    assert np.abs(flipped - p).max() < 1e-6  # the embedding is mirror-symmetric


def test_flame_skinning_jaw_and_eyes(flame):
    from jface.models.defaults.cli import lbs_numpy

    v0, j0 = lbs_numpy(flame)
    assert np.allclose(v0, _np(flame.v_template), atol=1e-7)
    pose = np.zeros(15)
    pose[6] = 0.3  # jaw opens (rotation about +x)
    v, _ = lbs_numpy(flame, pose15=pose)
    moved = np.linalg.norm(v - v0, axis=1) > 5e-4  # > 0.5 mm
    lm = _lmk(flame, v0)
    mouth_y = lm[48, 1]
    assert moved.sum() > 50
    # only the lower face: below the mouth line in the middle, below the nose tip towards the
    # jaw joints (the mandible's ramus), nothing near the eyes
    central = np.abs(v0[:, 0]) < 0.02
    assert np.all(v0[moved & central, 1] < mouth_y + 0.004)
    assert np.all(v0[moved, 1] < lm[30, 1] + 0.005)
    assert np.all(v0[moved, 2] > j0[2, 2] - 0.03)  # nothing far behind the jaw joints
    assert not np.any(moved & (np.abs(v0[:, 0]) > 0.08))  # the ears stay
    chin = _lmk(flame, v)[8]
    assert chin[1] < lm[8, 1] - 0.01  # the chin goes down by > 1 cm
    # eyes: rotating eye joint 3 moves exactly its eyeball, rigidly about the joint
    pose = np.zeros(15)
    pose[10] = 0.4
    v, _ = lbs_numpy(flame, pose15=pose)
    w = _np(flame.lbs_weights)
    moved = np.linalg.norm(v - v0, axis=1) > 1e-7
    eye = w[:, 3] > 0.5
    assert not np.any(moved & ~eye) and moved.sum() >= eye.sum() - 2  # 2 lie on the axis
    d0 = np.linalg.norm(v0[eye] - j0[3], axis=1)
    assert np.allclose(np.linalg.norm(v[eye] - j0[3], axis=1), d0, atol=1e-7)
    assert j0[3, 0] > 0 > j0[4, 0]  # joint 3 = subject's left eye (+x)


def test_flame_forward_matches_numpy_lbs(flame):
    """The default head through jface.flame.forward (DECA's conventions) = the numpy LBS."""
    flame_layer = pytest.importorskip("jface.flame")
    from jface.models.defaults.cli import lbs_numpy

    rng = np.random.default_rng(3)
    shape, expr = rng.normal(size=10), rng.normal(size=8)
    pose = np.concatenate([[0.0, 0.3, 0.0], [0.0, 0.0, 0.0], [0.2, 0.0, 0.0], np.zeros(6)])
    out = flame_layer.forward(flame, shape, expr, pose)
    ref, _ = lbs_numpy(flame, shape, expr, pose)
    assert np.abs(_np(out["vertices"]) - ref).max() < 2e-6
    # yaw 0.3 rad = 17.2 degrees -> DECA picks contour row 17 (FLAME._find_dynamic_lmk_idx_and_bcoords)
    expected = _lmk(flame, ref, yaw=17)
    assert np.abs(_np(out["landmarks2d"]) - expected).max() < 2e-6


def _vertex_normals(v, f):
    n = np.zeros_like(v)
    tri = v[f]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    for k in range(3):
        np.add.at(n, f[:, k], fn)
    return n / (np.linalg.norm(n, axis=1, keepdims=True) + 1e-12)


def test_flame_contour_table_follows_yaw(flame):
    from jface.models.defaults.cli import _rodrigues

    v = _np(flame.v_template).astype(np.float64)
    f = _np(flame.faces)
    normals = _vertex_normals(v, f)
    fidx, bary = _np(flame.dynamic_lmk_faces_idx), _np(flame.dynamic_lmk_bary_coords)
    assert fidx.shape == (79, 17) and bary.shape == (79, 17, 3)
    assert np.allclose(bary.sum(-1), 1.0, atol=1e-6)

    def row_points(row):
        p = np.einsum("lk,lkc->lc", bary[row], v[f[fidx[row]]])
        n = np.einsum("lk,lkc->lc", bary[row], normals[f[fidx[row]]])
        return p, n

    full_v = v[f[_np(flame.full_lmk_faces_idx)]]
    full = np.einsum("lk,lkc->lc", _np(flame.full_lmk_bary_coords), full_v)
    p0, _ = row_points(0)
    assert np.allclose(p0, full[:17], atol=1e-9)  # row 0 = frontal jaw line
    prev = np.abs(p0[:, 0])
    for yaw in range(1, 40):
        rot = _rodrigues([0.0, np.deg2rad(yaw), 0.0])  # positive yaw: nose towards +x
        p, n = row_points(yaw)
        nr = n @ rot.T
        away = np.arange(9, 17)
        assert np.all(nr[:, 2] > -0.15)  # contour points are visible (or on the silhouette)
        # away side: on the silhouette or still the frontal jaw point; moving inwards with yaw
        moved = np.any(np.abs(p[away] - p0[away]) > 1e-9, axis=1)
        assert np.all(np.abs(nr[away][moved, 2]) < 0.3)
        assert np.all(np.abs(p[away, 0]) <= prev[away] + 1e-9)
        prev = np.abs(p[:, 0])
        # the side turning towards the camera keeps the frontal jaw line
        assert np.allclose(p[:9], p0[:9])
        # negative yaw (row 39 - a) is the mirror image
        pm, _ = row_points(39 + yaw)
        assert np.abs(pm[L.IBUG68_MIRROR[:17]] * np.array([-1.0, 1.0, 1.0]) - p).max() < 1e-6
    inward = np.abs(p0[9:16, 0]) - np.abs(row_points(39)[0][9:16, 0])
    assert np.all(inward >= 0) and inward.mean() > 0.005  # > 5 mm towards the nose at 39 deg


def test_flame_uv_layout(flame):
    from jface.models.defaults.flame_default import rasterize_uv

    uv, uvf = _np(flame.uv_coords).astype(np.float64), _np(flame.uv_faces)
    assert uvf.shape == flame.faces.shape
    assert uv.min() >= 0.0 and uv.max() <= 1.0
    a, b, c = uv[uvf[:, 0]], uv[uvf[:, 1]], uv[uvf[:, 2]]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    assert np.all(area > 0)  # fold-free, one orientation
    # bijective: no texel centre lies strictly inside two UV triangles
    size = 256
    hits = np.zeros((size, size), np.int64)
    tri = uv[uvf]
    px, py = tri[..., 0] * size - 0.5, (1.0 - tri[..., 1]) * size - 0.5
    for k in range(len(tri)):
        xs, ys = px[k], py[k]
        c0, c1 = int(np.ceil(xs.min())), int(np.floor(xs.max()))
        r0, r1 = int(np.ceil(ys.min())), int(np.floor(ys.max()))
        if c1 < c0 or r1 < r0:
            continue
        cc, rr = np.meshgrid(np.arange(c0, c1 + 1), np.arange(r0, r1 + 1))
        d = (xs[1] - xs[0]) * (ys[2] - ys[0]) - (xs[2] - xs[0]) * (ys[1] - ys[0])
        l1 = ((cc - xs[0]) * (ys[2] - ys[0]) - (xs[2] - xs[0]) * (rr - ys[0])) / d
        l2 = ((xs[1] - xs[0]) * (rr - ys[0]) - (cc - xs[0]) * (ys[1] - ys[0])) / d
        ok = (l1 > 1e-9) & (l2 > 1e-9) & (1 - l1 - l2 > 1e-9)
        np.add.at(hits, (rr[ok], cc[ok]), 1)
    assert hits.max() == 1 and (hits > 0).mean() > 0.5
    face, _ = rasterize_uv(uv, uvf, 64)
    assert (face >= 0).mean() > 0.5


def test_flame_albedo_and_mask(flame):
    mean, basis = _np(flame.albedo_mean), _np(flame.albedo_basis)
    assert mean.shape == (256, 256, 3) and basis.shape[:3] == (256, 256, 3)
    assert basis.shape[3] >= 20
    assert mean.min() >= 0.0 and mean.max() <= 1.0
    coeffs = np.random.default_rng(1).normal(size=basis.shape[3])
    sample = mean + np.einsum("hwck,k->hwc", basis, coeffs)
    assert -0.15 < sample.min() and sample.max() < 1.15
    # row 0 is v = 1 (top of the head: skin); the eyeball charts sit at the bottom (white sclera)
    assert np.all(np.abs(mean[2, 128] - [0.80, 0.60, 0.49]) < 0.08)
    assert (mean[200:250].min(-1) > 0.85).any()
    mask = _np(flame.uv_face_eye_mask)
    assert mask.shape == (256, 256) and mask.min() >= 0 and mask.max() <= 1
    assert ((mask > 0.05) & (mask < 0.95)).any()  # soft edges
    # the nose tip's texel is inside the face mask
    nose_face = _np(flame.static_lmk_faces_idx)[30 - 17]
    uvp = _np(flame.uv_coords)[_np(flame.uv_faces)[nose_face]].mean(0)
    assert mask[int((1 - uvp[1]) * 256), int(uvp[0] * 256)] > 0.9


def test_flame_files_load_through_real_loaders(flame_folder, flame):
    from jface.files.obj import load_obj
    from jface.models.loaders import load_flame, load_landmark_embedding

    folder = flame_folder
    emb = load_landmark_embedding(folder / "landmark_embedding.npy")
    expected = {"static_lmk_faces_idx": ((51,), np.int64),
                "static_lmk_bary_coords": ((51, 3), np.float64),
                "dynamic_lmk_faces_idx": ((79, 17), np.int64),
                "dynamic_lmk_bary_coords": ((79, 17, 3), np.float32),
                "full_lmk_faces_idx": ((1, 68), np.int64),
                "full_lmk_bary_coords": ((1, 68, 3), np.float32)}
    for key, (shape, dtype) in expected.items():
        assert emb[key].shape == shape and emb[key].dtype == dtype, key
    model = load_flame(folder / "generic_model.pkl", landmark_embedding=emb)
    assert np.array_equal(_np(model.v_template), _np(flame.v_template))
    obj = load_obj(folder / "head_template.obj")
    assert obj["vertices"].shape == flame.v_template.shape
    assert np.array_equal(obj["uv_faces"], _np(flame.uv_faces))
    with np.load(folder / "FLAME_albedo_from_BFM.npz") as z:
        assert z["MU"].shape == (512 * 512 * 3,) and z["PC"].shape[0] == 512 * 512 * 3
        # BGR, row 0 = v = 1: DECA's nearest 512 -> 256 and BGR -> RGB give the model's albedo
        mu = z["MU"].reshape(512, 512, 3)[::2, ::2, ::-1]
    assert np.array_equal(mu, _np(flame.albedo_mean))
    raw = (folder / "generic_model.pkl").read_bytes()
    assert raw[:2] == b"\x80\x02"  # protocol 2, like FLAME's Python-2 pickle


def test_flame_embedding_layout_matches_real_file(realdata, flame_folder):
    from jface.models.loaders import load_landmark_embedding

    real = load_landmark_embedding(realdata / "deca" / "landmark_embedding.npy")
    ours = load_landmark_embedding(flame_folder / "landmark_embedding.npy")
    for key in real:
        assert real[key].shape == ours[key].shape and real[key].dtype == ours[key].dtype, key


def test_flame_determinism(tmp_path, flame_folder):
    (folder,) = defaults.regenerate(tmp_path / "again", which=("flame",))
    for name in ("generic_model.pkl", "landmark_embedding.npy", "head_template.obj",
                 "uv_face_eye_mask.png", "FLAME_albedo_from_BFM.npz", "manifest.json"):
        a = hashlib.sha256((flame_folder / name).read_bytes()).hexdigest()
        b = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        assert a == b, name


# ------------------------------------------------------------------------------------------------
# CLI and painter


def test_cli_registration_and_regenerate(tmp_path, capsys):
    from jface.models.__main__ import build_parser, main

    _, runners = build_parser(["show", "default-stn", "-o", str(tmp_path)])
    assert "show" in runners
    assert main(["regenerate", "--only", "stn", "--dir", str(tmp_path)]) == 0
    assert (tmp_path / "default_stn_v1.npz").exists()
    assert "regenerated in" in capsys.readouterr().out


def test_painter_draws_a_triangle():
    v = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    img, _ = paint.paint_mesh(v, np.array([[0, 1, 2]]), extent=(0.5, 0.5, 0.6), size=32)
    assert img.shape == (32, 32, 3) and (img < 255).any() and (img == 255).any()
    # lower-left half is covered (y up in the model = up in the picture)
    assert (img[28, 4] < 255).any() and (img[4, 28] == 255).all()


def test_splat_keeps_the_nearest_sample_in_numpy_and_jax():
    import jax
    import jax.numpy as jnp

    # three samples on pixel (1, 2), the middle one nearest; one on (0, 0); two outside the image
    cols = np.array([2.2, 1.6, 2.4, 0.3, -0.6, 3.0])
    rows = np.array([0.9, 1.2, 1.4, -0.2, 1.0, 4.5])
    depth = np.array([1.0, 5.0, 3.0, 0.0, 9.0, 9.0])
    colours = np.arange(18.0).reshape(6, 3)
    background = np.full((4, 4, 3), -1.0)
    want = background.copy()
    want[1, 2] = colours[1]
    want[0, 0] = colours[3]
    out = paint.splat(cols, rows, depth, colours, background)
    assert out.dtype == np.float64 and np.array_equal(out, want)
    jitted = jax.jit(paint.splat)(*(jnp.asarray(a, jnp.float32) for a in (cols, rows, depth, colours, background)))
    assert np.array_equal(np.asarray(jitted), want.astype(np.float32))
    # numpy: of equal depths, the later sample wins
    tie = paint.splat(np.array([0.0, 0.0]), np.array([0.0, 0.0]), np.array([2.0, 2.0]),
                      np.array([[1.0], [2.0]]), np.zeros((1, 1, 1)))
    assert tie[0, 0, 0] == 2.0


def test_sampling_grids():
    import jax.numpy as jnp

    bary = paint.barycentric_grid(4)
    assert bary.shape == (15, 3) and np.allclose(bary.sum(1), 1.0) and bary.min() >= 0
    assert {tuple(b) for b in bary} >= {(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)}
    values = np.arange(12.0).reshape(6, 2)  # a 2 x 3 grid of 2 channels
    dense = np.asarray(paint.supersample_grid(jnp.asarray(values), (2, 3), 2))
    assert dense.shape == (3 * 5, 2)
    grid = dense.reshape(3, 5, 2)
    assert np.array_equal(grid[::2, ::2], values.reshape(2, 3, 2))  # the grid points themselves
    assert np.allclose(grid[1, 1], values.reshape(2, 3, 2)[:, :2].mean((0, 1)))  # a cell centre
