"""The whole 3DMM-STN network (``dagnn_3dmmasstn_init.m``): localiser -> theta -> geometry ->
losses, defined once for training, evaluation, ``jface.flatten``, the demos and the benchmarks.

* :func:`predict_theta`: images -> theta (the localiser at its input size, optionally read through
  a :class:`ThetaWhitening`).
* :func:`apply_theta`: everything after the localiser, batched (useful for fitting theta directly,
  as ``demo.m`` does): 3DMM, projection, grid, sampler, visibility, masking and the four losses with
  their weights (``dagnn_3dmmasstn.m``'s ``derOutputs``).
* :func:`apply_network` = :func:`predict_theta` then :func:`apply_theta`; :func:`forward` is the
  same, jit-compiled.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from jface.stn import layers, losses
from jface.stn.localiser import Localiser

__all__ = ["LOSS_WEIGHTS", "LOSS_TERMS", "ThetaWhitening", "predict_theta", "apply_theta", "apply_network",
           "forward", "split_labels"]

# derOutputs of dagnn_3dmmasstn.m: landmark, prior, siamese, symmetry.
LOSS_WEIGHTS = {"landmark": 0.8998, "prior": 0.1, "siamese": 1e-4, "symmetry": 1e-4}
LOSS_TERMS = tuple(LOSS_WEIGHTS)  # the order of a run's ``loss_weights`` tuple


@flax.struct.dataclass
class ThetaWhitening:
    """The localiser's raw output read through an affine map: theta = mean + std * (raw - init_bias).

    ``mean``, ``std`` ``(6 + D,)``: the training labels' theta statistics; ``init_bias`` ``(6 + D,)``:
    the theta layer's bias at initialisation, so an untrained localiser predicts ``mean`` (the mean
    pose and shape). Not in the original (its localiser predicts theta directly); it lets a small
    localiser start from the evaluation baseline.
    """

    mean: Any
    std: Any
    init_bias: Any

    def __call__(self, raw):
        return self.mean + self.std * (raw - self.init_bias)


def predict_theta(localiser: Localiser, params, images, whitening: ThetaWhitening | None = None):
    """``images (B, H, W, 3)`` raw 0-255 float -> theta ``(B, 6 + D)`` float32 (y-up pixel frame of
    the images).

    Images of another size than ``localiser.config.input_hw`` are resized to it (linear,
    antialiased) for the localiser only; theta stays in the frame of the given images.
    """
    in_hw = tuple(localiser.config.input_hw)
    small = images
    if tuple(images.shape[1:3]) != in_hw:
        small = jax.image.resize(images, (images.shape[0],) + in_hw + (images.shape[3],), "linear",
                                 antialias=True)
    raw = localiser.apply({"params": params}, small).astype(jnp.float32)
    return raw if whitening is None else whitening(raw)


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


def apply_theta(model, theta, images, labels=None, vis=None, *, loss_weights: Mapping[str, Any] | None = None,
                landmark_set: str = "aflw21", siamese: bool = True, reduction: str = "sum",
                padding: str = "symmetric", visibility_mode: str = "last_write") -> dict:
    """Everything after the localiser, batched: ``theta (B, 6 + D)``, ``images (B, H, W, C)``.

    ``labels`` ``(B, L, 3)`` or ``(B, L, 2)`` (+ ``vis (B, L)``) in the y-up pixel frame, or None
    (no landmark loss). ``siamese=True`` treats the batch as interleaved (image, mirror) pairs
    (:func:`jface.stn.mirror_batch`) and adds the siamese loss (B must be even).

    ``reduction``: ``"sum"`` keeps the original's reductions (``layer/vl_nn*.m``: landmark and prior
    summed over the batch, siamese and symmetry over the batch's nonzero texels); ``"mean"``
    divides every term and the total by B.

    Returns a dict: ``theta``; ``points (B, N, 2)`` (x42); ``landmarks (B, L, 2)``;
    ``rotated (B, N, 3)``; ``shape (B, N, 3)`` (model frame); ``sampled``/``texture (B, H', W', C)``;
    ``mask (B, H', W')``;
    ``losses`` (dict of the unweighted terms ``landmark``, ``prior``, ``siamese``, ``symmetry``);
    ``loss`` = their weighted sum (default weights: ``dagnn_3dmmasstn.m``'s ``derOutputs``).
    """
    weights = dict(LOSS_WEIGHTS if loss_weights is None else loss_weights)
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction: expected 'sum' or 'mean', got {reduction!r}")
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
    if reduction == "mean":
        count = images.shape[0]
        total = total / count
        terms = {name: value / count for name, value in terms.items()}
    return {
        "theta": theta,
        "points": flat["points"],
        "landmarks": landmarks,
        "rotated": flat["rotated"],
        "shape": flat["shape"],
        "sampled": flat["sampled"],
        "texture": flat["texture"],
        "mask": flat["mask"],
        "losses": terms,
        "loss": total,
    }


def apply_network(localiser: Localiser, params, model, images, labels=None, vis=None, *,
                  whitening: ThetaWhitening | None = None, loss_weights: Mapping[str, Any] | None = None,
                  landmark_set: str = "aflw21", siamese: bool = True, reduction: str = "sum",
                  padding: str = "symmetric", visibility_mode: str = "last_write") -> dict:
    """The 3DMM-STN forward pass, batched, not compiled: :func:`predict_theta` then
    :func:`apply_theta` on the same images (see both for the arguments and the returned dict)."""
    images = jnp.asarray(images)
    theta = predict_theta(localiser, params, images, whitening)
    return apply_theta(model, theta, images, labels, vis, loss_weights=loss_weights, landmark_set=landmark_set,
                       siamese=siamese, reduction=reduction, padding=padding, visibility_mode=visibility_mode)


@partial(jax.jit, static_argnames=("localiser", "landmark_set", "siamese", "reduction", "padding",
                                   "visibility_mode"))
def _forward(params, model, images, labels, vis, whitening, loss_weights, *, localiser, landmark_set, siamese,
             reduction, padding, visibility_mode):
    return apply_network(localiser, params, model, images, labels, vis, whitening=whitening,
                         loss_weights=loss_weights, landmark_set=landmark_set, siamese=siamese,
                         reduction=reduction, padding=padding, visibility_mode=visibility_mode)


def forward(params, model, images, labels=None, *, localiser: Localiser | None = None, vis=None,
            whitening: ThetaWhitening | None = None, loss_weights: Mapping[str, Any] | None = None,
            landmark_set: str = "aflw21", siamese: bool = True, reduction: str = "sum",
            padding: str = "symmetric", visibility_mode: str = "last_write") -> dict:
    """The 3DMM-STN forward pass (``dagnn_3dmmasstn_init.m``'s graph), batched and jit-compiled.

    ``params``: the localiser's params; ``model``: a UV-grid MorphableModel; ``images
    (B, H, W, 3)`` raw 0-255 RGB (the interleaved (image, mirror) batch when ``siamese``);
    ``labels`` ``(B, 21, 3)`` (x, y, vis) or ``(B, 21, 2)``; ``localiser``: a
    :class:`jface.stn.Localiser` (default: the full VGG-Face configuration); ``whitening``: see
    :func:`predict_theta`. The loss weights default to the original's 0.8998 / 0.1 / 1e-4 / 1e-4
    (``dagnn_3dmmasstn.m``). Returns the dict of :func:`apply_theta` (theta, points, landmarks,
    texture, mask, losses, loss); differentiate ``forward(...)["loss"]`` with respect to ``params``
    for training.
    """
    localiser = Localiser() if localiser is None else localiser
    weights = LOSS_WEIGHTS if loss_weights is None else loss_weights
    weights = {k: jnp.asarray(v, jnp.float32) for k, v in weights.items()}
    return _forward(params, model, images, labels, vis, whitening, weights, localiser=localiser,
                    landmark_set=landmark_set, siamese=siamese, reduction=reduction, padding=padding,
                    visibility_mode=visibility_mode)
