"""DECA's detail stage (jface.deca.detail) against ``DECA.displacement2normal`` (``decalib/deca.py``)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.test_util import check_grads

from jface.deca import detail

RNG = np.random.default_rng(0)


def _ref_triangles(h, w, margin_x=2, margin_y=5):
    tris = []
    for x in range(margin_x, w - 1 - margin_x):
        for y in range(margin_y, h - 1 - margin_y):
            tris.append([y * w + x, y * w + x + 1, (y + 1) * w + x])
            tris.append([y * w + x + 1, (y + 1) * w + x + 1, (y + 1) * w + x])
    return np.array(tris)[:, [0, 2, 1]]


def test_dense_triangles():
    tris = detail.generate_dense_triangles()
    assert tris.shape == (122990, 3) and tris.dtype == np.int32
    i = 5 * 256 + 2
    np.testing.assert_array_equal(tris[:4], [[i, i + 256, i + 1], [i + 1, i + 256, i + 257],
                                             [i + 256, i + 512, i + 257], [i + 257, i + 512, i + 513]])
    np.testing.assert_array_equal(tris, _ref_triangles(256, 256))
    np.testing.assert_array_equal(detail.generate_dense_triangles(20, 14, 1, 3), _ref_triangles(20, 14, 1, 3))


def _ref_vertex_normals(v, f):
    n = np.zeros_like(v)
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    for k in range(3):
        np.add.at(n, f[:, k], fn)
    return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-6)


def _grid(h, w, spacing=0.01):
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    # UV row 0 is v = 1: world y decreases with the row (y up), x increases with the column
    return np.stack([cols * spacing, -rows * spacing, np.zeros_like(rows, float)], -1).astype(float)


def test_detail_normals_vs_reference():
    h, w = 16, 12
    pos = _grid(h, w) + 0.002 * RNG.standard_normal((h, w, 3))
    nrm = RNG.standard_normal((h, w, 3))
    nrm /= np.linalg.norm(nrm, axis=-1, keepdims=True)
    disp = 0.01 * RNG.standard_normal((h, w, 1))
    mask = RNG.random((h, w))
    fixed = 0.001 * RNG.standard_normal((h, w))
    got = detail.displacement_to_normals(disp, pos, nrm, mask, fixed)
    pd = pos + (disp[..., 0] * mask)[..., None] * nrm + fixed[..., None] * nrm
    nd = _ref_vertex_normals(pd.reshape(-1, 3), _ref_triangles(h, w)).reshape(h, w, 3)
    ref = nd * mask[..., None] + nrm * (1 - mask[..., None])
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)
    f = jax.jit(lambda d: detail.displacement_to_normals(d, pos, nrm, mask, fixed))
    check_grads(f, (disp,), order=1, modes=("rev",), atol=1e-5, rtol=1e-5, eps=1e-6)


def test_flat_and_sphere_cases():
    h, w = 16, 12
    inner = (slice(6, h - 6), slice(3, w - 3))  # vertices whose whole 1-ring is in the dense mesh
    flat = _grid(h, w)
    up = np.broadcast_to([0.0, 0.0, 1.0], (h, w, 3))
    ones = np.ones((h, w))
    got = np.asarray(detail.displacement_to_normals(np.zeros((h, w)), flat, up, ones))
    np.testing.assert_allclose(got[inner], up[inner], atol=1e-12)  # normals agree with the coarse ones
    # a constant displacement of a sphere patch keeps the radial normals
    radius, c = 0.1, 0.004
    x, y = flat[..., 0] - flat[..., 0].mean(), flat[..., 1] - flat[..., 1].mean()
    sphere = np.stack([x, y, np.sqrt(radius**2 - x**2 - y**2)], -1)
    radial = sphere / radius
    got = np.asarray(detail.displacement_to_normals(np.full((h, w), c), sphere, radial, ones))
    np.testing.assert_allclose(got[inner], radial[inner], atol=5e-3)
    # mask = 0 returns the coarse normals exactly; displacement_map is D + Δ without the mask
    got = detail.displacement_to_normals(np.full((h, w), c), sphere, radial, np.zeros((h, w)))
    np.testing.assert_allclose(got, radial, atol=1e-15)
    d = RNG.standard_normal((2, h, w, 1))
    fixed = RNG.standard_normal((h, w))
    np.testing.assert_allclose(detail.displacement_map(d, fixed), d + fixed[None, ..., None])


def test_fixed_displacement_file(realdata, tmp_path):
    arr = detail.load_fixed_displacement(realdata / "deca" / "fixed_displacement_256.npy")
    assert arr.shape == (256, 256) and arr.dtype == np.float32
    assert -2e-3 < arr.min() < 0 < arr.max() < 2e-3
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((3, 4)))
    with pytest.raises(ValueError, match="bad.npy"):
        detail.load_fixed_displacement(bad)


def test_animate_keeps_identity_and_detail():
    codes = {"shape": RNG.standard_normal((2, 100)), "exp": RNG.standard_normal((2, 50)),
             "pose": RNG.standard_normal((2, 6)), "detail": RNG.standard_normal((2, 128)),
             "cam": RNG.standard_normal((2, 3))}
    new_exp, jaw = RNG.standard_normal(50), np.array([0.2, 0.0, 0.0])
    out = detail.animate(codes, new_exp, jaw)
    for key in ("shape", "detail", "cam"):
        np.testing.assert_array_equal(out[key], codes[key])
    np.testing.assert_array_equal(out["exp"], np.broadcast_to(new_exp, (2, 50)))
    np.testing.assert_array_equal(out["pose"][:, :3], codes["pose"][:, :3])
    np.testing.assert_array_equal(out["pose"][:, 3:], np.broadcast_to(jaw, (2, 3)))
    with pytest.raises(ValueError, match="jaw_pose"):
        detail.animate(codes, jaw_pose=np.zeros(2))


def test_bad_inputs():
    with pytest.raises(ValueError, match="displacement"):
        detail.displacement_to_normals(np.zeros((4, 4, 2)), np.zeros((4, 4, 3)), np.zeros((4, 4, 3)), np.ones((4, 4)))
    with pytest.raises(ValueError, match="uv_normals"):
        detail.displacement_to_normals(np.zeros((4, 4)), np.zeros((4, 4, 3)), np.zeros((4, 5, 3)), np.ones((4, 4)))
    with pytest.raises(ValueError, match="mask"):
        detail.displacement_to_normals(np.zeros((4, 4)), np.zeros((4, 4, 3)), np.zeros((4, 4, 3)), np.ones((3, 4)))
    with pytest.raises(ValueError, match="fixed_displacement"):
        detail.displacement_to_normals(np.zeros((4, 4)), np.zeros((4, 4, 3)), np.zeros((4, 4, 3)), np.ones((4, 4)),
                                       np.zeros((2, 2)))
