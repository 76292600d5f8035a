"""Rendered training faces for DECA: FLAME + UV albedo + SH light through ``jface.render``, by
default photographic (painted face, hair, body, light with cast shadows, background, occluders,
camera; :mod:`jface.data.appearance`).

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
* the plain look's background: a smooth random colour field, a linear gradient between two
  colours and pixel noise, blended with random weights (:func:`random_backgrounds`);
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

Geometry (per item, :func:`_geometry_chunk`, shared by both looks so their labels are the same
numbers): ``jface.flame.forward`` -> the camera -> ``jface.geometry.orthographic_camera`` ->
``flip_yz`` (DECA's NDC: x right, y down, smaller z = closer) -> the landmark labels.

Two looks (``DecaSynthConfig.look``), the same draws and labels for the same seed:

* **plain**: ``jface.render.render`` (UV albedo sampled with the interpolated UV grid, SH shading
  of interpolated world normals), colour clipped to [0, 1] and composited over the background
  with the coverage alpha: image = albedo(α) ⊙ SH(L, n) exactly.
* **photo** (the default; :mod:`jface.data.appearance` with ``DecaSynthConfig.photo``, as the
  3DMM-STN generator :mod:`jface.data.synthetic_stn_render` uses it), in four compiled stages per
  chunk (geometry, face, composition, camera) and JPEG on the host:

  - the face: DECA's render gives per pixel the sampled albedo map albedo(α) and the shading
    normal (with the fine detail below); per pixel the template position and UV (for
    :func:`jface.data.appearance.face_texture`: skin detail, eyes, brows, lips and mouth,
    nostrils, hairline, fringe and sideburns, beard, glasses, make-up) are interpolated from the
    mesh's corners, so the painting moves with the mesh and a landmark stays on its feature. The
    skin under the paint is ``tone`` ⊙ albedo(α)(uv): ``tone`` = a skin colour drawn as the STN
    generator draws it (very light to very dark) / the mean albedo's face average, per channel,
    per identity. So the stored ``albedo`` codes still shape the skin's colour map (its variation
    across the face and between identities, as a product), but the image's skin is not albedo(α)
    itself: its overall tone is the drawn one (the albedo model alone spans only light to medium
    tones). Points on the back of the head (behind the ears) are hair down to the nape, skin
    below; back faces (the inside of the head seen through an open mouth) are the mouth cavity;
  - light: ``image = albedo (ambient x SH(L, n) + key light x max(n.l, 0) (1 - shadow)) +
    specular`` (:func:`jface.data.appearance.shade`), the key light's cast shadows from a depth
    map of the whole posed head (:func:`jface.data.appearance.shadow_map`). The stored ``light``
    is the SH code L (what DECA's encoder predicts, drawn as in the plain look); the image is no
    longer exactly SH-shaded (ambient in [0.55, 1] scales it, the key light and highlights add to
    it), as in the STN generator's photographic look;
  - the rest of the person (:func:`jface.data.appearance.body_layers`: skull / hair, long hair,
    neck, shoulders in clothing, hat), depth-tested against the head, except that the skull and
    long-hair ellipsoids are not drawn over the head's front (in front of the ears: FLAME's own
    face and scalp show there; the ellipsoids add hair beyond its silhouette and behind it);
    a procedural background or a photograph from ``photo.backgrounds``
    (:func:`jface.data.appearance.background`); occluders (hands, microphones, objects); camera
    effects (white balance, exposure, contrast, saturation, greyscale, defocus and motion blur,
    low resolution, vignetting, noise) and JPEG.
    ``jface.data.appearance.without(config, names)`` leaves ingredients out (``train.deca
    --ablate``).

Frames of the photo look. The appearance model frame A (mm; x to the subject's left, y up, z
towards the camera: FLAME's own axes) is FLAME's template moved so that its outer eye corners'
midpoint sits where :data:`jface.data.appearance.EYE_CORNERS_AT` puts it: a = 1000 (v - o) for a
template point v (metres) and the anchor o (:func:`photo_frame`); the layout
(:func:`jface.data.appearance.face_layout`) is made from the template's AFLW-21 points in A (the
:data:`AFLW21_FROM_IBUG68` means of its 68 full landmarks, the ears replaced by the template's
outermost vertex at ear height). FLAME's lbs turns the head by the global rotation R about the
root joint J (``decalib/models/lbs.py``), so the anchor goes to P = R (o - J) + J and the posed
frame Q = 1000 (w - P) (mm) of a world point w is the A frame turned by R (the jaw and the
expression move points within it): body ellipsoids placed at R c for c in A stay on the head.
DECA's camera maps w to NDC x = s (w_x + t_x), y = -s (w_y + t_y) (``batch_orth_proj`` and the
flip in ``decalib/deca.py``) and a 0-based pixel (col, row) has its centre at NDC ((col + 0.5) 2/W
- 1, (row + 0.5) 2/H - 1) (``StandardRasterizer``), so the pixel's ray is Q_xy = 1000 ((x_ndc / s -
t_x, -y_ndc / s - t_y) - P_xy), along Q_z (larger = nearer the camera); the head's Q_z is
interpolated from its posed vertices, and the depth test compares the two.

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
  the render's UV grid, thresholded at 0.5; in the photo look also only where the head is the
  nearest surface (a hat, the shoulders) and no occluder covers it (as the STN generator's):
  paint on the face (hair fringe, beard, glasses, make-up) stays inside it.
* ``shape (M, 100)``, ``expression (M, 50)``, ``pose (M, 6)`` = [global aa, jaw aa], ``cam (M, 3)``,
  ``albedo (M, Ka)``, ``light (M, 9, 3)``, ``pose_deg (M, 3)`` = (yaw, pitch, roll),
  ``identity (M,)`` int32.

Determinism: every random number of identity ``i`` comes from numpy PCG64 seeded with
``[seed, i]`` (the photo look's draws from ``[seed, i, 2]``, :func:`_photo_draws`, so the labels'
draws are the plain look's; the plain background is its stream's last draw), and every stage runs
item by item, so an identity's images do not depend on the chunk size or on the other identities.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jface import flame, geometry
from jface.arrays import tuned_jit
from jface.data import appearance
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
    "photo_frame",
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
    # "photo": the photographic look (module docstring) with the draws of `photo` (its
    # `backgrounds`: a folder of background photographs; jface.data.appearance.without leaves
    # ingredients out); "plain": UV albedo x SH light over a smooth random background
    look: str = "photo"
    photo: appearance.AppearanceConfig = appearance.AppearanceConfig()


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


def _identity_draws(model, config: DecaSynthConfig, seed: int, identity: int, count: int, image_hw, photo=None):
    """All random numbers of one identity's ``count`` images (numpy, PCG64 [seed, identity]; the
    photographic look's from their own stream, :func:`_photo_draws`); ``photo``: :func:`_photo_setup`."""
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
    f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
    draws = {
        "shape": f32(np.repeat(shape[None], count, 0)),
        "albedo": f32(np.repeat(albedo[None], count, 0)),
        "expression": f32(expression),
        "pose": f32(np.concatenate([global_aa, jaw], -1)),
        "pose_deg": f32(pose_deg),
        "crop": f32(crop),
        "jitter": f32(jitter),
        "light": f32(light),
        "identity": np.full(count, identity, np.int32),
        "detail_static": np.repeat(sample_detail_static(seed, identity, config)[None], count, 0),
    }
    if config.look == "plain":
        draws["background"] = f32(random_backgrounds(rng, count, image_hw))  # the last draw of `rng`
    else:
        draws.update(_photo_draws(photo, config.photo, seed, identity, count, image_hw[0], albedo))
    return draws


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


def _camera(lmk, crop, jitter):
    """DECA's camera (s, t_x, t_y) framing the 68 landmarks ``lmk`` as DECA's crop would (module docstring)."""
    lo, hi = lmk[:, :2].min(0), lmk[:, :2].max(0)
    old_size = 0.5 * jnp.sum(hi - lo)
    centre = 0.5 * (hi + lo)
    # NDC spans 2 units across the image: old_size pixels = W / crop  <=>  s old_size = 2 / crop.
    s = 2.0 / (crop * old_size)
    offset = jitter * 2.0 / crop  # jitter in units of old_size, in NDC
    return jnp.stack([s, offset[0] / s - centre[0], -offset[1] / s - centre[1]])


def _albedo_uv(model, albedo_coeffs):
    """The UV albedo of the coefficients, clipped to [0, 1]."""
    albedo_uv = model.albedo_mean
    if model.albedo_basis is not None and albedo_coeffs.shape[0]:
        albedo_uv = albedo_uv + jnp.einsum("hwck,k->hwc", model.albedo_basis, albedo_coeffs)
    return jnp.clip(albedo_uv, 0.0, 1.0)


def _shading_normals(model, vertices, rend, detail_amplitude, patterns, uv_mask):
    """The render's interpolated world normals, with the fine detail's offset (module docstring)
    when ``patterns`` is not None."""
    normals = rend["normal_images"]
    if patterns is not None:
        displacement = jnp.einsum("r,rhw->hw", detail_amplitude, patterns)
        offset = _detail_normal_offset(model, vertices, rend["normals"], displacement, uv_mask, rend["grid"])
        normals = normals + offset * rend["alpha_images"]
    return normals


def _face_mask(model, rend):
    """Coverage x the model's UV face/eye mask sampled with the render's UV grid, > 0.5 (bool)."""
    alpha = rend["alpha_images"]
    if model.uv_face_eye_mask is not None:
        uv_mask = grid_sample(uv_face_eye_mask(model, alpha.dtype)[..., None], rend["grid"])
        return (uv_mask[..., 0] * alpha[..., 0]) > 0.5
    return alpha[..., 0] > 0.5


def _geometry_one(model, shape, expression, pose, crop, jitter):
    """FLAME, DECA's camera and the landmark labels of one image: ``(vertices (V, 3), root joint
    (3,), cam (3,), landmarks68 (68, 3))`` (module docstring, Labels). Both looks take them from
    here, so their labels are the same numbers."""
    out = flame.forward(model, shape, expression, pose)
    vertices, lmk = out["vertices"], out["landmarks2d"]
    cam = _camera(lmk, crop, jitter)
    trans = geometry.flip_yz(geometry.orthographic_camera(vertices, cam))
    lmk_ndc = geometry.flip_yz(geometry.orthographic_camera(lmk, cam))[:, :2]
    vis = flame.landmark_visibility(model, geometry.vertex_normals(trans, model.faces))
    inside = jnp.all(jnp.abs(lmk_ndc) <= 1.0, axis=-1)
    return vertices, out["joints"][0], cam, jnp.concatenate([lmk_ndc, (vis * inside)[:, None]], -1)


@tuned_jit
def _geometry_chunk(model, shape, expression, pose, crop, jitter):
    # one item at a time (lax.map): the same numbers for every chunk size
    return jax.lax.map(lambda item: _geometry_one(model, *item), (shape, expression, pose, crop, jitter))


def _render(model, vertices, cam, albedo_coeffs, size, lights=None):
    """DECA's render (:func:`jface.deca.render.render`) of posed ``vertices`` through ``cam``."""
    trans = geometry.flip_yz(geometry.orthographic_camera(vertices, cam))
    return render(vertices, trans, model.faces, model.uv_coords, model.uv_faces, _albedo_uv(model, albedo_coeffs),
                  lights, image_hw=(size, size))


def _render_one(model, vertices, cam, albedo_coeffs, light, background, detail_amplitude, patterns, uv_mask):
    rend = _render(model, vertices, cam, albedo_coeffs, background.shape[0], light)
    alpha = rend["alpha_images"]
    shading = rend["shading_images"]
    if patterns is not None:  # fine detail (module docstring)
        shading = sh_shading(_shading_normals(model, vertices, rend, detail_amplitude, patterns, uv_mask), light)
    colour = jnp.clip(rend["albedo_images"] * shading, 0.0, 1.0)
    image = colour * alpha + background * (1.0 - alpha)
    image = jnp.clip(jnp.round(image * 255.0), 0, 255).astype(jnp.uint8)
    return image, _face_mask(model, rend).astype(jnp.uint8)


@tuned_jit
def _render_chunk(model, vertices, cam, albedo, light, background, detail_amplitude, patterns, uv_mask):
    return jax.vmap(_render_one, in_axes=(None, 0, 0, 0, 0, 0, 0, None, None))(
        model, vertices, cam, albedo, light, background, detail_amplitude, patterns, uv_mask)


# --- the photographic look -----------------------------------------------------------------------

# How far behind the ears (appearance frame mm / unit) a FLAME point counts as the back of the head
# (appearance.face_texture's ``behind``): 0 in front of BEHIND[0], 1 beyond BEHIND[1].
BEHIND = (12.0, 32.0)
SHADOW_EXTENT = 340.0  # the key light's depth map spans this many mm x unit (as the STN generator's)
FACE_BLOCKS = 8  # the face stage paints the covered pixels in blocks of 1 / FACE_BLOCKS of the image


def photo_frame(model) -> dict:
    """The FLAME template in :mod:`jface.data.appearance`'s model frame (module docstring, Frames).

    Returns numpy arrays: ``anchor (3,)`` (FLAME world metres: the frame's origin on the template),
    ``unit`` (the outer-eye-corner distance / 94 mm), ``points21 (21, 3)`` (the template's AFLW-21
    points in the frame, mm: :data:`AFLW21_FROM_IBUG68` means of its 68 full landmarks, the ears
    replaced by the template's outermost vertex at ear height) and ``vertices (V, 3)`` (mm).
    """
    template = np.asarray(model.v_template, np.float64) * 1000.0
    faces = np.asarray(model.faces)
    bary = np.asarray(model.full_lmk_bary_coords, np.float64)
    lmk68 = np.einsum("lk,lkd->ld", bary, template[faces[np.asarray(model.full_lmk_faces_idx)]])
    points = np.stack([lmk68[list(idx)].mean(0) for idx in AFLW21_FROM_IBUG68])
    unit = float(np.linalg.norm(points[6, :2] - points[11, :2]) / 94.0)
    if not unit > 0:
        raise ValueError("model: the outer eye corners of the FLAME template coincide; cannot place the features")
    for ear, side in ((12, -1.0), (16, 1.0)):  # the AFLW ears: the outermost vertex at the contour point's height
        near = np.abs(template[:, 1] - points[ear, 1]) < 15.0 * unit
        outer = template[near][np.argmax(side * template[near, 0])]
        points[ear] = outer
    eyes = 0.5 * (points[6] + points[11])
    offset = np.array([0.0, appearance.EYE_CORNERS_AT[0] * unit, appearance.EYE_CORNERS_AT[1] * unit]) - eyes
    return {"anchor": -offset / 1000.0, "unit": unit, "points21": points + offset, "vertices": template + offset}


def _photo_setup(model, config: DecaSynthConfig) -> dict:
    """What the photographic stages need of the model, once per call: the layout, the per-corner
    template positions (mm, the frame of :func:`photo_frame`) and back-of-head weights, the anchor,
    and (host side) the albedo model's face-averaged mean and basis for the identities' skin colours."""
    frame = photo_frame(model)
    unit = frame["unit"]
    faces = np.asarray(model.faces)
    ears_z = 0.5 * (frame["points21"][12, 2] + frame["points21"][16, 2])
    behind = np.clip((ears_z - BEHIND[0] * unit - frame["vertices"][:, 2]) / ((BEHIND[1] - BEHIND[0]) * unit), 0, 1)
    corner = np.concatenate([frame["vertices"], behind[:, None]], -1)[faces]
    height, width = np.shape(model.albedo_mean)[:2]
    weights = np.asarray(uv_face_eye_mask(model, jnp.float32, size=(height, width)), np.float64)
    rows = np.arange(height) * weights.shape[0] // height  # the mask at the albedo's size (nearest)
    weights = weights[rows][:, np.arange(width) * weights.shape[1] // width]
    weights = weights / max(weights.sum(), 1e-9)
    face_mean = np.einsum("hw,hwc->c", weights, np.asarray(model.albedo_mean, np.float64))
    face_basis = (np.zeros((3, 0)) if model.albedo_basis is None
                  else np.einsum("hw,hwck->ck", weights, np.asarray(model.albedo_basis, np.float64)))
    return {
        "layout": appearance.face_layout(frame["points21"]),
        "corner": jnp.asarray(corner, jnp.float32),  # (F, 3, 4): template xyz (mm), behind
        "anchor": jnp.asarray(frame["anchor"], jnp.float32),
        "face_mean": np.clip(face_mean, 1e-3, 1.0),
        "face_basis": face_basis,
        "backgrounds": appearance.load_backgrounds(config.photo.backgrounds) if config.photo.backgrounds else [],
    }


def _photo_draws(setup: dict, look_config, seed: int, identity: int, count: int, size: int, albedo) -> dict:
    """The photographic look's draws of one identity, from their own stream (PCG64 [seed, identity,
    2]), so the labels' draws are those of the plain look: :func:`jface.data.appearance.sample_identity`
    and ``sample_images``, a JPEG quality, background photographs. The skin: ``tone`` = the drawn
    skin colour / the mean albedo's face average (per channel), which scales the albedo map; the
    identity's ``skin`` (body, lips) = ``tone`` x its albedo's face average."""
    rng = np.random.default_rng([int(seed), int(identity), 2])
    look = appearance.sample_identity(rng, look_config)
    images = appearance.sample_images(rng, count, look_config)
    tone = look["skin"] / setup["face_mean"]
    basis = setup["face_basis"]
    own = np.clip(setup["face_mean"] + basis @ np.asarray(albedo, np.float64)[:basis.shape[1]], 0.0, 1.0)
    look = appearance.with_skin(look, np.clip(tone * own, 0.0, 1.0))
    look["tone"] = np.asarray(tone, np.float32)
    draws = {f"look_{k}": np.repeat(v[None], count, 0) for k, v in look.items()}
    draws.update({f"image_{k}": v for k, v in images.items()})
    draws["jpeg"] = np.where(rng.uniform(size=count) < look_config.jpeg_prob, rng.integers(30, 96, size=count),
                             0).astype(np.int32)
    use_photo = np.zeros(count, np.float32)
    photos = np.zeros((count, size, size, 3), np.float32)
    if setup["backgrounds"]:
        use_photo = (rng.uniform(size=count) < look_config.background_photo_prob).astype(np.float32)
        photos = appearance.background_crops(setup["backgrounds"], rng, count, size) * use_photo[:, None, None, None]
    draws["use_photo"], draws["background"] = use_photo, photos
    return draws


def _posed_frame(anchor, pose, root):
    """The posed frame Q (module docstring, Frames): ``(rotation (3, 3), origin (3,))``, the global
    rotation R (as FLAME's lbs turns the head, about the ``root`` joint) and P = R (anchor - root) +
    root (FLAME world metres); a world point w is at 1000 (w - P) mm in Q."""
    rotation = geometry.axis_angle_to_matrix(pose[:3], deca=True)
    return rotation, rotation @ (anchor - root) + root


def _ndc_to_posed(ndc_xy, cam, origin):
    """DECA NDC points ``(..., 2)`` (x right, y down) -> the posed frame's (x, y) (mm) of their
    rays: the inverse of ``flip_yz(orthographic_camera(w, cam))`` (module docstring, Frames)."""
    world = jnp.stack([ndc_xy[..., 0] / cam[0] - cam[1], -ndc_xy[..., 1] / cam[0] - cam[2]], -1)
    return 1000.0 * (world - origin[:2])


def _photo_geometry(model, setup, vertices, root, cam, pose, albedo_coeffs, detail_amplitude, light_dir, patterns,
                    uv_mask, *, size, shadows):
    """Stage 1 (per item): DECA's render of the posed ``vertices`` (the albedo map sampled per
    pixel) and per pixel the template position, position in the posed frame, back-of-head weight,
    back-face flag, UV, shading normal and albedo; the key light's depth map (None without
    shadows); the face mask; the posed frame's rotation and origin (module docstring, Frames)."""
    rend = _render(model, vertices, cam, albedo_coeffs, size)
    normals = _shading_normals(model, vertices, rend, detail_amplitude, patterns, uv_mask)
    rotation, origin = _posed_frame(setup["anchor"], pose, root)
    posed = 1000.0 * (vertices - origin)
    faces = jnp.asarray(model.faces, jnp.int32)
    corners = vertices[faces]
    back = (jnp.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])[:, 2] < 0).astype(posed.dtype)
    attrs = interpolate(rend["fragments"], jnp.concatenate(
        [setup["corner"][..., :3], posed[faces], setup["corner"][..., 3:], jnp.repeat(back[:, None, None], 3, 1)], -1))
    grid = rend["grid"]
    uv = jnp.stack([(grid[..., 0] + 1.0) * 0.5, (1.0 - grid[..., 1]) * 0.5], -1)
    # xyz 0:3, posed 3:6, behind 6, back 7, uv 8:10, normal 10:13, albedo 13:16
    attrs = jnp.concatenate([attrs, uv, normals, rend["albedo_images"]], -1)
    depth_map = (appearance.shadow_map(posed, faces, light_dir, SHADOW_EXTENT * setup["layout"].unit) if shadows
                 else None)
    return attrs, rend["fragments"].mask, depth_map, _face_mask(model, rend), rotation, origin


def _photo_face(layout, attrs, depth_map, mask, sh_light, look, image_look):
    """Stage 2 (per item): the painted texture (:func:`jface.data.appearance.face_texture` on the
    albedo map scaled by the identity's ``tone``), the mouth interior on back faces, lit by
    :func:`jface.data.appearance.shade` with the key light's shadow: ``(S, S, 3)``, 0 off the mesh."""
    noise = appearance.face_noise(look["key"])
    extent = SHADOW_EXTENT * layout.unit

    def paint(points):
        back = points[:, 7] > 0.5
        skin = look["tone"] * points[:, 13:16]
        albedo, gloss = appearance.face_texture(layout, {**look, "skin": skin}, image_look, points[:, 0:3],
                                                points[:, 8:10], noise, behind=points[:, 6])
        albedo = jnp.where(back[:, None], jnp.asarray(appearance.MOUTH_CAVITY, albedo.dtype), albedo)
        normal = points[:, 10:13] / jnp.maximum(jnp.linalg.norm(points[:, 10:13], axis=-1, keepdims=True), 1e-6)
        normal = jnp.where(back[:, None], -normal, normal)  # seen from inside
        shadow = jnp.where(back, 1.0, 0.0)
        if depth_map is not None:
            shadow = jnp.maximum(shadow, appearance.in_shadow(depth_map, points[:, 3:6], image_look["light_dir"],
                                                              extent, 2.5 * layout.unit))
        return appearance.shade(albedo, normal, jnp.where(back, 0.0, gloss), image_look, sh_light, shadow)

    return appearance.paint_pixels(paint, attrs, mask > 0, FACE_BLOCKS)


def _photo_compose(layout, attrs, face, mask, face_mask, landmarks68, cam, rotation, origin, sh_light, background,
                   use_photo, look, image_look, *, body):
    """Stage 3 (per item): background, body and occluders around the lit ``face``
    (:func:`jface.data.appearance.compose`), each pixel's ray taken back from DECA's NDC to the
    posed frame (module docstring, Frames). Returns (image (S, S, 3) in [0, 1], face mask (S, S) uint8:
    the plain look's, where the face is the nearest surface and no occluder covers it)."""
    size = face.shape[0]
    pixels = (landmarks68[:, :2] + 1.0) * size / 2.0 - 0.5  # 0-based (col, row)
    low, high = pixels.min(0), pixels.max(0)
    face_box = jnp.concatenate([0.5 * (low + high), jnp.max(high - low)[None]])  # where occluders go
    centres = (jnp.arange(size, dtype=jnp.float32) + 0.5) * 2.0 / size - 1.0  # pixel centres in NDC
    ndc_y, ndc_x = jnp.meshgrid(centres, centres, indexing="ij")
    rays = _ndc_to_posed(jnp.stack([ndc_x, ndc_y], -1), cam, origin)  # each pixel's ray in the posed frame
    covered = mask > 0
    # the skull / hair ellipsoids never cover FLAME's face (in front of the ears); they add volume
    # beyond the head's silhouette and over its back
    image, visible = appearance.compose(layout, look, image_look, rotation, rays, face, attrs[..., 5], covered,
                                        face_box, sh_light, background, use_photo, body=body,
                                        no_head=covered & (attrs[..., 6] < 0.5))
    return image, (visible & face_mask).astype(jnp.uint8)


def _per_item(fn, *batched):
    """``fn`` over the leading axis of ``batched`` as a loop in the program (``lax.map``, which
    compiles faster than ``vmap`` for work already vectorised over pixels)."""
    return jax.lax.map(lambda items: fn(*items), batched)


@functools.partial(tuned_jit, static_argnames=("size", "shadows"))
def _photo_geometry_chunk(model, setup, vertices, root, cam, pose, albedo, detail_amplitude, light_dir, patterns,
                          uv_mask, *, size, shadows):
    return _per_item(lambda *item: _photo_geometry(model, setup, *item, patterns, uv_mask, size=size, shadows=shadows),
                     vertices, root, cam, pose, albedo, detail_amplitude, light_dir)


@tuned_jit
def _photo_face_chunk(layout, attrs, depth_map, mask, light, look, image_look):
    return _per_item(functools.partial(_photo_face, layout), attrs, depth_map, mask, light, look, image_look)


@functools.partial(tuned_jit, static_argnames=("body",))
def _photo_compose_chunk(layout, attrs, face, mask, face_mask, landmarks68, cam, rotation, origin, light, background,
                         use_photo, look, image_look, *, body):
    one = functools.partial(_photo_compose, layout, body=body)
    return _per_item(one, attrs, face, mask, face_mask, landmarks68, cam, rotation, origin, light, background,
                     use_photo, look, image_look)


@tuned_jit
def _photo_camera_chunk(images, image_look):
    keys = jax.vmap(lambda k: jax.random.fold_in(appearance.noise_key(k), 2))(image_look["key"])
    images = appearance.camera_effects(images, keys, image_look)
    return jnp.clip(jnp.round(images * 255.0), 0, 255).astype(jnp.uint8)


def _render_photo_chunk(model, setup, merged, geometry_, amplitude, patterns, uv_mask, *, size, shadows, body):
    """A chunk of photographic images from its draws ``merged`` and :func:`_geometry_chunk`'s
    ``geometry_`` in four compiled stages (geometry, face, composition, camera), each materialised
    (one program for all of it compiles and runs several times slower on CPUs). Returns (images
    uint8 before JPEG, face_mask)."""
    vertices, root, cam, landmarks68 = geometry_
    look, image_look = _split(merged, "look_"), _split(merged, "image_")
    layout = setup["layout"]
    attrs, mask, depth_map, face_mask, rotation, origin = _photo_geometry_chunk(
        model, {k: setup[k] for k in ("layout", "corner", "anchor")}, vertices, root, cam, merged["pose"],
        merged["albedo"], amplitude, image_look["light_dir"], patterns, uv_mask, size=size, shadows=shadows)
    face = _photo_face_chunk(layout, attrs, depth_map, mask, merged["light"], look, image_look)
    image, face_mask = _photo_compose_chunk(layout, attrs, face, mask, face_mask, landmarks68, cam, rotation, origin,
                                            merged["light"], merged["background"], merged["use_photo"], look,
                                            image_look, body=body)
    return _photo_camera_chunk(image, image_look), face_mask


def _split(merged, prefix):
    return {k[len(prefix):]: v for k, v in merged.items() if k.startswith(prefix)}


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
    if config.look not in ("photo", "plain"):
        raise ValueError(f"look: expected 'photo' or 'plain', got {config.look!r}")
    if config.look == "photo" and model.full_lmk_faces_idx is None:
        raise ValueError("model: the photo look places its features by the 68 full landmarks (full_lmk_faces_idx "
                         "of DECA's landmark_embedding.npy); this model has none (or DecaSynthConfig(look='plain'))")
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
    photo = _photo_setup(model32, config) if config.look == "photo" else None

    def render(merged, n, pad):
        amplitude = pad(detail_amplitudes(merged["expression"], merged["pose"][:, 3], merged["detail_static"], config))
        padded = {k: pad(v) for k, v in merged.items() if k != "jpeg"}
        geometry_ = _geometry_chunk(model32, *[padded[k] for k in ("shape", "expression", "pose", "crop", "jitter")])
        vertices, _, cam, landmarks68 = geometry_
        if photo is None:
            outputs = _render_chunk(model32, vertices, cam, padded["albedo"], padded["light"], padded["background"],
                                    amplitude, patterns, uv_mask)
        else:
            outputs = _render_photo_chunk(model32, photo, padded, geometry_, amplitude, patterns, uv_mask, size=hw[0],
                                          shadows=config.photo.shadows, body=config.photo.body)
        image, face_mask, landmarks68, cam = (np.asarray(x)[:n] for x in (*outputs, landmarks68, cam))
        if photo is not None:
            image = appearance.jpeg(image, merged["jpeg"])
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
        return _identity_draws(model32, config, seed, ident, int(images_per_identity), hw, photo)

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
