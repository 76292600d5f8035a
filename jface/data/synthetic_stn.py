"""Generated training data for 3DMM-STN: rendered faces of a linear 3DMM with known parameters.

Every image is drawn from the model itself, so each label is exact: random identity and
expression coefficients alpha, a pose (yaw within +-``yaw_deg``, small pitch and roll), scale and
translation jitter, per-identity albedo tint, Lambertian shading from a random light, and a random
smooth background. Labels are in the 3DMM-STN's own frame (BUILD_NOTES.md, Frames and
conventions):

* ``theta (M, 6 + D)``: the generating [r(3), t(2), logs(1), alpha(D)], so the localiser's target
  is literally its own output space (r axis-angle, x' = R x; s = 0.99**logs; t in pixels).
* ``labels (M, L, 3)``: (x, y, vis) of the model's ``landmarks[landmark_set]`` vertices in the
  y-up pixel frame of the image: x = 1-based column, y = H + 1 - (1-based row). A landmark that
  falls outside the image is missing (x = y = vis = 0, as AFLW labels are).
* ``images (M, H, W, 3)`` uint8 RGB (0-255; the STN reads raw 0-255 values, as the original's
  ``dagnn_3dmmasstn.m`` does: no mean subtraction).
* ``identity (M,)`` int32: identity id (for identity-grouped batches); ``pose_deg (M, 3)``
  (yaw, pitch, roll) with R = Ry(yaw) Rx(pitch) Rz(roll); ``light (M, 3)`` unit light direction.

Rendering is the z-buffered splat of :mod:`jface.models.paint`: the UV-grid mesh (vertex k <->
texel (k // W', k % W')) is bilinearly supersampled ``supersample`` times per cell edge and every
sample is written to its nearest pixel if it is the closest to the camera there (+z is towards the
camera). This needs no rasteriser and is exact enough for landmark training; the pixel a sample
lands in is the same y-up frame the labels use. Visibility of landmarks uses the original's
per-vertex normal sign test (``vl_nnvisibilitymask.m``, with the true angle sum) and the z-buffer
is not consulted.

Splits are made by seed: the held-out split uses identities and poses from a different seed.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from jface import geometry
from jface.models import paint
from jface.models.landmarks import AFLW21_MIRROR
from jface.models.morphable import MorphableModel

__all__ = [
    "SyntheticConfig",
    "generate",
    "project",
    "render",
    "toy_model",
    "pose_error_deg",
    "AFLW21_MIRROR",
]


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """How images are drawn. Angles in degrees; sizes in pixels of the ``image_hw`` image."""

    image_hw: tuple = (224, 224)
    num_identities: int = 100
    images_per_identity: int = 10
    yaw_deg: float = 60.0
    pitch_deg: float = 15.0
    roll_deg: float = 10.0
    # Ear-to-ear (or, lacking ears, landmark) width of the mean face as a fraction of the image width.
    face_width: float = 0.55
    scale_jitter: float = 0.1
    translation_jitter: float = 0.06  # fraction of the image size
    shape_std: float = 1.0
    expression_std: float = 0.7
    landmark_set: str = "aflw21"
    # Samples per grid-cell edge in the splat; None: ceil(2 W / grid width) (no cracks at yaw 0).
    supersample: int | None = None
    chunk: int = 32


def project(model: MorphableModel, theta):
    """Per item: theta (6+D,) -> (points (N, 2) y-up pixel frame, rotated (N, 3), shape (N, 3)).

    The 3DMM-STN forward (its layers ``vl_nnmodel`` .. ``vl_nntranslate2D``): X = mean + basis
    alpha, X' = R X, p = s X'_xy + t.
    """
    r, t, logs, alpha = theta[0:3], theta[3:5], theta[5], theta[6:]
    shape = model.mean + jnp.einsum("nck,k->nc", model.basis.astype(theta.dtype), alpha)
    rotated = shape @ geometry.axis_angle_to_matrix(r).T
    points = geometry.stn_scale(logs) * rotated[:, :2] + t
    return points, rotated, shape


def _outward_normals(rotated, faces):
    # vertex_normals uses (v1 - v0) x (v2 - v0); on the STN grid's face order that points away
    # from the camera for a frontal face (util/visibilityNotSelf.m), so the outward normal is its
    # negative.
    return -geometry.vertex_normals(rotated, faces)


def render(model: MorphableModel, theta, albedo, light, background, *, supersample: int = 4):
    """Per item: a z-buffered splat of the shaded model into ``background (H, W, 3)`` (0-255).

    ``albedo (N, 3)`` in [0, 1]; ``light (3,)`` unit vector towards the light in the camera frame
    (+z towards the camera). Colour = 255 albedo (0.35 + 0.65 max(n.l, 0)). Returns (H, W, 3).
    """
    points, rotated, _ = project(model, theta)
    normals = _outward_normals(rotated, model.faces)
    shade = 0.35 + 0.65 * jnp.maximum(normals @ light, 0.0)
    colour = 255.0 * albedo * shade[:, None]
    attrs = jnp.concatenate([points, rotated[:, 2:3], colour], axis=-1)
    if model.grid_hw is not None and supersample > 1:
        attrs = paint.supersample_grid(attrs, model.grid_hw, supersample)
    height = background.shape[0]
    # y-up frame (x = 1-based column, y = H + 1 - 1-based row) -> 0-based pixel coordinates
    return paint.splat(attrs[:, 0] - 1.0, height - attrs[:, 1], attrs[:, 2], attrs[:, 3:6], background)


def _landmark_labels(model, theta, landmark_idx, image_hw):
    points, rotated, _ = project(model, theta)
    visible = _outward_normals(rotated, model.faces)[landmark_idx, 2] >= 0
    xy = points[landmark_idx]
    height, width = image_hw
    inside = (xy[:, 0] >= 0.5) & (xy[:, 0] <= width + 0.5) & (xy[:, 1] >= 0.5) & (xy[:, 1] <= height + 0.5)
    xy = jnp.where(inside[:, None], xy, 0.0)
    vis = (visible & inside).astype(xy.dtype)
    return jnp.concatenate([xy, vis[:, None]], -1)


def _backgrounds(rng: np.random.Generator, count, image_hw):
    """Smooth random colour fields plus pixel noise, 0-255 float32 ``(count, H, W, 3)``."""
    height, width = image_hw
    coarse = rng.uniform(0, 255, size=(count, 4, 4, 3)).astype(np.float32)
    smooth = jax.image.resize(jnp.asarray(coarse), (count, height, width, 3), "linear")
    noise = rng.normal(0, 8, size=(count, height, width, 3)).astype(np.float32)
    return np.clip(np.asarray(smooth) + noise, 0, 255)


def pose_matrix(yaw, pitch, roll):
    """R = Ry(yaw) Rx(pitch) Rz(roll), radians, numpy ``(..., 3, 3)``."""
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    one, zero = np.ones_like(yaw), np.zeros_like(yaw)
    ry = np.stack([np.stack([cy, zero, sy], -1), np.stack([zero, one, zero], -1), np.stack([-sy, zero, cy], -1)], -2)
    rx = np.stack([np.stack([one, zero, zero], -1), np.stack([zero, cp, -sp], -1), np.stack([zero, sp, cp], -1)], -2)
    rz = np.stack([np.stack([cr, -sr, zero], -1), np.stack([sr, cr, zero], -1), np.stack([zero, zero, one], -1)], -2)
    return ry @ rx @ rz


def pose_error_deg(r_pred, r_true):
    """Geodesic angle between two axis-angle rotations, degrees, ``(..., 3), (..., 3) -> (...)``."""
    rot_a = geometry.axis_angle_to_matrix(jnp.asarray(r_pred, jnp.float32))
    rot_b = geometry.axis_angle_to_matrix(jnp.asarray(r_true, jnp.float32))
    rel = jnp.swapaxes(rot_a, -1, -2) @ rot_b
    cos = jnp.clip((jnp.trace(rel, axis1=-2, axis2=-1) - 1.0) / 2.0, -1.0, 1.0)
    return np.degrees(np.asarray(jnp.arccos(cos)))


def _mean_scale(model, landmark_idx, face_width, image_width):
    pts = np.asarray(model.mean)[np.asarray(landmark_idx)]
    span = float(pts[:, 0].max() - pts[:, 0].min())
    if span <= 0:
        raise ValueError("model: landmarks span zero width; cannot choose a face scale")
    return face_width * image_width / span


def generate(model: MorphableModel, config: SyntheticConfig = SyntheticConfig(), *, seed: int = 0,
             albedo: np.ndarray | None = None, render_images: bool = True) -> dict:
    """Draw ``num_identities * images_per_identity`` labelled images (numpy arrays, see module doc).

    Deterministic in ``seed`` (numpy PCG64 for every random choice; rendering is jitted JAX).
    ``albedo (N, 3)`` in [0, 1] overrides the model's ``albedo_mean`` (default: a uniform skin tone).
    ``render_images=False`` skips rendering (``images`` is None); every label is unchanged.
    """
    if model.grid_hw is None:
        raise ValueError("model: generate needs a UV-grid model (model.grid_hw is None)")
    if config.landmark_set not in model.landmarks:
        raise ValueError(
            f"model: no landmark set {config.landmark_set!r}; has {sorted(model.landmarks)}"
        )
    rng = np.random.default_rng(seed)
    height, width = config.image_hw
    landmark_idx = jnp.asarray(model.landmarks[config.landmark_set], jnp.int32)
    num_shape, num_expr = model.num_shape, model.num_expression
    ids, per_id = config.num_identities, config.images_per_identity
    total = ids * per_id

    identity = np.repeat(np.arange(ids, dtype=np.int32), per_id)
    shape_coeffs = rng.normal(0, config.shape_std, size=(ids, num_shape))[identity]
    expr_coeffs = rng.normal(0, config.expression_std, size=(total, num_expr))
    tint = rng.uniform(0.8, 1.15, size=(ids, 3))[identity]
    yaw = np.radians(rng.uniform(-config.yaw_deg, config.yaw_deg, total))
    pitch = np.radians(rng.uniform(-config.pitch_deg, config.pitch_deg, total))
    roll = np.radians(rng.uniform(-config.roll_deg, config.roll_deg, total))
    r = np.asarray(geometry.matrix_to_axis_angle(jnp.asarray(pose_matrix(yaw, pitch, roll))))
    scale = _mean_scale(model, landmark_idx, config.face_width, width)
    scale = scale * np.exp(rng.uniform(-config.scale_jitter, config.scale_jitter, total))
    logs = np.log(scale) / math.log(0.99)
    t = np.stack([(width + 1) / 2 + rng.uniform(-1, 1, total) * config.translation_jitter * width,
                  (height + 1) / 2 + rng.uniform(-1, 1, total) * config.translation_jitter * height], -1)
    theta = np.concatenate([r, t, logs[:, None], shape_coeffs, expr_coeffs], -1).astype(np.float32)
    light = rng.normal(size=(total, 3)) * np.array([0.5, 0.5, 0.3]) + np.array([0.0, 0.3, 1.0])
    light = (light / np.linalg.norm(light, axis=-1, keepdims=True)).astype(np.float32)

    if albedo is None:
        albedo = model.albedo_mean if model.albedo_mean is not None else np.full(
            (model.num_vertices, 3), (0.85, 0.66, 0.55))
    albedo = jnp.asarray(albedo, jnp.float32)
    model32 = jax.tree_util.tree_map(
        lambda x: x.astype(jnp.float32) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) else x, model)

    supersample = config.supersample or math.ceil(2 * width / model.grid_hw[1])

    @jax.jit
    def render_chunk(theta_c, tint_c, light_c, background_c):
        def one(th, tn, li, bg):
            image = render(model32, th, albedo * tn, li, bg, supersample=supersample)
            return jnp.clip(jnp.round(image), 0, 255).astype(jnp.uint8), _landmark_labels(
                model32, th, landmark_idx, config.image_hw)
        return jax.vmap(one)(theta_c, tint_c, light_c, background_c)

    @jax.jit
    def label_chunk(theta_c):
        return jax.vmap(lambda th: _landmark_labels(model32, th, landmark_idx, config.image_hw))(theta_c)

    images = np.empty((total, height, width, 3), np.uint8) if render_images else None
    labels = np.empty((total, len(landmark_idx), 3), np.float32)
    chunk = config.chunk
    for start in range(0, total, chunk):
        stop = min(start + chunk, total)
        pad = chunk - (stop - start)  # one jit shape for every chunk

        def sl(a, start=start, stop=stop, pad=pad):
            return np.concatenate([a[start:stop], np.repeat(a[stop - 1:stop], pad, 0)], 0)

        if not render_images:
            labels[start:stop] = np.asarray(label_chunk(sl(theta)))[: stop - start]
            continue
        background = _backgrounds(rng, chunk, config.image_hw)
        img_c, lab_c = render_chunk(sl(theta), sl(tint.astype(np.float32)), sl(light), background)
        images[start:stop] = np.asarray(img_c)[: stop - start]
        labels[start:stop] = np.asarray(lab_c)[: stop - start]
    pose_deg = np.degrees(np.stack([yaw, pitch, roll], -1)).astype(np.float32)
    return {"images": images, "labels": labels, "theta": theta, "identity": identity,
            "pose_deg": pose_deg, "light": light}


def toy_model(res: int = 24, dtype=np.float32) -> MorphableModel:
    """A tiny procedural head on a ``res x res`` UV grid (mm) for tests and CPU smoke runs.

    An ellipsoidal head (azimuth +-120 deg across u, elevation +-72 deg across v) with a nose,
    brows and a chin; 5 identity and 5 expression components of smooth displacement fields;
    dark brows/eyes and red lips in ``albedo_mean``; 21 AFLW-ordered landmarks
    (:data:`jface.models.landmarks.AFLW21_NAMES`) and the 3DMM-STN grid face order
    (``resampleModel.m``), vertex k <-> texel (k // res, k % res).
    """
    cols, rows = np.meshgrid(np.arange(res), np.arange(res))
    u = cols / (res - 1.0)
    v = 1.0 - rows / (res - 1.0)
    phi = (u - 0.5) * 2 * (2 * np.pi / 3)
    psi = (v - 0.5) * np.pi * 0.8
    bump = lambda p0, s0, wp, ws: np.exp(-((phi - p0) / wp) ** 2 - ((psi - s0) / ws) ** 2)
    nose = bump(0.0, -0.08, 0.12, 0.18)
    brows = bump(-0.35, 0.25, 0.2, 0.06) + bump(0.35, 0.25, 0.2, 0.06)
    chin = bump(0.0, -0.62, 0.25, 0.1)
    radius = 1.0 + 0.22 * nose + 0.04 * brows + 0.05 * chin
    x = 75 * np.sin(phi) * np.cos(psi) * radius
    y = 100 * np.sin(psi) * radius
    z = 85 * np.cos(phi) * np.cos(psi) * radius
    mean = np.stack([x, y, z], -1).reshape(-1, 3)
    unit = np.stack([x / 75, y / 100, z / 85], -1).reshape(-1, 3)
    front = np.clip(np.cos(phi), 0, 1).reshape(-1, 1)
    lower = (psi < -0.3).reshape(-1, 1)
    zhat = np.array([0, 0, 1.0])
    shape_cols = [
        unit * np.array([6.0, 0, 0]),
        unit * np.array([0, 7.0, 0]),
        unit * np.array([0, 0, 6.0]),
        nose.reshape(-1, 1) * zhat * 6.0,
        lower * unit * np.array([5.0, 0, 0]),
    ]
    mouth = bump(0.0, -0.35, 0.3, 0.12).reshape(-1, 1)
    expr_cols = [
        lower * np.array([0, -6.0, 0]) * front,
        mouth * np.array([0, 4.0, 0]) * np.sign(np.abs(phi.reshape(-1, 1)) - 0.15),
        brows.reshape(-1, 1) * np.array([0, 4.0, 0]),
        bump(-0.6, -0.2, 0.2, 0.2).reshape(-1, 1) * zhat * 4 + bump(0.6, -0.2, 0.2, 0.2).reshape(-1, 1) * zhat * 4,
        lower * front * np.array([4.0, 0, 0]),
    ]
    shape_basis = np.stack(shape_cols, -1)
    expression_basis = np.stack(expr_cols, -1)
    faces = []
    for i in range(res - 1):  # resampleModel.m's face order, 0-based k = col + res * row
        for j in range(res - 1):
            n = lambda ii, jj: ii + res * jj
            faces.append([n(i, j), n(i + 1, j), n(i, j + 1)])
            faces.append([n(i + 1, j + 1), n(i, j + 1), n(i + 1, j)])
    faces = np.asarray(faces, np.int32)

    def nearest(p0, s0):
        return int(np.argmin(((phi - p0) ** 2 + (psi - s0) ** 2).reshape(-1)))

    spots = ([(p, 0.25) for p in (-0.55, -0.38, -0.18, 0.18, 0.38, 0.55)]
             + [(p, 0.12) for p in (-0.5, -0.33, -0.16, 0.16, 0.33, 0.5)]
             + [(-1.45, 0.0), (-0.12, -0.13), (0.0, -0.08), (0.12, -0.13), (1.45, 0.0)]
             + [(-0.28, -0.33), (0.0, -0.33), (0.28, -0.33), (0.0, -0.62)])
    landmarks = np.asarray([nearest(p, s) for p, s in spots], np.int32)
    albedo = np.ones((res, res, 3)) * np.array([0.85, 0.66, 0.55])
    dark = np.clip(brows * 1.5 + bump(-0.33, 0.12, 0.1, 0.05) * 1.2 + bump(0.33, 0.12, 0.1, 0.05) * 1.2, 0, 1)
    albedo = albedo * (1 - 0.75 * dark[..., None])
    lips = bump(0.0, -0.33, 0.22, 0.05)[..., None]
    albedo = albedo * (1 - lips) + lips * np.array([0.75, 0.25, 0.25])
    hair = np.clip((psi - 0.45) / 0.1, 0, 1)[..., None] + (np.abs(phi) > 1.7)[..., None]
    albedo = albedo * (1 - np.clip(hair, 0, 1)) + np.clip(hair, 0, 1) * np.array([0.25, 0.18, 0.12])
    mirror = (rows * res + (res - 1 - cols)).reshape(-1).astype(np.int32)
    uv = np.stack([u, v], -1).reshape(-1, 2)
    return MorphableModel(
        mean=jnp.asarray(mean, dtype), shape_basis=jnp.asarray(shape_basis, dtype),
        expression_basis=jnp.asarray(expression_basis, dtype), faces=jnp.asarray(faces),
        uv=jnp.asarray(uv, dtype), landmarks={"aflw21": jnp.asarray(landmarks)},
        albedo_mean=jnp.asarray(albedo.reshape(-1, 3), dtype), vertex_mirror=jnp.asarray(mirror),
        units="mm", grid_hw=(res, res))
