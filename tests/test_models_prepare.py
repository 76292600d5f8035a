"""3DMM-STN model preparation (jface.models.prepare): the original prepareExpressionBFM.m + resampleModel.m."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio
import scipy.sparse as sp
from test_models_uv import face_disc

import jface.models.prepare as prepare_mod
from jface.models import MorphableModel
from jface.models.prepare import extend_expression, laplace_beltrami, prepare_stn_model
from jface.models.resample import grid_faces, grid_uv, resample_model
from jface.models.tutte import tutte_embedding

# ------------------------------------------------------------------------------------------------
# laplace_beltrami
# ------------------------------------------------------------------------------------------------


def _laplace_beltrami_reference(vertices, faces):
    """Literal float64 transcription of util/LaplaceBeltrami.m: per-face gradient
    matrices G_f (rows = hat-function gradients (N_f x e_opp) / (2 A_f)),
    L = sum 2 A_f G_f^T G_f."""
    n = len(vertices)
    lap = np.zeros((n, n))
    for f in faces:
        p = vertices[f]
        na = np.cross(p[1] - p[0], p[2] - p[0])
        area = np.linalg.norm(na) / 2
        unit = na / np.linalg.norm(na)
        grad = np.zeros((3, 3))  # row c: gradient of the hat function of corner c
        for c in range(3):
            s, t = (c + 1) % 3, (c + 2) % 3
            grad[c] = np.cross(p[t] - p[s], unit) / (2 * area)
        lap[np.ix_(f, f)] += 2 * area * grad @ grad.T
    return lap


def _cotangent_reference(vertices, faces):
    """Off-diagonal -(cot a + cot b) from the angles (arccos), diagonal = -row sum."""
    n = len(vertices)
    lap = np.zeros((n, n))
    for f in faces:
        for c in range(3):
            i, j, k = f[c], f[(c + 1) % 3], f[(c + 2) % 3]
            a, b = vertices[j] - vertices[i], vertices[k] - vertices[i]
            angle = np.arccos(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
            lap[j, k] -= 1 / np.tan(angle)
            lap[k, j] -= 1 / np.tan(angle)
    lap -= np.diag(lap.sum(1))
    return lap


def _small_mesh(seed=0):
    verts, faces = face_disc(cols=7, rows=6)
    rng = np.random.default_rng(seed)
    return verts + 0.02 * rng.normal(size=verts.shape), faces


def test_laplace_beltrami_reference():
    verts, faces = _small_mesh()
    lap = laplace_beltrami(verts, faces)
    assert sp.isspmatrix_csr(lap) or isinstance(lap, sp.csr_array)
    assert lap.dtype == np.float64 and lap.shape == (len(verts), len(verts))
    dense = lap.toarray()
    np.testing.assert_allclose(dense, _laplace_beltrami_reference(verts, faces), atol=1e-11)
    np.testing.assert_allclose(dense, _cotangent_reference(verts, faces), atol=1e-11)
    np.testing.assert_allclose(dense.sum(1), 0.0, atol=1e-12)  # zero row sums
    np.testing.assert_array_equal(dense, dense.T)  # symmetric
    assert np.linalg.eigvalsh(dense).min() > -1e-10  # PSD
    # scale-free and translation invariant
    np.testing.assert_allclose(laplace_beltrami(1000 * verts + 3.0, faces).toarray(), dense,
                               atol=1e-9)
    # float32 input is computed in float64
    assert laplace_beltrami(verts.astype(np.float32), faces).dtype == np.float64


def test_laplace_beltrami_errors():
    verts, faces = _small_mesh()
    with pytest.raises(ValueError, match="degenerate"):
        laplace_beltrami(np.r_[verts, verts[:1]], np.r_[faces, [[0, len(verts), 1]]])
    with pytest.raises(ValueError, match="0-based"):
        laplace_beltrami(verts, faces + len(verts))
    with pytest.raises(ValueError, match="vertices"):
        laplace_beltrami(verts[:, :2], faces)
    with pytest.raises(ValueError, match="faces"):
        laplace_beltrami(verts, faces[:, :2])


# ------------------------------------------------------------------------------------------------
# expression extension (prepareExpressionBFM.m step 2)
# ------------------------------------------------------------------------------------------------


def _stacked_lstsq_reference(vertices, faces, e, mapping):
    """The original's formula, dense: X = [L; S] \\ [L V0; S V0 + E], d = X - V0 (per
    coordinate)."""
    lap = _laplace_beltrami_reference(vertices, faces)
    sel = np.zeros((len(mapping), len(vertices)))
    sel[np.arange(len(mapping)), mapping] = 1
    a = np.r_[lap, sel]
    b = np.r_[lap @ vertices, sel @ vertices + e]
    x, *_ = np.linalg.lstsq(a, b, rcond=None)
    return x - vertices


def test_extend_expression_matches_stacked_least_squares():
    verts, faces = _small_mesh(1)
    n = len(verts)
    rng = np.random.default_rng(2)
    missing = np.array([17, 18, 24, 25])  # an interior patch that "3DDFA" lacks
    mapping = np.setdiff1d(np.arange(n), missing)[::-1].copy()  # any order, like 3DDFA's
    e = rng.normal(size=(len(mapping), 3, 2)) * 100.0
    d = extend_expression(verts * 1e4, faces, e, mapping)
    assert d.shape == (n, 3, 2) and d.dtype == np.float64
    for k in range(2):
        ref = _stacked_lstsq_reference(verts * 1e4, faces, e[:, :, k], mapping)
        np.testing.assert_allclose(d[:, :, k], ref, atol=1e-8 * np.abs(ref).max())


def test_extend_expression_errors():
    verts, faces = _small_mesh()
    e = np.zeros((len(verts) - 1, 3, 1))
    with pytest.raises(ValueError, match="map_tddfa_to_basel"):
        extend_expression(verts, faces, e, np.arange(len(verts)))
    with pytest.raises(ValueError, match="unique"):
        extend_expression(verts, faces, e, np.zeros(len(verts) - 1, dtype=int))
    with pytest.raises(ValueError, match="w_exp"):
        extend_expression(verts, faces, e[:, :2], np.arange(len(verts) - 1))


# ------------------------------------------------------------------------------------------------
# prepare_stn_model on a small made-up model
# ------------------------------------------------------------------------------------------------


def _toy_inputs():
    verts, faces = face_disc(cols=11, rows=13)
    n = len(verts)
    rng = np.random.default_rng(3)
    mean_um = verts * 8e4
    basis = rng.normal(size=(n, 3, 4))
    ev = np.array([3e3, 2e3, 1e3, 5e2])
    mapping = np.setdiff1d(np.arange(n), [60, 61, 71, 72])
    w_exp = rng.normal(size=(len(mapping), 3, 6)) * 1e3
    uv = tutte_embedding(verts, faces)
    bfm = {"mean": mean_um, "shape_basis": basis, "shape_ev": ev, "faces": faces.astype(np.int32)}
    return bfm, {"w_exp": w_exp}, uv, mapping


def test_prepare_stn_model_small():
    bfm, expression, uv, mapping = _toy_inputs()
    messages = []
    model = prepare_stn_model(bfm, expression, uv, mapping, res=9, n_shape=3, n_expression=2,
                              progress=messages.append, dtype=np.float64)
    assert isinstance(model, MorphableModel)
    assert model.units == "mm" and model.grid_hw == (9, 9)
    assert model.mean.shape == (81, 3) and model.shape_basis.shape == (81, 3, 3)
    assert model.expression_basis.shape == (81, 3, 2) and model.faces.shape == (128, 3)
    assert model.mean.dtype == np.float64 and model.faces.dtype == np.int32
    np.testing.assert_array_equal(np.asarray(model.faces), grid_faces(9))
    np.testing.assert_array_equal(np.asarray(model.uv), grid_uv(9))
    assert messages
    # the pieces: PCs x EV, extended expression columns as is, resampled, / 1000
    d = extend_expression(bfm["mean"], bfm["faces"], expression["w_exp"][:, :, :2], mapping)
    basis = np.concatenate([bfm["shape_basis"][:, :, :3] * bfm["shape_ev"][:3], d], axis=-1)
    ref = resample_model(bfm["mean"], basis, bfm["faces"], uv, 9)
    np.testing.assert_allclose(model.mean, ref["mean"] / 1000, rtol=1e-12)
    np.testing.assert_allclose(model.shape_basis, ref["basis"][:, :, :3] / 1000, rtol=1e-12)
    np.testing.assert_allclose(model.expression_basis, ref["basis"][:, :, 3:] / 1000, rtol=1e-9,
                               atol=1e-12)
    # default dtype float32
    m32 = prepare_stn_model(bfm, expression, uv, mapping, res=5, n_shape=1, n_expression=0)
    assert m32.mean.dtype == np.float32 and m32.expression_basis.shape == (25, 3, 0)


def test_prepare_stn_model_errors():
    bfm, expression, uv, mapping = _toy_inputs()
    with pytest.raises(ValueError, match="shape_ev"):
        prepare_stn_model({k: v for k, v in bfm.items() if k != "shape_ev"}, expression, uv,
                          mapping)
    with pytest.raises(ValueError, match="w_exp"):
        prepare_stn_model(bfm, {}, uv, mapping)
    with pytest.raises(ValueError, match="n_shape"):
        prepare_stn_model(bfm, expression, uv, mapping, n_shape=5)
    with pytest.raises(ValueError, match="n_expression"):
        prepare_stn_model(bfm, expression, uv, mapping, n_shape=2, n_expression=7)
    with pytest.raises(ValueError, match="uv"):
        prepare_stn_model(bfm, expression, uv[:-1], mapping, n_shape=2)
    with pytest.raises(ValueError, match="map_tddfa_to_basel"):
        prepare_stn_model(bfm, expression, uv, mapping[:-1], n_shape=2)
    with pytest.raises(ValueError, match="res"):
        prepare_stn_model(bfm, expression, uv, mapping, res=1, n_shape=2)
    with pytest.raises(ValueError, match="bfm"):
        prepare_stn_model([1, 2], expression, uv, mapping)


# ------------------------------------------------------------------------------------------------
# real layouts: synthetic BFM / 3DDFA stand-ins + the real BFM_UV and map_tddfa_to_basel
# ------------------------------------------------------------------------------------------------


def _read_bfm(path):
    """Private reader producing exactly load_bfm2009's dict (interleaved -> reshape(N, 3),
    C order)."""
    mm = sio.loadmat(path, variable_names=["shapeMU", "shapePC", "shapeEV", "tl"])
    n = mm["shapeMU"].size // 3
    return {
        "mean": mm["shapeMU"].reshape(n, 3),
        "shape_basis": mm["shapePC"].reshape(n, 3, -1),
        "shape_ev": mm["shapeEV"].ravel(),
        "faces": (mm["tl"] - 1).astype(np.int32),
    }


def _read_expression(path):
    w = sio.loadmat(path, variable_names=["w_exp"])["w_exp"]
    return {"w_exp": w.reshape(w.shape[0] // 3, 3, -1)}


def test_prepare_stn_model_real_layouts(realdata, monkeypatch):
    bfm = _read_bfm(realdata / "synthetic_bfm" / "synth_01_MorphableModel.mat")
    expression = _read_expression(realdata / "synthetic_bfm" / "synth_Model_Expression.mat")
    uv = sio.loadmat(realdata / "3dmmasstn" / "BFM_UV.mat")["UV"]
    mapping = sio.loadmat(realdata / "3dmmasstn" / "map_tddfa_to_basel.mat")[
        "map_tddfa_to_basel"].ravel()
    assert bfm["mean"].shape == (53490, 3) and expression["w_exp"].shape == (53215, 3, 5)

    captured = {}

    def spy(*args, **kwargs):
        captured["d"] = extend_expression(*args, **kwargs)
        return captured["d"]

    monkeypatch.setattr(prepare_mod, "extend_expression", spy)
    model = prepare_stn_model(bfm, expression, uv, mapping, dtype=np.float64)
    assert model.mean.shape == (12544, 3) and model.faces.shape == (24642, 3)
    assert model.shape_basis.shape == (12544, 3, 5)
    assert model.expression_basis.shape == (12544, 3, 5)
    assert model.units == "mm" and model.grid_hw == (112, 112)
    np.testing.assert_array_equal(np.asarray(model.faces[:3]), [[0, 1, 112], [113, 112, 1],
                                                                [112, 113, 224]])
    for arr in (model.mean, model.shape_basis, model.expression_basis):
        assert np.all(np.isfinite(arr))
    # µm -> mm: a head is ~ 150-250 mm across
    extent = np.ptp(np.asarray(model.mean), axis=0)
    assert np.all(extent[:2] > 100) and np.all(extent < 300)
    # identity columns: PC x EV / 1000 (resampled); check one column by magnitude and directly
    ref = resample_model(bfm["mean"], bfm["shape_basis"][:, :, :1] * bfm["shape_ev"][:1],
                         bfm["faces"], uv, 112)
    np.testing.assert_allclose(model.shape_basis[:, :, :1], ref["basis"] / 1000, rtol=1e-6,
                               atol=1e-9)

    # the least-squares extension at BFM resolution
    d = captured["d"]
    assert d.shape == (53490, 3, 5)
    lap = laplace_beltrami(bfm["mean"], bfm["faces"])
    e = expression["w_exp"].astype(np.float64)
    sel = sp.csr_matrix((np.ones(len(mapping)), (np.arange(len(mapping)), mapping.astype(int))),
                        shape=(len(mapping), 53490))
    for k in range(5):
        dk, ek = d[:, :, k], e[:, :, k]
        residual = lap.T @ (lap @ dk) + sel.T @ (sel @ dk - ek)  # normal equations
        assert np.abs(residual).max() < 1e-7 * np.abs(ek).max()
        # soft fit: mapped vertices follow E closely (not exactly)
        misfit = np.abs(dk[mapping] - ek)
        assert np.median(misfit) < 0.05 * np.abs(ek).max()
    # the 275 unmapped (mouth) vertices get finite, smooth (biharmonic) values, bounded by E
    unmapped = np.setdiff1d(np.arange(53490), mapping)
    assert len(unmapped) == 275
    bilap = (lap.T @ (lap @ d.reshape(53490, -1)))[unmapped]
    assert np.abs(bilap).max() < 1e-7 * np.abs(e).max()
    assert np.abs(d[unmapped]).max() <= 1.5 * np.abs(e).max()
    # expression basis = resampled d / 1000
    ref = resample_model(bfm["mean"], d, bfm["faces"], uv, 112)
    np.testing.assert_allclose(model.expression_basis, ref["basis"] / 1000, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# against an Octave run of the original algorithm (made-up data; fixture made with GNU Octave 7.3)
# ------------------------------------------------------------------------------------------------

OCTAVE_FIXTURE = Path(__file__).parent / "data" / "models_uv_octave_reference.npz"


def test_prepare_matches_octave_transcription():
    """``tests/data/models_uv_octave_reference.npz`` holds made-up inputs (a 72-vertex noisy
    face_disc, its tutte_embedding UV, random PCs / expression displacements, 4 'missing' mouth
    vertices) and the outputs of an Octave transcription of the original prepareExpressionBFM.m +
    resampleModel.m + LaplaceBeltrami.m (generalised sizes; sparse-QR backslash on the stacked
    system; tsearch for pointLocation) for res = 9 (odd: the 0.5 eps shift) and res = 8. The
    script is stored in the fixture (``octave_script``)."""
    z = np.load(OCTAVE_FIXTURE)
    assert "tsearch" in str(z["octave_script"])
    bfm = {"mean": z["mean_um"], "shape_basis": z["shape_basis"], "shape_ev": z["shape_ev"],
           "faces": z["faces"]}
    n = len(z["mean_um"])
    np.testing.assert_allclose(laplace_beltrami(z["mean_um"], z["faces"]).toarray(), z["res9_L"],
                               atol=1e-12)
    d = extend_expression(z["mean_um"], z["faces"], z["w_exp"], z["map_tddfa_to_basel"])
    ref_pc = z["res9_PC"].reshape(n, 3, -1)  # interleaved -> (N, 3, K)
    np.testing.assert_allclose(d, ref_pc[:, :, 3:], rtol=0,
                               atol=1e-9 * np.abs(ref_pc[:, :, 3:]).max())
    for res in (9, 8):
        model = prepare_stn_model(bfm, {"w_exp": z["w_exp"]}, z["uv"], z["map_tddfa_to_basel"],
                                  res=res, n_shape=3, n_expression=2, dtype=np.float64)
        ref_mean = z[f"res{res}_shapeMU"].reshape(res * res, 3)
        ref_basis = z[f"res{res}_shapePC"].reshape(res * res, 3, -1)
        np.testing.assert_allclose(model.mean, ref_mean, rtol=0,
                                   atol=1e-12 * np.abs(ref_mean).max())
        np.testing.assert_allclose(model.shape_basis, ref_basis[:, :, :3], rtol=0,
                                   atol=1e-12 * np.abs(ref_basis[:, :, :3]).max())
        np.testing.assert_allclose(model.expression_basis, ref_basis[:, :, 3:], rtol=0,
                                   atol=1e-9 * np.abs(ref_basis[:, :, 3:]).max())
        np.testing.assert_array_equal(np.asarray(model.faces) + 1, z[f"res{res}_faces"])


def test_private_reader_matches_io_loaders(realdata):
    """The dicts prepare_stn_model is tested with are what jface.models.loaders return."""
    io = pytest.importorskip("jface.models.loaders")
    path = realdata / "synthetic_bfm" / "synth_01_MorphableModel.mat"
    ours, theirs = _read_bfm(path), io.load_bfm2009(path)
    for key in ("mean", "shape_basis", "shape_ev", "faces"):
        np.testing.assert_array_equal(np.asarray(theirs[key]), ours[key])
    path = realdata / "synthetic_bfm" / "synth_Model_Expression.mat"
    np.testing.assert_array_equal(np.asarray(io.load_tddfa_expression(path)["w_exp"]),
                                  _read_expression(path)["w_exp"])
