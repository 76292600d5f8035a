"""Fitting throughput: ``python -m jface.bench fit [--batch 1 16] [--size 224] [--steps 50 50] [--json PATH]``.

Photos fitted per second by :func:`jface.fit.fit_flame` (landmark stage, then the photometric stage
with DECA's render) at a fixed step count, on ``default_flame_model()``. The photos are jface's own
renders of random known codes over a grey background with their exact landmarks, so the figure
is also a check that the fit converges (landmark error in 224-pixel units and the masked
photometric error, before / after). Each batch size is run once to compile, then timed over
``--repeats`` runs (median); the compile time is reported separately.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jface.deca import decode
from jface.fit import FitConfig, evaluate, fit_flame, mean_codes
from jface.models import default_flame_model


def known_photos(model, batch: int, size: int, seed: int = 0):
    """``(images (B, S, S, 3) in [0, 1], landmarks (B, 68, 2) NDC)``: renders of random codes."""
    rng = np.random.default_rng(seed)
    pose = np.zeros((batch, 6), np.float32)
    pose[:, :3] = rng.uniform(-0.3, 0.3, (batch, 3)) * [0.5, 1.0, 0.3]
    pose[:, 3] = rng.uniform(0.0, 0.15, batch)
    light = np.zeros((batch, 9, 3), np.float32)
    light[:, 0] = rng.uniform(2.5, 4.0, (batch, 3))
    light[:, 1:4] = 0.5 * rng.normal(size=(batch, 3, 3))
    codes = {"shape": 0.8 * rng.normal(size=(batch, 100)), "exp": 0.5 * rng.normal(size=(batch, 50)), "pose": pose,
             "cam": np.stack([rng.uniform(8, 10, batch), rng.uniform(-0.02, 0.02, batch),
                              rng.uniform(-0.02, 0.02, batch)], 1),
             "tex": rng.normal(size=(batch, 50)), "light": light}
    codes = {k: jnp.asarray(v, jnp.float32) for k, v in codes.items()}
    out = decode({}, model, codes, image_hw=(size, size), use_detail=False)
    alpha = np.asarray(out["alpha_images"])
    images = np.asarray(out["rendered_images"]) * alpha + 0.3 * (1.0 - alpha)
    return images.astype(np.float32), np.asarray(out["landmarks2d"], np.float32)


def run(batches=(1, 16), size: int = 224, steps=(50, 50), repeats: int = 1, log=print) -> dict:
    model = default_flame_model()
    config = FitConfig(landmark_steps=int(steps[0]), photometric_steps=int(steps[1]), render_size=size)
    results = {"device": str(jax.devices()[0]), "platform": platform.platform(), "size": size,
               "landmark_steps": config.landmark_steps, "photometric_steps": config.photometric_steps, "runs": []}
    for batch in batches:
        images, landmarks = known_photos(model, batch, size)
        start = time.perf_counter()
        codes, _ = fit_flame(model, images, landmarks, config=config)
        first = time.perf_counter() - start
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            codes, history = fit_flame(model, images, landmarks, config=config)
            times.append(time.perf_counter() - start)
        seconds = float(np.median(times))
        before = evaluate(model, mean_codes(model, landmarks), images, landmarks, config=config)
        after = evaluate(model, codes, images, landmarks, config=config)
        photo = history["photometric"]["photometric_error"]
        row = {"batch": batch, "seconds": seconds, "compile_seconds": max(first - seconds, 0.0),
               "photos_per_second": batch / seconds,
               "landmark_error_px": [float(before["landmark_error_px"].mean()),
                                     float(after["landmark_error_px"].mean())],
               "photometric_error": [float(photo[0].mean()), float(photo[-1].mean())]}
        results["runs"].append(row)
        log(f"batch {batch:3d} at {size}², {config.landmark_steps}+{config.photometric_steps} steps: "
            f"{seconds:.2f} s ({row['photos_per_second']:.3f} photos/s; compile ~{row['compile_seconds']:.1f} s); "
            f"landmark error {row['landmark_error_px'][0]:.2f} -> {row['landmark_error_px'][1]:.2f} px, "
            f"photometric {row['photometric_error'][0]:.3f} -> {row['photometric_error'][1]:.3f}")
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jface.bench fit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, nargs=2, default=[50, 50], metavar=("LANDMARK", "PHOTOMETRIC"))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    results = run(args.batch, args.size, args.steps, args.repeats)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
