"""The 3DMM-STN fit to photographs: :func:`fit_stn`, ``demo.m``'s landmark fit generalised.

``demo.m`` fits theta = (r, t, logs, alpha) to 21 landmarks by gradient descent
(:mod:`jface.stn.fit`); here the same objective (:func:`jface.stn.fit.landmark_objective`, the
landmark loss of ``vl_nnprojection``'s points) plus a coefficient prior, with optax Adam on
theta = theta0 + scales z (the per-group scales of :func:`jface.stn.fit.fit_adam`) for a fixed
number of steps under one jit, then the flattened texture of every photograph with the fitted
theta (:func:`jface.stn.flatten`: grid generator, bilinear sampler, visibility, masking).

Frames: labels ``(B, L, 2)`` in the y-up 224-pixel frame of the STN (x = 1-based column,
y = H + 1 - 1-based row; BUILD_NOTES.md, "Frames and conventions"); images ``(B, H, W, 3)`` raw
values (0-255 as the original), textures in the images' units.
"""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jface.stn import layers
from jface.stn.fit import landmark_objective

__all__ = ["StnFitConfig", "fit_stn", "similarity_theta"]


@dataclasses.dataclass(frozen=True)
class StnFitConfig:
    """Settings of :func:`fit_stn` (frozen, hashable: static under jit). ``steps`` Adam steps of
    ``learning_rate`` on z (theta = theta0 + scales z with r: ``scale_r`` rad, t: ``scale_t`` px,
    logs: ``scale_logs``, alpha: ``scale_alpha``); ``prior_weight`` x ||alpha||^2 (pixels^2 per unit
    coefficient^2) keeps the coefficients plausible with few landmarks; ``landmark_set`` names the
    model's landmark indices that the labels' points are."""

    steps: int = 300
    learning_rate: float = 0.05
    prior_weight: float = 1.0
    scale_r: float = 0.05
    scale_t: float = 5.0
    scale_logs: float = 5.0
    scale_alpha: float = 1.0
    landmark_set: str = "aflw21"

    def __post_init__(self):
        if not isinstance(self.steps, (int, np.integer)) or self.steps < 0:
            raise ValueError(f"config.steps: expected a non-negative int, got {self.steps!r}")


def similarity_theta(model, labels, landmark_set: str) -> jax.Array:
    """theta ``(B, 6 + D)`` that aligns the mean shape's landmarks with ``labels (B, L, 2)`` (y-up
    frame): r = 0, alpha = 0, scale s and translation t by least squares, logs = log s / log 0.99
    (the scale s = 0.99^logs of ``vl_nnprojection``)."""
    indices = jnp.asarray(model.landmarks[landmark_set], jnp.int32)
    model_pts = jnp.asarray(model.mean, jnp.float32)[indices][:, :2]
    mc = model_pts - model_pts.mean(0)
    num_coeffs = model.basis.shape[-1]

    def item(lab):
        lc = lab - lab.mean(0)
        scale = jnp.maximum(jnp.sum(mc * lc) / jnp.sum(mc * mc), 1e-3)
        t = lab.mean(0) - scale * model_pts.mean(0)
        logs = jnp.log(scale) / jnp.log(0.99)
        return jnp.concatenate([jnp.zeros(3), t, logs[None], jnp.zeros(num_coeffs)])

    return jax.vmap(item)(jnp.asarray(labels, jnp.float32))


@partial(jax.jit, static_argnames=("config",))
def _fit_program(model, theta0, labels, images, config):
    num_coeffs = theta0.shape[-1] - 6
    scales = jnp.concatenate([jnp.full(3, config.scale_r), jnp.full(2, config.scale_t),
                              jnp.full(1, config.scale_logs), jnp.full(num_coeffs, config.scale_alpha)])

    def per_item(theta):  # (B,): each item's landmark loss + prior, computed as a batch of one
        def one(th, lab):
            return (landmark_objective(model, th[None], lab[None], config.landmark_set)
                    + config.prior_weight * jnp.sum(jnp.square(th[6:])))
        return jax.vmap(one)(theta, labels)

    optimiser = optax.adam(config.learning_rate)

    def step(carry, _):
        z, state = carry
        losses, vjp = jax.vjp(lambda z_: per_item(theta0 + scales * z_), z)
        (grad,) = vjp(jnp.ones_like(losses))
        updates, state = optimiser.update(grad, state, z)
        return (optax.apply_updates(z, updates), state), losses

    z = jnp.zeros_like(theta0)
    (z, _), history = jax.lax.scan(step, (z, optimiser.init(z)), None, length=config.steps)
    theta = theta0 + scales * z
    history = jnp.concatenate([history, per_item(theta)[None]])
    flat = jax.vmap(lambda th, im: layers.flatten(model, th, im))(theta, images)
    return theta, flat, history


def fit_stn(model, images, labels, init=None, config: StnFitConfig = StnFitConfig()):
    """Fit the 3DMM-STN's theta to landmarks and flatten every photograph's texture with it.

    Args:
      model: a UV-grid :class:`jface.models.MorphableModel` (:func:`jface.models.default_stn_model`).
      images: ``(B, H, W, 3)`` raw values (0-255 as ``demo.m``); the grid generator's frame is
        their size.
      labels: ``(B, L, 2)`` the model's ``config.landmark_set`` points in the y-up pixel frame. A
        point that no photo has (e.g. the AFLW ears, which iBUG-68 lacks) may be NaN in every item:
        it is left out of the fit; a NaN in some items only is an error.
      init: None (:func:`similarity_theta`) or theta ``(B, 6 + D)`` (e.g. a trained localiser's).
      config: :class:`StnFitConfig`.

    Returns ``(theta (B, 6 + D), texture, history)`` as numpy: ``texture`` the flattened outputs
    ``{'texture' (B, H', W', 3) masked, 'sampled', 'mask' (B, H', W'), 'points' (B, N, 2)}``;
    ``history`` ``{'loss': (steps + 1, B)}`` each item's landmark + prior loss before every step
    and after the last.
    """
    if not isinstance(config, StnFitConfig):
        raise ValueError(f"config: expected a jface.fit.StnFitConfig, got {type(config)}")
    if config.landmark_set not in model.landmarks:
        raise ValueError(f"config.landmark_set: the model has no landmark set {config.landmark_set!r} "
                         f"(it has {sorted(model.landmarks)})")
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images: expected (B, H, W, 3), got shape {images.shape}")
    if not np.all(np.isfinite(images)):
        raise ValueError("images: contains NaN or infinite values")
    labels = np.asarray(labels, np.float32)
    indices = np.asarray(model.landmarks[config.landmark_set])
    if labels.ndim != 3 or labels.shape[1:] != (len(indices), 2) or labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels: expected (B, {len(indices)}, 2) with B = {images.shape[0]} (the "
                         f"{config.landmark_set!r} points, y-up pixels), got shape {labels.shape}")
    finite = np.isfinite(labels).all(-1)
    present = finite.all(0)
    if np.any(finite.any(0) & ~present):
        raise ValueError("labels: NaN points in some items only (a point may be NaN in every item, then it is "
                         "left out)")
    if not present.any():
        raise ValueError("labels: every point is NaN")
    fit_model = model
    if not present.all():
        fit_set = config.landmark_set + "_present"
        fit_model = model.replace(landmarks={**model.landmarks, fit_set: jnp.asarray(indices[present], jnp.int32)})
        config = dataclasses.replace(config, landmark_set=fit_set)
        labels = labels[:, present]
    if init is None:
        theta0 = similarity_theta(fit_model, labels, config.landmark_set)
    else:
        theta0 = jnp.asarray(init, jnp.float32)
        if theta0.shape != (images.shape[0], 6 + model.basis.shape[-1]):
            raise ValueError(f"init: expected theta ({images.shape[0]}, {6 + model.basis.shape[-1]}), "
                             f"got shape {theta0.shape}")
        if not bool(jnp.all(jnp.isfinite(theta0))):
            raise ValueError("init: contains NaN or infinite values")
    theta, flat, history = _fit_program(fit_model, theta0, jnp.asarray(labels), jnp.asarray(images), config)
    texture = {k: np.asarray(flat[k]) for k in ("texture", "sampled", "mask", "points")}
    return np.asarray(theta), texture, {"loss": np.asarray(history)}
