"""jface.lighting vs numpy references written from DECA's ``SRenderY`` (``decalib/utils/renderer.py``:
``add_SHlight``, ``add_directionlight``, ``render_shape``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from test_render_reference import SH_CONSTANTS as REF_CONSTANTS
from test_render_reference import sh_shading as ref_sh_shading

from jface.lighting import SH_CONSTANTS, directional_shading, sh_shading


def test_constants_match_spec():
    np.testing.assert_allclose(SH_CONSTANTS, REF_CONSTANTS, rtol=1e-15)
    np.testing.assert_allclose(SH_CONSTANTS, [0.282095, 1.023327, 1.023327, 1.023327, 0.858086,
                                              0.858086, 0.858086, 0.429043, 0.247708], atol=1e-6)


def test_sh_shading_reference_and_basis_order():
    rng = np.random.default_rng(0)
    normals = rng.normal(size=(5, 7, 3)) * 0.8  # not unit length: no renormalisation
    sh = rng.normal(size=(9, 3))
    out = sh_shading(normals, sh)
    assert out.shape == (5, 7, 3) and out.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(out), ref_sh_shading(normals, sh), rtol=1e-12, atol=1e-12)
    # light code (27,) -> (9, 3) row-major: L[k, c] = code[3k + c]; band 3 (z) only, red only
    code = np.zeros(27)
    code[3 * 3 + 0] = 1.0
    shade = np.asarray(sh_shading(np.array([0.0, 0.0, 1.0]), code.reshape(9, 3)))
    np.testing.assert_allclose(shade, [SH_CONSTANTS[3], 0, 0], atol=1e-15)
    # zeros give black; no clamping of negative shading
    assert np.all(np.asarray(sh_shading(normals, np.zeros((9, 3)))) == 0)
    assert np.any(np.asarray(out) < 0)
    out32 = sh_shading(normals.astype(np.float32), sh.astype(np.float32))
    assert out32.dtype == jnp.float32
    check_grads(sh_shading, (normals[0], sh), order=1, modes=["rev"])
    check_grads(sh_shading, (normals, sh), order=1, modes=["rev"])
    # the custom VJP equals autodiff of the reference formula (float64), batched under vmap too
    def plain(n, s):
        basis = jnp.stack([float(c) * b for c, b in zip(SH_CONSTANTS, (
            jnp.ones_like(n[..., 0]), n[..., 0], n[..., 1], n[..., 2], n[..., 0] * n[..., 1],
            n[..., 0] * n[..., 2], n[..., 1] * n[..., 2], n[..., 0] ** 2 - n[..., 1] ** 2,
            3 * n[..., 2] ** 2 - 1))], -1)
        return basis @ s
    cot = rng.normal(size=(5, 7, 3))
    got = jax.vjp(jax.vmap(sh_shading, (0, None)), normals, sh)[1](cot)
    want = jax.vjp(jax.vmap(plain, (0, None)), normals, sh)[1](cot)
    for a, b in zip(got, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="sh"):
        sh_shading(normals, np.zeros(27))


def test_directional_shading_reference():
    rng = np.random.default_rng(1)
    normals = rng.normal(size=(6, 3))
    dirs = np.array([[-1, 1, 1], [1, 1, 1], [-1, -1, 1], [1, -1, 1], [0, 0, 1.0]])
    unit = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    ref = np.repeat(np.mean(np.clip(normals @ unit.T, 0, 1) * 1.7, axis=1)[:, None], 3, axis=1)
    np.testing.assert_allclose(np.asarray(directional_shading(normals)), ref, rtol=1e-12)
    custom = np.asarray(directional_shading(normals, [[0, 0, 2.0]], [[1.0, 0.5, 0.0]]))
    np.testing.assert_allclose(custom, np.clip(normals[:, 2:3], 0, 1) * [1.0, 0.5, 0.0], rtol=1e-12)
    g = jax.grad(lambda n: jnp.sum(directional_shading(n)))(normals)
    assert np.all(np.isfinite(g))
    with pytest.raises(ValueError, match="intensities"):
        directional_shading(normals, dirs, np.ones((2, 3)))


def test_normals_shape_is_checked():
    for bad in (np.zeros(()), np.zeros((4, 2))):
        with pytest.raises(ValueError, match=r"normals: expected \(\.\.\., 3\)"):
            sh_shading(bad, np.zeros((9, 3)))
        with pytest.raises(ValueError, match=r"normals: expected \(\.\.\., 3\)"):
            directional_shading(bad)
    with pytest.raises(ValueError, match=r"sh: expected \(9, 3\)"):
        sh_shading(np.zeros((4, 3)), np.zeros(27))
