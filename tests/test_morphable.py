"""MorphableModel pytree and synthesize (issue: foundation, item 4)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jface.models import MorphableModel, synthesize


def _model(dtype=np.float32, n=6, ks=4, ke=2):
    rng = np.random.default_rng(1)
    return MorphableModel(
        mean=jnp.asarray(rng.normal(size=(n, 3)), dtype),
        shape_basis=jnp.asarray(rng.normal(size=(n, 3, ks)), dtype),
        expression_basis=jnp.asarray(rng.normal(size=(n, 3, ke)), dtype),
        faces=jnp.asarray([[0, 1, 2], [2, 3, 4]], jnp.int32),
        landmarks={"tip": jnp.asarray([3], jnp.int32)},
    )


def test_synthesize_matches_reference_float64():
    model = _model(np.float64)
    a, e = np.arange(4.0) - 1, np.array([0.5, -2.0])
    ref = np.asarray(model.mean) + np.asarray(model.shape_basis) @ a + np.asarray(model.expression_basis) @ e
    out = synthesize(model, jnp.asarray(a), jnp.asarray(e))
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-13)
    check_grads(lambda a, e: synthesize(model, a, e), (jnp.asarray(a), jnp.asarray(e)), order=2)


def test_model_is_a_pytree_under_jit_and_vmap():
    model = _model()
    leaves = jax.tree_util.tree_leaves(model)
    assert any(leaf.shape == (6, 3, 4) for leaf in leaves)
    coeffs = jnp.ones((5, 4), jnp.float32)
    jitted = jax.jit(synthesize)(model, coeffs[0])
    np.testing.assert_allclose(jitted, synthesize(model, coeffs[0]), atol=1e-6)
    batched = jax.vmap(synthesize, in_axes=(None, 0))(model, coeffs)
    assert batched.shape == (5, 6, 3) and batched.dtype == jnp.float32
    np.testing.assert_allclose(synthesize(model, coeffs), batched, atol=1e-6)
    # A model with other arrays but the same structure reuses the compiled function.
    model2 = model.replace(mean=model.mean + 1)
    np.testing.assert_allclose(jax.jit(synthesize)(model2, coeffs[0]), jitted + 1, atol=1e-5)
    assert model.basis.shape == (6, 3, 6)


def test_synthesize_rejects_wrong_sizes():
    model = _model()
    with pytest.raises(ValueError, match="shape_coeffs"):
        synthesize(model, jnp.zeros(3))
    with pytest.raises(ValueError, match="expression_coeffs"):
        synthesize(model, jnp.zeros(4), jnp.zeros(5))


def _flame(mask):
    from jface.models import FlameModel

    z = jnp.zeros((4, 3))
    return FlameModel(v_template=z, shapedirs=jnp.zeros((4, 3, 2)), posedirs=jnp.zeros((4, 3, 36)),
                      j_regressor=jnp.zeros((5, 4)), lbs_weights=jnp.zeros((4, 5)),
                      faces=jnp.asarray([[0, 1, 2]], jnp.int32), n_shape=1, uv_face_eye_mask=mask)


def test_uv_face_eye_mask():
    from jface.models.morphable import uv_face_eye_mask

    mask = np.random.default_rng(0).uniform(size=(6, 5)).astype(np.float32)
    out = uv_face_eye_mask(_flame(jnp.asarray(mask)), jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    np.testing.assert_array_equal(np.asarray(out), mask)
    # an (H, W, C) mask gives its first channel; size does not override the model's own mask
    rgba = np.stack([mask, 1 - mask, mask, np.ones_like(mask)], -1)
    out = uv_face_eye_mask(_flame(jnp.asarray(rgba)), jnp.float32, size=256)
    assert out.shape == (6, 5) and out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out), mask)
    # under jit with the model as an argument
    jitted = jax.jit(lambda m: uv_face_eye_mask(m, jnp.bfloat16))(_flame(jnp.asarray(mask)))
    assert jitted.dtype == jnp.bfloat16 and jitted.shape == (6, 5)
    # no mask: ones of the given size, or a clear error
    assert np.array_equal(np.asarray(uv_face_eye_mask(_flame(None), size=3)), np.ones((3, 3)))
    assert uv_face_eye_mask(_flame(None), jnp.float32, size=(2, 7)).shape == (2, 7)
    with pytest.raises(ValueError, match="uv_face_eye_mask"):
        uv_face_eye_mask(_flame(None))
    with pytest.raises(ValueError, match="size"):
        uv_face_eye_mask(_flame(None), size=(0, 4))
    with pytest.raises(ValueError, match="uv_face_eye_mask"):
        uv_face_eye_mask(_flame(jnp.zeros((2, 2, 2, 2))))
