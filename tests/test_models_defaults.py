"""Tests of the synthetic default models (jface.models.defaults) and jface.landmarks.

Generation happens once per test session into the cache folder that conftest.py sets; the
determinism test regenerates into two temporary folders and compares hashes.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from jface import landmarks as L
from jface.models import defaults


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
    # spec 3dmm_stn.md §6 lookup, 1-based
    lookup = [6, 5, 4, 3, 2, 1, 12, 11, 10, 9, 8, 7, 17, 16, 15, 14, 13, 20, 19, 18, 21]
    assert np.array_equal(L.AFLW21_MIRROR + 1, lookup)
    assert L.IBUG68_MIRROR[0] == 16 and L.IBUG68_MIRROR[36] == 45 and L.IBUG68_MIRROR[30] == 30
    assert L.IBUG68_MIRROR[48] == 54 and L.IBUG68_MIRROR[66] == 66
    with pytest.raises(ValueError, match="layout"):
        L.mirror_permutation("dlib5")


# ------------------------------------------------------------------------------------------------
# default STN model


def test_stn_structure(stn):
    assert stn.grid_hw == (112, 112) and stn.units == "mm"
    n = 112 * 112
    assert stn.mean.shape == (n, 3) and stn.mean.dtype == np.float32
    assert stn.shape_basis.shape[:2] == (n, 3) and stn.num_shape >= 20
    assert stn.expression_basis.shape[:2] == (n, 3) and stn.num_expression >= 10
    assert stn.faces.shape == (2 * 111 * 111, 3)
    # the original resampleModel's face order (spec 3dmm_stn.md §7.2): [1 2 113], [114 113 2]
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
