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
