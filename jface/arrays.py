"""Small array helpers every layer uses."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

__all__ = ["as_float", "floats_to_float32", "fast_compile_options"]


def as_float(x):
    """``x`` as a floating jax array: floating input keeps its dtype (float64 stays float64),
    anything else (ints, bools, lists) becomes float32."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    return x


def floats_to_float32(tree):
    """Every floating leaf of ``tree`` (a model pytree, say) as float32; other leaves unchanged."""
    return jax.tree_util.tree_map(
        lambda x: jnp.asarray(x, jnp.float32) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) else x, tree)


# XLA options that cut a CPU program's compile time: LLVM's optimisation off, and the older fusion
# emitters, which compile much sooner than the MLIR ones. On 2 cores, for jface.reconstruct's decode
# program: 7.2 s -> 2.6 s to compile, 0.06 -> 0.2 s to run per image, values within 5e-4.
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def fast_compile_options() -> dict:
    """``compiler_options`` for a program compiled on every start and run a few times, whose
    compile is the wait (a tool's first output): on the CPU backend the options above that this
    XLA accepts; elsewhere ``{}`` (GPU and TPU programs keep the default optimisation)."""
    return dict(_accepted_options(jax.default_backend()))


@functools.cache
def _accepted_options(backend: str) -> tuple:
    if backend != "cpu":
        return ()
    probe = jax.jit(lambda x: x + 1).lower(jnp.float32(0))
    accepted = []
    for name, value in _FAST_COMPILE.items():
        try:  # an option another XLA version does not know is an error: leave it out
            probe.compile({name: value})
        except Exception:  # noqa: BLE001 - XlaRuntimeError / ValueError depending on the version
            continue
        accepted.append((name, value))
    return tuple(accepted)
