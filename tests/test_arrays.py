"""jface.arrays: the small helpers every layer uses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jface import arrays
from jface.arrays import as_float, cpu_compiler_options, floats_to_float32, tuned_jit


def test_as_float_and_floats_to_float32():
    assert as_float([1, 2]).dtype == jnp.float32
    assert as_float(np.float32(2.5)).dtype == jnp.float32
    tree = floats_to_float32({"a": np.ones(3, np.float64), "b": np.arange(3)})
    assert tree["a"].dtype == jnp.float32 and tree["b"].dtype == np.arange(3).dtype


def test_cpu_compiler_options_compile_the_same_values():
    """On CPU: the older fusion emitters (and with ``run_once`` LLVM's optimisation off); a program
    compiled with them computes what the default one does (to float32 rounding)."""
    tuned, once = cpu_compiler_options(), cpu_compiler_options(run_once=True)
    if jax.default_backend() == "cpu":
        assert tuned == {"xla_cpu_use_fusion_emitters": False}
        assert once == {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": 0}
    else:
        assert tuned == once == {}

    def f(x):
        return jnp.tanh(x @ x.T) * jnp.exp(-jnp.abs(x[:, :1])) + jnp.sum(jnp.sin(x))

    x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 8)), jnp.float32)
    reference = jax.jit(f)(x)
    for options in (tuned, once):
        np.testing.assert_allclose(jax.jit(f, compiler_options=options or None)(x), reference, rtol=2e-5, atol=2e-5)
    # tuned_jit: the same program, made at the first call, static arguments and .lower as jax.jit's
    g = tuned_jit(lambda x, n: f(x) * n, static_argnames="n")
    np.testing.assert_allclose(g(x, n=2), 2 * reference, rtol=2e-5, atol=2e-5)
    assert g.lower(x, n=3).compile()(x).shape == reference.shape


def test_cpu_compiler_options_leave_out_an_option_this_xla_does_not_know(monkeypatch):
    if jax.default_backend() != "cpu":
        pytest.skip("the options are for the CPU backend")
    monkeypatch.setattr(arrays, "_CPU", {"xla_jface_no_such_option": True, "xla_cpu_use_fusion_emitters": False})
    arrays._accepted_options.cache_clear()
    try:
        assert cpu_compiler_options() == {"xla_cpu_use_fusion_emitters": False}
    finally:
        arrays._accepted_options.cache_clear()
