"""``python -m jface.stn.demo``: the original ``demo.m`` with jface's functions.

(a) Fit theta to 21 landmarks by gradient descent with ``jax.grad``, with demo.m's setup: r = 0,
    t = image centre (112, 112), logs = 1 (s = 0.99), alpha ~ N(0, 1); landmark loss only (vis = 1,
    weight 1, summed over the batch); theta <- theta - 1e-6 dtheta with the alpha gradient x 101;
    stop when |loss_k - loss_{k-1}| < 1. Then an optax Adam variant of the same fit.
(b) With the fitted theta: grid -> sampler -> visibility -> masking, and the five panels per image
    (input, projected vertices, sampled texture, mask, masked texture) as PNG.

Run ``python -m jface.stn.demo -o DIR`` (the embedded default model and generated images) or
``python -m jface.stn.demo --data demodata.mat --model stn_model.npz -o DIR`` (the original's demo
images with a user-prepared model from ``jface.models.save_model``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jface import cli
from jface.errors import ModelFileError
from jface.files.mat import load_mat
from jface.models import default_stn_model, load_model
from jface.models.prepare import require_landmark_set
from jface.stn import layers
from jface.stn.fit import fit_adam, fit_gd, init_theta, landmark_objective
from jface.stn.toy import render_image, toy_grid_model
from jface.training.distributed import enable_compilation_cache

__all__ = [
    "init_theta",
    "landmark_objective",
    "fit_gd",
    "fit_adam",
    "load_demodata",
    "generate_demo_data",
    "demo_model",
    "panels",
    "save_panels",
    "main",
]


def load_demodata(path):
    """Read the original ``demodata.mat``: ``Images`` 224x224x3xB, ``Labels`` 1x2x21xB.

    Returns ``(images (B, 224, 224, 3) float32 raw 0-255, labels (B, 21, 2) float32)`` with labels
    (x, y) in the y-up 224-pixel frame (x = 1-based column, y = 225 - 1-based row).
    """
    mat = load_mat(path)  # bounded; a missing, unreadable or corrupt file is a ModelFileError naming it
    if "Images" not in mat or "Labels" not in mat:
        raise ModelFileError(path, "expected variables 'Images' (HxWx3xB) and 'Labels' (1x2xLxB)")
    images = np.asarray(mat["Images"], np.float32)
    labels = np.asarray(mat["Labels"], np.float32)
    if images.ndim != 4 or images.shape[2] != 3 or labels.ndim != 4 or labels.shape[:2] != (1, 2):
        raise ModelFileError(
            path, f"expected Images HxWx3xB and Labels 1x2xLxB, got {images.shape} and {labels.shape}"
        )
    return images.transpose(3, 0, 1, 2), labels[0].transpose(2, 1, 0)


def demo_model(toy_res=None):
    """The demo's model and its name: ``jface.models.default_stn_model()``, or the procedural
    :func:`jface.stn.toy.toy_grid_model` when ``toy_res`` is given."""
    if toy_res is None:
        return default_stn_model(), "default_stn_model"
    return toy_grid_model(toy_res), f"toy_grid_model({toy_res})"


def generate_demo_data(model, batch: int = 6, *, seed: int = 0, image_hw=(224, 224),
                       landmark_set: str = "aflw21"):
    """Synthetic demo inputs: ``batch`` renders of ``model`` at random poses/coefficients.

    theta_gt: r ~ U(+-0.35) yaw, U(+-0.15) pitch/roll; t = centre + U(+-8) px; logs chosen so the
    model's height fills ~70 % of the image; alpha ~ N(0, 1). Images come from
    :func:`jface.stn.toy.render_image`; labels are the exact projected landmarks. Returns
    ``(images (B, H, W, 3), labels (B, 21, 2), theta_gt (B, 6 + D))`` as numpy float32.
    """

    rng = np.random.default_rng(seed)
    mean = np.asarray(model.mean, np.float64)
    height_mm = mean[:, 1].max() - mean[:, 1].min()
    logs = np.log(0.7 * image_hw[0] / height_mm) / np.log(0.99)
    num_coeffs = model.basis.shape[-1]
    thetas, images = [], []
    for _ in range(batch):
        r = rng.uniform(-1, 1, 3) * np.array([0.15, 0.35, 0.15])
        t = np.array([image_hw[1] / 2.0, image_hw[0] / 2.0]) + rng.uniform(-8, 8, 2)
        theta = np.concatenate([r, t, [logs + rng.uniform(-3, 3)], rng.normal(size=num_coeffs)])
        thetas.append(theta)
        images.append(render_image(model, theta, image_hw))
    thetas = np.asarray(thetas)
    indices = np.asarray(model.landmarks[landmark_set])
    labels = np.stack([np.asarray(layers.project(model, th)["points"])[indices] for th in thetas])
    return np.stack(images), labels.astype(np.float32), thetas.astype(np.float32)


def panels(model, theta, images, *, padding: str = "symmetric"):
    """Part (b): per image the flattened outputs of the fitted theta ``(B, 6 + D)``.

    Returns a dict of numpy arrays: ``points (B, N, 2)``, ``sampled (B, H', W', 3)``,
    ``mask (B, H', W')``, ``texture (B, H', W', 3)`` (``demo.m``'s grid -> sampler -> mask -> masking).
    """
    out = jax.jit(jax.vmap(lambda th, im: layers.flatten(model, th, im, padding=padding)))(
        jnp.asarray(theta, jnp.float32), jnp.asarray(images, jnp.float32))
    return {k: np.asarray(out[k]) for k in ("points", "sampled", "mask", "texture")}


def _to_uint8(a):
    return np.clip(np.round(a), 0, 255).astype(np.uint8)


def save_panels(out_dir, images, flat, labels=None, landmarks=None, prefix: str = "stn_demo"):
    """Write one PNG per image with the five panels of demo.m: input, projected vertices (blue;
    with label landmarks green and predicted red when given), sampled texture, mask, masked texture.
    Textures are upscaled (nearest) to the image height. Returns the list of paths."""
    from PIL import Image, ImageDraw

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    height, width = images.shape[1:3]
    paths = []
    for b in range(images.shape[0]):
        base = Image.fromarray(_to_uint8(images[b]))
        verts = base.copy()
        draw = ImageDraw.Draw(verts)
        pts = flat["points"][b]
        # y-up 1-based frame -> 0-based pixel: col = x - 1, row = H - y (BUILD_NOTES.md, "Frames and conventions").
        for x, y in pts[:: max(1, pts.shape[0] // 4000)]:
            draw.point((float(x) - 1.0, height - float(y)), fill=(60, 120, 255))
        for group, colour in ((labels, (0, 255, 0)), (landmarks, (255, 0, 0))):
            if group is not None:
                for x, y in np.asarray(group[b]):
                    c, r = float(x) - 1.0, height - float(y)
                    draw.ellipse((c - 2, r - 2, c + 2, r + 2), outline=colour)
        tex_size = (height * flat["sampled"].shape[2] // flat["sampled"].shape[1], height)
        sampled = Image.fromarray(_to_uint8(flat["sampled"][b])).resize(tex_size, Image.NEAREST)
        mask = Image.fromarray(_to_uint8(flat["mask"][b] * 255)).convert("RGB").resize(tex_size, Image.NEAREST)
        texture = Image.fromarray(_to_uint8(flat["texture"][b])).resize(tex_size, Image.NEAREST)
        tiles = [base, verts, sampled, mask, texture]
        sheet = Image.new("RGB", (sum(t.size[0] for t in tiles) + 4 * 4, height), (255, 255, 255))
        x0 = 0
        for tile in tiles:
            sheet.paste(tile, (x0, 0))
            x0 += tile.size[0] + 4
        path = out_dir / f"{prefix}_{b}.png"
        sheet.save(path)
        paths.append(path)
    return paths


def run(model, images, labels, out_dir, *, seed: int = 0, max_steps: int = 100_000,
        adam_lr: float = 0.05, padding: str = "symmetric", log=print):
    """Run parts (a) and (b); returns a summary dict (also written to ``out_dir/summary.json``)."""
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels, np.float32)
    num_coeffs = model.basis.shape[-1]
    theta0 = init_theta(jax.random.PRNGKey(seed), images.shape[0], num_coeffs, images.shape[1:3])
    start = time.perf_counter()
    theta_gd, traj_gd = fit_gd(model, labels, theta0, max_steps=max_steps)
    time_gd = time.perf_counter() - start
    log(f"gradient descent (demo.m rule): {len(traj_gd)} steps, loss {traj_gd[0]:.1f} -> {traj_gd[-1]:.2f}")
    start = time.perf_counter()
    theta_adam, traj_adam = fit_adam(model, labels, theta0, learning_rate=adam_lr, max_steps=max_steps)
    time_adam = time.perf_counter() - start
    log(f"optax Adam: {len(traj_adam)} steps, loss {traj_adam[0]:.1f} -> {traj_adam[-1]:.2f}")
    flat = panels(model, theta_gd, images, padding=padding)
    indices = np.asarray(model.landmarks["aflw21"])
    paths = save_panels(out_dir, images, flat, labels=labels, landmarks=flat["points"][:, indices])
    summary = {
        "gd_steps": int(len(traj_gd)), "gd_loss": [float(traj_gd[0]), float(traj_gd[-1])],
        "gd_seconds": time_gd,
        "adam_steps": int(len(traj_adam)), "adam_loss": [float(traj_adam[0]), float(traj_adam[-1])],
        "adam_seconds": time_adam,
        "visible_fraction": float(flat["mask"].mean()),
        "panels": [str(p) for p in paths],
    }
    Path(out_dir, "summary.json").write_text(json.dumps(summary, indent=2))
    log(f"wrote {len(paths)} panel images to {out_dir}")
    return summary


def main(argv=None) -> int:
    """The command line (module docstring); a user's mistake is one line and exit status 2."""
    parser = cli.ArgumentParser(prog="python -m jface.stn.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="demodata.mat (Images 224x224x3xB, Labels 1x2x21xB); default: generated images")
    parser.add_argument("--model", help="model npz from jface.models.save_model; default: default_stn_model()")
    parser.add_argument("--toy-res", type=int, default=None, help="use the procedural toy_grid_model(RES) instead")
    parser.add_argument("--batch", type=int, default=6, help="number of generated images (without --data)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=100_000)
    parser.add_argument("--adam-lr", type=float, default=0.05)
    parser.add_argument("--padding", default="symmetric", choices=("symmetric", "matconvnet_cpu"))
    parser.add_argument("-o", "--out", required=True, help="output folder for PNGs and summary.json")
    args = parser.parse_args(argv)
    return cli.run("python -m jface.stn.demo", lambda: _main(args), (ModelFileError,))


def _main(args) -> int:
    out = cli.check_output_dir(args.out, "-o")
    enable_compilation_cache()  # a second demo loads its compiled fits instead of compiling them
    images = labels = None
    if args.data:  # the user's files first: a mistake there is reported before any model is built
        images, labels = load_demodata(args.data)
    if args.model:
        model, name = load_model(args.model), args.model
        require_landmark_set(model, "aflw21", args.model, needed_by="python -m jface.stn.demo")
    else:
        model, name = demo_model(args.toy_res)
    print(f"model: {name}, N = {model.num_vertices}, grid {layers.grid_hw_of(model)}")
    if images is None:
        images, labels, _ = generate_demo_data(model, args.batch, seed=args.seed)
    run(model, images, labels, out, seed=args.seed, max_steps=args.max_steps,
        adam_lr=args.adam_lr, padding=args.padding)
    return 0


if __name__ == "__main__":
    sys.exit(main())
