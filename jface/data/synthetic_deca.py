"""Rendered training faces for DECA: FLAME + UV albedo + SH light through ``jface.render``.

Every image is drawn from the model itself, so every label is exact. Per identity (``K`` images
each) the shape β ~ N(0, 1) (``n_shape`` = 100 numbers, DECA's count) and the albedo coefficients
α ~ N(0, 1) (the model's albedo components) are fixed; per image:

* expression ψ (50 numbers, DECA's count): N(0, 0.6²) on the leading ``n_expression_active``
  components, 0 on the rest;
* head pose R = Ry(yaw) Rx(pitch) Rz(roll) (:func:`jface.data.synthetic_stn.pose_matrix`), yaw
  U(±90°), pitch U(±20°), roll U(±15°), stored as DECA's global axis-angle; positive yaw turns the
  face (+z) towards +x (image right); jaw axis-angle (U(0, 0.35) rad, 0, 0) opens the mouth;
* camera (s, t_x, t_y) (DECA's ``batch_orth_proj``, ``decalib/utils/util.py``) chosen as DECA's
  crop would frame the face: the 68 projected landmarks' box ``old_size = (w + h) / 2`` is
  ``image_size / crop_scale`` pixels with crop_scale ~ U(1.25, 1.5) (DECA's test crop,
  ``TestData`` in ``decalib/datasets/datasets.py``, is 1.1 · 1.25 = 1.375) and its centre is
  jittered by U(±0.05) · old_size;
* SH light L (9, 3) (``SRenderY.add_SHlight``, ``decalib/utils/renderer.py``), written in shading
  units a_k = L_k c_k: a_0 ~ U(0.6, 1.2) grey plus N(0, 0.04) colour, a_1..3 ~ N(0, 0.25) (shared
  by the colours, plus N(0, 0.02)), a_4..8 ~ N(0, 0.04); the stored ``light`` is DECA's L = a / c
  (what DECA's encoder predicts);
* a background: a smooth random colour field, a linear gradient between two colours and pixel
  noise, blended with random weights (:func:`random_backgrounds`);
* fine detail: a UV displacement map D (metres, along the coarse normal, DECA's detail
  convention, ``DECA.displacement2normal`` in ``decalib/deca.py``) that depends on the image's
  expression and jaw codes plus a small static part per identity (:func:`detail_patterns`,
  :func:`detail_amplitudes`, below).

Procedural detail (what DECA's detail stage, E_detail + F_d, is meant to recover). Four UV patterns
P_r (r = forehead creases, glabella lines, crow's feet, nasolabial folds), each a groove profile
with min -1, are placed relative to the UV positions of the model's 68 full landmarks
(:func:`detail_patterns`). Per image, D = sum_r a_r P_r with amplitude (metres)

    a_r = depth_r * (static_r + drive_r),   static_r ~ U(0, detail_static_max) per identity,

    drive_forehead  = relu(psi_2) / sigma          (brow raise on the default head)
    drive_glabella  = relu(psi_4) / sigma          (brow frown)
    drive_crowsfeet = relu(psi_0) / sigma + relu(psi_3) / sigma     (smile, eye close)
    drive_nasolabial = relu(psi_0) / sigma + relu(psi_5) / sigma + jaw / jaw_max  (smile, stretch, open)

with sigma = ``expression_std``, jaw the jaw axis-angle's x (radians) and depth_r =
``detail_depth_mm`` (1.0, 0.8, 0.8, 2.0) mm: :data:`DETAIL_DRIVERS`. The static numbers come from
their own stream (PCG64 seeded with ``[seed, identity, 1]``), so the other draws are the same as
without detail. D becomes detail normals with DECA's own
:func:`jface.deca.detail.displacement_to_normals` (on world2uv of the posed vertices and vertex
normals, masked by the model's UV face/eye mask); the image's normals are the interpolated vertex
normals plus grid_sample(n(D) - n(0)), so pixels whose UV neighbourhood has D = 0 shade exactly
as without detail. :func:`detail_displacements` recomputes every image's D from the stored labels
(``expression``, ``pose``, ``identity``) and the seed.

Rendering (per item, vmapped over a fixed chunk so one shape compiles):
``jface.flame.forward`` -> ``jface.geometry.orthographic_camera`` -> ``flip_yz`` (DECA's NDC: x
right, y down, smaller z = closer) -> ``jface.render.render`` (UV albedo sampled with the
interpolated UV grid, SH shading of interpolated world normals), colour clipped to [0, 1] and
composited over the background with the coverage alpha.

Labels:

* ``landmarks68 (M, 68, 3)``: (x, y) = DECA NDC of ``landmarks2d`` (17 dynamic contour + 51
  static points, ``FLAME.forward`` in ``decalib/models/FLAME.py``) through the same camera; the
  third column is visibility: DECA's ``visofp`` (:func:`jface.flame.landmark_visibility`, normal
  z < 0.1 at the full landmark) and inside the image. The NDC is the renderer's frame: pixel
  centre col = (x + 1) W/2 - 0.5 (``StandardRasterizer`` in ``decalib/utils/renderer.py``;
  BUILD_NOTES.md, Frames and conventions). DECA's training labels put a 0-based pixel p at
  p / 224 · 2 - 1 (``decalib/datasets/vggface.py``), half a pixel off; these labels are exact in
  the frame DECA's landmark loss compares (its projected ``landmarks2d``), not in the
  label-normalisation frame.
* ``landmarks21 (M, 21, 3)``: AFLW-21 points from the 68 by
  :data:`jface.models.landmarks.AFLW21_FROM_IBUG68` (mean of the listed points; vis = the minimum
  of their vis; the ears are the contour points at ear level).
* ``face_mask (M, H, W)`` uint8 0/1: coverage alpha ⊙ the model's UV face/eye mask sampled with
  the render's UV grid, thresholded at 0.5.
* ``shape (M, 100)``, ``expression (M, 50)``, ``pose (M, 6)`` = [global aa, jaw aa], ``cam (M, 3)``,
  ``albedo (M, Ka)``, ``light (M, 9, 3)``, ``pose_deg (M, 3)`` = (yaw, pitch, roll),
  ``identity (M,)`` int32.

Determinism: every random number of identity ``i`` comes from numpy PCG64 seeded with
``[seed, i]``, so an identity's images do not depend on the chunk size or on the other identities.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jface import flame, geometry
from jface.arrays import tuned_jit
from jface.data.synthetic_stn import pose_matrix
from jface.deca.detail import displacement_to_normals
from jface.deca.render import render
from jface.lighting import SH_CONSTANTS, sh_shading
from jface.models.landmarks import AFLW21_FROM_IBUG68
from jface.models.morphable import uv_face_eye_mask
from jface.render import interpolate, rasterize, uv_ndc
from jface.sampling import grid_sample

__all__ = [
    "AFLW21_FROM_IBUG68",
    "concatenate_chunks",
    "DETAIL_REGIONS",
    "DETAIL_DRIVERS",
    "DETAIL_WIDTHS",
    "DecaSynthConfig",
    "detail_patterns",
    "detail_amplitudes",
    "sample_detail_static",
    "detail_displacements",
    "aflw21_from_ibug68",
    "random_backgrounds",
    "sample_pose",
    "sample_sh_light",
    "iter_deca",
    "generate_deca",
]

def aflw21_from_ibug68(landmarks68):
    """``(..., 68, 3)`` (x, y, vis) -> ``(..., 21, 3)`` by :data:`AFLW21_FROM_IBUG68` (numpy).

    Coordinates are the mean of the listed points; vis is their minimum.
    """
    lm = np.asarray(landmarks68)
    if lm.shape[-2:] != (68, 3):
        raise ValueError(f"landmarks68: expected (..., 68, 3) (x, y, vis), got shape {lm.shape}")
    xy = np.stack([lm[..., list(idx), :2].mean(-2) for idx in AFLW21_FROM_IBUG68], -2)
    vis = np.stack([lm[..., list(idx), 2].min(-1) for idx in AFLW21_FROM_IBUG68], -1)
    return np.concatenate([xy, vis[..., None]], -1).astype(lm.dtype)


@dataclasses.dataclass(frozen=True)
class DecaSynthConfig:
    """How DECA images are drawn (angles in degrees; see the module docstring)."""

    n_shape: int = 100
    n_expression: int = 50
    n_expression_active: int = 10
    expression_std: float = 0.6
    yaw_deg: float = 90.0
    pitch_deg: float = 20.0
    roll_deg: float = 15.0
    jaw_max_rad: float = 0.35
    crop_scale: tuple = (1.25, 1.5)
    centre_jitter: float = 0.05
    chunk: int = 8
    # procedural fine detail (module docstring): groove depth per unit drive, in mm, one per
    # DETAIL_REGIONS entry; all zero switches the detail off
    detail_depth_mm: tuple = (1.0, 0.8, 0.8, 2.0)
    detail_static_max: float = 0.5


DETAIL_REGIONS = ("forehead", "glabella", "crows_feet", "nasolabial")
# Per region: the expression components whose positive part (in units of expression_std) drives
# it, and the weight of the jaw opening (jaw axis-angle x / jaw_max_rad).
DETAIL_DRIVERS = (
    ((2,), 0.0),      # forehead creases: brow raise
    ((4,), 0.0),      # glabella lines: brow frown
    ((0, 3), 0.0),    # crow's feet: smile, eye close
    ((0, 5), 1.0),    # nasolabial folds: smile, mouth stretch, jaw opening
)

# Groove widths (Gaussian sigma) and the forehead creases' period, in the face-normalised UV
# coordinates of detail_patterns.
DETAIL_WIDTHS = {"forehead_period": 0.06, "glabella": 0.02, "crows_feet": 0.02, "nasolabial": 0.05}


def _landmark_uv(model, size):
    """``(68, 2)`` (row, col) texel coordinates of the full landmarks in a ``size`` UV image."""
    uv_coords = np.asarray(model.uv_coords, np.float64)
    uv_faces = np.asarray(model.uv_faces)
    faces = np.asarray(model.full_lmk_faces_idx)
    bary = np.asarray(model.full_lmk_bary_coords, np.float64)
    uv = np.einsum("lk,lkd->ld", bary, uv_coords[uv_faces[faces]])
    return np.stack([(1.0 - uv[:, 1]) * size[0] - 0.5, uv[:, 0] * size[1] - 0.5], -1)


def _smooth_window(t, lo, hi):
    """sin^2 bump on [lo, hi], 0 outside."""
    u = np.clip((t - lo) / (hi - lo), 0.0, 1.0)
    return np.sin(np.pi * u) ** 2


def _segment_groove(x, y, a, b, width):
    """exp(-d^2 / 2 width^2) of the distance to segment a -> b, times a sin^2 taper along it."""
    ab = np.asarray(b, np.float64) - np.asarray(a, np.float64)
    length2 = float(ab @ ab)
    t = ((x - a[0]) * ab[0] + (y - a[1]) * ab[1]) / length2
    px, py = a[0] + np.clip(t, 0, 1) * ab[0], a[1] + np.clip(t, 0, 1) * ab[1]
    d2 = (x - px) ** 2 + (y - py) ** 2
    along = np.sin(np.pi * np.clip(t, 0, 1)) ** 2
    return np.exp(-0.5 * d2 / width ** 2) * along


def detail_patterns(model, uv_size=None) -> np.ndarray:
    """``(4, H, W)`` float32 groove patterns P_r (min -1, 0 far from the region), order
    :data:`DETAIL_REGIONS`, in the UV image layout (row 0 = v = 1), default size the model's UV mask.

    Placed in face-normalised UV coordinates from the full landmarks' UV positions:
    x = (col - c_eyes) / |c_45 - c_36| (+-0.5 at the outer eye corners),
    y = (row - r_eyes) / (r_8 - r_eyes) (0 at the eye corners, 1 at the chin); b = the brows' mean y.

    * forehead: horizontal creases (0.5 + 0.5 cos(2 pi (y - b) / 0.06))^2 in the band
      y in [b - 0.13, b - 0.01] (sin^2 window), |x| < the brows' extent (sin^2 taper);
    * glabella: two vertical grooves at |x| = 0.06 (Gaussian, width 0.02), y in [b - 0.06, b + 0.1];
    * crow's feet: three grooves (width 0.02) per eye from 0.05 to 0.2 beyond the outer corner, at
      -30, 0, +30 degrees from the horizontal;
    * nasolabial folds: one groove (width 0.05) per side from 0.03 outside / 0.04 above the nose
      wing (landmarks 31, 35) to 0.07 outside / 0.06 below the mouth corner (48, 54).
    """
    size = tuple(np.shape(model.uv_face_eye_mask)[:2]) if uv_size is None else (
        (int(uv_size), int(uv_size)) if np.isscalar(uv_size) else tuple(int(s) for s in uv_size))
    lmk = _landmark_uv(model, size)
    r_eye = 0.5 * (lmk[36, 0] + lmk[45, 0])
    c_eye = 0.5 * (lmk[36, 1] + lmk[45, 1])
    sx = abs(lmk[45, 1] - lmk[36, 1])
    sy = lmk[8, 0] - r_eye
    if not (sx > 0 and sy > 0):
        raise ValueError("model: its landmarks' UV positions do not span a face (eye corners / chin)")
    rows, cols = np.mgrid[0:size[0], 0:size[1]].astype(np.float64)
    x = (cols - c_eye) / sx
    y = (rows - r_eye) / sy
    ax = np.abs(x)
    lm_x = (lmk[:, 1] - c_eye) / sx
    lm_y = (lmk[:, 0] - r_eye) / sy
    brow = float(lm_y[17:27].mean())
    brow_x = float(np.abs(lm_x[17:27]).max())

    forehead = ((0.5 + 0.5 * np.cos(2 * np.pi * (y - brow) / DETAIL_WIDTHS["forehead_period"])) ** 2
                * _smooth_window(y, brow - 0.13, brow - 0.01) * _smooth_window(x, -brow_x, brow_x))
    glabella = (np.exp(-0.5 * (ax - 0.06) ** 2 / DETAIL_WIDTHS["glabella"] ** 2)
                * _smooth_window(y, brow - 0.06, brow + 0.1))
    corner = np.array([0.5 * (abs(lm_x[36]) + abs(lm_x[45])), 0.5 * (lm_y[36] + lm_y[45])])
    crows = np.zeros_like(x)
    for angle in np.radians([-30.0, 0.0, 30.0]):
        d = np.array([np.cos(angle), np.sin(angle)])
        ray = _segment_groove(ax, y, corner + 0.05 * d, corner + 0.2 * d, DETAIL_WIDTHS["crows_feet"])
        crows = np.maximum(crows, ray)
    wing = np.array([0.5 * (abs(lm_x[31]) + abs(lm_x[35])), 0.5 * (lm_y[31] + lm_y[35])])
    mouth = np.array([0.5 * (abs(lm_x[48]) + abs(lm_x[54])), 0.5 * (lm_y[48] + lm_y[54])])
    naso = _segment_groove(ax, y, wing + [0.03, -0.04], mouth + [0.07, 0.06], DETAIL_WIDTHS["nasolabial"])
    return -np.stack([forehead, glabella, crows, naso]).astype(np.float32)


def sample_detail_static(seed: int, identity: int, config: DecaSynthConfig | None = None) -> np.ndarray:
    """``(4,)`` static detail weights of one identity, U(0, detail_static_max), PCG64 [seed, identity, 1]."""
    config = config or DecaSynthConfig()
    rng = np.random.default_rng([int(seed), int(identity), 1])
    return rng.uniform(0.0, config.detail_static_max, size=len(DETAIL_REGIONS)).astype(np.float32)


def detail_amplitudes(expression, jaw, static, config: DecaSynthConfig | None = None) -> np.ndarray:
    """``(M, 4)`` amplitudes a_r (metres) from ``expression (M, >= 6)``, ``jaw (M,)`` (jaw
    axis-angle x, radians) and ``static (M, 4)`` (module docstring)."""
    config = config or DecaSynthConfig()
    expression = np.asarray(expression, np.float64)
    jaw = np.asarray(jaw, np.float64)
    static = np.asarray(static, np.float64)
    if expression.ndim != 2 or jaw.shape != expression.shape[:1] or static.shape != (len(jaw), len(DETAIL_REGIONS)):
        raise ValueError(f"expression / jaw / static: expected (M, E) / (M,) / (M, {len(DETAIL_REGIONS)}), got "
                         f"{expression.shape} / {jaw.shape} / {static.shape}")
    depth = np.asarray(config.detail_depth_mm, np.float64) * 1e-3
    if depth.shape != (len(DETAIL_REGIONS),):
        raise ValueError(f"detail_depth_mm: expected {len(DETAIL_REGIONS)} numbers, got {config.detail_depth_mm}")
    drive = np.zeros_like(static)
    for r, (components, jaw_weight) in enumerate(DETAIL_DRIVERS):
        for k in components:
            if k < expression.shape[1]:
                drive[:, r] += np.maximum(expression[:, k], 0.0) / config.expression_std
        drive[:, r] += jaw_weight * np.maximum(jaw, 0.0) / config.jaw_max_rad
    return ((static + drive) * depth).astype(np.float32)


def detail_displacements(model, data: dict, seed: int, config: DecaSynthConfig | None = None) -> np.ndarray:
    """``(M, H, W)`` float32 UV displacement maps (metres) of generated ``data`` (its
    ``expression``, ``pose`` and ``identity``) made with ``seed``: what the images were shaded with."""
    config = config or DecaSynthConfig()
    static = np.stack([sample_detail_static(seed, i, config) for i in np.asarray(data["identity"])])
    amp = detail_amplitudes(data["expression"], np.asarray(data["pose"])[:, 3], static, config)
    return np.einsum("mr,rhw->mhw", amp, detail_patterns(model)).astype(np.float32)


def _bilinear_weights(n_out, n_in):
    pos = np.linspace(0.0, n_in - 1.0, n_out)
    lo = np.clip(np.floor(pos).astype(int), 0, max(n_in - 2, 0))
    frac = pos - lo
    w = np.zeros((n_out, n_in))
    w[np.arange(n_out), lo] += 1 - frac
    w[np.arange(n_out), np.minimum(lo + 1, n_in - 1)] += frac
    return w


def random_backgrounds(rng: np.random.Generator, count: int, image_hw) -> np.ndarray:
    """``(count, H, W, 3)`` float32 in [0, 1]: smooth colour field + gradient + noise, mixed.

    Per image: a k x k grid of random colours (k in 2..7) upsampled bilinearly, a linear gradient
    between two random colours at a random angle, blended with weight U(0, 1), plus Gaussian pixel
    noise of std U(0, 0.06).
    """
    height, width = image_hw
    out = np.empty((count, height, width, 3), np.float32)
    ys, xs = np.mgrid[0:height, 0:width]
    ys = ys / max(height - 1, 1) - 0.5
    xs = xs / max(width - 1, 1) - 0.5
    for i in range(count):
        k = int(rng.integers(2, 8))
        coarse = rng.uniform(0, 1, size=(k, k, 3))
        smooth = np.einsum("hk,kjc,wj->hwc", _bilinear_weights(height, k), coarse, _bilinear_weights(width, k))
        angle = rng.uniform(0, 2 * np.pi)
        t = np.clip(0.5 + xs * np.cos(angle) + ys * np.sin(angle), 0, 1)[..., None]
        c0, c1 = rng.uniform(0, 1, size=(2, 3))
        gradient = c0 * (1 - t) + c1 * t
        mix = rng.uniform()
        noise = rng.normal(0, rng.uniform(0, 0.06), size=(height, width, 3))
        out[i] = np.clip(mix * smooth + (1 - mix) * gradient + noise, 0, 1)
    return out


def sample_pose(rng: np.random.Generator, count: int, yaw_deg=90.0, pitch_deg=20.0, roll_deg=15.0):
    """Uniform (yaw, pitch, roll) degrees ``(count, 3)`` and axis-angles ``(count, 3)``.

    R = Ry(yaw) Rx(pitch) Rz(roll) (:func:`jface.data.synthetic_stn.pose_matrix`), x' = R x;
    positive yaw turns the face towards +x.
    """
    angles = rng.uniform(-1, 1, size=(count, 3)) * np.array([yaw_deg, pitch_deg, roll_deg])
    rad = np.radians(angles)
    rot = pose_matrix(rad[:, 0], rad[:, 1], rad[:, 2])
    aa = np.asarray(geometry.matrix_to_axis_angle(jnp.asarray(rot)))
    return angles.astype(np.float32), aa.astype(np.float32)


def sample_sh_light(rng: np.random.Generator, count: int) -> np.ndarray:
    """``(count, 9, 3)`` DECA SH coefficients L (``SRenderY.add_SHlight``); see the module docstring."""
    a = np.zeros((count, 9, 3))
    a[:, 0] = rng.uniform(0.6, 1.2, size=(count, 1)) + rng.normal(0, 0.04, size=(count, 3))
    a[:, 1:4] = rng.normal(0, 0.25, size=(count, 3, 1)) + rng.normal(0, 0.02, size=(count, 3, 3))
    a[:, 4:9] = rng.normal(0, 0.04, size=(count, 5, 3))
    return (a / SH_CONSTANTS[None, :, None]).astype(np.float32)


def _identity_draws(model, config: DecaSynthConfig, seed: int, identity: int, count: int, image_hw):
    """All random numbers of one identity's ``count`` images (numpy, PCG64 [seed, identity])."""
    rng = np.random.default_rng([int(seed), int(identity)])
    n_albedo = 0 if model.albedo_basis is None else model.albedo_basis.shape[-1]
    shape = rng.normal(0, 1, size=config.n_shape)
    albedo = rng.normal(0, 1, size=n_albedo)
    expression = np.zeros((count, config.n_expression))
    active = min(config.n_expression_active, config.n_expression)
    expression[:, :active] = rng.normal(0, config.expression_std, size=(count, active))
    pose_deg, global_aa = sample_pose(rng, count, config.yaw_deg, config.pitch_deg, config.roll_deg)
    jaw = np.zeros((count, 3))
    jaw[:, 0] = rng.uniform(0, config.jaw_max_rad, size=count)
    crop = rng.uniform(*config.crop_scale, size=count)
    jitter = rng.uniform(-1, 1, size=(count, 2)) * config.centre_jitter
    light = sample_sh_light(rng, count)
    background = random_backgrounds(rng, count, image_hw)
    f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
    return {
        "shape": f32(np.repeat(shape[None], count, 0)),
        "albedo": f32(np.repeat(albedo[None], count, 0)),
        "expression": f32(expression),
        "pose": f32(np.concatenate([global_aa, jaw], -1)),
        "pose_deg": f32(pose_deg),
        "crop": f32(crop),
        "jitter": f32(jitter),
        "light": f32(light),
        "background": f32(background),
        "identity": np.full(count, identity, np.int32),
        "detail_static": np.repeat(sample_detail_static(seed, identity, config)[None], count, 0),
    }


def _detail_normal_offset(model, vertices, normals, displacement, uv_mask, grid):
    """Image-space normal offset grid_sample(n(D) - n(0), grid) of a UV displacement ``D``.

    n(.) is DECA's :func:`jface.deca.detail.displacement_to_normals` on world2uv of the posed
    vertices and vertex normals (``world2uv`` and ``DECA.displacement2normal`` in
    ``decalib/deca.py``), so the difference is exactly 0 wherever D vanishes on a texel's grid
    neighbourhood.
    """
    size = displacement.shape
    fragments = rasterize(uv_ndc(model.uv_coords).astype(vertices.dtype), model.uv_faces, size)
    faces = jnp.asarray(model.faces, jnp.int32)
    uv_pos = interpolate(fragments, vertices[faces])
    uv_nrm = interpolate(fragments, normals[faces])
    detail = displacement_to_normals(displacement, uv_pos, uv_nrm, uv_mask)
    flat = displacement_to_normals(jnp.zeros_like(displacement), uv_pos, uv_nrm, uv_mask)
    return grid_sample(detail - flat, grid)


def _render_one(model, shape, expression, pose, crop, jitter, albedo_coeffs, light, background,
                detail_amplitude, patterns, uv_mask):
    height, width = background.shape[:2]
    out = flame.forward(model, shape, expression, pose)
    vertices, lmk = out["vertices"], out["landmarks2d"]
    lo, hi = lmk[:, :2].min(0), lmk[:, :2].max(0)
    old_size = 0.5 * jnp.sum(hi - lo)
    centre = 0.5 * (hi + lo)
    # NDC spans 2 units across the image: old_size pixels = W / crop  <=>  s old_size = 2 / crop.
    s = 2.0 / (crop * old_size)
    offset = jitter * 2.0 / crop  # jitter in units of old_size, in NDC
    cam = jnp.stack([s, offset[0] / s - centre[0], -offset[1] / s - centre[1]])
    trans = geometry.flip_yz(geometry.orthographic_camera(vertices, cam))
    albedo_uv = model.albedo_mean
    if model.albedo_basis is not None and albedo_coeffs.shape[0]:
        albedo_uv = albedo_uv + jnp.einsum("hwck,k->hwc", model.albedo_basis, albedo_coeffs)
    albedo_uv = jnp.clip(albedo_uv, 0.0, 1.0)
    rend = render(vertices, trans, model.faces, model.uv_coords, model.uv_faces, albedo_uv, light,
                  image_hw=(height, width))
    alpha = rend["alpha_images"]
    shading = rend["shading_images"]
    if patterns is not None:  # fine detail (module docstring)
        displacement = jnp.einsum("r,rhw->hw", detail_amplitude, patterns)
        offset = _detail_normal_offset(model, vertices, rend["normals"], displacement, uv_mask, rend["grid"])
        shading = sh_shading(rend["normal_images"] + offset * alpha, light)
    colour = jnp.clip(rend["albedo_images"] * shading, 0.0, 1.0)
    image = colour * alpha + background * (1.0 - alpha)
    image = jnp.clip(jnp.round(image * 255.0), 0, 255).astype(jnp.uint8)
    if model.uv_face_eye_mask is not None:
        uv_mask = grid_sample(uv_face_eye_mask(model, alpha.dtype)[..., None], rend["grid"])
        face_mask = (uv_mask[..., 0] * alpha[..., 0]) > 0.5
    else:
        face_mask = alpha[..., 0] > 0.5
    lmk_ndc = geometry.flip_yz(geometry.orthographic_camera(lmk, cam))[:, :2]
    vis = flame.landmark_visibility(model, rend["transformed_normals"])
    inside = jnp.all(jnp.abs(lmk_ndc) <= 1.0, axis=-1)
    landmarks68 = jnp.concatenate([lmk_ndc, (vis * inside)[:, None]], -1)
    return image, face_mask.astype(jnp.uint8), landmarks68, cam


@tuned_jit
def _render_chunk(model, shape, expression, pose, crop, jitter, albedo, light, background, detail_amplitude,
                  patterns, uv_mask):
    return jax.vmap(_render_one, in_axes=(None, 0, 0, 0, 0, 0, 0, 0, 0, 0, None, None))(
        model, shape, expression, pose, crop, jitter, albedo, light, background, detail_amplitude, patterns,
        uv_mask)


def _check(model, num_identities, images_per_identity, image_size):
    if model.uv_coords is None or model.uv_faces is None or model.albedo_mean is None:
        raise ValueError("model: generate_deca needs a FlameModel with a UV layout and albedo_mean")
    if not model.has_landmarks:
        raise ValueError("model: generate_deca needs a FlameModel with a landmark embedding")
    if int(num_identities) < 0 or int(images_per_identity) < 1:
        raise ValueError(
            f"num_identities / images_per_identity: expected >= 0 / >= 1, got "
            f"{num_identities} / {images_per_identity}")
    if int(image_size) < 8:
        raise ValueError(f"image_size: expected >= 8 pixels, got {image_size}")


def _float32_model(model):
    return jax.tree_util.tree_map(
        lambda x: x.astype(jnp.float32) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) else x, model)


def chunked_draws(draw_identity, identities, images_per_identity: int, chunk: int):
    """Group per-identity draws into render chunks (shared by the DECA and STN generators).

    ``draw_identity(identity)`` returns a dict of arrays with ``images_per_identity`` rows. Yields
    ``(merged, n, pad)`` for consecutive groups of at most ``chunk`` images: ``merged`` the rows
    concatenated, ``n`` their number and ``pad(a)`` that repeats ``a``'s last row up to ``chunk``
    rows, so every chunk renders with one compiled shape.
    """
    pending: list = []

    def emit(items):
        merged = {k: np.concatenate([it[k] for it in items]) for k in items[0]}
        n = len(items)
        pad = lambda a: np.concatenate([a, np.repeat(a[-1:], chunk - n, 0)]) if n < chunk else a  # noqa: E731
        return merged, n, pad

    for ident in identities:
        draws = draw_identity(ident)
        for i in range(int(images_per_identity)):
            pending.append({k: v[i:i + 1] for k, v in draws.items()})
            if len(pending) == chunk:
                yield emit(pending)
                pending = []
    if pending:
        yield emit(pending)


def iter_deca(model, num_identities: int, images_per_identity: int, seed: int, image_size: int = 224,
              *, config: DecaSynthConfig | None = None, identity_offset: int = 0) -> Iterator[dict]:
    """Yield chunks (dicts of numpy arrays, see the module docstring) of at most ``config.chunk``
    images, identity by identity; identity ids run from ``identity_offset``.
    """
    config = config or DecaSynthConfig()
    _check(model, num_identities, images_per_identity, image_size)
    model32 = _float32_model(model)
    hw = (int(image_size), int(image_size))
    chunk = int(config.chunk)
    patterns = uv_mask = None
    if any(float(d) != 0.0 for d in config.detail_depth_mm):
        if model.uv_face_eye_mask is None:
            raise ValueError("model: generating fine detail needs the model's uv_face_eye_mask "
                             "(or DecaSynthConfig(detail_depth_mm=(0, 0, 0, 0)))")
        uv_mask = uv_face_eye_mask(model32, jnp.float32)
        patterns = jnp.asarray(detail_patterns(model, uv_mask.shape))

    def render(merged, n, pad):
        args = [pad(merged[k]) for k in ("shape", "expression", "pose", "crop", "jitter", "albedo", "light",
                                          "background")]
        amplitude = detail_amplitudes(merged["expression"], merged["pose"][:, 3], merged["detail_static"], config)
        outputs = _render_chunk(model32, *args, pad(amplitude), patterns, uv_mask)
        image, face_mask, landmarks68, cam = (np.asarray(x)[:n] for x in outputs)
        landmarks68 = landmarks68.astype(np.float32)
        return {
            "images": image,
            "landmarks68": landmarks68,
            "landmarks21": aflw21_from_ibug68(landmarks68),
            "face_mask": face_mask,
            "shape": merged["shape"],
            "expression": merged["expression"],
            "pose": merged["pose"],
            "cam": cam.astype(np.float32),
            "albedo": merged["albedo"],
            "light": merged["light"],
            "pose_deg": merged["pose_deg"],
            "identity": merged["identity"],
        }

    identities = range(identity_offset, identity_offset + int(num_identities))

    def draw(ident):
        return _identity_draws(model32, config, seed, ident, int(images_per_identity), hw)

    for merged, n, pad in chunked_draws(draw, identities, images_per_identity, chunk):
        yield render(merged, n, pad)


def concatenate_chunks(chunks, *, keep=None, on_chunk=None) -> dict:
    """The chunks of :func:`iter_deca` / ``iter_stn`` as one dict of arrays (those named in
    ``keep``, default all); ``on_chunk(n)`` is called after each chunk of n images (a progress
    bar's ``update``). ValueError when there is no chunk."""
    parts = []
    for chunk in chunks:
        parts.append({k: v for k, v in chunk.items() if keep is None or k in keep})
        if on_chunk is not None:
            on_chunk(len(chunk["images"]) if "images" in chunk else len(next(iter(chunk.values()))))
    if not parts:
        raise ValueError("num_identities: expected >= 1 to generate any image, got 0")
    return {k: np.concatenate([c[k] for c in parts]) for k in parts[0]}


def generate_deca(model, num_identities: int, images_per_identity: int, seed: int, image_size: int = 224,
                  *, config: DecaSynthConfig | None = None, on_chunk=None) -> dict:
    """``num_identities * images_per_identity`` rendered DECA training images with exact labels.

    ``model``: a :class:`jface.models.FlameModel` with landmarks, UV layout and albedo (e.g.
    :func:`jface.models.default_flame_model`). Returns a dict of numpy arrays (module docstring):
    ``images (M, S, S, 3)`` uint8, ``landmarks68 (M, 68, 3)`` / ``landmarks21 (M, 21, 3)`` in DECA
    NDC with visibility, ``face_mask (M, S, S)`` uint8, and every generating parameter.
    Deterministic in ``seed``. ``on_chunk``: as in :func:`concatenate_chunks`.
    """
    return concatenate_chunks(iter_deca(model, num_identities, images_per_identity, seed, image_size, config=config),
                              on_chunk=on_chunk)
