"""Small array helpers every layer uses."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["as_float", "floats_to_float32"]


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
