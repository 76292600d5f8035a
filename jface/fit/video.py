"""Tracking one face over video frames: :func:`track_flame`.

One identity for the whole sequence: a single FLAME ``shape`` and albedo ``tex`` shared by every
frame; per frame ``exp``, ``pose``, ``cam`` and SH ``light``. The frames are fitted in chunks of
``chunk`` frames with the two stages of :func:`jface.fit.fit_flame` (landmarks, then photometric),
by one jitted chunk program that every call reuses (padded frames carry weight 0):

1. **identity**: ``chunk`` key frames spread evenly over the sequence are fitted together, the
   shared shape and albedo moving with them (each key frame with its own expression, pose, camera
   and light); the shared codes are then fixed;
2. **tracking**: the chunks in order, each frame warm-started from the last fitted frame before
   its chunk (expression, pose, light; the camera moved by the change of the landmark-aligned
   camera between the two frames), with a temporal smoothness term on the second difference
   (acceleration) over consecutive frames, Δ²x_t = x_t - 2 x_{t-1} + x_{t-2}: ``smooth_pose`` x
   |Δ² pose|² (radians) + ``smooth_exp`` x |Δ² exp|² + ``smooth_cam`` x (|Δ² log s|² + |Δ² t|²) +
   ``smooth_light`` x |Δ² light|²; the first frames of a chunk are tied to the last two fitted
   frames before it. The second difference removes frame-to-frame jitter without pulling a
   steady turn back (a first difference would make the track lag). The smoothness weights are
   traced values (changing them does not compile again).

Frames: ``frames (T, S, S, 3)`` RGB in [0, 1], each a DECA crop; ``landmarks (T, 68, 2|3)`` in
that crop's NDC (x right, y down; :func:`jface.fit.crop_pixels_to_ndc`), a third column weighting
each point (0 = absent: a frame without a detection is tracked by its photometric and smoothness
terms alone). BUILD_NOTES.md, "Frames and conventions".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jface.fit import flame as F

__all__ = ["TrackConfig", "track_flame", "key_frames", "jitter"]

_PER_FRAME = ("exp", "pose", "cam", "light")
_SHARED = ("shape", "tex")


@dataclasses.dataclass(frozen=True)
class TrackConfig:
    """Settings of :func:`track_flame`. ``fit``: the per-chunk stages (steps, learning rates, loss
    weights, render size; :class:`jface.fit.FitConfig`), used by the identity and the tracking
    passes alike; ``chunk``: frames per jitted call (and the number of key frames); the
    ``smooth_*`` weights: the temporal term of the module docstring."""

    fit: F.FitConfig = F.FitConfig(landmark_steps=100, photometric_steps=50)
    chunk: int = 16
    smooth_pose: float = 10.0
    smooth_exp: float = 0.1
    smooth_cam: float = 10.0
    smooth_light: float = 0.01

    def __post_init__(self):
        if not isinstance(self.fit, F.FitConfig):
            raise ValueError(f"config.fit: expected a jface.fit.FitConfig, got {type(self.fit)}")
        if not isinstance(self.chunk, (int, np.integer)) or self.chunk < 2:
            raise ValueError(f"config.chunk: expected an int >= 2, got {self.chunk!r}")
        for name in ("smooth_pose", "smooth_exp", "smooth_cam", "smooth_light"):
            if not float(getattr(self, name)) >= 0.0:
                raise ValueError(f"config.{name}: expected a non-negative weight, got {getattr(self, name)!r}")

    def smoothness(self) -> dict:
        return {name: jnp.float32(getattr(self, f"smooth_{name}")) for name in ("pose", "exp", "cam", "light")}


def key_frames(num_frames: int, count: int) -> np.ndarray:
    """``count`` frame indices spread evenly over ``num_frames`` (first and last included; repeats
    when there are fewer frames than key frames)."""
    return np.round(np.linspace(0, num_frames - 1, count)).astype(np.int64)


def jitter(track) -> float:
    """Mean norm of the second difference over frames of ``track (T, ...)``: 0 for a constant or
    linear motion, large for frame-to-frame noise."""
    track = np.asarray(track, np.float64).reshape(len(track), -1)
    if len(track) < 3:
        return 0.0
    return float(np.mean(np.linalg.norm(track[2:] - 2.0 * track[1:-1] + track[:-2], axis=-1)))


def _cam_track(cam):
    return jnp.concatenate([jnp.log(jnp.maximum(cam[..., :1], 1e-6)), cam[..., 1:]], axis=-1)


def _smoothness_terms(codes, previous, linked, weights) -> dict:
    """Per-frame ``{'smooth_<name>': (C,)}``: the weighted squared second difference over frames.
    ``previous``: the two fitted frames before the chunk (``(2, ...)`` per code, older first);
    ``linked (2,)``: 1 where that frame exists. Frame 0 counts where both exist, frame 1 where
    the last one does."""
    count = codes["pose"].shape[0]
    present = jnp.ones(count).at[0].set(linked[0] * linked[1]).at[1].set(linked[1])
    terms = {}
    for name in _PER_FRAME:
        values = _cam_track(codes[name]) if name == "cam" else codes[name]
        before = _cam_track(previous[name]) if name == "cam" else previous[name]
        sequence = jnp.concatenate([before, values], axis=0).reshape(count + 2, -1)
        second = sequence[2:] - 2.0 * sequence[1:-1] + sequence[:-2]
        terms[f"smooth_{name}"] = weights[name] * present * jnp.sum(jnp.square(second), axis=-1)
    return terms


@partial(jax.jit, static_argnames=("config",))
def _chunk_program(model, images, landmarks, masks, weights, shared, per_frame, previous, linked, smooth,
                   shared_step, config):
    """Both stages on one chunk. ``shared`` ``{shape (n,), tex (50,)}`` moves with step size x
    ``shared_step`` (1 in the identity pass, 0 when tracking); ``weights (C,)`` 0 for padding."""
    images, masks = F._resized(images, masks, config.render_size)
    photo_masks = F._photo_masks(masks, landmarks, config.landmark_mask)
    count = images.shape[0]
    codes = {**{k: v[None] for k, v in shared.items()}, **per_frame}
    scales = F._scales(config, codes)
    for name in _SHARED:
        scales[name] = scales[name] * shared_step

    def expand(c):
        return {**c, **{k: jnp.broadcast_to(c[k], (count,) + c[k].shape[1:]) for k in _SHARED}}

    def objective(photometric):
        def terms_of(c):
            full = expand(c)
            terms = F._terms(model, full, images, landmarks, masks, config, photometric, photo_masks)
            error = terms.pop("photometric_error", None)
            terms.pop("loss")
            terms.update(_smoothness_terms(full, previous, linked, smooth))
            terms = {k: v * weights for k, v in terms.items()}
            terms["loss"] = sum(terms.values())
            if error is not None:
                terms["photometric_error"] = error
            return terms
        return terms_of

    history = {"landmark": {}, "photometric": {}}
    if config.landmark_steps:
        codes, history["landmark"] = F._stage(objective(False), codes, F.GEOMETRY_CODES, scales,
                                              config.landmark_lr, config.landmark_steps)
    if config.photometric_steps:
        fine = {k: v * config.geometry_step if k in F.GEOMETRY_CODES else v for k, v in scales.items()}
        trainable = F.APPEARANCE_CODES + (F.GEOMETRY_CODES if config.refine_geometry else ())
        codes, history["photometric"] = F._stage(objective(True), codes, trainable, fine, config.photometric_lr,
                                                 config.photometric_steps)
    return {k: codes[k][0] for k in _SHARED}, {k: codes[k] for k in _PER_FRAME}, history


def _check_frames(frames):
    frames = np.asarray(frames) if not isinstance(frames, jax.Array) else frames
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[1] != frames.shape[2] or frames.shape[0] < 1:
        raise ValueError(f"frames: expected (T >= 1, S, S, 3) RGB crops in [0, 1], got shape {frames.shape}")
    if not bool(jnp.all(jnp.isfinite(frames))):
        raise ValueError("frames: contains NaN or infinite values")
    return jnp.asarray(frames, jnp.float32)


def _check_init(init, start, count):
    if init is None:
        return start
    if not isinstance(init, dict):
        raise ValueError(f"init: expected None or a per-frame DECA code dict, got {type(init)}")
    out = dict(start)
    for name, value in init.items():
        if name not in start:
            continue
        value = jnp.asarray(value, jnp.float32)
        if name == "light" and value.ndim == 2 and value.shape[-1] == 27:
            value = value.reshape(-1, 9, 3)
        if value.shape != start[name].shape:
            raise ValueError(f"init[{name!r}]: expected shape {start[name].shape} (one row per frame), "
                             f"got {value.shape}")
        if not bool(jnp.all(jnp.isfinite(value))):
            raise ValueError(f"init[{name!r}]: contains NaN or infinite values")
        out[name] = value
    return out


def _take(tree, index):
    return jax.tree_util.tree_map(lambda x: x[index], tree)


def track_flame(model, frames, landmarks, config: TrackConfig = TrackConfig(), *, masks=None, init=None,
                progress: Callable[[int, int], None] | None = None):
    """Track a face over ``frames`` with one shared identity (the module docstring's two passes).

    Args:
      model: a FLAME model with landmark embedding, UV layout and albedo (as :func:`fit_flame`).
      frames: ``(T, S, S, 3)`` RGB crops in [0, 1], in time order.
      landmarks: ``(T, 68, 2|3)`` DECA NDC of each crop, optional third column weighting each point.
      config: :class:`TrackConfig`.
      masks: optional ``(T, S, S[, 1])`` skin masks (as :func:`fit_flame`'s).
      init: optional per-frame DECA code dict (an encoder's output): per-frame starts instead of
        :func:`jface.fit.mean_codes`; the shared shape / albedo start at its mean over frames.
      progress: called as ``progress(done, total)`` after every chunk program.

    Returns ``(codes, history)``: ``codes`` DECA's code dict with one row per frame (numpy;
    ``shape`` and ``tex`` the same in every row); ``history`` ``{'key_frames': (C,) indices,
    'identity': {stage: {term: (steps + 1, C)}}, 'tracking': {stage: {term: (chunks, steps + 1,
    C)}}}`` (terms per frame and step, padded frames included with weight 0).
    """
    if not isinstance(config, TrackConfig):
        raise ValueError(f"config: expected a jface.fit.TrackConfig, got {type(config)}")
    if model.uv_coords is None or model.uv_faces is None or not model.has_landmarks:
        raise ValueError("model: tracking needs a FLAME model with landmark embedding and UV layout")
    frames = _check_frames(frames)
    num_frames, chunk = frames.shape[0], int(config.chunk)
    landmarks = F._check_landmarks(landmarks, num_frames)
    if landmarks.shape[-1] == 2:
        landmarks = jnp.concatenate([landmarks, jnp.ones(landmarks.shape[:2] + (1,))], axis=-1)
    masks = F._check_masks(masks, frames)
    found = np.asarray(jnp.sum(landmarks[..., 2], axis=1) > 0)
    if not found.any():
        raise ValueError("landmarks: every frame has weight 0 (no face found in any frame)")
    start = F.mean_codes(model, landmarks, light_dc=config.fit.light_dc)
    if not found.all():  # a frame without landmarks takes the landmark camera of the nearest frame with them
        with_landmarks = np.flatnonzero(found)
        nearest = with_landmarks[np.abs(np.arange(num_frames)[:, None] - with_landmarks[None]).argmin(axis=1)]
        start["cam"] = start["cam"][nearest]
    start = _check_init(init, start, num_frames)
    smooth = config.smoothness()
    total = 1 + -(-num_frames // chunk)

    def run(index, weights, shared, per_frame, previous, linked, smoothness, shared_step):
        index = jnp.asarray(index)
        return _chunk_program(model, frames[index], landmarks[index], masks[index], jnp.asarray(weights, jnp.float32),
                              shared, per_frame, previous, jnp.asarray(linked, jnp.float32), smoothness,
                              jnp.float32(shared_step),
                              config.fit)

    # 1. identity: key frames fitted together with the shared codes free
    keys = key_frames(num_frames, chunk)
    shared = {k: jnp.mean(start[k], axis=0) for k in _SHARED}
    per_frame = {k: start[k][keys] for k in _PER_FRAME}
    unlinked = _take(per_frame, np.array([0, 0]))
    zero = jax.tree_util.tree_map(jnp.zeros_like, smooth)
    shared, key_codes, identity = run(keys, np.ones(chunk), shared, per_frame, unlinked, (0.0, 0.0), zero, 1.0)
    if progress is not None:
        progress(1, total)

    # 2. tracking: chunks in order, warm-started, smoothness linking consecutive frames
    results = {k: [] for k in _PER_FRAME}
    tracking = []
    reference, reference_frame, before_reference = None, None, None
    for done, begin in enumerate(range(0, num_frames, chunk), start=2):
        index = np.arange(begin, min(begin + chunk, num_frames))
        weights = np.concatenate([np.ones(len(index)), np.zeros(chunk - len(index))])
        index = np.concatenate([index, np.full(chunk - len(index), index[-1])])
        if reference is None:  # the first chunk starts from its nearest key frame's fit
            nearest = np.abs(index[:, None] - keys[None, :]).argmin(axis=1)
            ref = _take(key_codes, nearest)
            ref_cam = start["cam"][keys[nearest]]
            previous, linked = unlinked, (0.0, 0.0)
        else:
            ref = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (chunk,) + x.shape), reference)
            ref_cam = start["cam"][reference_frame]
            older = reference if before_reference is None else before_reference
            previous = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), older, reference)
            linked = (0.0 if before_reference is None else 1.0, 1.0)
        per_frame = {**ref, "cam": ref["cam"] + start["cam"][index] - ref_cam}
        _, fitted, history = run(index, weights, shared, per_frame, previous, linked, smooth, 0.0)
        count = int(weights.sum())
        for k in _PER_FRAME:
            results[k].append(np.asarray(fitted[k][:count]))
        tracking.append(history)
        before_reference = _take(fitted, count - 2) if count >= 2 else reference
        reference, reference_frame = _take(fitted, count - 1), int(index[count - 1])
        if progress is not None:
            progress(done, total)

    codes = {k: np.concatenate(v) for k, v in results.items()}
    codes.update({k: np.broadcast_to(np.asarray(shared[k]), (num_frames,) + shared[k].shape).copy()
                  for k in _SHARED})
    tracking = jax.tree_util.tree_map(lambda *h: np.stack([np.asarray(x) for x in h]), *tracking)
    history = {"key_frames": keys, "identity": jax.tree_util.tree_map(np.asarray, identity), "tracking": tracking}
    return codes, history
