"""``python -m jface.flatten IMAGES_OR_DIRS... -o DIR``: 3DMM-STN flattened textures of photographs.

For every image with 68 landmarks (side file or ``--detector``): the STN crop (224 x 224, or the
run's image size with ``--weights``, around the landmark box, :func:`jface.data.crops.stn_crop`),
theta from a trained localiser (``--weights RUN``, a ``train.stn`` run folder, loaded from its
checkpoint alone by :func:`jface.training.stn.load_run`) or fitted to the landmarks
(``--fit-landmarks``, the gradient demo's optax variant, :func:`fit_theta`), then
:func:`jface.stn.flatten` (grid generator, bilinear sampler, visibility, masking: ``vl_nngrid``,
``vl_nnbilinearsampler``, ``vl_nnvisibilitymask``, ``vl_nnvisibility``).

Outputs under ``-o DIR``, per image ``DIR/<identity>/<stem>_*``:

* ``_texture.png`` the masked flattened texture (H' x W', texel (k // W', k % W') = vertex k,
  row 0 = forehead; BUILD_NOTES.md, "Frames and conventions"), ``_mask.png`` the visibility
  mask, ``_sampled.png`` before masking;
* ``_landmarks.png`` the crop with the 21 AFLW labels (green) and the model's landmarks (red);
* ``_flat.npz`` (texture, mask, theta, labels, crop transform);

and for identity folders ``DIR/mean/<identity>.png`` / ``.npy``, the mean flattened texture
(sum of masked textures / per-texel count of visible samples; 0 where never visible), and
``DIR/gallery.png`` with all means side by side. ``DIR/summary.json`` lists outputs and skips.

Landmarks: 68 iBUG points are reduced to the 21 AFLW points of the 3DMM-STN
(:data:`IBUG68_TO_AFLW21`); the two ear points have no iBUG counterpart and are left out of the fit.

Bad input (:mod:`jface.reconstruct.inputs`): a missing or unreadable input, ``--model`` or
``--weights``, or an output folder that is a file or cannot be written, is one line
``error: ...`` and exit status 2 before any work. A failure of one image (unreadable, no
landmarks, a malformed landmark file, a degenerate landmark box, outputs that cannot be written)
skips that image; the summary names every skipped file and why. Exit status 0 when at least one
image was processed, 1 when every image was skipped.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jface import export
from jface.data import detect
from jface.data.crops import stn_crop
from jface.errors import ModelFileError
from jface.models import default_stn_model, load_model
from jface.models.landmarks import AFLW21_EARS, AFLW21_FROM_IBUG68
from jface.models.prepare import require_landmark_set
from jface.reconstruct.inputs import (
    SKIPPED_ERRORS,
    InputError,
    LandmarkFileError,
    SkipImage,
    SkipReport,
    check_input_file,
    collect_inputs,
    describe_error,
    load_face,
    load_input_file,
    make_detector,
    prepare_output_dir,
    prepared_batches,
    progress_bar,
)
from jface.stn import layers
from jface.stn.fit import landmark_objective
from jface.training.checkpoint import RunFormatError
from jface.training.distributed import enable_compilation_cache
from jface.training.stn import load_run

__all__ = [
    "IBUG68_TO_AFLW21",
    "AFLW21_FROM_IBUG_VALID",
    "ibug68_to_aflw21",
    "initial_theta",
    "fit_theta",
    "flatten_batch",
    "mean_textures",
    "load_localiser_checkpoint",
    "run",
    "main",
]

# For each AFLW point (jface.models.landmarks.AFLW21_NAMES order) the iBUG-68 points (0-based)
# whose mean it is (jface.models.landmarks.AFLW21_FROM_IBUG68), without the ears: iBUG-68 has no
# ear points, so a fit to photographs' landmarks leaves them out.
IBUG68_TO_AFLW21 = tuple(() if k in AFLW21_EARS else group for k, group in enumerate(AFLW21_FROM_IBUG68))
AFLW21_FROM_IBUG_VALID = np.array([len(g) > 0 for g in IBUG68_TO_AFLW21])


def ibug68_to_aflw21(points68):
    """``(..., 68, D)`` iBUG points (any affine frame) -> ``(..., 21, D)`` AFLW points; the ears
    (no counterpart) are NaN. Use :data:`AFLW21_FROM_IBUG_VALID` to drop them."""
    points68 = np.asarray(points68, np.float64)
    if points68.shape[-2] != 68:
        raise ValueError(f"points68: expected (..., 68, D), got shape {points68.shape}")
    out = np.full(points68.shape[:-2] + (21, points68.shape[-1]), np.nan)
    for k, group in enumerate(IBUG68_TO_AFLW21):
        if group:
            out[..., k, :] = points68[..., list(group), :].mean(axis=-2)
    return out


def _fit_model(model, landmark_set="aflw21"):
    """The model with a landmark set ``<set>_ibug`` holding the AFLW points that iBUG-68 has."""
    indices = np.asarray(model.landmarks[landmark_set])[AFLW21_FROM_IBUG_VALID]
    return model.replace(landmarks={**model.landmarks, "aflw21_ibug": jnp.asarray(indices, jnp.int32)})


def initial_theta(model, labels, landmark_set="aflw21_ibug"):
    """theta ``(B, 6 + D)`` from a similarity fit of the mean shape's landmarks to ``labels (B, L, 2)``
    (y-up 224 frame): r = 0, alpha = 0, s and t by least squares (logs = log s / log 0.99)."""
    labels = np.asarray(labels, np.float64)
    model_pts = np.asarray(model.mean, np.float64)[np.asarray(model.landmarks[landmark_set])][:, :2]
    mc = model_pts - model_pts.mean(0)
    thetas = []
    for lab in labels:
        lc = lab - lab.mean(0)
        scale = max(float(np.sum(mc * lc) / np.sum(mc * mc)), 1e-3)
        t = lab.mean(0) - scale * model_pts.mean(0)
        logs = np.log(scale) / np.log(0.99)
        thetas.append(np.concatenate([[0.0, 0.0, 0.0], t, [logs], np.zeros(model.basis.shape[-1])]))
    return np.asarray(thetas, np.float32)


@partial(jax.jit, static_argnames=("num_steps",))
def _fit_steps(model, theta0, labels, scales, prior_weight, num_steps):
    optimiser = optax.adam(0.05)

    def objective(z):
        theta = theta0 + scales * z
        return (landmark_objective(model, theta, labels, "aflw21_ibug")
                + prior_weight * jnp.sum(jnp.square(theta[:, 6:])))

    def step(carry, _):
        z, state = carry
        loss, grad = jax.value_and_grad(objective)(z)
        updates, state = optimiser.update(grad, state, z)
        return (optax.apply_updates(z, updates), state), loss

    z = jnp.zeros_like(theta0)
    (z, _), losses = jax.lax.scan(step, (z, optimiser.init(z)), None, length=num_steps)
    return theta0 + scales * z, losses


def fit_theta(model, labels21, *, steps: int = 300, prior_weight: float = 1.0, landmark_set="aflw21"):
    """Fit theta to AFLW labels by gradient descent: the optax Adam variant of the gradient demo
    (:func:`jface.stn.demo.fit_adam`: theta = theta0 + scales z, Adam lr 0.05, its per-group scales;
    landmark loss of :func:`jface.stn.demo.landmark_objective`), plus ``prior_weight`` ||alpha||^2
    (pixels^2 per unit coefficient^2) so that the D coefficients stay plausible with only 19 points,
    from :func:`initial_theta`, for a fixed number of steps (one compile per batch shape).

    ``labels21 (B, 21, 2)`` in the y-up 224 frame (ears may be NaN: they are not used). Returns
    ``(theta (B, 6 + D) float32, losses (steps,))`` where losses are the landmark + prior totals.
    """
    fit_model = _fit_model(model, landmark_set)
    labels = np.asarray(labels21, np.float64)[:, AFLW21_FROM_IBUG_VALID]
    if not np.all(np.isfinite(labels)):
        raise ValueError("labels21: non-finite values among the 19 fitted AFLW points")
    theta0 = initial_theta(fit_model, labels)
    num_coeffs = theta0.shape[1] - 6
    scales = np.concatenate([np.full(3, 0.05), np.full(2, 5.0), np.full(1, 5.0), np.ones(num_coeffs)])
    theta, losses = _fit_steps(fit_model, jnp.asarray(theta0), jnp.asarray(labels, jnp.float32),
                               jnp.asarray(scales, jnp.float32), jnp.float32(prior_weight), int(steps))
    return np.asarray(theta), np.asarray(losses)



@jax.jit
def _flatten_jit(model, theta, images):
    return jax.vmap(lambda th, im: layers.flatten(model, th, im))(theta, images)


def flatten_batch(model, theta, crops):
    """``theta (B, 6 + D)``, ``crops (B, 224, 224, 3)`` raw 0-255 -> numpy dict of
    :func:`jface.stn.flatten` outputs (texture, sampled, mask, points)."""
    out = _flatten_jit(model, jnp.asarray(theta, jnp.float32), jnp.asarray(crops, jnp.float32))
    return {k: np.asarray(out[k]) for k in ("texture", "sampled", "mask", "points")}


def mean_textures(textures, masks):
    """Mean flattened texture of one identity: ``sum_i texture_i / sum_i mask_i`` per texel.

    ``textures (n, H', W', C)`` masked textures, ``masks (n, H', W')`` 0/1. Texels never visible
    are 0. Returns ``(mean (H', W', C), count (H', W'))``.
    """
    textures = np.asarray(textures, np.float64)
    masks = np.asarray(masks, np.float64)
    count = masks.sum(0)
    total = (textures * masks[..., None]).sum(0)
    mean = np.where(count[..., None] > 0, total / np.maximum(count, 1.0)[..., None], 0.0)
    return mean, count


def load_localiser_checkpoint(path):
    """A ``train.stn`` run (its folder, its ``checkpoints`` folder or one step's folder) ->
    ``(model, predict, image_size)`` with ``predict(images (B, S, S, 3) 0-255) -> theta (B, 6 + D)``
    in the y-up frame of the run's ``image_size`` S (224 for the original).

    Everything comes from the run's checkpoint (:func:`jface.training.stn.load_run`: config, face
    model, theta whitening, parameters); no training data is generated.
    """
    try:
        loaded = load_run(path)
    except (OSError, RunFormatError) as err:
        raise InputError(f"--weights: {err}") from err
    return loaded.ctx.model, loaded.predict, int(loaded.config.image_size)


def _overlay(crop, labels21, fitted21):
    """Crop (224, 224, 3) 0-255 with labels (green) and fitted landmarks (red), y-up 224 frame."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(np.clip(np.round(crop), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    height = crop.shape[0]
    for points, colour in ((labels21, (0, 255, 0)), (fitted21, (255, 0, 0))):
        for x, y in points:
            if np.isfinite(x) and np.isfinite(y):
                c, r = float(x) - 1.0, height - float(y)  # y-up 1-based -> 0-based pixel
                draw.ellipse((c - 2, r - 2, c + 2, r + 2), outline=colour, width=1)
    return np.asarray(image)


def _gallery(means: dict, zoom: int = 2):
    from PIL import Image, ImageDraw

    tiles = []
    for name, mean in means.items():
        tile = Image.fromarray(export.to_uint8(mean, (0.0, 255.0)))
        tile = tile.resize((tile.width * zoom, tile.height * zoom), Image.NEAREST)
        canvas = Image.new("RGB", (tile.width, tile.height + 14), (255, 255, 255))
        canvas.paste(tile, (0, 14))
        ImageDraw.Draw(canvas).text((2, 1), name[:28], fill=(0, 0, 0))
        tiles.append(canvas)
    width = sum(t.width for t in tiles) + 4 * (len(tiles) - 1)
    sheet = Image.new("RGB", (width, max(t.height for t in tiles)), (255, 255, 255))
    x = 0
    for tile in tiles:
        sheet.paste(tile, (x, 0))
        x += tile.width + 4
    return np.asarray(sheet)


def _write_item(out_dir, item, stem, flat, theta, crops, labels, transform, b, aflw_indices) -> dict:
    """Write one image's products (module docstring); returns its summary record."""
    folder = out_dir / item.identity
    fitted = flat["points"][b][aflw_indices]
    paths = {
        "texture": export.save_png(folder / f"{stem}_texture.png", flat["texture"][b], (0, 255)),
        "sampled": export.save_png(folder / f"{stem}_sampled.png", flat["sampled"][b], (0, 255)),
        "mask": export.save_png(folder / f"{stem}_mask.png", flat["mask"][b]),
        "landmarks": export.save_png(folder / f"{stem}_landmarks.png", _overlay(crops[b], labels[b], fitted)),
    }
    np.savez(folder / f"{stem}_flat.npz", texture=flat["texture"][b], mask=flat["mask"][b], theta=theta[b],
             labels21=labels[b], fitted21=fitted, crop_matrix=transform.matrix())
    paths["npz"] = folder / f"{stem}_flat.npz"
    valid = AFLW21_FROM_IBUG_VALID
    error = float(np.sqrt(np.mean(np.sum((fitted[valid] - labels[b][valid]) ** 2, -1))))
    return {"image": str(item.path), "identity": item.identity, "landmark_rmse_px": error,
            **{k: str(v) for k, v in paths.items()}}


def _unique_stem(item, used):
    stem = item.path.stem
    key = (item.identity, stem)
    n = 1
    while key in used:
        n += 1
        key = (item.identity, f"{stem}_{n}")
    used.add(key)
    return key[1]


def run(inputs, out_dir, *, model=None, weights=None, fit_landmarks=False, detector=False,
        batch_size: int = 8, steps: int = 300, crop_scale: float = 1.6, log=print):
    """The tool's work (see the module docstring); returns the summary dict (``processed``
    counts the images with outputs, ``skipped`` lists the others and why)."""
    if (weights is None) == (not fit_landmarks):
        raise InputError("expected exactly one of --weights RUN or --fit-landmarks")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"--batch {batch_size}: expected a positive number of images per batch")
    items = collect_inputs(inputs)
    out_dir = prepare_output_dir(out_dir, "-o")
    if weights is not None:
        check_input_file(weights, "--weights", folder=True)
    det = make_detector(detector)
    predict = None
    crop_size = 224
    if weights is not None:
        model, predict, crop_size = load_localiser_checkpoint(weights)
    elif model is None:
        model = default_stn_model()
    grid_hw = tuple(model.grid_hw) if model.grid_hw is not None else None
    used, outputs = set(), []
    per_identity: dict = {}
    aflw_indices = np.asarray(model.landmarks["aflw21"])

    def prepare(item):
        loaded, reason = load_face(item, det)
        if loaded is None:
            raise SkipImage(reason)
        image, landmarks = loaded
        crop, lab68, transform = stn_crop(image.astype(np.float64), landmarks, scale=crop_scale, out_size=crop_size)
        return crop, ibug68_to_aflw21(lab68[:, :2]), transform

    bar = progress_bar(len(items), "flatten")
    report = SkipReport(write=bar.write)
    try:
        for batch in prepared_batches(items, prepare, report, batch_size, bar):
            crops = [prepared[0] for _, prepared in batch]
            labels = [prepared[1] for _, prepared in batch]
            # pad to a fixed batch so that every batch reuses one compiled shape
            pad = batch_size - len(batch)
            crops_arr = np.stack(crops + [crops[-1]] * pad).astype(np.float32)
            labels_arr = np.stack(labels + [labels[-1]] * pad)
            if predict is not None:
                theta = predict(crops_arr)
            else:
                theta, _ = fit_theta(model, labels_arr, steps=steps)
            flat = flatten_batch(model, theta, crops_arr)
            for b, (item, (_, _, transform)) in enumerate(batch):
                if not np.all(np.isfinite(theta[b])):
                    report.add(item.path, "non-finite theta (the fit or the localiser diverged)")
                    continue
                try:
                    record = _write_item(out_dir, item, _unique_stem(item, used), flat, theta, crops_arr, labels_arr,
                                         transform, b, aflw_indices)
                except SKIPPED_ERRORS as err:
                    report.add(item.path, f"cannot write its outputs in {out_dir / item.identity} "
                                          f"({describe_error(err)})")
                    continue
                outputs.append(record)
                if item.from_folder:
                    per_identity.setdefault(item.identity, []).append((flat["texture"][b], flat["mask"][b]))
            bar.update(len(batch))
    finally:
        bar.close()  # before the summary, so that it does not print over the bar

    means = {}
    for identity, pairs in per_identity.items():
        mean, count = mean_textures([p[0] for p in pairs], [p[1] for p in pairs])
        means[identity] = mean
        export.save_png(out_dir / "mean" / f"{identity}.png", mean, (0, 255))
        np.save(out_dir / "mean" / f"{identity}.npy", mean.astype(np.float32))
        np.save(out_dir / "mean" / f"{identity}_count.npy", count.astype(np.float32))
    if means:
        export.save_png(out_dir / "gallery.png", _gallery(means))
    summary = {
        "processed": len(outputs),
        "model_grid": grid_hw,
        "theta_source": "weights" if predict is not None else "fit-landmarks",
        "images": outputs,
        "mean_textures": {k: str(out_dir / "mean" / f"{k}.png") for k in means},
        "gallery": str(out_dir / "gallery.png") if means else None,
        "skipped": [{"image": p, "reason": r} for p, r in report.skipped],
    }
    export.save_json(out_dir / "summary.json", summary)
    log(report.summary(len(outputs)))
    return summary


def main(argv=None):
    """The command line (``python -m jface.flatten --help``). Exit status: 0 when at least one
    image was processed, 1 when every image was skipped, 2 for a usage or input error (one line)."""
    parser = argparse.ArgumentParser(prog="python -m jface.flatten", description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="image files and/or folders (identity sub-folders)")
    parser.add_argument("-o", "--out", required=True, help="output folder")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", "--checkpoint", dest="weights", metavar="RUN",
                        help="train.stn run folder (its trained localiser; --checkpoint is the old name)")
    source.add_argument("--fit-landmarks", action="store_true", help="fit theta to the landmarks by gradient descent")
    parser.add_argument("--model", help="model npz (jface.models.save_model); default: default_stn_model()")
    parser.add_argument("--detector", nargs="?", const="mediapipe", choices=sorted(detect.DETECTORS),
                        help="landmarks of images without a side file from a detector: mediapipe (the default with "
                             "no value; the [detect] extra) or dlib (the [detector] extra, non-commercial model)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300, help="Adam steps of --fit-landmarks")
    parser.add_argument("--crop-scale", type=float, default=1.6, help="crop size / landmark box size")
    args = parser.parse_args(argv)
    enable_compilation_cache()  # JFACE_COMPILATION_CACHE=0 turns it off
    try:
        collect_inputs(args.inputs)
        prepare_output_dir(args.out, "-o")
        if args.weights is not None:
            check_input_file(args.weights, "--weights", folder=True)
        model = load_input_file("--model", args.model, load_model) if args.model else None
        if model is not None:  # a model prepared without --landmarks: one sentence saying how to add them
            require_landmark_set(model, "aflw21", args.model, needed_by="python -m jface.flatten")
        summary = run(args.inputs, args.out, model=model, weights=args.weights, fit_landmarks=args.fit_landmarks,
                      detector=args.detector, batch_size=args.batch, steps=args.steps, crop_scale=args.crop_scale)
    except (InputError, LandmarkFileError, ImportError, ModelFileError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if summary["processed"] == 0:
        print(f"error: no image could be processed ({len(summary['skipped'])} skipped; reasons above)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
