"""Analysis-by-synthesis of DECA's codes to photographs: :func:`fit_flame`.

The fit moves DECA's code dict (``shape``, ``exp``, ``pose``, ``cam``, ``tex``, ``light``) so that
DECA's decode (:func:`jface.deca.decode`: FLAME, the orthographic camera, the albedo model, the
``SRenderY`` render with SH light) reproduces a photograph, coarse to fine:

(a) **landmark stage**: shape, expression, pose and camera against 68 iBUG landmarks, with DECA's
    landmark terms (:func:`jface.deca.losses.landmark_losses`: the weighted 68-point L1 with the
    dynamic contour of ``FLAME.forward``, eye and lip closure, the shape / expression priors) plus
    the summed squared landmark distance (``landmark_l2``, the objective of
    ``jface.reconstruct.fit_codes``: L1 alone converges slowly, and the squared term is what the
    pixel error measures). Nothing is rendered, so this stage is cheap;
(b) **photometric stage**: albedo (``tex``) and SH light, and by default the geometry too with
    smaller steps (``geometry_step``: the landmark stage has placed it), against the photograph
    inside a face mask, with DECA's photometric terms (:func:`jface.deca.losses.photometric_losses`:
    masked L1, the texture prior, the colour-neutral light prior) plus the landmark terms of (a)
    at full weight, so the photometric fit keeps the landmark fit; an optional silhouette term
    (off by default).

Every item is fitted on its own: the objective is a sum of per-item losses (each item's terms are
computed as a batch of one), and Adam acts per element, so a batch gives the per-item fits. The
whole fit, both stages, is one jitted program (``lax.scan`` over a fixed number of steps; a stage
of 0 steps is not traced at all).

Frames: images ``(B, S, S, 3)`` RGB in [0, 1] (DECA's 224 x 224 test crop, or any square size);
landmarks ``(B, 68, 2|3)`` in DECA's NDC of that crop: x right, y down, NDC = p / 224 * 2 - 1 for
0-based crop pixels p (DECA's ``decalib/datasets/vggface.py``; :func:`crop_pixels_to_ndc`), an
optional third column weighting each point (0 = absent). BUILD_NOTES.md, "Frames and conventions".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jface import flame
from jface.deca import appearance
from jface.deca import losses as L
from jface.deca.model import decode
from jface.sampling import grid_sample

__all__ = [
    "FitConfig",
    "fit_flame",
    "mean_codes",
    "evaluate",
    "crop_pixels_to_ndc",
    "ndc_to_crop_pixels",
    "landmark_hull_mask",
    "landmarks_2d",
    "code_sizes",
    "GEOMETRY_CODES",
    "APPEARANCE_CODES",
]

GEOMETRY_CODES = ("shape", "exp", "pose", "cam")
APPEARANCE_CODES = ("tex", "light")
# The outline of the landmark face mask: the jaw 0..16, then the brows 26..17 back to the start.
_HULL_ORDER = tuple(range(17)) + tuple(range(26, 16, -1))


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """The fit's settings; frozen and hashable, so it is a static argument of the jitted program.

    Steps and learning rates: each stage runs exactly its number of Adam steps. Codes are
    parametrised as code = start + scale * z and Adam moves z by about the learning rate per step,
    so the ``scale_*`` fields are the per-group step sizes (``scale_pose`` for the global and jaw
    axis-angles, radians; ``scale_cam_s`` for DECA's camera scale, ``scale_cam_t`` for its
    translation in FLAME units). Weights: λ of every term, DECA's names
    (:data:`jface.deca.losses.LOSS_WEIGHTS`); ``silhouette`` (needs ``masks``) is off by default.
    ``render_size``: the photometric stage's render size (the images are resized to it).
    ``refine_geometry``: the photometric stage also moves shape, exp, pose and cam, with the
    ``scale_*`` step sizes times ``geometry_step``. ``landmark_l2``: the weight of the summed
    squared NDC distance of the 68 points (per item), added to DECA's landmark terms.
    ``landmark_mask``: the photometric mask includes the face outline of the given landmarks (jaw
    and brows, :func:`landmark_hull_mask`). ``light_dc``: the mean light's band-0 value (white,
    ambient) where the start has no light.
    """

    landmark_steps: int = 200
    photometric_steps: int = 200
    landmark_lr: float = 0.02
    photometric_lr: float = 0.05
    render_size: int = 224
    refine_geometry: bool = True
    geometry_step: float = 0.3
    landmark_mask: bool = True
    light_dc: float = 3.0
    scale_shape: float = 1.0
    scale_exp: float = 1.0
    scale_pose: float = 0.3
    scale_cam_s: float = 1.0
    scale_cam_t: float = 0.02
    scale_tex: float = 2.0
    scale_light: float = 2.0
    landmark: float = 1.0
    landmark_l2: float = 10.0
    eye: float = 1.0
    lip: float = 0.5
    reg_shape: float = 1e-4
    reg_exp: float = 1e-4
    photometric: float = 2.0
    reg_tex: float = 1e-4
    reg_light: float = 1.0
    silhouette: float = 0.0

    def __post_init__(self):
        for name in ("landmark_steps", "photometric_steps", "render_size"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < (1 if name == "render_size" else 0):
                raise ValueError(f"config.{name}: expected a non-negative int (render_size >= 1), got {value!r}")

    def loss_weights(self) -> dict:
        """The λ of :data:`jface.deca.losses.LOSS_WEIGHTS`'s coarse terms (identity off)."""
        names = ("landmark", "eye", "lip", "reg_shape", "reg_exp", "photometric", "reg_tex", "reg_light")
        return {**{name: float(getattr(self, name)) for name in names}, "identity": 0.0}


# --- frames -------------------------------------------------------------------------------------

def crop_pixels_to_ndc(pixels, size: int = 224) -> np.ndarray:
    """0-based crop pixels ``(..., 2)`` (x = column, y = row) -> DECA's NDC: p / size * 2 - 1.

    The inverse of :func:`ndc_to_crop_pixels` (and of ``jface.reconstruct``'s crop-pixel map);
    extra trailing columns (a visibility) pass through unchanged.
    """
    pixels = np.asarray(pixels, np.float64)
    out = pixels.copy()
    out[..., :2] = pixels[..., :2] * (2.0 / size) - 1.0
    return out


def ndc_to_crop_pixels(ndc, size: int = 224) -> np.ndarray:
    """DECA's NDC ``(..., 2+)`` -> 0-based crop pixels (ndc + 1) * size / 2 (x, y only)."""
    return (np.asarray(ndc, np.float64)[..., :2] + 1.0) * size / 2.0


def landmark_hull_mask(landmarks, size: int) -> jax.Array:
    """The face outline of 68 iBUG landmarks as a mask: ``(68, 2+)`` DECA NDC -> ``(size, size)``.

    1 inside the polygon jaw (0..16) then brows (26..17), 0 outside (even-odd rule at the pixel
    centres, NDC (2 (j + 0.5) / size - 1) for column j): the skin between the jaw line and the
    brows, without hair, forehead, ears and background. Not differentiable (a fixed mask).
    """
    points = jnp.asarray(landmarks)[jnp.asarray(_HULL_ORDER), :2]
    centres = (jnp.arange(size, dtype=points.dtype) + 0.5) * (2.0 / size) - 1.0
    x = centres[None, :]
    y = centres[:, None]
    a, b = points, jnp.roll(points, -1, axis=0)
    crossings = jnp.zeros((size, size), jnp.int32)
    for k in range(points.shape[0]):
        ax, ay, bx, by = a[k, 0], a[k, 1], b[k, 0], b[k, 1]
        straddles = (ay > y) != (by > y)
        denom = jnp.where(by == ay, 1.0, by - ay)
        x_cross = ax + (bx - ax) * (y - ay) / denom
        crossings = crossings + (straddles & (x < x_cross)).astype(jnp.int32)
    return (crossings % 2).astype(points.dtype)


# --- inputs -------------------------------------------------------------------------------------

def code_sizes(model) -> dict:
    """DECA's code sizes capped by the model: shape 100, exp 50, tex 50 (fewer when the model has
    fewer identity / expression components; extra tex components are ignored by the albedo)."""
    return {"shape": min(100, int(model.n_shape)), "exp": min(50, int(model.n_expression)), "tex": 50,
            "pose": 6, "cam": 3}


def _check_images(images):
    images = np.asarray(images) if not isinstance(images, jax.Array) else images
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"images: expected (B, S, S, 3) RGB in [0, 1] (DECA's 224 crop), got shape {images.shape}")
    if not bool(jnp.all(jnp.isfinite(images))):
        raise ValueError("images: contains NaN or infinite values")
    return jnp.asarray(images, jnp.float32)


def _check_landmarks(landmarks, batch):
    landmarks = jnp.asarray(landmarks, jnp.float32)
    if landmarks.ndim != 3 or landmarks.shape[1] != 68 or landmarks.shape[2] not in (2, 3):
        raise ValueError(f"landmarks: expected (B, 68, 2) or (B, 68, 3) in DECA's NDC, got shape {landmarks.shape}")
    if landmarks.shape[0] != batch:
        raise ValueError(f"landmarks: expected B = {batch} (the images' batch), got {landmarks.shape[0]}")
    if not bool(jnp.all(jnp.isfinite(landmarks))):
        raise ValueError("landmarks: contains NaN or infinite values (give absent points weight 0 in a third "
                         "column instead)")
    return landmarks


def _check_masks(masks, images):
    if masks is None:
        return jnp.ones(images.shape[:3], jnp.float32)
    masks = jnp.asarray(masks, jnp.float32)
    if masks.ndim == 4 and masks.shape[-1] == 1:
        masks = masks[..., 0]
    if masks.shape != images.shape[:3]:
        raise ValueError(f"masks: expected (B, S, S) or (B, S, S, 1) matching images {images.shape[:3]}, "
                         f"got shape {masks.shape}")
    if not bool(jnp.all(jnp.isfinite(masks))):
        raise ValueError("masks: contains NaN or infinite values")
    return masks


def mean_codes(model, landmarks, *, light_dc: float = 3.0) -> dict:
    """The fit's default start for ``landmarks (B, 68, 2|3)`` (DECA NDC): zero shape, expression,
    pose and albedo, a white ambient light (band 0 = ``light_dc``), and the camera (s, t) that
    best aligns the mean face's 68 landmarks with the given ones (least squares, no rotation).
    One jitted program per model and batch size."""
    return _mean_codes(model, jnp.asarray(landmarks, jnp.float32), jnp.float32(light_dc))


@jax.jit
def _mean_codes(model, landmarks, light_dc):
    sizes = code_sizes(model)
    batch = landmarks.shape[0]
    mean = flame.forward(model, jnp.zeros(sizes["shape"]), jnp.zeros(sizes["exp"]), jnp.zeros(6))["landmarks2d"]
    # NDC = s (X + t) with y and z flipped (jface.deca.appearance.project): work in x right, y down
    model_xy = jnp.asarray(mean[:, :2], jnp.float32) * jnp.asarray([1.0, -1.0])
    weight = landmarks[..., 2] if landmarks.shape[-1] == 3 else jnp.ones(landmarks.shape[:2])
    weight = weight / jnp.maximum(jnp.sum(weight, axis=1, keepdims=True), 1e-8)

    def item(target, w):
        mc = jnp.sum(model_xy * w[:, None], 0)
        tc = jnp.sum(target[:, :2] * w[:, None], 0)
        dm, dt = model_xy - mc, target[:, :2] - tc
        s = jnp.maximum(jnp.sum(w[:, None] * dm * dt) / jnp.maximum(jnp.sum(w[:, None] * dm * dm), 1e-12), 1e-3)
        t = (tc / s - mc) * jnp.asarray([1.0, -1.0])
        return jnp.concatenate([s[None], t])

    cam = jax.vmap(item)(landmarks, weight)
    light = jnp.zeros((batch, 9, 3), jnp.float32).at[:, 0, :].set(light_dc)
    return {"shape": jnp.zeros((batch, sizes["shape"])), "exp": jnp.zeros((batch, sizes["exp"])),
            "pose": jnp.zeros((batch, 6)), "cam": cam, "tex": jnp.zeros((batch, sizes["tex"])), "light": light}


def _start_codes(model, init, landmarks, config, batch):
    start = mean_codes(model, landmarks, light_dc=config.light_dc)
    if init is None:
        return start
    if not isinstance(init, Mapping):
        raise ValueError(f"init: expected None or DECA's code dict (shape, exp, pose, cam, ...), got {type(init)}")
    codes = dict(start)
    for name, value in init.items():
        value = jnp.asarray(value, jnp.float32)
        if name == "light" and value.ndim == 2 and value.shape[-1] == 27:
            value = value.reshape(-1, 9, 3)
        if value.ndim < 1 or value.shape[0] != batch:
            raise ValueError(f"init[{name!r}]: expected a leading batch axis {batch}, got shape {value.shape}")
        if name in start and value.shape != start[name].shape:
            raise ValueError(f"init[{name!r}]: expected shape {start[name].shape}, got {value.shape}")
        if not bool(jnp.all(jnp.isfinite(value))):
            raise ValueError(f"init[{name!r}]: contains NaN or infinite values")
        codes[name] = value
    return codes


# --- the objective ------------------------------------------------------------------------------

def _scales(config, codes) -> dict:
    pose = jnp.full((6,), config.scale_pose)
    cam = jnp.asarray([config.scale_cam_s, config.scale_cam_t, config.scale_cam_t])
    scales = {"shape": config.scale_shape, "exp": config.scale_exp, "pose": pose, "cam": cam,
              "tex": config.scale_tex, "light": config.scale_light}
    return {k: jnp.broadcast_to(jnp.asarray(v, jnp.float32), codes[k].shape[1:]) for k, v in scales.items()}


def _per_item(fn, *args):
    """``fn`` on every item as a batch of one: per-item terms ``{name: (B,)}``."""
    return jax.vmap(lambda *items: fn(*jax.tree_util.tree_map(lambda x: x[None], items)))(*args)


def _masked_error(rendered, images, mask):
    """Mean |rendered - image| over the mask's pixels and the 3 channels, per item ``(B,)``."""
    mask = mask[..., None]
    return jnp.sum(mask * jnp.abs(rendered - images), axis=(1, 2, 3)) / jnp.maximum(3.0 * jnp.sum(mask, (1, 2, 3)), 1.0)


def landmarks_2d(model, codes) -> jax.Array:
    """DECA's ``landmarks2d (B, 68, 2)`` (NDC) of the code dict's geometry without the rest of the
    decode: ``FLAME.forward``'s 17 dynamic contour + 51 static points through ``batch_orth_proj``
    and the y/z flip (the same points as :func:`jface.deca.decode`'s ``landmarks2d``)."""
    def item(shape, exp, pose, cam):
        return appearance.project(flame.forward(model, shape, exp, pose)["landmarks2d"], cam)[:, :2]

    return jax.vmap(item)(codes["shape"], codes["exp"], codes["pose"], codes["cam"])


def _landmark_terms(landmarks2d, landmarks, codes, config):
    """Per-item landmark terms ``{name: (B,)}``: DECA's (each item as a batch of one) and
    ``landmark_l2`` (the summed squared NDC distance, weighted by a third landmark column)."""
    weights = config.loss_weights()
    terms = _per_item(lambda lm, gt, c: L.landmark_losses(lm, gt, c, weights=weights),
                      landmarks2d, landmarks, {k: codes[k] for k in ("shape", "exp")})
    if config.landmark_l2:
        visible = landmarks[..., 2] if landmarks.shape[-1] == 3 else 1.0
        squared = jnp.sum(jnp.square(landmarks2d[..., :2] - landmarks[..., :2]), axis=-1)
        terms["landmark_l2"] = config.landmark_l2 * jnp.sum(visible * squared, axis=1)
    return terms


def _terms(model, codes, images, landmarks, masks, config, photometric: bool, photo_masks=None):
    """Per-item weighted terms ``{name: (B,)}`` and their total ``'loss'``; with ``photometric``
    also the unweighted ``photometric_error`` (mean |render - image| inside the mask).
    ``photo_masks``: the photometric mask before the render's own (:func:`_photo_masks`; default
    ``masks``); ``masks`` is the silhouette's target."""
    if not photometric:
        terms = _landmark_terms(landmarks_2d(model, codes), landmarks, codes, config)
        terms["loss"] = sum(terms.values())
        return terms
    weights = config.loss_weights()
    size = images.shape[1]
    out = decode({}, model, codes, image_hw=(size, size), rendering=True, use_detail=False)
    terms = _landmark_terms(out["landmarks2d"], landmarks, codes, config)
    outputs = {k: out[k] for k in ("rendered_images", "alpha_images", "mask_face_eye")}
    photo_masks = masks if photo_masks is None else photo_masks
    mask = jax.lax.stop_gradient(photo_masks * outputs["mask_face_eye"][..., 0] * outputs["alpha_images"][..., 0])
    terms.update(_per_item(
        lambda o, c, im, m: L.photometric_losses(o, c, im, weights=weights, seg_masks=m),
        outputs, {k: codes[k] for k in ("tex", "light")}, images, mask))
    terms.pop("identity", None)
    if config.silhouette:
        terms["silhouette"] = config.silhouette * _silhouette(out, masks)
    rendered = outputs["rendered_images"] * outputs["mask_face_eye"] * outputs["alpha_images"]
    terms["loss"] = sum(terms.values())
    terms["photometric_error"] = jax.lax.stop_gradient(_masked_error(rendered, images, mask))
    return terms


def _silhouette(out, masks):
    """Per item: the mean over camera-facing vertices of 1 - mask at their projection (pulls the
    visible head inside the given mask; the mask is blurred so that the term has a gradient)."""
    soft = masks[..., None]
    for _ in range(2):  # a 5-tap box blur, twice, along both axes
        soft = sum(jnp.roll(soft, k, axis=1) for k in range(-2, 3)) / 5.0
        soft = sum(jnp.roll(soft, k, axis=2) for k in range(-2, 3)) / 5.0
    facing = jax.lax.stop_gradient((out["transformed_normals"][..., 2] < 0).astype(soft.dtype))
    inside = jax.vmap(lambda m, p: grid_sample(m, p[None, :, :2])[0, :, 0])(soft, out["trans_verts"])
    return jnp.sum(facing * (1.0 - inside), axis=1) / jnp.maximum(jnp.sum(facing, axis=1), 1.0)


def _stage(objective, codes, trainable, scales, learning_rate, steps):
    """``steps`` Adam steps on code = start + scale * z for the ``trainable`` codes. Returns the
    codes and the per-item terms ``{name: (steps + 1, B)}`` (before every step, and at the end).

    The scan runs ``steps + 1`` evaluations and drops the last update, so that the final terms
    come from the same compiled body as the others (no second copy of the objective to compile).
    """
    optimiser = optax.adam(learning_rate)
    z = {k: jnp.zeros_like(codes[k]) for k in trainable}

    def codes_of(z):
        return {**codes, **{k: codes[k] + scales[k] * z[k] for k in trainable}}

    def total(z):
        terms = objective(codes_of(z))
        return jnp.sum(terms["loss"]), terms

    def step(carry, index):
        z, state = carry
        (_, terms), grad = jax.value_and_grad(total, has_aux=True)(z)
        updates, new_state = optimiser.update(grad, state, z)
        last = index == steps
        z = jax.tree_util.tree_map(lambda old, new: jnp.where(last, old, new), z, optax.apply_updates(z, updates))
        return (z, new_state), terms

    (z, _), history = jax.lax.scan(step, (z, optimiser.init(z)), jnp.arange(steps + 1))
    return codes_of(z), history


def _resized(images, masks, size):
    if images.shape[1] != size:
        images = jax.image.resize(images, (images.shape[0], size, size, 3), "linear", antialias=True)
        masks = jax.image.resize(masks, (masks.shape[0], size, size), "linear", antialias=True)
    return images, masks


def _photo_masks(masks, landmarks, landmark_mask: bool):
    """The photometric mask before the render's face / coverage masks: ``masks`` x the landmark
    outline when ``landmark_mask`` (computed once per fit, outside the optimisation loop)."""
    if not landmark_mask:
        return masks
    return masks * jax.vmap(landmark_hull_mask, (0, None))(landmarks, masks.shape[1])


def _fit_stages(model, images, landmarks, masks, codes, config):
    """The two stages on ``codes`` (images already at ``config.render_size``); a stage of 0 steps
    is skipped (its history is empty). Returns ``(codes, {'landmark': terms, 'photometric':
    terms})``."""
    scales = _scales(config, codes)
    photo_masks = _photo_masks(masks, landmarks, config.landmark_mask)

    def objective(photometric):
        return lambda c: _terms(model, c, images, landmarks, masks, config, photometric, photo_masks)

    history = {"landmark": {}, "photometric": {}}
    if config.landmark_steps:
        codes, history["landmark"] = _stage(objective(False), codes, GEOMETRY_CODES, scales, config.landmark_lr,
                                            config.landmark_steps)
    if config.photometric_steps:
        fine = {k: v * config.geometry_step if k in GEOMETRY_CODES else v for k, v in scales.items()}
        trainable = APPEARANCE_CODES + (GEOMETRY_CODES if config.refine_geometry else ())
        codes, history["photometric"] = _stage(objective(True), codes, trainable, fine, config.photometric_lr,
                                               config.photometric_steps)
    return codes, history


@partial(jax.jit, static_argnames=("config",))
def _fit_program(model, images, landmarks, masks, codes, config):
    images, masks = _resized(images, masks, config.render_size)
    return _fit_stages(model, images, landmarks, masks, codes, config)


def fit_flame(model, images, landmarks, init=None, config: FitConfig = FitConfig(), *, masks=None):
    """Fit DECA's codes to photographs by analysis-by-synthesis (the module docstring's two stages).

    Args:
      model: a :class:`jface.models.FlameModel` with landmark embedding, UV layout and albedo model
        (:func:`jface.models.default_flame_model`, a converted FLAME 2020 + albedo, or
        :func:`jface.flame.testing.random_flame_model` with ``head=``).
      images: ``(B, S, S, 3)`` RGB in [0, 1] (DECA's 224 crop; resized to ``config.render_size``).
      landmarks: ``(B, 68, 2|3)`` iBUG points in DECA's NDC of the crop (x right, y down;
        :func:`crop_pixels_to_ndc`), an optional third column weighting each point.
      init: None (:func:`mean_codes`: mean face, camera from the landmarks, white light) or DECA's
        code dict (e.g. an encoder's output, batched; missing codes start at the mean). Codes
        other than shape / exp / pose / cam / tex / light (e.g. ``detail``) pass through.
      config: :class:`FitConfig` (static: one compile per config and input shapes).
      masks: optional ``(B, S, S[, 1])`` in [0, 1], a skin / foreground mask intersected with the
        photometric mask (and the silhouette term's target).

    Returns ``(codes, history)``: ``codes`` DECA's code dict as numpy (``light (B, 9, 3)``);
    ``history`` ``{'landmark': {term: (landmark_steps + 1, B)}, 'photometric': {term:
    (photometric_steps + 1, B)}}`` numpy: each weighted term and ``loss`` per item before every
    step and after the last (``photometric_error``: mean |render - image| inside the mask); a
    stage of 0 steps has an empty dict.
    """
    if not isinstance(config, FitConfig):
        raise ValueError(f"config: expected a jface.fit.FitConfig, got {type(config)}")
    if model.uv_coords is None or model.uv_faces is None or not model.has_landmarks:
        raise ValueError("model: the fit needs a FLAME model with landmark embedding and UV layout")
    images = _check_images(images)
    landmarks = _check_landmarks(landmarks, images.shape[0])
    masks = _check_masks(masks, images)
    codes = _start_codes(model, init, landmarks, config, images.shape[0])
    fitted = {k: codes[k] for k in GEOMETRY_CODES + APPEARANCE_CODES}
    fitted, history = _fit_program(model, images, landmarks, masks, fitted, config)
    result = {k: np.asarray(v) for k, v in codes.items()}
    result.update({k: np.asarray(v) for k, v in fitted.items()})
    return result, jax.tree_util.tree_map(np.asarray, history)


# --- evaluation ---------------------------------------------------------------------------------

@partial(jax.jit, static_argnames=("size", "landmark_mask"))
def _evaluate(model, codes, images, landmarks, masks, size, landmark_mask):
    images, masks = _resized(images, masks, size)
    out = decode({}, model, codes, image_hw=(size, size), use_detail=False)
    weight = landmarks[..., 2] if landmarks.shape[-1] == 3 else jnp.ones(landmarks.shape[:2])
    dist = jnp.linalg.norm(out["landmarks2d"] - landmarks[..., :2], axis=-1)
    mean_dist = jnp.sum(dist * weight, 1) / jnp.maximum(jnp.sum(weight, 1), 1e-8)
    outer_eyes = jnp.linalg.norm(landmarks[:, 36, :2] - landmarks[:, 45, :2], axis=-1)
    mask = _photo_masks(masks, landmarks, landmark_mask) * out["mask_face_eye"][..., 0] * out["alpha_images"][..., 0]
    rendered = out["rendered_images"] * out["mask_face_eye"] * out["alpha_images"]
    return {"landmark_error_px": mean_dist * 112.0, "landmark_nme": mean_dist / outer_eyes,
            "photometric_error": _masked_error(rendered, images, mask), "mask_pixels": jnp.sum(mask, (1, 2)),
            "rendered_images": out["rendered_images"], "alpha_images": out["alpha_images"]}


def evaluate(model, codes, images, landmarks, *, masks=None, config: FitConfig = FitConfig()) -> dict:
    """Per-item measures of ``codes`` (numpy ``(B,)``): ``landmark_error_px`` the mean distance of
    the 68 model landmarks to the given ones in pixels of a 224 crop (NDC x 112),
    ``landmark_nme`` that distance over the outer-eye-corner distance (points 36, 45),
    ``photometric_error`` mean |render - image| (RGB in [0, 1]) inside the fit's mask (the given
    mask x the render's face / eye mask x its coverage x the landmark outline),
    ``mask_pixels`` its area; and the ``rendered_images`` / ``alpha_images`` at
    ``config.render_size``."""
    images = _check_images(images)
    landmarks = _check_landmarks(landmarks, images.shape[0])
    masks = _check_masks(masks, images)
    codes = {k: jnp.asarray(codes[k], jnp.float32) for k in GEOMETRY_CODES + APPEARANCE_CODES}
    out = _evaluate(model, codes, images, landmarks, masks, config.render_size, config.landmark_mask)
    return {k: np.asarray(v) for k, v in out.items()}
