"""Rendered 3DMM-STN training faces: a linear 3DMM through ``jface.render`` (triangle rasterizer).

The rasterized counterpart of :mod:`jface.data.synthetic_stn` (whose splat renderer needs no
rasterizer). Two looks (``StnSynthConfig.look``):

* **photographic** (the default, :class:`jface.data.appearance.AppearanceConfig`): the mesh (every
  few grid rows / columns, so triangles are about 2 pixels wide: :func:`_render_grid`) is
  rasterized with :func:`jface.render.rasterize`; per pixel the interpolated mean-face position
  and UV carry the painted texture (:func:`jface.data.appearance.face_texture`: skin, eyes,
  brows, lips, mouth interior, hair, beard, glasses, make-up), lit by the SH light plus a key
  light with specular highlights and the face's cast shadows; the skull / hair, neck, shoulders
  and hat are drawn with their depth, over a procedural or photographic background; occluders
  and camera effects follow, then JPEG. Four compiled stages per chunk (geometry, face,
  composition, camera), because one program fuses badly on CPUs; the face is painted only at the
  pixels it covers (:func:`_photo_face`).
* **flat** (``look=None``): per-vertex model albedo shaded by DECA's SH lighting
  (:func:`jface.lighting.sh_shading`) of the interpolated outward normals, composited over a
  random background (:func:`jface.data.synthetic_deca.random_backgrounds`).

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
(S + 1)/2 + U(±0.06) S, SH light as :func:`jface.data.synthetic_deca.sample_sh_light`. With
``framing="crop"`` (the default) scale and translation are then replaced by a photograph's crop
(:func:`crop_framing`): the 3DMM-STN crop of :mod:`jface.data.photos` (``crops.stn_crop``: 1.6 x
the 68-point landmark box, the crop ``jface.flatten`` uses at inference) with a detector's jitter
(box size x exp(U(±0.12)), centre + U(±0.06) x box), the model's box taken as a detector's for
the same face (:data:`DETECTOR_BOX`, measured), so generated and real faces have the same size in
their crops. Then the appearance draws (:func:`jface.data.appearance.sample_identity`,
:func:`jface.data.appearance.sample_images`) and a JPEG quality.

Labels: ``landmarks21 (M, 21, 3)`` (``model.landmarks["aflw21"]``) and ``landmarks68 (M, 68, 3)``
(``"ibug68"``), (x, y, vis) in the y-up frame; vis = the original's normal sign test
(:func:`jface.stn.visibility`, ``vl_nnvisibilitymask.m``) and inside the image; a missing landmark (hidden,
outside the image, or index < 0 in the model) is (0, 0, 0) as in AFLW labels: occluders, hair and
glasses change no label. ``theta (M, 6 + D)``, ``face_mask (M, S, S)`` uint8 (the face mesh where it
is the nearest surface and no occluder covers it), ``pose_deg (M, 3)``, ``albedo (M, Ka)``,
``light (M, 9, 3)``, ``identity (M,)``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jface import geometry
from jface.arrays import tuned_jit
from jface.data import appearance, crops
from jface.data.synthetic_deca import (
    chunked_draws,
    concatenate_chunks,
    random_backgrounds,
    sample_pose,
    sample_sh_light,
)
from jface.lighting import sh_shading
from jface.render import interpolate, rasterize
from jface.stn import grid_faces, visibility

__all__ = ["StnSynthConfig", "stn_to_ndc", "crop_framing", "iter_stn", "generate_stn", "CROP_SCALE"]

# The 3DMM-STN crop of a photograph (jface.data.photos: crops.stn_crop at 1.6 x the landmark box,
# the crop jface.flatten uses); generated faces are framed by the same rule.
CROP_SCALE = 1.6


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
    # "crop": framed as a photograph's crop (crop_framing: CROP_SCALE x the 68-point landmark box,
    # with detector-like jitter); "centred": the mean face's landmark width is face_width of the
    # image, scale and translation jittered as above
    framing: str = "crop"
    crop_scale_jitter: float = 0.12  # log-uniform +-: the crop's size
    crop_shift_jitter: float = 0.06  # uniform +-, fraction of the landmark box: the crop's centre
    # None: flat SH-shaded albedo over a noise background; else the photographic look
    look: appearance.AppearanceConfig | None = appearance.AppearanceConfig()


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


@tuned_jit
def _render_chunk(model, theta, albedo, light, background, idx21, idx68):
    return jax.vmap(_render_one, in_axes=(None, 0, 0, 0, 0, None, None))(
        model, theta, albedo, light, background, idx21, idx68)


def _render_grid(model, image_size: int):
    """The mesh the photographic renderer rasterizes: every ``step``-th row and column of the UV
    grid (the last kept), so triangles stay about 2 pixels wide at ``image_size``. Returns (vertex
    indices (N',) int32, faces (F', 3) int32); the full grid for small steps or non-grid models."""
    if model.grid_hw is None:
        return np.arange(model.num_vertices, dtype=np.int32), np.asarray(model.faces, np.int32)
    height, width = model.grid_hw
    step = max(1, int(round(width / (0.45 * image_size))))
    rows = np.unique(np.r_[np.arange(0, height, step), height - 1])
    cols = np.unique(np.r_[np.arange(0, width, step), width - 1])
    index = (rows[:, None] * width + cols[None, :]).reshape(-1).astype(np.int32)
    return index, grid_faces(len(rows), len(cols))


def _landmark_faces(model, *indices):
    """The faces (in the model's order) that touch a landmark vertex: the original's visibility of
    those vertices (:func:`jface.stn.visibility`) needs no other face."""
    wanted = np.concatenate([np.asarray(i)[np.asarray(i) >= 0] for i in indices])
    faces = np.asarray(model.faces, np.int32)
    return faces[np.isin(faces, wanted).any(axis=1)]


def _photo_geometry(model, layout, theta, image_look, idx21, idx68, grid_index, grid_faces_, landmark_faces, size,
                    shadows):
    """Stage 1 (per item): pose the mesh, rasterize it, interpolate the mean-face position, UV,
    normal and rotated position per pixel; the key light's depth map (None without shadows); the labels."""
    r, t, logs, alpha = theta[0:3], theta[3:5], theta[5], theta[6:]
    shape = model.mean + jnp.einsum("nck,k->nc", model.basis, alpha)
    rotated = shape @ geometry.axis_angle_to_matrix(r).T
    scale = geometry.stn_scale(logs)
    points = scale * rotated[:, :2] + t
    sub = rotated[grid_index]
    normals = -geometry.vertex_normals(sub, grid_faces_)  # outward (see _render_one)
    ndc = stn_to_ndc(points[grid_index], sub[:, 2], scale, size)
    fragments = rasterize(ndc, grid_faces_, (size, size))
    vertex_attrs = jnp.concatenate([model.mean[grid_index], model.uv[grid_index], normals, sub], -1)
    attrs = interpolate(fragments, vertex_attrs[grid_faces_])
    # the key light's depth map; the face stage looks its pixels up (appearance.in_shadow)
    depth_map = (appearance.shadow_map(sub, grid_faces_, image_look["light_dir"], 340.0 * layout.unit) if shadows
                 else None)
    visible = visibility(rotated, landmark_faces)  # exact for the landmark vertices (_landmark_faces)
    box = points[jnp.maximum(idx21, 0)]
    low, high = jnp.min(box, 0), jnp.max(box, 0)
    face_box = jnp.stack([0.5 * (low[0] + high[0]) - 1.0, size - 0.5 * (low[1] + high[1]), jnp.max(high - low)])
    return (attrs, fragments.mask, depth_map, face_box, _labels(points, visible, idx21, size),
            _labels(points, visible, idx68, size))


# The face stage paints the face's pixels in blocks of 1 / FACE_BLOCKS of the image, as many blocks
# as the face needs (faces in the crop framing cover 45-70 % of the image).
FACE_BLOCKS = 8


def _photo_face(layout, attrs, depth_map, mask, sh_light, look, image_look):
    """Stage 2 (per item): the face's painted texture, lit (with the key light's shadow from
    ``depth_map``, None for none): ``(S, S, 3)``, painted where ``mask`` (0 elsewhere: composition
    uses the face only there), on the face's pixels only (:func:`jface.data.appearance.paint_pixels`,
    :data:`FACE_BLOCKS`)."""
    noise = appearance.face_noise(look["key"])

    def paint(points):
        shadow = 0.0
        if depth_map is not None:
            shadow = appearance.in_shadow(depth_map, points[:, 8:11], image_look["light_dir"], 340.0 * layout.unit,
                                          2.5 * layout.unit)
        albedo, gloss = appearance.face_texture(layout, look, image_look, points[:, 0:3], points[:, 3:5], noise)
        normal = points[:, 5:8] / jnp.maximum(jnp.linalg.norm(points[:, 5:8], axis=-1, keepdims=True), 1e-6)
        return appearance.shade(albedo, normal, gloss, image_look, sh_light, shadow)

    return appearance.paint_pixels(paint, attrs, mask > 0, FACE_BLOCKS)


def _photo_compose(layout, theta, face, face_depth, mask, face_box, sh_light, background, use_photo, look, image_look,
                   *, size, body):
    """Stage 3 (per item): the body, background and occluders around the lit ``face``
    (:func:`jface.data.appearance.compose`; each pixel's ray in the model frame is (p - t) / s in
    the y-up pixel frame). Returns (image (S, S, 3) in [0, 1] before the camera, face mask (S, S) uint8)."""
    t, scale = theta[3:5], geometry.stn_scale(theta[5])
    rotation = geometry.axis_angle_to_matrix(theta[0:3])
    rows, cols = jnp.meshgrid(jnp.arange(size, dtype=jnp.float32), jnp.arange(size, dtype=jnp.float32), indexing="ij")
    rays = (jnp.stack([cols + 1.0, size - rows], -1) - t) / scale  # model-frame (x, y) of each pixel's ray
    image, visible = appearance.compose(layout, look, image_look, rotation, rays, face, face_depth, mask > 0, face_box,
                                        sh_light, background, use_photo, body=body)
    return image, visible.astype(jnp.uint8)


def _per_item(fn, *batched):
    """``fn`` over the leading axis of ``batched`` as a loop in the program (``lax.map``): per-item
    work here is vectorised over pixels already, and a loop compiles about twice as fast as ``vmap``."""
    return jax.lax.map(lambda items: fn(*items), batched)


@functools.partial(tuned_jit, static_argnames=("size", "shadows"))
def _photo_geometry_chunk(model, layout, theta, image_look, idx21, idx68, grid_index, grid_faces_, landmark_faces, *,
                          size, shadows):
    return _per_item(lambda th, il: _photo_geometry(model, layout, th, il, idx21, idx68, grid_index, grid_faces_,
                                                    landmark_faces, size, shadows), theta, image_look)


@tuned_jit
def _photo_face_chunk(layout, attrs, depth_map, mask, light, look, image_look):
    return _per_item(functools.partial(_photo_face, layout), attrs, depth_map, mask, light, look, image_look)


@functools.partial(tuned_jit, static_argnames=("size", "body"))
def _photo_compose_chunk(layout, theta, face, face_depth, mask, face_box, light, background, use_photo, look,
                         image_look, *, size, body):
    one = functools.partial(_photo_compose, layout, size=size, body=body)
    return _per_item(one, theta, face, face_depth, mask, face_box, light, background, use_photo, look, image_look)


@tuned_jit
def _camera_chunk(images, image_look):
    keys = jax.vmap(lambda k: jax.random.fold_in(appearance.noise_key(k), 2))(image_look["key"])
    images = appearance.camera_effects(images, keys, image_look)
    return jnp.clip(jnp.round(images * 255.0), 0, 255).astype(jnp.uint8)


def _render_photo_chunk(model, layout, theta, light, background, use_photo, look, image_look, idx21, idx68, grid, *,
                        shadows: bool, body: bool):
    """A chunk of photographic images in four compiled stages (geometry, face, composition, camera),
    each materialised: one program for all of it compiles and runs several times slower on CPUs."""
    size = int(background.shape[1])
    attrs, mask, depth_map, face_box, lm21, lm68 = _photo_geometry_chunk(
        model, layout, theta, image_look, idx21, idx68, *grid, size=size, shadows=shadows)
    face = _photo_face_chunk(layout, attrs, depth_map, mask, light, look, image_look)
    image, face_mask = _photo_compose_chunk(layout, theta, face, attrs[..., 10], mask, face_box, light, background,
                                            use_photo, look, image_look, size=size, body=body)
    return _camera_chunk(image, image_look), face_mask, lm21, lm68


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


def _projected(model, theta, idx):
    """numpy: y-up pixel points ``(M, L, 2)`` of the vertices ``idx`` for thetas ``(M, 6 + D)``."""
    mean = np.asarray(model.mean, np.float64)[idx]
    basis = np.asarray(model.basis, np.float64)[idx]
    shape = mean[None] + np.einsum("lck,mk->mlc", basis, theta[:, 6:])
    rot = np.asarray(geometry.axis_angle_to_matrix(jnp.asarray(theta[:, :3], jnp.float32)), np.float64)
    rotated = np.einsum("mij,mlj->mli", rot, shape)
    scale = 0.99 ** theta[:, 5]
    return scale[:, None, None] * rotated[..., :2] + theta[:, None, 3:5]


# The detector's 68-point box over the model's own 68-point box for the same face
# (crops.landmark_box sizes): 1.006 (median 1.018) for jface.data.detect.MediapipeDetector, the
# photo pipeline's detector, on 80 generated held-out faces of the default model (1.000-1.020 in each
# 15° bin of |yaw| up to 60°). So generated faces are framed by their own 68 points. (Widening the model's
# box by its outer-eye / box ratio over the iBUG mean face's, 1.14 for the default model, made the
# photographs' crops 12 % tighter than the training crops: the localiser then predicted faces 8-11 %
# too small on 7 of the 8 photographs.)
DETECTOR_BOX = 1.0


def crop_framing(theta, box_points, image_size: int, rng: np.random.Generator, *, scale: float = CROP_SCALE,
                 scale_jitter: float = 0.12, shift_jitter: float = 0.06):
    """Reframe thetas ``(M, 6 + D)`` so each face sits in its ``image_size`` image as a
    photograph's crop would put it: :func:`jface.data.crops.deca_crop_transform` of the landmark
    box of ``box_points (M, L, 2)`` (the y-up pixel points the crop is made from; for photographs
    the detector's 68) at ``scale`` x exp(U(+-``scale_jitter``)), its centre moved by
    U(+-``shift_jitter``) x the box size in x and y (a detector's box is never exact).

    The crop is a similarity ``c' = k c + o`` of 0-based pixels (col = x - 1, row = S - y), so in
    the y-up frame s' = k s, t'_x = k (t_x - 1) + o_x + 1, t'_y = k t_y + S (1 - k) - o_y: the
    labels stay exact. Returns the new thetas (float32).
    """
    theta = np.array(theta, np.float64, copy=True)
    size = float(image_size)
    for m in range(len(theta)):
        pixels = np.stack([box_points[m, :, 0] - 1.0, size - box_points[m, :, 1]], -1)
        centre, old_size = crops.landmark_box(pixels)
        jitter = rng.uniform(-1, 1, size=2) * shift_jitter * old_size
        crop_scale = scale * np.exp(rng.uniform(-scale_jitter, scale_jitter))
        transform = crops.deca_crop_transform(pixels + jitter, crop_scale, out_size=int(image_size))
        k, offset = transform.scale, transform.offset
        theta[m, 3] = k * (theta[m, 3] - 1.0) + offset[0] + 1.0
        theta[m, 4] = k * theta[m, 4] + size * (1.0 - k) - offset[1]
        theta[m, 5] = theta[m, 5] + np.log(k) / np.log(0.99)
    return theta.astype(np.float32)


def _identity_draws(model, config, seed, identity, count, image_size, base_scale, box_idx, crop_scale, backgrounds):
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
    draws = {
        "theta": f32(theta),
        "albedo": f32(np.repeat(albedo[None], count, 0)),
        "light": sample_sh_light(rng, count),
        "pose_deg": f32(pose_deg),
        "identity": np.full(count, identity, np.int32),
    }
    if config.look is None:
        draws["background"] = random_backgrounds(rng, count, (image_size, image_size))
    if config.framing == "crop":
        draws["theta"] = crop_framing(theta, _projected(model, theta, box_idx), image_size, rng, scale=crop_scale,
                                      scale_jitter=config.crop_scale_jitter, shift_jitter=config.crop_shift_jitter)
    if config.look is not None:
        look = appearance.sample_identity(rng, config.look)
        images = appearance.sample_images(rng, count, config.look)
        draws.update({f"look_{k}": np.repeat(v[None], count, 0) for k, v in look.items()})
        draws.update({f"image_{k}": v for k, v in images.items()})
        draws["jpeg"] = np.where(rng.uniform(size=count) < config.look.jpeg_prob,
                                 rng.integers(30, 96, size=count), 0).astype(np.int32)
        use_photo = np.zeros(count, np.float32)
        photos = np.zeros((count, image_size, image_size, 3), np.float32)
        if backgrounds:
            use_photo = (rng.uniform(size=count) < config.look.background_photo_prob).astype(np.float32)
            photos = appearance.background_crops(backgrounds, rng, count, image_size) * use_photo[:, None, None, None]
        draws["use_photo"], draws["background"] = use_photo, photos
    return draws


def _split(merged, prefix):
    return {k[len(prefix):]: v for k, v in merged.items() if k.startswith(prefix)}


def iter_stn(model, num_identities: int, images_per_identity: int, seed: int, image_size: int = 224,
             *, config: StnSynthConfig | None = None, identity_offset: int = 0,
             render_images: bool = True) -> Iterator[dict]:
    """Yield chunks (dicts of numpy arrays, module docstring) of at most ``config.chunk`` images.

    ``render_images=False``: only the draws (``theta``, ``albedo``, ``light``, ``pose_deg``,
    ``identity``), the same numbers as with rendering, without images, masks or landmarks."""
    config = config or StnSynthConfig()
    if int(num_identities) < 0 or int(images_per_identity) < 1:
        raise ValueError(
            f"num_identities / images_per_identity: expected >= 0 / >= 1, got "
            f"{num_identities} / {images_per_identity}")
    if int(image_size) < 8:
        raise ValueError(f"image_size: expected >= 8 pixels, got {image_size}")
    if config.framing not in ("crop", "centred"):
        raise ValueError(f"framing: expected 'crop' or 'centred', got {config.framing!r}")
    model32 = _sub_model(model, config)
    idx21, idx68 = _landmark_index(model32, "aflw21"), _landmark_index(model32, "ibug68")
    width_idx = idx21 if bool(jnp.all(idx21 >= 0)) else jnp.arange(model32.num_vertices)
    mean_xy = np.asarray(model32.mean)[np.asarray(width_idx)]
    span = float(mean_xy[:, 0].max() - mean_xy[:, 0].min())
    if span <= 0:
        raise ValueError("model: landmarks span zero width; cannot choose a face scale")
    base_scale = config.face_width * image_size / span
    # the crop box: the 68 points a detector gives, else the 21 (models without "ibug68")
    box_idx = np.asarray(idx68 if bool(jnp.all(idx68 >= 0)) else width_idx)
    crop_scale = CROP_SCALE * DETECTOR_BOX
    layout = appearance.face_layout(model32) if config.look is not None else None
    grid = tuple(jnp.asarray(a) for a in _render_grid(model32, int(image_size))) + (
        jnp.asarray(_landmark_faces(model32, idx21, idx68)),)
    backgrounds = appearance.load_backgrounds(config.look.backgrounds) if (
        config.look is not None and config.look.backgrounds) else []
    chunk = int(config.chunk)

    def render(merged, n, pad):
        if not render_images:
            return {k: merged[k] for k in ("theta", "albedo", "light", "pose_deg", "identity")}
        if config.look is None:
            keys = ("theta", "albedo", "light", "background")
            out = _render_chunk(model32, *[pad(merged[k]) for k in keys], idx21, idx68)
        else:
            padded = {k: pad(v) for k, v in merged.items()}
            out = _render_photo_chunk(model32, layout, padded["theta"], padded["light"], padded["background"],
                                      padded["use_photo"], _split(padded, "look_"), _split(padded, "image_"),
                                      idx21, idx68, grid, shadows=config.look.shadows, body=config.look.body)
        image, face_mask, lm21, lm68 = (np.asarray(x)[:n] for x in out)
        if config.look is not None:
            image = appearance.jpeg(image, merged["jpeg"][:n])
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
        return _identity_draws(model32, config, seed, ident, int(images_per_identity), int(image_size), base_scale,
                               box_idx, crop_scale, backgrounds)

    for merged, n, pad in chunked_draws(draw, identities, images_per_identity, chunk):
        yield render(merged, n, pad)


def generate_stn(model, num_identities: int, images_per_identity: int, seed: int, image_size: int = 224,
                 *, config: StnSynthConfig | None = None, render_images: bool = True, keep=None,
                 on_chunk=None) -> dict:
    """``num_identities * images_per_identity`` rendered 3DMM-STN images with exact labels.

    ``model``: a UV-grid :class:`jface.models.MorphableModel` (e.g.
    :func:`jface.models.default_stn_model`); the first ``config.n_shape`` / ``n_expression``
    components are used (the 3DMM-STN's 5 + 5). Returns a dict of numpy arrays (module docstring).
    Deterministic in ``seed``. ``keep`` / ``on_chunk``: as in
    :func:`jface.data.synthetic_deca.concatenate_chunks`.
    """
    return concatenate_chunks(iter_stn(model, num_identities, images_per_identity, seed, image_size, config=config,
                                       render_images=render_images), keep=keep, on_chunk=on_chunk)
