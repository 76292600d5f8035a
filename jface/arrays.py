"""Small array helpers every layer uses."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

__all__ = ["as_float", "floats_to_float32", "cpu_compiler_options", "tuned_jit"]


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


# XLA options for the CPU backend. The older fusion emitters (the MLIR ones are the default): on the
# 2-core CPUs measured here they compile sooner and run jface's programs as fast (jface.reconstruct's
# decode program compiles in 5.3 s instead of 7.2 s; the default train.stn step within noise).
# LLVM's optimisation off, for a program compiled on every start and run once or a few times (its
# compile is the wait): the decode program then compiles in 2.6 s and runs 0.06 -> 0.2 s per image.
_CPU = {"xla_cpu_use_fusion_emitters": False}
_RUN_ONCE = {"xla_backend_optimization_level": 0}


def cpu_compiler_options(*, run_once: bool = False) -> dict:
    """``compiler_options`` for ``jax.jit`` on the current backend: on CPU the options above that
    this XLA accepts (``run_once``: also LLVM's optimisation off); elsewhere ``{}`` (GPU and TPU
    programs keep XLA's defaults). Values agree with the default programs to float32 rounding."""
    return dict(_accepted_options(jax.default_backend(), run_once))


@functools.cache
def _accepted_options(backend: str, run_once: bool) -> tuple:
    if backend != "cpu":
        return ()
    probe = jax.jit(lambda x: x + 1).lower(jnp.float32(0))
    accepted = []
    for name, value in {**_CPU, **(_RUN_ONCE if run_once else {})}.items():
        try:  # an option another XLA version does not know is an error: leave it out
            probe.compile({name: value})
        except Exception:  # noqa: BLE001 - XlaRuntimeError / ValueError depending on the version
            continue
        accepted.append((name, value))
    return tuple(accepted)


class tuned_jit:  # noqa: N801 - used like jax.jit
    """``jax.jit(fun, **jit_kwargs)`` compiled with :func:`cpu_compiler_options` of the backend in
    use at the first call (made then: importing a module that decorates with it starts no backend,
    so ``jax.distributed.initialize`` can still come first). Call it or ``.lower`` it as a jitted
    function; ``functools.partial(tuned_jit, static_argnames=...)`` decorates like ``jax.jit``."""

    def __init__(self, fun, *, run_once: bool = False, **jit_kwargs):
        functools.update_wrapper(self, fun)
        self._fun, self._run_once, self._jit_kwargs = fun, run_once, jit_kwargs
        self._jitted = {}

    def _for_backend(self):
        backend = jax.default_backend()
        jitted = self._jitted.get(backend)
        if jitted is None:
            options = cpu_compiler_options(run_once=self._run_once)
            jitted = jax.jit(self._fun, compiler_options=options or None, **self._jit_kwargs)
            self._jitted[backend] = jitted
        return jitted

    def __call__(self, *args, **kwargs):
        return self._for_backend()(*args, **kwargs)

    def lower(self, *args, **kwargs):
        return self._for_backend().lower(*args, **kwargs)
