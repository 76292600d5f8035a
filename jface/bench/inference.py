"""DECA batched inference throughput: ``python -m jface.bench inference [--batch 64]``.

On one device (the first), with random network weights (only the layout matters) and random
images, times DECA's inference (``DECA.encode`` + ``DECA.decode``) as one jitted program and in parts:

* ``encode``: E_coarse + E_detail (ResNet-50 each, eval-mode BN) -> codes;
* ``flame``: FLAME + landmarks + camera (``decode`` with no rendering and no detail);
* ``render``: FLAME + rasterize + render at 224² (``decode(rendering=True, use_detail=False)``);
* ``detail``: FLAME + F_d + detail normals / shading in UV (``decode(rendering=False)``);
* ``full``: encode + decode with rendering and detail (the figure of issue 12: >= 2000 img/s
  on one H100 at batch 64).

The parts overlap (each decode part includes FLAME), so they do not add up to ``full``. The
networks compute in ``--dtype`` (bfloat16 by default); geometry, rendering and the detail normals
stay float32. ``--size small`` is a CPU smoke configuration; ``--profile DIR`` traces the full program.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jface import deca
from jface.bench import time_fn
from jface.bench.deca import (
    add_common_args,
    apply_cache,
    code_statistics,
    device_info,
    load_flame,
    log,
    peak_bytes,
    profile_calls,
    write_json,
)
from jface.deca import networks as nets
from jface.deca.stages import DecaSetup, Networks
from jface.deca.stages import encode as encode_codes

__all__ = ["main", "run", "build", "PARTS"]


def build(size: str, dtype: str, seed: int = 0):
    """``(params, encode, decode_fn)``: random-weight DECA networks in ``dtype`` and the two halves
    (:func:`jface.deca.stages.encode`, :func:`jface.deca.decode`)."""
    compute = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype]
    kwargs = {} if size == "full" else dict(stage_sizes=(1, 1, 1, 1), width=4, hidden=32)
    e_coarse = nets.ResNetEncoder(236, dtype=compute, **kwargs)
    e_detail = nets.ResNetEncoder(128, dtype=compute, **kwargs)
    generator = nets.DetailGenerator(dtype=compute)
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    image = jnp.zeros((1, 224, 224, 3), jnp.float32)
    params = {"E_flame": jax.jit(e_coarse.init)(keys[0], image),
              "E_detail": jax.jit(e_detail.init)(keys[1], image),
              "D_detail": jax.jit(generator.init)(keys[2], jnp.zeros((1, 181), jnp.float32))}
    mean, std = (jnp.asarray(x) for x in code_statistics())
    setup = DecaSetup(Networks(coarse=e_coarse, detail=e_detail, generator=generator), mean, std)

    def encode(params, images):
        return encode_codes(setup, params, images.astype(jnp.float32) / 255.0)

    def decode(params, model, codes, *, rendering, use_detail, image_hw):
        return deca.decode(params, model, codes, image_hw=image_hw, rendering=rendering,
                           use_detail=use_detail, detail_generator=generator)

    return params, encode, decode


PARTS = ("encode", "flame", "render", "detail", "full")


def run(size: str = "full", dtype: str = "bfloat16", batch: int | None = None, repeats: int = 10,
        model: str = "default", profile: str | None = None, parts=PARTS) -> dict:
    batch = batch or (64 if size == "full" else 4)
    render = 224 if size == "full" else 32
    device = jax.devices()[0]
    result = {"bench": "inference", "size": size, "dtype": dtype, "batch": batch, "render": render,
              **device_info([device])}
    t0 = time.perf_counter()
    flame = jax.device_put(load_flame(model), device)
    log(f"inference: FLAME model ready ({time.perf_counter() - t0:.1f}s)")
    params, encode, decode = build(size, dtype)
    params = jax.device_put(params, device)
    images = jax.device_put(np.random.default_rng(0).integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8), device)
    hw = (render, render)
    programs = {
        "encode": lambda p, m, x: encode(p, x),
        "flame": lambda p, m, c: decode(p, m, c, rendering=False, use_detail=False, image_hw=hw),
        "render": lambda p, m, c: decode(p, m, c, rendering=True, use_detail=False, image_hw=hw),
        "detail": lambda p, m, c: decode(p, m, c, rendering=False, use_detail=True, image_hw=hw),
        "full": lambda p, m, x: decode(p, m, encode(p, x), rendering=True, use_detail=True, image_hw=hw),
    }
    compiled_full = codes = None
    selected = [name for name in PARTS if name in parts or name == "full"]
    if any(n in selected for n in ("flame", "render", "detail")) and "encode" not in selected:
        selected.insert(0, "encode")  # the decode parts take its codes
    for name in selected:
        fn = programs[name]
        data = images if name in ("encode", "full") else codes
        start = time.perf_counter()
        compiled = jax.jit(fn).lower(params, flame, data).compile()
        compile_s = time.perf_counter() - start
        step_s = time_fn(compiled, params, flame, data, warmup=2, repeats=repeats)
        result[name] = {"step_s": step_s, "img_per_s": batch / step_s, "compile_s": compile_s}
        log(f"inference: {name:7s} {step_s * 1e3:9.2f} ms  {batch / step_s:9.1f} img/s  (compile {compile_s:.1f}s)")
        if name == "encode":
            codes = compiled(params, flame, images)
        if name == "full":
            compiled_full = compiled
    result["img_per_s"] = result["full"]["img_per_s"]
    result["target_img_per_s"] = 2000.0
    result["peak_bytes"] = peak_bytes([device])
    result["repeats"] = repeats
    if profile:
        profile_calls(compiled_full, (params, flame, images), profile)
        result["profile_dir"] = profile
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jface.bench inference", description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--batch", type=int, default=None, help="images per call (full: 64)")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help="comma-separated subset of encode,flame,render,detail,full ('full' always runs)")
    args = parser.parse_args(argv)
    apply_cache(args.cache)
    parts = tuple(p for p in args.parts.split(",") if p)
    if any(p not in PARTS for p in parts):
        parser.error(f"--parts: expected some of {','.join(PARTS)}, got {args.parts!r}")
    result = run(args.size, args.dtype, args.batch, args.repeats, args.model, args.profile, parts)
    print(json.dumps(result), flush=True)
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
