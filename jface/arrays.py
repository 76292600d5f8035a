"""Small array helpers every layer uses."""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["as_float"]


def as_float(x):
    """``x`` as a floating jax array: floating input keeps its dtype (float64 stays float64),
    anything else (ints, bools, lists) becomes float32."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    return x
