"""Fitting throughput: ``python -m jface.bench fit [--batch 1,16,64] [--size 224] [--steps N | L P] [--json PATH]``.

Photos fitted per second by :func:`jface.fit.fit_flame` (landmark stage, then the photometric stage
with DECA's render) at a fixed step count (``--steps N``: N of each stage; ``--steps L P``), on
``default_flame_model()``. The photos are jface's own renders of random known codes over a grey
background with their exact landmarks, so the figure is also a check that the fit converges
(landmark error in 224-pixel units and the masked photometric error, before / after). Each batch
size is run once to compile, then timed over ``--repeats`` runs (median); the compile time is
reported separately. ``--track T``: also :func:`jface.fit.track_flame` on a rendered T-frame
sequence (the head turning; ``--chunk`` frames per chunk), frames tracked per second.

Imports only jax, numpy, optax and jface's library (no PIL, grain, tfds): it runs on a bare GPU box.
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
from jface.fit import FitConfig, TrackConfig, evaluate, fit_flame, jitter, mean_codes, track_flame
from jface.models import default_flame_model


def known_photos(model, batch: int, size: int, seed: int = 0, *, sequence: bool = False):
    """``(images (B, S, S, 3) in [0, 1], landmarks (B, 68, 2) NDC)``: renders of random codes
    (``sequence``: one identity and light, the head turning from yaw -0.4 to 0.4 over the batch)."""
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
    if sequence:
        for name in ("shape", "tex", "light", "cam"):
            codes[name] = np.repeat(codes[name][:1], batch, 0)
        codes["pose"][:, 1] = np.linspace(-0.4, 0.4, batch)
        codes["exp"] = 0.5 * np.outer(np.sin(np.linspace(0, 2 * np.pi, batch)), rng.normal(size=50))
    codes = {k: jnp.asarray(v, jnp.float32) for k, v in codes.items()}
    out = decode({}, model, codes, image_hw=(size, size), use_detail=False)
    alpha = np.asarray(out["alpha_images"])
    images = np.asarray(out["rendered_images"]) * alpha + 0.3 * (1.0 - alpha)
    return images.astype(np.float32), np.asarray(out["landmarks2d"], np.float32)


def run(batches=(1, 16), size: int = 224, steps=(50, 50), repeats: int = 1, track: int = 0, chunk: int = 16,
        log=print) -> dict:
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
    if track:
        results["track"] = track_run(model, track, size, config, chunk, log=log)
    return results


def track_run(model, frames: int, size: int, fit: FitConfig, chunk: int, log=print) -> dict:
    """Time :func:`jface.fit.track_flame` on a rendered ``frames``-frame sequence (compile separate:
    the first call tracks one chunk's worth of frames)."""
    images, landmarks = known_photos(model, frames, size, seed=1, sequence=True)
    config = TrackConfig(fit=fit, chunk=chunk)
    start = time.perf_counter()
    track_flame(model, images[:chunk], landmarks[:chunk], config)
    first = time.perf_counter() - start
    start = time.perf_counter()
    codes, _ = track_flame(model, images, landmarks, config)
    seconds = time.perf_counter() - start
    calls = 1 + -(-frames // chunk)
    after = evaluate(model, codes, images, landmarks, config=fit)
    row = {"frames": frames, "chunk": chunk, "seconds": seconds, "frames_per_second": frames / seconds,
           "compile_seconds": max(first - 2 * seconds / calls, 0.0),
           "landmark_error_px": float(after["landmark_error_px"].mean()),
           "photometric_error": float(after["photometric_error"].mean()), "yaw_jitter": jitter(codes["pose"][:, 1])}
    log(f"track {frames} frames at {size}², chunk {chunk}, {fit.landmark_steps}+{fit.photometric_steps} steps per "
        f"chunk: {seconds:.2f} s ({row['frames_per_second']:.2f} frames/s; compile ~{row['compile_seconds']:.1f} s); "
        f"landmark error {row['landmark_error_px']:.2f} px, photometric {row['photometric_error']:.3f}")
    return row


def _batches(text: str) -> list:
    try:
        values = [int(v) for v in text.replace(" ", ",").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected batch sizes like 1,16,64, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive batch sizes, got {text!r}")
    return values


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jface.bench fit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=_batches, nargs="+", default=[[1, 16]],
                        help="batch sizes, comma- or space-separated (1,16,64)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, nargs="+", default=[50, 50],
                        help="N (N landmark + N photometric steps) or L P")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--track", type=int, default=0, help="also track a rendered sequence of this many frames")
    parser.add_argument("--chunk", type=int, default=16, help="frames per chunk of --track")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if len(args.steps) not in (1, 2) or min(args.steps) < 0:
        parser.error(f"--steps: expected N or L P (non-negative), got {args.steps}")
    steps = args.steps * 2 if len(args.steps) == 1 else args.steps
    batches = [b for group in args.batch for b in group]
    results = run(batches, args.size, steps, args.repeats, track=args.track, chunk=args.chunk)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
