"""A silhouette term moves a mesh: ``python -m jface.demos.silhouette_fit [--steps N] [--size S] [--json OUT]``.

Fits a 2-D translation and a log-scale of a coarse procedural head (:func:`jface.flame.heads.procedural_head`,
12 rings x 16 meridians) to the silhouette of the same head shifted and scaled, starting from the
wrong pose, with optax's Adam (cosine-decayed step size). The silhouette is the hard path plus
:func:`jface.render.antialias`: ``rasterize -> interpolate(ones) -> antialias``; its only
vertex-position gradient is the one antialias gives at the silhouette edges (the hard mask alone
has none). Loss: mean squared difference to the target's antialiased silhouette. Prints the loss
and the pose error every few steps and the factor by which the loss fell; ``--json OUT`` writes
them. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jface.flame.heads import procedural_head
from jface.render import antialias, edge_neighbours, interpolate, rasterize
from jface.training.distributed import enable_compilation_cache

__all__ = ["demo_mesh", "silhouette", "fit", "main"]

TARGET = {"shift": (0.12, -0.08), "log_scale": float(np.log(1.15))}
START = {"shift": (0.0, 0.0), "log_scale": 0.0}


def demo_mesh() -> tuple[np.ndarray, np.ndarray]:
    """A coarse closed head in NDC (x right, y down, smaller z = closer), spanning about +-0.5."""
    head = procedural_head(n_rings=12, n_lon=16, num_vertices=0)
    v = head["vertices"].astype(np.float64)
    v = v - 0.5 * (v.min(0) + v.max(0))
    v = v / np.max(np.abs(v[:, :2])) * 0.5
    ndc = np.stack([v[:, 0], -v[:, 1], -v[:, 2]], axis=-1)
    return ndc.astype(np.float32), head["faces"].astype(np.int32)


def _posed(vertices, params):
    scale = jnp.exp(params["log_scale"])
    xy = scale * vertices[:, :2] + params["shift"]
    return jnp.concatenate([xy, scale * vertices[:, 2:]], axis=-1)


def silhouette(vertices, faces, image_hw, topology=None):
    """Antialiased silhouette ``(H, W)`` of NDC ``vertices``: rasterize -> interpolate(ones) -> antialias."""
    fragments = rasterize(vertices, faces, image_hw)
    mask = interpolate(fragments, jnp.ones((vertices.shape[0], 1), vertices.dtype), faces)
    return antialias(mask, fragments, vertices, faces, topology=topology)[..., 0]


def fit(steps: int = 60, size: int = 48, learning_rate: float = 0.03, log_every: int = 10) -> dict:
    """Run the fit; returns ``{"loss": [...], "pose_error": [...], "target", "final", "loss_ratio"}``."""
    vertices, faces = demo_mesh()
    vertices, faces = jnp.asarray(vertices), jnp.asarray(faces)
    topology = edge_neighbours(faces)
    hw = (size, size)
    as_params = lambda p: {"shift": jnp.asarray(p["shift"], vertices.dtype),  # noqa: E731
                           "log_scale": jnp.asarray(p["log_scale"], vertices.dtype)}
    target_params = as_params(TARGET)
    target = silhouette(_posed(vertices, target_params), faces, hw, topology)

    def loss_fn(params):
        return jnp.mean((silhouette(_posed(vertices, params), faces, hw, topology) - target) ** 2)

    def pose_error(params):
        return float(jnp.linalg.norm(params["shift"] - target_params["shift"])
                     + jnp.abs(params["log_scale"] - target_params["log_scale"]))

    optimiser = optax.adam(optax.cosine_decay_schedule(learning_rate, steps, alpha=0.05))

    @jax.jit
    def step(params, state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = optimiser.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    params = as_params(START)
    state = optimiser.init(params)
    losses, errors = [], []
    for i in range(steps):
        errors.append(pose_error(params))
        params, state, loss = step(params, state)
        losses.append(float(loss))
        if log_every and (i % log_every == 0 or i == steps - 1):
            print(f"step {i:4d}  silhouette loss {losses[-1]:.3e}  pose error {errors[-1]:.4f}", flush=True)
    final_loss = float(loss_fn(params))
    losses.append(final_loss)
    errors.append(pose_error(params))
    return {
        "loss": losses,
        "pose_error": errors,
        "target": {"shift": list(TARGET["shift"]), "log_scale": TARGET["log_scale"]},
        "final": {"shift": [float(x) for x in params["shift"]], "log_scale": float(params["log_scale"])},
        "loss_ratio": losses[0] / max(final_loss, 1e-30),
        "image": size,
        "steps": steps,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jface.demos.silhouette_fit", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--size", type=int, default=48, help="image edge in pixels")
    parser.add_argument("--lr", type=float, default=0.03, help="Adam peak learning rate (cosine decay)")
    parser.add_argument("--json", help="write the loss / pose-error history here")
    args = parser.parse_args(argv)
    enable_compilation_cache()  # JFACE_COMPILATION_CACHE=0 turns it off
    if args.steps < 1 or args.size < 2:
        parser.error("--steps must be >= 1 and --size >= 2")
    result = fit(args.steps, args.size, args.lr)
    print(f"loss {result['loss'][0]:.3e} -> {result['loss'][-1]:.3e} (fell {result['loss_ratio']:.1f}x); "
          f"pose error {result['pose_error'][0]:.4f} -> {result['pose_error'][-1]:.4f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
