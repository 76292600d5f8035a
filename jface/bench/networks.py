"""Throughput of DECA's networks (``python -m jface.bench networks [--batch 32] [--dtype bfloat16]``).

Times, with random weights (layout only matters): E_coarse forward (eval), E_coarse forward+backward
(train-mode BN, as in DECA's coarse stage), F_d forward+backward (detail stage) and the VGGFace2
identity network forward. Reports compile time and the median of ``--repeats`` steady-state runs.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from jface.deca import networks as nw


def _random_variables(module, example, seed=0):
    template = jax.eval_shape(module.init, jax.random.PRNGKey(0), example)
    rng = np.random.default_rng(seed)

    def leaf(path, s):
        name = path[-1].key
        if name == "var":
            return jnp.asarray(rng.uniform(0.5, 1.5, s.shape), jnp.float32)
        if name == "mean":
            return jnp.zeros(s.shape, jnp.float32)
        fan_in = int(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 1
        return jnp.asarray(rng.normal(size=s.shape) / np.sqrt(fan_in), jnp.float32)

    return jax.tree_util.tree_map_with_path(leaf, template)


def _time(fn, *args, repeats=5):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return compile_s, float(np.median(times))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jface.bench networks", description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    dtype = None if args.dtype == "float32" else jnp.bfloat16
    b = args.batch
    images = jnp.asarray(np.random.default_rng(0).uniform(size=(b, 224, 224, 3)), jnp.float32)
    z = jnp.asarray(np.random.default_rng(1).normal(size=(b, 181)), jnp.float32)

    enc = nw.ResNetEncoder(236, dtype=dtype)
    v_enc = _random_variables(enc, images[:1])
    gen = nw.DetailGenerator(dtype=dtype)
    v_gen = _random_variables(gen, z[:1])
    face = nw.VGGFace2ResNet50(dtype=dtype)
    v_face = _random_variables(face, images[:1])

    def enc_loss(params, x):
        out, _ = enc.apply(
            {"params": params, "batch_stats": v_enc["batch_stats"]}, x, True, mutable=["batch_stats"]
        )
        return jnp.mean(jnp.square(out.astype(jnp.float32)))

    def gen_loss(params, zz):
        out, _ = gen.apply(
            {"params": params, "batch_stats": v_gen["batch_stats"]}, zz, True, mutable=["batch_stats"]
        )
        return jnp.mean(jnp.abs(out.astype(jnp.float32)))

    cases = [
        ("E_coarse forward (eval)", jax.jit(enc.apply), (v_enc, images)),
        ("E_coarse forward+backward (train BN)", jax.jit(jax.grad(enc_loss)), (v_enc["params"], images)),
        ("F_d forward+backward (train BN)", jax.jit(jax.grad(gen_loss)), (v_gen["params"], z)),
        ("VGGFace2 forward (eval)", jax.jit(face.apply), (v_face, images)),
    ]
    print(f"device: {jax.devices()[0].device_kind}, batch {b}, compute dtype {args.dtype}")
    for name, fn, fargs in cases:
        compile_s, run_s = _time(fn, *fargs, repeats=args.repeats)
        print(
            f"{name:40s} first call {compile_s:7.2f} s   steady {run_s * 1e3:9.2f} ms   {b / run_s:9.1f} items/s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
