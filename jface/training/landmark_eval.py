"""Landmark NME per image for ``train.stn --eval`` / ``train.deca --eval`` on any dataset.

:func:`nme_per_image` normalises each image's mean error over its visible points by the distance of
its outer eye corners: iBUG-68 points 36 and 45 for 68 points, AFLW-21's
(:data:`jface.models.landmarks.AFLW21_OUTER_EYE_CORNERS`) for 21. An image whose label lacks an eye
corner has no NME (``nan`` here, ``None`` in the JSON) and is left out of the mean.
:func:`landmark_report` is the JSON both trainers write: ``nme`` / ``baseline_nme`` (means),
``per_image`` (one dict per image: ``index``, ``name`` when the data has one, ``nme``,
``baseline_nme``), ``images`` and ``images_scored``.

On data with 3DDFA's pose labels (``pose_deg``: pitch, yaw, roll in degrees, as ``jface_aflw2000``
stores ``Pose_Para``) and 68 points, :func:`protocol_3ddfa` adds the AFLW2000-3D protocol of 3DDFA
(``benchmark_aflw2000.py``, ``calc_nme`` / ``ana``): every image's mean error over the 68 points
divided by sqrt(w * h) of the ground-truth landmarks' bounding box, averaged within the |yaw| bins
[0, 30], (30, 60], (60, 90] degrees (|yaw| above 90 falls in the last bin, as there), and the mean
of the three bin means. The JSON key is :data:`PROTOCOL_3DDFA_KEY`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jface.models.landmarks import AFLW21_OUTER_EYE_CORNERS

__all__ = ["eye_corners", "nme_per_image", "landmark_report", "YAW_BINS", "PROTOCOL_3DDFA_KEY", "yaw_degrees",
           "nme_box_per_image", "protocol_3ddfa"]

IBUG68_OUTER_EYE_CORNERS = (36, 45)
YAW_BINS = ((0, 30), (30, 60), (60, 90))  # |yaw| in degrees; lower bound exclusive except the first
PROTOCOL_3DDFA_KEY = "aflw2000_3ddfa"


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


def landmark_report(pred, baseline, labels, names: Sequence[str] | None = None, *, protocol: Mapping | None = None
                    ) -> dict:
    """The evaluation JSON (see the module docstring) of predictions ``pred`` and the mean-face /
    mean-pose baseline's ``baseline`` (both ``(N, L, 2)``) against ``labels (N, L, 3)``.

    ``protocol``: for data with 3DDFA's pose labels, ``{"pred68": (N, 68, 2), "baseline68": (68, 2),
    "labels68": (N, 68, 3), "yaw_deg": (N,)}`` adds :data:`PROTOCOL_3DDFA_KEY` (:func:`protocol_3ddfa`
    of the predictions, with the baseline's bin means under ``"baseline"``)."""
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
    report = {
        "nme": _json_number(per[scored].mean()) if scored.any() else None,
        "baseline_nme": _json_number(base[scored].mean()) if scored.any() else None,
        "images": int(len(per)),
        "images_scored": int(scored.sum()),
        "points": int(np.shape(labels)[1]),
        "per_image": rows,
    }
    if protocol is not None:
        pred68, labels68 = np.asarray(protocol["pred68"]), np.asarray(protocol["labels68"])
        result = protocol_3ddfa(pred68, labels68, protocol["yaw_deg"])
        baseline = protocol_3ddfa(np.broadcast_to(np.asarray(protocol["baseline68"])[..., :2], pred68[..., :2].shape),
                                  labels68, protocol["yaw_deg"])
        result["baseline"] = {k: v for k, v in baseline.items() if k.startswith("nme") or k == "mean"}
        report[PROTOCOL_3DDFA_KEY] = result
    return report


# --- the AFLW2000-3D protocol of 3DDFA ------------------------------------------------------------

def yaw_degrees(data: Mapping[str, Any]) -> np.ndarray | None:
    """``(N,)`` yaw in degrees of data carrying 3DDFA's pose labels (``pose_deg (N, 3)`` = pitch,
    yaw, roll, :func:`jface.data.aflw2000.read_aflw2000_item`), else None."""
    pose = data.get("pose_deg")
    if pose is None:
        return None
    pose = np.asarray(pose, np.float64)
    if pose.ndim != 2 or pose.shape[1] != 3:
        return None
    return pose[:, 1]


def nme_box_per_image(pred, labels) -> np.ndarray:
    """``pred (N, L, 2)``, ``labels (N, L, 3)`` (x, y, vis) in one frame (pixels, or any similarity
    of them) -> ``(N,)`` mean error over the labelled points (vis > 0) / sqrt(w * h) of those points'
    bounding box (3DDFA's ``calc_nme``); ``nan`` for an image with fewer than 2 labelled points or a
    flat box. In AFLW2000-3D crops all 68 points are labelled."""
    pred = np.asarray(pred, np.float64)[..., :2]
    labels = np.asarray(labels, np.float64)
    if labels.ndim != 3 or labels.shape[-1] != 3 or pred.shape != labels.shape[:-1] + (2,):
        raise ValueError(f"pred/labels: expected (N, L, 2) and (N, L, 3), got {pred.shape} and {labels.shape}")
    vis = labels[..., 2] > 0
    xy = labels[..., :2]
    low = np.where(vis[..., None], xy, np.inf).min(1)
    high = np.where(vis[..., None], xy, -np.inf).max(1)
    with np.errstate(invalid="ignore"):
        size = high - low
        box = np.sqrt(np.maximum(size[:, 0] * size[:, 1], 0.0))
    err = np.linalg.norm(pred - xy, axis=-1)
    per = (err * vis).sum(1) / np.maximum(vis.sum(1), 1)
    ok = (vis.sum(1) >= 2) & np.isfinite(box) & (box > 1e-9)
    return np.where(ok, per / np.where(ok, box, 1.0), np.nan)


def protocol_3ddfa(pred68, labels68, yaw_deg) -> dict:
    """3DDFA's AFLW2000-3D protocol (module docstring) of ``pred68 (N, 68, 2)`` against
    ``labels68 (N, 68, 3)`` with ``yaw_deg (N,)``: ``nme_0_30``, ``nme_30_60``, ``nme_60_90`` (bin
    means; None for an empty bin), ``mean`` (of the three; None unless every bin has images, so it
    is comparable with published figures), ``nme_all`` (over all images), ``count_0_30`` /
    ``count_30_60`` / ``count_60_90``, ``images``, ``normalisation`` and ``per_image`` (``index``,
    ``yaw_deg``, ``nme``)."""
    labels68 = np.asarray(labels68)
    if labels68.ndim != 3 or labels68.shape[1] != 68:
        raise ValueError(f"labels68: the 3DDFA protocol uses 68 points, got shape {labels68.shape}")
    yaw = np.asarray(yaw_deg, np.float64).reshape(-1)
    if len(yaw) != len(labels68):
        raise ValueError(f"yaw_deg: expected one yaw per image ({len(labels68)}), got {len(yaw)}")
    per = nme_box_per_image(pred68, labels68)
    scored = ~np.isnan(per)
    magnitude = np.abs(yaw)
    out = {}
    means = []
    for k, (low, high) in enumerate(YAW_BINS):
        if k == 0:
            inside = magnitude <= high
        elif k == len(YAW_BINS) - 1:
            inside = magnitude > low
        else:
            inside = (magnitude > low) & (magnitude <= high)
        members = inside & scored
        value = _json_number(per[members].mean()) if members.any() else None
        out[f"nme_{low}_{high}"] = value
        out[f"count_{low}_{high}"] = int(members.sum())
        means.append(value)
    out["mean"] = None if any(m is None for m in means) else float(np.mean(means))
    out["nme_all"] = _json_number(per[scored].mean()) if scored.any() else None
    out["images"] = int(len(per))
    out["images_scored"] = int(scored.sum())
    out["normalisation"] = "sqrt(w * h) of the ground-truth 68-point bounding box"
    out["per_image"] = [{"index": i, "yaw_deg": float(yaw[i]), "nme": _json_number(per[i])} for i in range(len(per))]
    return out
