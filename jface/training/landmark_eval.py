"""Landmark NME per image for ``train.stn --eval`` / ``train.deca --eval`` on any dataset.

:func:`nme_per_image` normalises each image's mean error over its visible points by the distance of
its outer eye corners: iBUG-68 points 36 and 45 for 68 points, AFLW-21's
(:data:`jface.models.landmarks.AFLW21_OUTER_EYE_CORNERS`) for 21. An image whose label lacks an eye
corner has no NME (``nan`` here, ``None`` in the JSON) and is left out of the mean.
:func:`landmark_report` is the JSON both trainers write: ``nme`` / ``baseline_nme`` (means),
``per_image`` (one dict per image: ``index``, ``name`` when the data has one, ``nme``,
``baseline_nme``), ``images`` and ``images_scored``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from jface.models.landmarks import AFLW21_OUTER_EYE_CORNERS

__all__ = ["eye_corners", "nme_per_image", "landmark_report"]

IBUG68_OUTER_EYE_CORNERS = (36, 45)


def eye_corners(num_points: int) -> tuple:
    """The outer-eye-corner indices of a 68- or 21-point label set."""
    if num_points == 68:
        return IBUG68_OUTER_EYE_CORNERS
    if num_points == 21:
        return tuple(AFLW21_OUTER_EYE_CORNERS)
    raise ValueError(f"labels: expected 68 (iBUG) or 21 (AFLW) points for the eye-corner NME, got {num_points}")


def nme_per_image(pred, labels) -> np.ndarray:
    """``pred (N, L, 2)``, ``labels (N, L, 3)`` (x, y, visibility) in one frame -> ``(N,)`` mean
    visible-point error / outer-eye-corner distance (``nan`` where a corner is not visible)."""
    pred = np.asarray(pred, np.float64)[..., :2]
    labels = np.asarray(labels, np.float64)
    if pred.shape != labels.shape[:-1] + (2,) or labels.ndim != 3 or labels.shape[-1] != 3:
        raise ValueError(f"pred/labels: expected (N, L, 2) and (N, L, 3), got {pred.shape} and {labels.shape}")
    left, right = eye_corners(labels.shape[1])
    vis = labels[..., 2] > 0
    err = np.linalg.norm(pred - labels[..., :2], axis=-1)
    iod = np.linalg.norm(labels[:, left, :2] - labels[:, right, :2], axis=-1)
    per = (err * vis).sum(1) / np.maximum(vis.sum(1), 1) / np.maximum(iod, 1e-9)
    scored = vis[:, left] & vis[:, right] & (iod > 1e-9)
    return np.where(scored, per, np.nan)


def _json_number(value) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def landmark_report(pred, baseline, labels, names: Sequence[str] | None = None) -> dict:
    """The evaluation JSON (see the module docstring) of predictions ``pred`` and the mean-face /
    mean-pose baseline's ``baseline`` (both ``(N, L, 2)``) against ``labels (N, L, 3)``."""
    per = nme_per_image(pred, labels)
    base = nme_per_image(np.broadcast_to(baseline, np.shape(pred)), labels)
    scored = ~np.isnan(per)
    rows = []
    for i in range(len(per)):
        row = {"index": i}
        if names is not None:
            row["name"] = str(names[i])
        row.update(nme=_json_number(per[i]), baseline_nme=_json_number(base[i]))
        rows.append(row)
    return {
        "nme": _json_number(per[scored].mean()) if scored.any() else None,
        "baseline_nme": _json_number(base[scored].mean()) if scored.any() else None,
        "images": int(len(per)),
        "images_scored": int(scored.sum()),
        "points": int(np.shape(labels)[1]),
        "per_image": rows,
    }
