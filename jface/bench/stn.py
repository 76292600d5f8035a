"""3DMM-STN throughput: ``python -m jface.bench stn [--batch 64 --localiser vgg_face ...]``.

Times, on the default JAX device, (1) the geometry + texture pipeline alone (``apply_theta``: 3DMM,
projection, grid, bilinear sampler, visibility, masking, the four losses) and (2) a full training
step's forward + backward through the localiser (``jax.grad`` of ``forward(...)["loss"]``), on an
interleaved (image, mirror) batch of random 0-255 images. Prints one line per measurement and a JSON
summary. Compile time is reported separately from the steady-state time (median of ``--repeats``).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from jface import stn
from jface.models import default_stn_model, load_model
from jface.stn.toy import toy_grid_model


def _model(spec: str):
    if spec.startswith("toy:"):
        return toy_grid_model(int(spec.split(":", 1)[1]))
    if spec == "default":
        return default_stn_model()
    return load_model(spec)


def _time(fn, *args, repeats: int):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return compile_s, float(np.median(times))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jface.bench stn", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64, help="images per step (even: image/mirror pairs)")
    parser.add_argument("--model", default="default", help="'default', 'toy:RES' or a model npz")
    parser.add_argument("--localiser", default="vgg_face", choices=("vgg_face", "small"))
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    model = _model(args.model)
    model = jax.tree_util.tree_map(
        lambda x: jnp.asarray(x, jnp.float32) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) else x, model)
    num_coeffs = model.basis.shape[-1]
    size = args.image_size
    if args.localiser == "vgg_face":
        cfg = stn.LocaliserConfig(num_coeffs=num_coeffs, input_hw=(size, size),
                                  translation_init=(size / 2, size / 2))
    else:
        cfg = stn.LocaliserConfig.small(num_coeffs=num_coeffs, input_hw=(size, size))
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[args.dtype]
    localiser, params = stn.init_localiser(0, cfg, dtype=dtype)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.uniform(0, 255, (args.batch, size, size, 3)), jnp.float32)
    labels = jnp.asarray(np.concatenate(
        [rng.uniform(0.3 * size, 0.7 * size, (args.batch, 21, 2)), np.ones((args.batch, 21, 1))], -1), jnp.float32)
    theta = jnp.asarray(np.concatenate(
        [np.zeros((args.batch, 3)), np.full((args.batch, 2), size / 2), np.zeros((args.batch, 1)),
         rng.normal(size=(args.batch, num_coeffs))], 1), jnp.float32)

    geometry = jax.jit(lambda th, im, lb: stn.apply_theta(model, th, im, lb)["loss"])
    step = jax.jit(jax.grad(lambda p, im, lb: stn.forward(p, model, im, lb, localiser=localiser)["loss"]))
    results = {"device": str(jax.devices()[0]), "batch": args.batch, "model": args.model,
               "vertices": int(model.num_vertices), "localiser": args.localiser, "dtype": args.dtype}
    for name, fn, fargs in (("apply_theta", geometry, (theta, images, labels)),
                            ("train_step_grad", step, (params, images, labels))):
        compile_s, step_s = _time(fn, *fargs, repeats=args.repeats)
        results[name] = {"compile_s": compile_s, "step_s": step_s, "images_per_s": args.batch / step_s}
        print(f"{name}: compile {compile_s:.2f} s, step {step_s * 1e3:.2f} ms, "
              f"{args.batch / step_s:.1f} images/s")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
