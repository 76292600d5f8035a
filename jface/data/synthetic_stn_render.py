"""Rendered 3DMM-STN training faces: a linear 3DMM through ``jface.render`` (triangle rasterizer).

The rasterized counterpart of :mod:`jface.data.synthetic_stn` (whose splat renderer needs no
rasterizer): the model's UV-grid mesh is rasterized with :func:`jface.render.rasterize` and shaded
per pixel with per-vertex albedo and DECA's SH lighting (:func:`jface.lighting.sh_shading`) of
the interpolated outward normals, composited over a random background
(:func:`jface.data.synthetic_deca.random_backgrounds`).

Frames (BUILD_NOTES.md, Frames and conventions): theta = [r(3), t(2), logs(1), alpha(D)] with X = mean + basis alpha,
X' = R X (x' = R x, axis-angle r), p = s X'_xy + t, s = 0.99**logs, in the y-up pixel frame of an
S x S image (x = 1-based column, y = S + 1 - 1-based row; S = 224 for the original). The renderer
wants DECA's NDC (x right, y down, smaller z = closer; pixel centre col = (x_ndc + 1) S/2 - 0.5,
as ``StandardRasterizer`` in ``decalib/utils/renderer.py``), so with 0-based col0 = x - 1, row0 = S - y:

    x_ndc = (col0 + 0.5) 2/S - 1,   y_ndc = (row0 + 0.5) 2/S - 1,   z_ndc = -s z' 2/S

(z' points towards the camera, so nearer = smaller z_ndc). A vertex at label (x, y) therefore
lands exactly on the pixel centre the label names.

Sampling (per identity ``i``: numpy PCG64 seeded with ``[seed, i]``): identity coefficients
N(0, 1) and albedo coefficients N(0, 0.5²) per identity; per image expression N(0, 0.7²), pose
R = Ry(yaw) Rx(pitch) Rz(roll) with yaw U(±90°), pitch U(±20°), roll U(±15°)
(:func:`jface.data.synthetic_deca.sample_pose`), scale s such that the mean face's ``aflw21``
landmark width is ``face_width`` (0.55) of the image times exp(U(±0.1)), translation
(S + 1)/2 + U(±0.06) S, SH light as :func:`jface.data.synthetic_deca.sample_sh_light`.

Labels: ``landmarks21 (M, 21, 3)`` (``model.landmarks["aflw21"]``) and ``landmarks68 (M, 68, 3)``
(``"ibug68"``), (x, y, vis) in the y-up frame; vis = the original's normal sign test
(:func:`jface.stn.visibility`, ``vl_nnvisibilitymask.m``) and inside the image; a missing landmark (hidden,
outside the image, or index < 0 in the model) is (0, 0, 0) as in AFLW labels. ``theta
(M, 6 + D)``, ``face_mask (M, S, S)`` uint8 (coverage), ``pose_deg (M, 3)``, ``albedo (M, Ka)``,
``light (M, 9, 3)``, ``identity (M,)``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jface import geometry
from jface.data.synthetic_deca import chunked_draws, random_backgrounds, sample_pose, sample_sh_light
from jface.lighting import sh_shading
from jface.render import interpolate, rasterize
from jface.stn import visibility

__all__ = ["StnSynthConfig", "stn_to_ndc", "iter_stn", "generate_stn"]


@dataclasses.dataclass(frozen=True)
class StnSynthConfig:
    """How 3DMM-STN images are drawn (angles in degrees)."""

    n_shape: int = 5
    n_expression: int = 5
    shape_std: float = 1.0
    expression_std: float = 0.7
    albedo_std: float = 0.5
    yaw_deg: float = 90.0
    pitch_deg: float = 20.0
    roll_deg: float = 15.0
    face_width: float = 0.55
    scale_jitter: float = 0.1
    translation_jitter: float = 0.06
    chunk: int = 8


def stn_to_ndc(points, depth, scale, image_size):
    """y-up pixel frame ``(N, 2)`` + camera-facing depth ``(N,)`` -> DECA NDC ``(N, 3)``.

    col0 = x - 1, row0 = S - y; x_ndc = (col0 + 0.5) 2/S - 1, y_ndc = (row0 + 0.5) 2/S - 1,
    z_ndc = -scale depth 2/S (nearer = smaller).
    """
    size = float(image_size)
    col0 = points[:, 0] - 1.0
    row0 = size - points[:, 1]
    return jnp.stack([(col0 + 0.5) * 2.0 / size - 1.0, (row0 + 0.5) * 2.0 / size - 1.0,
                      -scale * depth * 2.0 / size], axis=-1)


def _labels(points, visible, idx, image_size):
    valid = idx >= 0
    xy = points[jnp.maximum(idx, 0)]
    size = float(image_size)
    inside = jnp.all((xy >= 0.5) & (xy <= size + 0.5), axis=-1)
    vis = visible[jnp.maximum(idx, 0)] & inside & valid
    xy = jnp.where(vis[:, None], xy, 0.0)
    return jnp.concatenate([xy, vis[:, None].astype(xy.dtype)], -1)


def _render_one(model, theta, albedo_coeffs, light, background, idx21, idx68):
    size = background.shape[0]
    r, t, logs, alpha = theta[0:3], theta[3:5], theta[5], theta[6:]
    shape = model.mean + jnp.einsum("nck,k->nc", model.basis, alpha)
    rotated = shape @ geometry.axis_angle_to_matrix(r).T
    scale = geometry.stn_scale(logs)
    points = scale * rotated[:, :2] + t
    ndc = stn_to_ndc(points, rotated[:, 2], scale, size)
    faces = model.faces
    # geometry.vertex_normals on the STN grid's face order points away from the camera for a
    # frontal face (util/visibilityNotSelf.m), so the outward normal is its negative.
    normals = -geometry.vertex_normals(rotated, faces)
    albedo = model.albedo_mean
    if model.albedo_basis is not None and albedo_coeffs.shape[0]:
        albedo = albedo + jnp.einsum("nck,k->nc", model.albedo_basis, albedo_coeffs)
    albedo = jnp.clip(albedo, 0.0, 1.0)
    fragments = rasterize(ndc, faces, (size, size))
    attrs = interpolate(fragments, jnp.concatenate([albedo, normals], -1)[faces])
    colour = jnp.clip(attrs[..., :3] * sh_shading(attrs[..., 3:6], light), 0.0, 1.0)
    alpha_img = fragments.mask[..., None]
    image = colour * alpha_img + background * (1.0 - alpha_img)
    image = jnp.clip(jnp.round(image * 255.0), 0, 255).astype(jnp.uint8)
    visible = visibility(rotated, faces)
    return (image, fragments.mask.astype(jnp.uint8), _labels(points, visible, idx21, size),
            _labels(points, visible, idx68, size))


@jax.jit
def _render_chunk(model, theta, albedo, light, background, idx21, idx68):
    return jax.vmap(_render_one, in_axes=(None, 0, 0, 0, 0, None, None))(
        model, theta, albedo, light, background, idx21, idx68)


def _sub_model(model, config: StnSynthConfig):
    if config.n_shape > model.num_shape or config.n_expression > model.num_expression:
        raise ValueError(
            f"config: asks for {config.n_shape} + {config.n_expression} components, the model has "
            f"{model.num_shape} + {model.num_expression}")
    sub = model.replace(shape_basis=model.shape_basis[..., :config.n_shape],
                        expression_basis=model.expression_basis[..., :config.n_expression])
    return jax.tree_util.tree_map(
        lambda x: x.astype(jnp.float32) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) else x, sub)


def _landmark_index(model, name):
    if name not in model.landmarks:
        return jnp.full((21 if name == "aflw21" else 68,), -1, jnp.int32)
    return jnp.asarray(model.landmarks[name], jnp.int32)


def _identity_draws(model, config, seed, identity, count, image_size, base_scale):
    rng = np.random.default_rng([int(seed), int(identity)])
    n_albedo = 0 if model.albedo_basis is None else model.albedo_basis.shape[-1]
    shape = rng.normal(0, config.shape_std, size=config.n_shape)
    albedo = rng.normal(0, config.albedo_std, size=n_albedo)
    expression = rng.normal(0, config.expression_std, size=(count, config.n_expression))
    pose_deg, r = sample_pose(rng, count, config.yaw_deg, config.pitch_deg, config.roll_deg)
    scale = base_scale * np.exp(rng.uniform(-config.scale_jitter, config.scale_jitter, count))
    logs = np.log(scale) / math.log(0.99)
    t = (image_size + 1) / 2 + rng.uniform(-1, 1, size=(count, 2)) * config.translation_jitter * image_size
    theta = np.concatenate([r, t, logs[:, None], np.repeat(shape[None], count, 0), expression], -1)
    f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
    return {
        "theta": f32(theta),
        "albedo": f32(np.repeat(albedo[None], count, 0)),
        "light": sample_sh_light(rng, count),
        "background": random_backgrounds(rng, count, (image_size, image_size)),
        "pose_deg": f32(pose_deg),
        "identity": np.full(count, identity, np.int32),
    }


def iter_stn(model, num_identities: int, images_per_identity: int, seed: int, image_size: int = 224,
             *, config: StnSynthConfig | None = None, identity_offset: int = 0) -> Iterator[dict]:
    """Yield chunks (dicts of numpy arrays, module docstring) of at most ``config.chunk`` images."""
    config = config or StnSynthConfig()
    if int(num_identities) < 0 or int(images_per_identity) < 1:
        raise ValueError(
            f"num_identities / images_per_identity: expected >= 0 / >= 1, got "
            f"{num_identities} / {images_per_identity}")
    if int(image_size) < 8:
        raise ValueError(f"image_size: expected >= 8 pixels, got {image_size}")
    model32 = _sub_model(model, config)
    idx21, idx68 = _landmark_index(model32, "aflw21"), _landmark_index(model32, "ibug68")
    width_idx = idx21 if bool(jnp.all(idx21 >= 0)) else jnp.arange(model32.num_vertices)
    mean_xy = np.asarray(model32.mean)[np.asarray(width_idx)]
    span = float(mean_xy[:, 0].max() - mean_xy[:, 0].min())
    if span <= 0:
        raise ValueError("model: landmarks span zero width; cannot choose a face scale")
    base_scale = config.face_width * image_size / span
    chunk = int(config.chunk)
    keys = ("theta", "albedo", "light", "background")

    def render(merged, n, pad):
        out = _render_chunk(model32, *[pad(merged[k]) for k in keys], idx21, idx68)
        image, face_mask, lm21, lm68 = (np.asarray(x)[:n] for x in out)
        return {
            "images": image,
            "landmarks21": lm21.astype(np.float32),
            "landmarks68": lm68.astype(np.float32),
            "face_mask": face_mask,
            "theta": merged["theta"],
            "albedo": merged["albedo"],
            "light": merged["light"],
            "pose_deg": merged["pose_deg"],
            "identity": merged["identity"],
        }

    identities = range(identity_offset, identity_offset + int(num_identities))

    def draw(ident):
        return _identity_draws(model32, config, seed, ident, int(images_per_identity), int(image_size), base_scale)

    for merged, n, pad in chunked_draws(draw, identities, images_per_identity, chunk):
        yield render(merged, n, pad)


def generate_stn(model, num_identities: int, images_per_identity: int, seed: int, image_size: int = 224,
                 *, config: StnSynthConfig | None = None) -> dict:
    """``num_identities * images_per_identity`` rendered 3DMM-STN images with exact labels.

    ``model``: a UV-grid :class:`jface.models.MorphableModel` (e.g.
    :func:`jface.models.default_stn_model`); the first ``config.n_shape`` / ``n_expression``
    components are used (the 3DMM-STN's 5 + 5). Returns a dict of numpy arrays (module docstring).
    Deterministic in ``seed``.
    """
    chunks = list(iter_stn(model, num_identities, images_per_identity, seed, image_size, config=config))
    if not chunks:
        raise ValueError("num_identities: expected >= 1 to generate any image, got 0")
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
