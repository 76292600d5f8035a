"""``demo.m``'s landmark fit as pure JAX: theta fitted to 2D landmarks by gradient descent.

:func:`init_theta` is ``demo.m``'s start (r = 0, t = image centre, logs = 1, alpha ~ N(0, 1));
:func:`landmark_objective` its loss (the landmark loss with vis = 1, summed over the batch);
:func:`fit_gd` its update rule through ``jax.grad``; :func:`fit_adam` the same fit with optax Adam.
Points and labels are in the y-up 224-pixel frame (BUILD_NOTES.md, "Frames and conventions").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from jface.models.morphable import MorphableModel
from jface.stn import layers, losses

__all__ = ["init_theta", "landmark_objective", "fit_gd", "fit_adam"]


def init_theta(key: jax.Array, batch: int, num_coeffs: int, image_hw: Sequence[float] = (224, 224),
               dtype: Any = jnp.float32) -> jax.Array:
    """demo.m's initial theta ``(B, 6 + D)``: r = 0, t = image centre, logs = 1, alpha ~ N(0, 1)."""
    alpha = jax.random.normal(key, (batch, num_coeffs), dtype)
    pose = jnp.asarray([0.0, 0.0, 0.0, image_hw[1] / 2.0, image_hw[0] / 2.0, 1.0], dtype)
    return jnp.concatenate([jnp.broadcast_to(pose, (batch, 6)), alpha], axis=1)


def landmark_objective(model: MorphableModel, theta: ArrayLike, labels: ArrayLike,
                       landmark_set: str = "aflw21") -> jax.Array:
    """Sum over the batch of :func:`jface.stn.landmark_loss` with vis = 1 (demo.m's loss).

    ``theta (B, 6 + D)``, ``labels (B, L, 2)`` in the y-up 224-pixel frame. Only the landmark
    vertices are projected (the layers act per vertex, so this equals selecting after projecting).
    """
    indices = jnp.asarray(model.landmarks[landmark_set], jnp.int32)
    sub = model.replace(
        mean=jnp.asarray(model.mean)[indices],
        shape_basis=jnp.asarray(model.shape_basis)[indices],
        expression_basis=jnp.asarray(model.expression_basis)[indices],
    )
    points = jax.vmap(lambda th: layers.project(sub, th)["points"])(theta)
    return losses.landmark_loss_batch(points, labels)


def _check_fit_inputs(model, theta, labels):
    theta = jnp.asarray(theta)
    labels = jnp.asarray(labels, theta.dtype)
    if theta.ndim != 2 or labels.ndim != 3 or labels.shape[0] != theta.shape[0] or labels.shape[-1] != 2:
        raise ValueError(
            f"theta/labels: expected (B, 6 + D) and (B, L, 2) with the same B, got {theta.shape} and "
            f"{labels.shape}"
        )
    return theta, labels


def fit_gd(model: MorphableModel, labels: ArrayLike, theta0: ArrayLike, *, step: float = 1e-6,
           alpha_gain: float = 101.0, tol: float = 1.0, max_steps: int = 100_000,
           landmark_set: str = "aflw21") -> tuple[jax.Array, np.ndarray]:
    """demo.m's gradient descent with ``jax.grad``.

    Each iteration k computes loss_k and g = dloss/dtheta at theta_k, multiplies the alpha part of g
    by ``alpha_gain``, sets theta_{k+1} = theta_k - step g, and stops after the first iteration with
    |loss_k - loss_{k-1}| < ``tol`` (or ``max_steps`` iterations). Returns ``(theta, losses)`` with
    ``losses`` the numpy trajectory loss_0, loss_1, ... (one per iteration = per update).
    """
    theta, labels = _check_fit_inputs(model, theta0, labels)
    gain = jnp.ones(theta.shape[-1], theta.dtype).at[6:].set(alpha_gain)

    @jax.jit
    def update(model, th):
        loss, grad = jax.value_and_grad(lambda t: landmark_objective(model, t, labels, landmark_set))(th)
        return th - step * grad * gain, loss

    trajectory = []
    for _ in range(max_steps):
        theta, loss = update(model, theta)
        trajectory.append(float(loss))
        if len(trajectory) > 1 and abs(trajectory[-1] - trajectory[-2]) < tol:
            break
    return theta, np.asarray(trajectory)


def fit_adam(model: MorphableModel, labels: ArrayLike, theta0: ArrayLike, *, learning_rate: float = 0.05,
             scales: ArrayLike | None = None, tol: float = 1.0, max_steps: int = 20_000,
             landmark_set: str = "aflw21") -> tuple[jax.Array, np.ndarray]:
    """The same fit with optax Adam, on theta = theta0 + scales * z (per-group step sizes).

    ``scales`` ``(6 + D,)`` defaults to r: 0.05 rad, t: 5 px, logs: 5, alpha: 1; Adam moves each z
    by about ``learning_rate`` per step. Same stopping rule as :func:`fit_gd`. Returns
    ``(theta, losses)``.
    """
    theta0, labels = _check_fit_inputs(model, theta0, labels)
    if scales is None:
        scales = jnp.concatenate([jnp.full(3, 0.05), jnp.full(2, 5.0), jnp.full(1, 5.0),
                                  jnp.ones(theta0.shape[-1] - 6)])
    scales = jnp.asarray(scales, theta0.dtype)
    optimiser = optax.adam(learning_rate)
    z = jnp.zeros_like(theta0)
    state = optimiser.init(z)

    @jax.jit
    def update(model, z, state):
        loss, grad = jax.value_and_grad(
            lambda z_: landmark_objective(model, theta0 + scales * z_, labels, landmark_set)
        )(z)
        updates, state = optimiser.update(grad, state, z)
        return optax.apply_updates(z, updates), state, loss

    trajectory = []
    for _ in range(max_steps):
        z, state, loss = update(model, z, state)
        trajectory.append(float(loss))
        if len(trajectory) > 1 and abs(trajectory[-1] - trajectory[-2]) < tol:
            break
    return theta0 + scales * z, np.asarray(trajectory)
