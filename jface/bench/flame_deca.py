"""Timing of jface.flame.forward and jface.deca.decode on the default FLAME-structured model.

``python -m jface.bench.flame_deca [--batch 8] [--detail] [--repeats 5]`` prints the first-call
(compile + run) and the steady-state time per call. The model is passed to ``jit`` as an argument
(closing over it makes XLA constant-fold the UV rasterization).
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from jface import deca, flame
from jface.models import default_flame_model


def _time(fn, *args, repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(fn(*args))
    return first, (time.perf_counter() - t0) / repeats


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--detail", action="store_true", help="also run F_d (random weights) and detail normals")
    args = parser.parse_args(argv)
    model = default_flame_model()
    rng = np.random.default_rng(0)
    b = args.batch
    light = np.zeros((b, 9, 3), np.float32)
    light[:, 0] = 3.0
    codes = {
        "shape": 0.5 * rng.standard_normal((b, 100)).astype(np.float32),
        "exp": 0.5 * rng.standard_normal((b, 50)).astype(np.float32),
        "tex": rng.standard_normal((b, 50)).astype(np.float32),
        "pose": (0.2 * rng.standard_normal((b, 6))).astype(np.float32),
        "cam": np.tile(np.array([[9.0, 0.0, 0.0]], np.float32), (b, 1)),
        "light": light,
        "detail": rng.standard_normal((b, 128)).astype(np.float32),
    }
    fwd = jax.jit(jax.vmap(flame.forward, in_axes=(None, 0, 0, 0)))
    first, steady = _time(fwd, model, codes["shape"], codes["exp"], codes["pose"], repeats=args.repeats)
    print(f"flame.forward  B={b}: first call {first:.2f} s, then {steady * 1e3:.1f} ms/call")
    params = {}
    if args.detail:
        params["D_detail"] = deca.init_variables(deca.DetailGenerator())
    dec = jax.jit(lambda p, m, c: deca.decode(p, m, c, use_detail=args.detail))
    first, steady = _time(dec, params, model, codes, repeats=args.repeats)
    print(f"deca.decode    B={b} (224² render{', detail' if args.detail else ''}): first call {first:.2f} s, "
          f"then {steady * 1e3:.1f} ms/call on {jax.devices()[0].platform}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
