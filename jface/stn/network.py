"""The whole 3DMM-STN network (spec 3dmm_stn.md §1): localiser -> theta -> geometry -> losses.

:func:`forward` is batched and jit-compiled. :func:`apply_theta` is everything after the localiser
(useful for fitting theta directly, as ``demo.m`` does).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from jface.stn import layers, losses

__all__ = ["LOSS_WEIGHTS", "apply_theta", "forward", "split_labels"]

# derOutputs of dagnn_3dmmasstn.m (spec §6): landmark, prior, siamese, symmetry.
LOSS_WEIGHTS = {"landmark": 0.8998, "prior": 0.1, "siamese": 1e-4, "symmetry": 1e-4}


def split_labels(labels, vis=None):
    """``labels (..., L, 3)`` (x, y, vis) as the original's label input, or ``(..., L, 2)`` with
    ``vis`` separately (default all visible) -> ``(xy (..., L, 2), vis (..., L))``."""
    labels = jnp.asarray(labels)
    if labels.ndim < 2 or labels.shape[-1] not in (2, 3):
        raise ValueError(
            f"labels: expected (..., L, 3) = (x, y, vis) or (..., L, 2), got {labels.shape}"
        )
    if labels.shape[-1] == 3:
        if vis is not None:
            raise ValueError(
                "vis: labels already carry a visibility column (..., L, 3); pass one or the other"
            )
        return labels[..., :2], labels[..., 2]
    if vis is None:
        vis = jnp.ones(labels.shape[:-1], labels.dtype)
    return labels, jnp.asarray(vis)


def apply_theta(model, theta, images, labels=None, vis=None, *, loss_weights=None,
                landmark_set: str = "aflw21", siamese: bool = True, padding: str = "symmetric",
                visibility_mode: str = "last_write"):
    """Everything after the localiser, batched: ``theta (B, 6 + D)``, ``images (B, H, W, C)``.

    ``labels`` ``(B, L, 3)`` or ``(B, L, 2)`` (+ ``vis (B, L)``) in the y-up pixel frame, or None
    (no landmark loss). ``siamese=True`` treats the batch as interleaved (image, mirror) pairs
    (:func:`jface.stn.mirror_batch`) and adds the siamese loss (B must be even).

    Returns a dict: ``theta``; ``points (B, N, 2)`` (x42); ``landmarks (B, L, 2)``;
    ``rotated (B, N, 3)``; ``sampled``/``texture (B, H', W', C)``; ``mask (B, H', W')``;
    ``losses`` (dict of the unweighted terms ``landmark``, ``prior``, ``siamese``, ``symmetry``,
    each with the original reduction, spec §3); ``loss`` = the weighted sum (spec §6 weights).
    """
    weights = dict(LOSS_WEIGHTS if loss_weights is None else loss_weights)
    theta = jnp.asarray(theta)
    images = jnp.asarray(images)
    if theta.ndim != 2 or images.ndim != 4 or theta.shape[0] != images.shape[0]:
        raise ValueError(
            f"theta/images: expected (B, 6 + D) and (B, H, W, C) with the same B, got {theta.shape} "
            f"and {images.shape}"
        )
    if landmark_set not in model.landmarks:
        raise ValueError(f"landmark_set: model has no landmarks {landmark_set!r} (has {sorted(model.landmarks)})")
    flat = jax.vmap(
        lambda th, im: layers.flatten(model, th, im, padding=padding, mode=visibility_mode)
    )(theta, images)
    indices = jnp.asarray(model.landmarks[landmark_set], jnp.int32)
    landmarks = flat["points"][:, indices]
    alpha = theta[:, 6:]
    terms = {"prior": losses.prior_loss_batch(alpha), "symmetry": losses.symmetry_loss_batch(flat["texture"])}
    if labels is not None:
        xy, vis_ = split_labels(labels, vis)
        terms["landmark"] = losses.landmark_loss_batch(landmarks, xy, vis_)
    if siamese:
        if images.shape[0] % 2:
            raise ValueError(
                f"images: siamese=True needs an even, interleaved (image, mirror) batch, got B = "
                f"{images.shape[0]} (use mirror_batch, or siamese=False)"
            )
        terms["siamese"] = losses.siamese_loss_batch(flat["texture"])
    total = sum(weights[name] * value for name, value in terms.items())
    return {
        "theta": theta,
        "points": flat["points"],
        "landmarks": landmarks,
        "rotated": flat["rotated"],
        "sampled": flat["sampled"],
        "texture": flat["texture"],
        "mask": flat["mask"],
        "losses": terms,
        "loss": total,
    }


@partial(jax.jit, static_argnames=("localiser", "landmark_set", "siamese", "padding", "visibility_mode"))
def _forward(params, model, images, labels, vis, loss_weights, *, localiser, landmark_set, siamese,
             padding, visibility_mode):
    theta = localiser.apply({"params": params}, images)
    return apply_theta(model, theta, images, labels, vis, loss_weights=loss_weights,
                       landmark_set=landmark_set, siamese=siamese, padding=padding,
                       visibility_mode=visibility_mode)


def forward(params, model, images, labels=None, *, localiser=None, vis=None, loss_weights=None,
            landmark_set: str = "aflw21", siamese: bool = True, padding: str = "symmetric",
            visibility_mode: str = "last_write"):
    """The 3DMM-STN forward pass (spec §1), batched and jit-compiled.

    ``params``: the localiser's params; ``model``: a UV-grid MorphableModel; ``images
    (B, H, W, 3)`` raw 0-255 RGB (the interleaved (image, mirror) batch when ``siamese``);
    ``labels`` ``(B, 21, 3)`` (x, y, vis) or ``(B, 21, 2)``; ``localiser``: a
    :class:`jface.stn.Localiser` (default: the full VGG-Face configuration). The loss weights
    default to the original's 0.8998 / 0.1 / 1e-4 / 1e-4 (spec §6). Returns the dict of
    :func:`apply_theta` (theta, points, landmarks, texture, mask, losses, loss); differentiate
    ``forward(...)["loss"]`` with respect to ``params`` for training.
    """
    from jface.stn.localiser import Localiser

    localiser = Localiser() if localiser is None else localiser
    weights = LOSS_WEIGHTS if loss_weights is None else loss_weights
    weights = {k: jnp.asarray(v, jnp.float32) for k, v in weights.items()}
    return _forward(params, model, images, labels, vis, weights, localiser=localiser,
                    landmark_set=landmark_set, siamese=siamese, padding=padding,
                    visibility_mode=visibility_mode)
