"""Fitting the models to photographs by analysis-by-synthesis, batched under one jit.

* :func:`fit_flame`: DECA's codes (shape, expression, pose, camera, albedo, SH light) to photos
  and their 68 landmarks, landmark stage then photometric stage, with DECA's own decode, renderer
  and losses (:mod:`jface.fit.flame`). :class:`FitConfig` holds steps, learning rates and weights;
  :func:`evaluate` measures landmark and photometric errors; :func:`crop_pixels_to_ndc` /
  :func:`ndc_to_crop_pixels` convert landmarks between DECA's 224 crop and its NDC.
* :func:`track_flame`: the same over video frames, one shape and albedo shared by all frames,
  per-frame expression, pose, camera and light, temporal smoothness, chunk by chunk with warm
  starts (:mod:`jface.fit.video`; :class:`TrackConfig`).
* :func:`fit_stn`: the 3DMM-STN's theta to landmarks and the flattened texture of every photo
  (``demo.m``'s fit generalised; :mod:`jface.fit.stn`).
"""

from __future__ import annotations

from jface.fit import flame, stn, video
from jface.fit.flame import (
    FitConfig,
    crop_pixels_to_ndc,
    evaluate,
    fit_flame,
    landmark_hull_mask,
    landmarks_2d,
    mean_codes,
    ndc_to_crop_pixels,
)
from jface.fit.stn import StnFitConfig, fit_stn, similarity_theta
from jface.fit.video import TrackConfig, jitter, key_frames, track_flame

__all__ = [
    "FitConfig",
    "fit_flame",
    "mean_codes",
    "evaluate",
    "crop_pixels_to_ndc",
    "ndc_to_crop_pixels",
    "landmark_hull_mask",
    "landmarks_2d",
    "TrackConfig",
    "track_flame",
    "key_frames",
    "jitter",
    "StnFitConfig",
    "fit_stn",
    "similarity_theta",
    "flame",
    "stn",
    "video",
]
