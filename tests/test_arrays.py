"""jface.arrays: the small helpers every layer uses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jface import arrays
from jface.arrays import as_float, fast_compile_options, floats_to_float32


def test_as_float_and_floats_to_float32():
    assert as_float([1, 2]).dtype == jnp.float32
    assert as_float(np.float32(2.5)).dtype == jnp.float32
    tree = floats_to_float32({"a": np.ones(3, np.float64), "b": np.arange(3)})
    assert tree["a"].dtype == jnp.float32 and tree["b"].dtype == np.arange(3).dtype


def test_fast_compile_options_compile_the_same_values():
    """On CPU: LLVM's optimisation off and the older fusion emitters; a program compiled with them
    computes what the default one does (to float32 rounding)."""
    options = fast_compile_options()
    if jax.default_backend() == "cpu":
        assert options and set(options) <= set(arrays._FAST_COMPILE)
        assert options.get("xla_backend_optimization_level") == 0
    else:
        assert options == {}

    def f(x):
        return jnp.tanh(x @ x.T) * jnp.exp(-jnp.abs(x[:, :1])) + jnp.sum(jnp.sin(x))

    x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 8)), jnp.float32)
    np.testing.assert_allclose(jax.jit(f, compiler_options=options)(x), jax.jit(f)(x), rtol=2e-5, atol=2e-5)


def test_fast_compile_options_leave_out_an_option_this_xla_does_not_know(monkeypatch):
    if jax.default_backend() != "cpu":
        pytest.skip("the options are for the CPU backend")
    monkeypatch.setattr(arrays, "_FAST_COMPILE", {"xla_jface_no_such_option": True,
                                                  "xla_backend_optimization_level": 0})
    arrays._accepted_options.cache_clear()
    try:
        assert fast_compile_options() == {"xla_backend_optimization_level": 0}
    finally:
        arrays._accepted_options.cache_clear()
