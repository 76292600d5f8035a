"""Photographic appearance for generated faces: what a camera sees besides the face's shape.

The generators (:mod:`jface.data.synthetic_stn_render`, :mod:`jface.data.synthetic_deca`; the
principle of Wood et al. 2021, "Fake It Till You Make It") draw exact geometry from a face model;
this module paints everything else, so that a photograph is one more sample of the generated
distribution:

* **the face's own texture** (:func:`face_texture`), painted on the mesh: skin of a sampled tone
  with blotches, redness, pores, freckles and moles; eyes (sclera, iris with a limbal ring, pupil,
  catch-light, lid shadow, upper and lower lash lines, crease); eyebrows; lips with a cupid's bow
  and the mouth interior (teeth and a dark cavity on the band between the inner lips, which an open
  jaw stretches); nostrils; hairline, fringe and sideburns; stubble, moustache and beard; glasses
  (frames, bridge, temples; clear or dark lenses); make-up (lipstick, eye shadow, eyeliner, blush);
* **the rest of the person** (:func:`body_layers`), analytic ellipsoids drawn per pixel with their
  depth so they occlude and are occluded correctly: the skull (hair, or skin when bald), long hair
  behind the neck, the neck, the shoulders in clothing of a sampled colour and pattern, and a hat;
* **light**: DECA's SH ambient light plus a directional key light with specular highlights, and
  cast shadows of the face from the key light (nose, brows, chin) from a light-space depth map
  (:func:`shadow_map`, :func:`in_shadow`);
* **context** (:func:`background`): procedural indoor clutter (walls, boxes, windows, stripes,
  blobs, noise, defocus), or photographs from a folder the user gives (:func:`load_backgrounds`);
* **occluders** (:func:`occluders`): hands, microphones and objects in front of the face;
* **the camera** (:func:`camera_effects`, :func:`jpeg`): white balance, exposure, contrast,
  saturation, greyscale, defocus and motion blur, low resolution, sensor noise, JPEG.

Frames: the texture is a function of two per-point attributes of the mesh, the **mean face's
model-frame position** ``xyz`` (mm, x to the subject's left, y up, z towards the camera; features
are placed relative to the model's ``aflw21`` landmarks on the mean face, :func:`face_layout`) and
the **UV** ``uv`` in [0, 1]^2 (noise fields are looked up there). Because both are attributes of
vertices, the painting moves with the mesh: a landmark vertex stays on its painted feature for
every shape, expression and pose, so the labels stay exact. A model in another frame is moved into
this one (:data:`EYE_CORNERS_AT`; FLAME: :func:`jface.data.synthetic_deca.photo_frame`); a mesh
of the whole head marks its back (``face_texture``'s ``behind``) and keeps the skull ellipsoids
off its face (``body_layers``' ``no_head``). Per-pixel arrays here are in the y-up
pixel frame of the 3DMM-STN (x = 1-based column, y = S + 1 - 1-based row; BUILD_NOTES.md, Frames
and conventions); depths are the rotated model z (mm, larger = nearer the camera).

Randomness: numbers are drawn on the host with numpy (:func:`sample_identity`,
:func:`sample_images`: per identity and per image), noise fields on the device from the keys they
carry; everything here is per item (vmap it) and pure.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jface.lighting import sh_shading
from jface.render import rasterize

__all__ = [
    "AppearanceConfig",
    "FaceLayout",
    "face_layout",
    "sample_identity",
    "sample_images",
    "face_noise",
    "noise_key",
    "face_texture",
    "body_layers",
    "shadow_map",
    "in_shadow",
    "shade",
    "paint_pixels",
    "compose",
    "with_skin",
    "background",
    "occluders",
    "camera_effects",
    "jpeg",
    "load_backgrounds",
    "background_crops",
    "ABLATIONS",
    "without",
]


@dataclasses.dataclass(frozen=True)
class AppearanceConfig:
    """Probabilities and ranges of the appearance draws (per identity unless said per image).

    ``backgrounds``: a folder of background photographs (searched recursively; empty: procedural
    only); ``background_photo_prob``: per image, the chance of a photograph when the folder is
    given. ``blur_max`` / ``noise_max``: the largest defocus sigma (pixels at 128 px, scaled with
    the image) and pixel noise std (0-255).
    """

    glasses_prob: float = 0.2
    sunglasses_prob: float = 0.25  # of the glasses
    hat_prob: float = 0.08
    beard_prob: float = 0.3
    makeup_prob: float = 0.3
    freckle_prob: float = 0.2
    long_hair_prob: float = 0.4
    bald_prob: float = 0.07
    body: bool = True  # skull / hair, neck, shoulders
    shadows: bool = True
    occluder_prob: float = 0.25  # per image
    greyscale_prob: float = 0.08  # per image
    jpeg_prob: float = 0.5  # per image
    motion_blur_prob: float = 0.1  # per image
    low_res_prob: float = 0.15  # per image
    blur_max: float = 1.3
    noise_max: float = 7.0
    backgrounds: str = ""
    background_photo_prob: float = 0.5


# Ingredients of the look that an ablation can leave out (``without``), each as the fields it zeroes.
ABLATIONS = {
    "accessories": dict(glasses_prob=0.0, hat_prob=0.0, beard_prob=0.0, makeup_prob=0.0, freckle_prob=0.0),
    "body": dict(body=False),  # skull / hair, neck, shoulders (and so hats)
    "shadows": dict(shadows=False),
    "occluders": dict(occluder_prob=0.0),
    "camera": dict(greyscale_prob=0.0, jpeg_prob=0.0, motion_blur_prob=0.0, low_res_prob=0.0, blur_max=0.0,
                   noise_max=0.0),
}


def without(config: AppearanceConfig, names) -> AppearanceConfig:
    """``config`` with the named :data:`ABLATIONS` left out (a comma-separated string or a sequence;
    empty: unchanged). An unknown name raises ``ValueError`` listing the known ones."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    changes = {}
    for name in names:
        if name not in ABLATIONS:
            raise ValueError(f"ablate: unknown ingredient {name!r}; expected a comma-separated subset of "
                             f"{', '.join(ABLATIONS)}")
        changes.update(ABLATIONS[name])
    return dataclasses.replace(config, **changes)


# --- layout ----------------------------------------------------------------------------------

# The model frame the placements here assume (the default 3DMM-STN mean face's): x = 0 on the
# face's midline and the outer eye corners' midpoint at y = 30, z = 59 (mm x FaceLayout.unit);
# a model in another frame is moved into it (jface.data.synthetic_deca.photo_frame).
EYE_CORNERS_AT = (30.0, 59.0)

@flax.struct.dataclass
class FaceLayout:
    """Where the features are on the mean face, model-frame mm (from its ``aflw21`` landmarks).

    ``eyes (2, 2, 2)``: per eye (outer, inner) corner (x, y); ``brows (2, 3, 2)``: per brow (outer,
    centre, inner); ``nose (3, 2)``: (left wing, tip, right wing); ``mouth (3, 2)``: (left corner,
    centre, right corner); ``chin (2,)``; ``ears (2, 2)``; ``unit``: the outer-eye-corner distance
    / 94 mm (the default model's), which scales every feature size.
    """

    eyes: jax.Array
    brows: jax.Array
    nose: jax.Array
    mouth: jax.Array
    chin: jax.Array
    ears: jax.Array
    unit: jax.Array


def face_layout(model) -> FaceLayout:
    """The :class:`FaceLayout` of a model with ``aflw21`` landmarks (:data:`jface.models.landmarks.AFLW21_NAMES`),
    or of the mean face's 21 AFLW points themselves, ``(21, 2 or 3)`` model-frame mm (a model whose
    landmarks are not vertices, e.g. FLAME's barycentric embedding: :mod:`jface.data.synthetic_deca`)."""
    if hasattr(model, "landmarks"):
        if "aflw21" not in model.landmarks:
            raise ValueError(f"model: appearance needs the 'aflw21' landmarks to place the features; has "
                             f"{sorted(model.landmarks)}")
        points = np.asarray(model.mean, np.float64)[np.asarray(model.landmarks["aflw21"])][:, :2]
    else:
        points = np.asarray(model, np.float64)
        if points.ndim != 2 or points.shape[0] != 21 or points.shape[1] not in (2, 3):
            raise ValueError(f"points: expected the 21 AFLW points (21, 2 or 3), got shape {points.shape}")
        points = points[:, :2]
    eyes = np.stack([points[[6, 8]], points[[11, 9]]])
    unit = np.linalg.norm(points[6] - points[11]) / 94.0
    if not unit > 0:
        raise ValueError("model: the outer eye corners of the mean face coincide; cannot place the features")
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    return FaceLayout(eyes=f32(eyes), brows=f32(np.stack([points[[0, 1, 2]], points[[5, 4, 3]]])),
                      nose=f32(points[[13, 14, 15]]), mouth=f32(points[[17, 18, 19]]), chin=f32(points[20]),
                      ears=f32(points[[12, 16]]), unit=f32(unit))


# --- host-side draws -------------------------------------------------------------------------

# Skin tones from very light to very dark (linear-ish RGB albedo), hair colours, iris colours.
SKIN_TONES = np.array([[0.97, 0.80, 0.70], [0.92, 0.71, 0.59], [0.84, 0.60, 0.46], [0.72, 0.49, 0.35],
                       [0.56, 0.36, 0.25], [0.40, 0.25, 0.17], [0.28, 0.17, 0.12]])
HAIR_COLOURS = np.array([[0.04, 0.03, 0.03], [0.10, 0.07, 0.05], [0.22, 0.14, 0.08], [0.38, 0.25, 0.14],
                         [0.62, 0.48, 0.30], [0.80, 0.68, 0.45], [0.50, 0.20, 0.08], [0.55, 0.53, 0.50],
                         [0.85, 0.84, 0.82]])
HAIR_WEIGHTS = np.array([0.22, 0.22, 0.18, 0.1, 0.07, 0.06, 0.05, 0.06, 0.04])
IRIS_COLOURS = np.array([[0.20, 0.11, 0.05], [0.35, 0.20, 0.08], [0.30, 0.42, 0.55], [0.32, 0.40, 0.25],
                         [0.40, 0.40, 0.42]])
IRIS_WEIGHTS = np.array([0.45, 0.2, 0.15, 0.1, 0.1])


def _colour(rng, size, lo=0.05, hi=0.95):
    return rng.uniform(lo, hi, size=size + (3,))


MOUTH_CAVITY = (0.18, 0.06, 0.06)  # the mouth's dark interior (albedo)


def _lip_colour(skin):
    return skin * np.array([0.80, 0.55, 0.55]) + np.array([0.08, 0.0, 0.02])


def with_skin(look: dict, skin) -> dict:
    """``look`` (a :func:`sample_identity` dict) with another skin colour ``(3,)`` and the colours
    drawn from it (the lips) made from the new one; the other draws unchanged."""
    skin = np.asarray(skin, np.float32)
    return {**look, "skin": skin, "lip_colour": np.asarray(_lip_colour(skin), np.float32)}


def sample_identity(rng: np.random.Generator, config: AppearanceConfig = AppearanceConfig()) -> dict:
    """One identity's appearance: a dict of float32 numpy arrays (scalars or colours (3,)) and
    ``key`` (2,) uint32 for its noise fields. See :func:`face_texture` and :func:`body_layers`."""
    u = rng.uniform
    tone = (len(SKIN_TONES) - 1) * rng.beta(1.3, 2.2)
    lo = int(np.floor(tone))
    skin = SKIN_TONES[lo] + (tone - lo) * (SKIN_TONES[min(lo + 1, len(SKIN_TONES) - 1)] - SKIN_TONES[lo])
    skin = np.clip(skin * rng.normal(1, 0.04, 3) * u(0.9, 1.08), 0.02, 1)
    hair = HAIR_COLOURS[rng.choice(len(HAIR_COLOURS), p=HAIR_WEIGHTS)] * rng.normal(1, 0.1, 3)
    if u() < 0.03:  # dyed
        hair = _colour(rng, ())
    long_hair = float(u() < config.long_hair_prob)
    bald = float(u() < config.bald_prob) * (1 - long_hair)
    glasses = float(u() < config.glasses_prob)
    makeup = float(u() < config.makeup_prob)
    lipstick = np.array([[0.65, 0.08, 0.12], [0.75, 0.35, 0.40], [0.45, 0.12, 0.15], [0.80, 0.45, 0.40],
                         [0.35, 0.10, 0.25]])[rng.integers(5)]
    clothes = _colour(rng, ()) * (u(0.2, 1.0) if u() < 0.7 else 1.0)
    out = {
        "skin": skin,
        "skin_blotch": u(0.02, 0.10),
        "redness": u(0, 0.12),
        "pores": u(0.02, 0.09),
        "freckles": float(u() < config.freckle_prob) * u(0.3, 1.0),
        "moles": rng.uniform(-1, 1, size=(3, 2)) * np.array([60.0, 70.0]) * (u(size=(3, 1)) < 0.4),
        "eye_open": u(0.8, 1.2),
        "iris": IRIS_COLOURS[rng.choice(len(IRIS_COLOURS), p=IRIS_WEIGHTS)] * rng.normal(1, 0.1, 3),
        "sclera": np.array([0.86, 0.83, 0.80]) * u(0.8, 1.05),
        "lashes": u(0.5, 1.0),
        "dark_circles": u(0, 0.15),
        "brow_colour": hair * u(0.5, 1.0) if u() < 0.8 else HAIR_COLOURS[1] * u(0.7, 1.4),
        "brow_thick": u(0.6, 1.5),
        "brow_density": u(0.55, 1.0),
        "lip_colour": _lip_colour(skin),
        "lip_full": u(0.75, 1.3),
        "lipstick": lipstick,
        "lipstick_amount": makeup * float(u() < 0.7) * u(0.4, 0.95),
        "eye_shadow": _colour(rng, (), 0.35, 0.9),
        "eye_shadow_amount": makeup * float(u() < 0.6) * u(0.15, 0.45),
        "eyeliner": makeup * float(u() < 0.6) * u(0.4, 1.0),
        "blush": makeup * u(0, 0.12),
        "hair": np.clip(hair, 0.01, 1),
        "hair_shine": u(0.05, 0.35),
        "forehead": u(22.0, 42.0),
        "recession": u(0, 14.0) * float(u() < 0.5),
        "fringe": long_hair * float(u() < 0.35) * u(6.0, 18.0),
        "long_hair": long_hair * u(0.6, 1.3),
        "bald": bald,
        "hair_volume": u(0.95, 1.12),
        "beard": float(u() < config.beard_prob) * (u(0.15, 0.45) if u() < 0.6 else u(0.6, 1.0)),
        "glasses": glasses,
        "sunglasses": glasses * float(u() < config.sunglasses_prob),
        "glasses_colour": _colour(rng, (), 0.02, 0.6) * (u(0.1, 1.0) if u() < 0.6 else 1.0),
        "glasses_size": np.array([u(19.0, 25.0), u(12.0, 18.0), u(0.8, 2.2)]),
        "hat": float(u() < config.hat_prob),
        "hat_colour": _colour(rng, ()),
        "hat_cut": u(0.25, 0.55),
        "clothes": clothes,
        "clothes_2": _colour(rng, ()),
        "clothes_pattern": float(u() < 0.3) * u(0.05, 0.3),
        "neckline": u(0.0, 0.8),
        "shoulders": u(150.0, 200.0),
    }
    out = {k: np.asarray(v, np.float32) for k, v in out.items()}
    out["key"] = rng.integers(0, 2**32, size=4, dtype=np.uint64).astype(np.uint32)
    return out


def sample_images(rng: np.random.Generator, count: int, config: AppearanceConfig = AppearanceConfig()) -> dict:
    """Per-image draws (``count`` rows each, float32 unless said): the key light, gaze, body turn,
    background, occluder and camera parameters and a noise ``key (count, 2)`` uint32."""
    u = lambda *a, **k: rng.uniform(*a, **k, size=count)  # noqa: E731
    light = rng.normal(size=(count, 3)) * np.array([0.7, 0.5, 0.3]) + np.array([0.0, 0.35, 0.9])
    light /= np.linalg.norm(light, axis=-1, keepdims=True)
    out = {
        "light_dir": light,
        "light_colour": rng.normal(1, 0.06, size=(count, 3)),
        "key_light": u(0.0, 0.7),
        "ambient": u(0.55, 1.0),
        "specular": u(0.0, 0.35),
        "gaze": rng.uniform(-1, 1, size=(count, 2)),
        "body_turn": rng.normal(0, 12.0, size=count),
        "background_kind": rng.integers(0, 3, size=count),
        "background_blur": u(0, 1.5),
        "occluder": (u(0, 1) < config.occluder_prob) * rng.integers(1, 4, size=count),
        "occluder_pos": rng.normal(0, 0.35, size=(count, 2)) + np.array([0.0, -0.35]),
        "occluder_size": u(0.35, 0.7),
        "occluder_angle": u(-np.pi, np.pi),
        "occluder_colour": rng.uniform(0.05, 0.95, size=(count, 3)),
        "greyscale": (u(0, 1) < config.greyscale_prob).astype(np.float64),
        "white_balance": rng.normal(1, 0.07, size=(count, 3)),
        "exposure": np.exp(rng.normal(0.12, 0.2, size=count)),
        "contrast": u(0.85, 1.3),
        "saturation": u(0.6, 1.3),
        "gamma": u(0.85, 1.15),
        "blur": u(0, 1) ** 2 * config.blur_max,
        "motion": (u(0, 1) < config.motion_blur_prob) * u(2.0, 6.0),
        "motion_angle": u(0, np.pi),
        "low_res": (u(0, 1) < config.low_res_prob) * u(0.35, 0.75),
        "noise": u(0, 1) ** 1.5 * config.noise_max,
        "vignette": u(0, 0.3),
    }
    out = {k: np.asarray(v, np.float32) for k, v in out.items()}
    out["key"] = rng.integers(0, 2**32, size=(count, 4), dtype=np.uint64).astype(np.uint32)
    return out


# --- small helpers (per item, JAX) -----------------------------------------------------------

def _ramp(signed, width):
    """1 inside (signed < 0) to 0 outside over ``width``: a soft edge."""
    return jnp.clip(0.5 - signed / width, 0.0, 1.0)


def _mix(base, colour, amount):
    """``base`` and ``colour`` (..., 3) mixed by a per-point ``amount`` (...) (no channel axis)."""
    amount = jnp.asarray(amount)
    amount = amount[..., None] if amount.ndim else amount
    return base * (1.0 - amount) + colour * amount


def _lookup(grid, uv):
    """Bilinear lookup of ``grid (R, C, K)`` at ``uv (..., 2)`` in [0, 1] (u -> columns, v -> rows
    from the bottom), clamped at the edges. Returns ``(..., K)``."""
    rows, cols = grid.shape[:2]
    c = jnp.clip(uv[..., 0], 0.0, 1.0) * (cols - 1)
    r = jnp.clip(1.0 - uv[..., 1], 0.0, 1.0) * (rows - 1)
    c0 = jnp.clip(jnp.floor(c).astype(jnp.int32), 0, cols - 2)
    r0 = jnp.clip(jnp.floor(r).astype(jnp.int32), 0, rows - 2)
    fc, fr = (c - c0)[..., None], (r - r0)[..., None]
    top = grid[r0, c0] * (1 - fc) + grid[r0, c0 + 1] * fc
    bottom = grid[r0 + 1, c0] * (1 - fc) + grid[r0 + 1, c0 + 1] * fc
    return top * (1 - fr) + bottom * fr


def face_noise(key) -> dict:
    """Noise fields of one identity (standard normal, looked up by UV): ``low (6, 6, 3)`` blotches,
    ``mid (24, 24, 2)``, ``fine (160, 160, 2)`` pores / freckles / stubble, ``strands (12, 200, 1)``
    hair running along v."""
    keys = jax.random.split(noise_key(key), 4)
    return {"low": jax.random.normal(keys[0], (6, 6, 3)), "mid": jax.random.normal(keys[1], (24, 24, 2)),
            "fine": jax.random.normal(keys[2], (160, 160, 2)), "strands": jax.random.normal(keys[3], (12, 200, 1))}


def _pixel_grid(height, width):
    """0-based (rows, cols) ``(H, W)`` float32 of every pixel."""
    return jnp.meshgrid(jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32), indexing="ij")


def noise_key(data):
    """A JAX key from a drawn ``key`` (4,) uint32: XLA's RngBitGenerator (``unsafe_rbg``), which
    compiles and runs far faster on CPUs than threefry; fine for textures and noise."""
    return jax.random.wrap_key_data(jnp.asarray(data, jnp.uint32), impl="unsafe_rbg")


# --- the face's texture ----------------------------------------------------------------------

def _eye(layout, look, gaze, xy, side):
    """Per point: (eye colour (..., 3), inside-eye weight, lash-line weight, lower-lid weight,
    crease, shadow region, under-eye region) of eye ``side`` (0, 1)."""
    unit = layout.unit
    outer, inner = layout.eyes[side, 0], layout.eyes[side, 1]
    half = 0.5 * jnp.linalg.norm(outer - inner)
    centre = 0.5 * (outer + inner)
    axis = (outer - inner) / (2 * half)
    rel = xy - centre
    a = (rel @ axis) / half  # -1 inner corner .. +1 outer corner
    b = rel @ jnp.stack([-axis[1], axis[0]]) * jnp.sign(axis[0] + 1e-9)  # mm, up
    span = jnp.clip(1.0 - a * a, 0.0, 1.0)
    upper = look["eye_open"] * 0.33 * half * span * (1.0 - 0.12 * a)
    lower = -0.24 * half * look["eye_open"] * span
    edge = 0.35 * unit
    inside = _ramp(b - upper, edge) * _ramp(lower - b, edge) * (jnp.abs(a) < 1.0)
    iris_c = jnp.stack([gaze[0] * 0.28 * half, gaze[1] * 1.2 * unit - 0.3 * unit])
    d = jnp.stack([a * half, b], -1) - iris_c
    radius = jnp.linalg.norm(d, axis=-1)
    r_iris = 0.42 * half
    angle = jnp.arctan2(d[..., 1], d[..., 0])
    streaks = 0.85 + 0.15 * jnp.sin(angle * 17.0 + 3.0 * side) * jnp.sin(angle * 7.0)
    iris = look["iris"] * (0.55 + 0.6 * radius / r_iris)[..., None] * streaks[..., None]
    iris = jnp.where((radius > 0.82 * r_iris)[..., None], iris * 0.5, iris)  # limbal ring
    colour = _mix(look["sclera"] * (1.0 - 0.25 * jnp.abs(a) ** 4)[..., None]
                  + jnp.array([0.08, -0.05, -0.05]) * (jnp.abs(a) ** 4)[..., None],
                  iris, _ramp(radius - r_iris, 0.5 * unit))
    colour = _mix(colour, jnp.array([0.02, 0.02, 0.02]), _ramp(radius - 0.4 * r_iris, 0.3 * unit))
    glint = jnp.linalg.norm(d - jnp.array([0.35, 0.4]) * r_iris, axis=-1)
    colour = _mix(colour, jnp.array([0.95, 0.95, 0.95]), _ramp(glint - 0.13 * r_iris, 0.2 * unit))
    colour = colour * (1.0 - 0.35 * _ramp(upper - b - 1.3 * unit, 0.8 * unit))[..., None]  # lid shadow
    lash_width = (0.55 + 0.5 * look["lashes"] + 0.6 * look["eyeliner"]) * unit
    lash = (_ramp(jnp.abs(b - upper - 0.25 * lash_width) - 0.5 * lash_width, 0.3 * unit)
            * (jnp.abs(a) < 1.05 + 0.2 * look["eyeliner"]))
    low = _ramp(jnp.abs(b - lower + 0.2 * unit) - 0.35 * unit, 0.3 * unit) * (jnp.abs(a) < 1.0)
    crease = _ramp(jnp.abs(b - upper - 3.2 * unit * jnp.sqrt(span)) - 0.4 * unit, 0.5 * unit) * (jnp.abs(a) < 0.95)
    lid_region = (b > upper) & (b < upper + 6.5 * unit * jnp.sqrt(span) + 1.0 * unit) & (jnp.abs(a) < 1.1)
    under = _ramp(jnp.abs(b - lower + 4.0 * unit) - 3.5 * unit, 2.0 * unit) * (jnp.abs(a) < 1.0)
    return colour, inside, lash, low, crease, lid_region.astype(colour.dtype), under


def _brows(layout, look, xy, noise_fine):
    """Per point: eyebrow weight (both brows)."""
    unit = layout.unit
    def brow(side):
        outer, centre, inner = layout.brows[side, 0], layout.brows[side, 1], layout.brows[side, 2]
        control = 2.0 * centre - 0.5 * (outer + inner)
        s = jnp.clip((xy[..., 0] - inner[0]) / (outer[0] - inner[0] + 1e-6), -0.15, 1.1)
        sc = jnp.clip(s, 0.0, 1.0)
        y = (1 - sc) ** 2 * inner[1] + 2 * sc * (1 - sc) * control[1] + sc ** 2 * outer[1]
        half = (1.9 - 1.0 * sc) * look["brow_thick"] * unit
        band = _ramp(jnp.abs(xy[..., 1] - y + 0.8 * unit) - half, 0.6 * unit)
        return band * _ramp(jnp.maximum(-s, s - 1.0), 0.08)

    total = jnp.max(jax.vmap(brow)(jnp.arange(2)), 0)
    strands = jnp.clip(0.55 + 0.45 * noise_fine, 0.0, 1.0)
    return jnp.clip(total, 0.0, 1.0) * look["brow_density"] * strands


def _lips(layout, look, xy):
    """Per point: (lip weight, mouth-gap weight, teeth part of the gap, upper lip top y, rel x)."""
    unit = layout.unit
    left, centre, right = layout.mouth[0], layout.mouth[1], layout.mouth[2]
    half = 0.5 * jnp.abs(right[0] - left[0])
    rel = (xy[..., 0] - centre[0]) / half
    span = jnp.clip(1.0 - rel * rel, 0.0, 1.0)
    mid_y = centre[1] + 0.5 * (left[1] + right[1] - 2 * centre[1]) * rel * rel
    top = mid_y + look["lip_full"] * 0.27 * half * span ** 0.6 * (1.0 - 0.18 * jnp.exp(-(rel / 0.12) ** 2))
    bottom = mid_y - look["lip_full"] * 0.34 * half * span ** 0.55
    edge = 0.5 * unit
    lips = _ramp(xy[..., 1] - top, edge) * _ramp(bottom - xy[..., 1], edge) * _ramp(jnp.abs(rel) - 1.0, 0.05)
    gap_half = (0.55 * span + 0.15) * unit
    gap = _ramp(jnp.abs(xy[..., 1] - mid_y) - gap_half, 0.25 * unit) * (jnp.abs(rel) < 1.0)
    teeth = (xy[..., 1] > mid_y + 0.25 * gap_half).astype(xy.dtype) * (jnp.abs(rel) < 0.75)
    return lips, gap, teeth, top, rel


def face_texture(layout: FaceLayout, look: dict, image_look: dict, xyz, uv, noise: dict, behind=None):
    """The face's albedo and gloss at points of the mesh, per item.

    ``xyz (..., 3)``: the mean face's model-frame position of each point (mm); ``uv (..., 2)``;
    ``look``: one identity's :func:`sample_identity` draws (as arrays; ``look["skin"]`` may also
    be per point, ``(..., 3)``: a skin colour map the painting modulates); ``image_look``: the
    image's :func:`sample_images` row (gaze); ``noise``: :func:`face_noise` of the identity;
    ``behind (...,)`` in [0, 1] (None: 0): how far a point lies on the back of a whole head (a
    mesh that has one, FLAME), where the painting keys on (x, y) alone would repeat the face: there
    it is hair above the nape (the ears' height less 10 mm, less 45 mm x ``long_hair`` for long
    hair; skin when bald) and skin below. Returns ``(albedo (..., 3) in [0, 1], gloss (...,) in [0, 1])``.
    """
    unit = layout.unit
    xy = xyz[..., :2]
    x, y = xy[..., 0], xy[..., 1]
    low = _lookup(noise["low"], uv)
    mid = _lookup(noise["mid"], uv)
    fine = _lookup(noise["fine"], uv)
    strands = _lookup(noise["strands"], uv)[..., 0]
    # skin
    skin = look["skin"] * (1.0 + look["skin_blotch"] * low)
    skin = skin * (1.0 + look["pores"] * (0.6 * fine[..., 0:1] + 0.4 * mid[..., 0:1]))
    eye_y = 0.25 * jnp.sum(layout.eyes[..., 1])
    nose_tip = layout.nose[1]
    cheeks = jnp.exp(-(((jnp.abs(x) - 40.0 * unit) / (18.0 * unit)) ** 2
                       + ((y - nose_tip[1] + 2.0 * unit) / (14.0 * unit)) ** 2))
    nose = jnp.exp(-(((x - nose_tip[0]) / (10.0 * unit)) ** 2 + ((y - nose_tip[1]) / (9.0 * unit)) ** 2))
    red = look["redness"] * (cheeks + 0.8 * nose)
    skin = skin * (1.0 + red[..., None] * jnp.array([0.25, -0.15, -0.12]))
    skin = _mix(skin, jnp.array([0.85, 0.35, 0.40]) * look["skin"] * 1.1, look["blush"] * 4.0 * cheeks)
    front = (xyz[..., 2] > 20.0 * unit) & (jnp.abs(y - nose_tip[1]) < 45.0 * unit)
    freckle = jnp.clip((fine[..., 1] - 1.3) * 1.5, 0.0, 1.0) * look["freckles"] * (cheeks + nose + 0.3) * front
    skin = _mix(skin, skin * jnp.array([0.72, 0.55, 0.45]), jnp.clip(freckle, 0.0, 0.8))
    spot = jnp.linalg.norm(xy[None] - look["moles"].reshape((-1,) + (1,) * (xy.ndim - 1) + (2,)), axis=-1)
    has = jnp.any(look["moles"] != 0, axis=-1).reshape((-1,) + (1,) * (xy.ndim - 1))
    moles = jnp.max(_ramp(spot - 1.2 * unit, 0.6 * unit) * has, axis=0)
    skin = _mix(skin, skin * jnp.array([0.45, 0.32, 0.28]), moles)
    bare = skin  # before the beard: the back of a head's skin
    gloss = jnp.full(x.shape, 0.35)
    # beard / stubble (under the eyes' line, off the lips)
    lips, gap, teeth, lip_top, rel = _lips(layout, look, xy)
    mouth_y = layout.mouth[1, 1]
    jaw_side = jnp.abs(x) < 0.8 * jnp.abs(layout.ears[0, 0] - layout.ears[1, 0]) / 2
    moustache = (y > lip_top - 0.5 * unit) & (y < lip_top + 8.0 * unit) & (jnp.abs(rel) < 1.25)
    chin_region = (y < mouth_y - 2.0 * unit) & (y > layout.chin[1] - 40.0 * unit) & jaw_side
    cheek_region = (y < nose_tip[1] - 6.0 * unit - 0.25 * jnp.abs(x)) & jaw_side & (y > layout.chin[1] - 40.0 * unit)
    beard_region = (moustache | chin_region | cheek_region) & (lips < 0.5)
    beard = look["beard"] * beard_region * jnp.clip(0.5 + 0.5 * fine[..., 1] + 0.3 * strands, 0.0, 1.0)
    stubble = beard * (look["beard"] < 0.5)
    full = beard * (look["beard"] >= 0.5)
    skin = _mix(skin, look["hair"] * 0.9, jnp.clip(stubble * 1.4, 0.0, 0.75) + jnp.clip(full * 1.2, 0.0, 1.0))
    # lips, mouth gap
    lip = _mix(look["lip_colour"], look["lipstick"], look["lipstick_amount"]) * (1.0 + 0.05 * fine[..., 0:1])
    colour = _mix(skin, lip, lips * (1.0 - 0.8 * full))
    inside = _mix(jnp.array(MOUTH_CAVITY), jnp.array([0.80, 0.77, 0.68]), teeth)
    colour = _mix(colour, inside, gap)
    gloss = gloss + 0.35 * lips
    # nostrils
    wing_half = 0.5 * jnp.abs(layout.nose[2, 0] - layout.nose[0, 0])
    offset = jnp.stack([jnp.abs(x - nose_tip[0]) - 0.38 * wing_half, y - layout.nose[0, 1] + 2.8 * unit], -1)
    nostrils = _ramp(jnp.linalg.norm(offset / jnp.stack([2.6 * unit, 1.4 * unit]), axis=-1) - 1.0, 0.5)
    colour = _mix(colour, colour * 0.25, nostrils * 0.85)
    # eyes and their surroundings
    # both eyes at once (they never overlap: weights add, colours are the weighted mean)
    eye, inside_eye, lash, low_lid, crease, lid_region, under = jax.vmap(
        lambda side: _eye(layout, look, image_look["gaze"], xy, side))(jnp.arange(2))
    eye = jnp.sum(eye * inside_eye[..., None], 0) / jnp.maximum(jnp.sum(inside_eye, 0), 1e-6)[..., None]
    inside_eye, lash, low_lid, crease, lid_region, under = (jnp.max(a, 0) for a in (inside_eye, lash, low_lid, crease,
                                                                                     lid_region, under))
    colour = colour * (1.0 - look["dark_circles"] * under)[..., None]
    colour = _mix(colour, look["eye_shadow"] * look["skin"] * 1.3, look["eye_shadow_amount"] * lid_region)
    colour = colour * (1.0 - 0.18 * crease)[..., None]
    colour = _mix(colour, eye, inside_eye)
    colour = _mix(colour, jnp.array([0.05, 0.04, 0.04]), jnp.clip(lash * (0.55 + 0.45 * look["lashes"]), 0, 1))
    colour = colour * (1.0 - 0.3 * low_lid)[..., None]
    gloss = gloss + 0.5 * inside_eye
    # eyebrows
    colour = _mix(colour, look["brow_colour"], _brows(layout, look, xy, fine[..., 1]))
    # hair on the mesh: hairline with recession and fringe, sides, sideburns
    brow_y = jnp.mean(layout.brows[..., 1])
    temples = jnp.exp(-((jnp.abs(x) - 38.0 * unit) / (14.0 * unit)) ** 2)
    hairline = brow_y + look["forehead"] * unit + look["recession"] * unit * temples
    fringe = brow_y + look["fringe"] * unit + 3.0 * unit * strands
    hairline = jnp.where(look["fringe"] > 0, jnp.minimum(hairline, fringe), hairline)
    hairline = hairline + 2.0 * unit * strands
    ear_y = 0.5 * (layout.ears[0, 1] + layout.ears[1, 1])
    side_x = (62.0 - 6.0 * look["long_hair"]) * unit + 2.0 * unit * strands
    side_low = ear_y + jnp.where(look["long_hair"] > 0, -45.0 * look["long_hair"], 12.0) * unit
    hair = (y > hairline) | ((jnp.abs(x) > side_x) & (y > side_low) & (y > eye_y - 60.0 * unit))
    hair = hair & (look["bald"] < 0.5)
    hair_col = look["hair"] * (0.75 + 0.4 * jnp.clip(0.5 + 0.35 * strands, 0.0, 1.2))[..., None]
    colour = _mix(colour, hair_col, hair.astype(colour.dtype))  # a hard edge, made irregular by the strands
    gloss = jnp.where(hair, look["hair_shine"], gloss)
    # glasses: frames round each eye, bridge, temples; lenses clear or dark
    size = look["glasses_size"] * unit
    def frame(side):
        centre = 0.5 * (layout.eyes[side, 0] + layout.eyes[side, 1]) + jnp.array([0.0, -1.5]) * unit
        q = jnp.abs(xy - centre) - jnp.stack([size[0], size[1]]) + 4.0 * unit
        sdf = jnp.linalg.norm(jnp.maximum(q, 0.0), axis=-1) + jnp.minimum(jnp.max(q, axis=-1), 0.0) - 4.0 * unit
        temple_y = centre[1] + 0.4 * size[1]
        beyond = (jnp.abs(x) > jnp.abs(centre[0]) + size[0] - 1.0 * unit) & (jnp.sign(x) == jnp.sign(centre[0]))
        rim = jnp.maximum(_ramp(jnp.abs(sdf) - 0.5 * size[2], 0.4 * unit),
                          _ramp(jnp.abs(y - temple_y) - 0.45 * size[2], 0.4 * unit) * beyond)
        return rim, _ramp(sdf, 0.4 * unit)

    rims, lens = (jnp.max(a, 0) for a in jax.vmap(frame)(jnp.arange(2)))
    eye_c = 0.5 * (layout.eyes[0, 1] + layout.eyes[1, 1])
    bridge = (_ramp(jnp.abs(y - eye_c[1] - 1.5 * unit) - 0.5 * size[2], 0.4 * unit)
              * (jnp.abs(x - eye_c[0]) < 12.0 * unit))
    rims = jnp.maximum(rims, bridge) * look["glasses"]
    tint = jnp.where(look["sunglasses"] > 0, 0.88, 0.1)
    colour = _mix(colour, look["glasses_colour"] * 0.3, lens * look["glasses"] * tint)
    colour = _mix(colour, look["glasses_colour"], rims)
    gloss = jnp.maximum(gloss, 0.8 * lens * look["glasses"])
    if behind is not None:  # the back of a whole head: hair down to the nape, skin below
        nape = ear_y - (10.0 + 45.0 * look["long_hair"]) * unit + 3.0 * unit * strands
        back_hair = (y > nape) & (look["bald"] < 0.5)
        back = jnp.where(back_hair[..., None], hair_col, bare)
        colour = _mix(colour, back, behind)
        gloss = gloss + behind * (jnp.where(back_hair, look["hair_shine"], 0.35) - gloss)
    return jnp.clip(colour, 0.0, 1.0), jnp.clip(gloss, 0.0, 1.0)


def paint_pixels(paint, attrs, covered, blocks: int):
    """``paint (N, C) -> (N, 3)`` applied to the ``covered (H, W)`` pixels of ``attrs (H, W, C)``; 0
    elsewhere. The painting is per pixel, so it runs on the covered pixels gathered into a list,
    in blocks of 1 / ``blocks`` of the image, as many blocks as they need: work in proportion to
    the covered area, one compiled copy of ``paint``."""
    height, width = covered.shape
    pixels = height * width
    attrs, covered = attrs.reshape(pixels, -1), covered.reshape(pixels)
    block = -(-pixels // blocks)
    # the covered pixels first, then `pixels` (no pixel: dropped when written back)
    index = jnp.nonzero(covered, size=block * blocks, fill_value=pixels)[0]

    def paint_block(i, out):
        rows = jax.lax.dynamic_slice(index, (i * block,), (block,))
        return out.at[rows].set(paint(attrs[jnp.minimum(rows, pixels - 1)]).astype(out.dtype), mode="drop")

    count = (jnp.sum(covered) + block - 1) // block
    out = jax.lax.fori_loop(0, count, paint_block, jnp.zeros((pixels, 3), attrs.dtype))
    return out.reshape(height, width, 3)


# --- body: skull and hair, neck, shoulders, hat ----------------------------------------------

def _ellipsoid(pixel, centre, axes, radii):
    """Front intersection of orthographic rays with an ellipsoid, per pixel.

    ``pixel (..., 2)`` model-frame (x, y) of each ray (mm, after undoing scale and translation);
    ``centre (3,)`` in the rotated (camera) frame; ``axes (3, 3)`` the ellipsoid's axes as columns
    (a rotation); ``radii (3,)``. Returns ``(depth (...,), local (..., 3) on the unit sphere,
    normal (..., 3), hit (...,) bool)``.
    """
    inv = axes.T / radii[:, None]  # local = inv (p - centre)
    e = (pixel - centre[:2]) @ inv[:, :2].T
    d = inv[:, 2]
    dd = d @ d
    ed = e @ d
    disc = ed * ed - dd * (jnp.sum(e * e, -1) - 1.0)
    hit = disc > 0
    w = (-ed + jnp.sqrt(jnp.maximum(disc, 0.0))) / dd
    local = e + w[..., None] * d
    normal = (local / radii) @ axes.T
    normal = normal / jnp.maximum(jnp.linalg.norm(normal, axis=-1, keepdims=True), 1e-6)
    return w + centre[2], local, normal, hit


def _rot_y(deg):
    a = jnp.deg2rad(deg)
    c, s = jnp.cos(a), jnp.sin(a)
    return jnp.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def body_layers(layout: FaceLayout, look: dict, image_look: dict, rotation, pixel, noise: dict, no_head=None):
    """The head's surroundings at pixels: ``(depth (...,), albedo (..., 3), normal (..., 3), gloss
    (...,), is_skin (...,))``; depth is ``-inf`` where nothing is hit.

    ``rotation (3, 3)`` the head's (x' = R x); ``pixel (..., 2)`` model-frame (x, y) of each pixel's
    ray (mm: (p - t) / s in the y-up pixel frame). Five ellipsoids (model frame, mm, scaled with
    the layout's unit, y relative to the eyes' height less 30 mm): the skull (0, 33, -32) radii
    (86, 112, 100) x ``hair_volume``, hair above the ears (skin when bald or below); long hair
    (0, -45, -50), radii (95, 120 ``long_hair``, 52); the neck (0, -180, -18), radii (52, 105, 46);
    the shoulders under the neck's base in a frame turned by ``body_turn`` degrees about y, radii
    (``shoulders``, 190, 90), clothing with a neckline; a hat (the skull x 1.09 above ``hat_cut``).
    ``no_head (...,)`` bool (None: none): pixels where the head's layers (skull, long hair) are
    not drawn (where a mesh of the whole head shows its face: the ellipsoid must not cover it).
    """
    unit = layout.unit
    base_y = 0.25 * jnp.sum(layout.eyes[..., 1]) - 30.0 * unit  # the default face's eyes are at y = 30 mm
    vol = look["hair_volume"]
    body = _rot_y(image_look["body_turn"])
    neck_base = rotation @ jnp.array([0.0, base_y - 215.0 * unit, -20.0 * unit])
    centres = jnp.stack([
        rotation @ jnp.array([0.0, base_y + 33.0 * unit, -32.0 * unit]),
        rotation @ jnp.array([0.0, base_y - 45.0 * unit, -50.0 * unit]),
        rotation @ jnp.array([0.0, base_y - 180.0 * unit, -18.0 * unit]),
        neck_base + body @ jnp.array([0.0, -75.0 * unit, -15.0 * unit]),
        rotation @ jnp.array([0.0, base_y + 35.0 * unit, -34.0 * unit])])
    axes = jnp.stack([rotation, rotation, rotation, body, rotation])
    radii = unit * jnp.stack([
        jnp.array([86.0, 112.0, 100.0]) * vol,
        jnp.stack([95.0, 120.0 * jnp.maximum(look["long_hair"], 0.1), 52.0]),
        jnp.array([52.0, 105.0, 46.0]),
        jnp.stack([look["shoulders"], 190.0, 90.0]),
        jnp.array([86.0, 112.0, 100.0]) * vol * 1.09])
    depth, local, normal, hit = jax.vmap(lambda c, a, r: _ellipsoid(pixel, c, a, r))(centres, axes, radii)
    hairy = local[:2]  # strands are looked up for the two hair layers only (skull, long hair)
    strands = _lookup(noise["strands"], jnp.stack(
        [jnp.arctan2(hairy[..., 0], hairy[..., 2]) / (2 * jnp.pi) + 0.5, 0.5 + 0.5 * hairy[..., 1]], -1))[..., 0]
    hair_col = look["hair"] * (0.7 + 0.45 * jnp.clip(0.5 + 0.35 * strands, 0.0, 1.2))[..., None]
    skull_hair = (local[0, ..., 1] > -0.25 + 0.1 * strands[0]) & (look["bald"] < 0.5)
    stripes = 0.5 + 0.5 * jnp.sin(local[3, ..., 1] * 40.0 * (0.3 + look["clothes_pattern"]))
    cloth = _mix(look["clothes"], look["clothes_2"], (look["clothes_pattern"] > 0) * stripes)
    cloth = cloth * (0.85 + 0.15 * jnp.clip(_lookup(noise["mid"], local[3, ..., :2] * 0.5 + 0.5)[..., :1], -1, 1))
    neckline = ((local[3, ..., 1] > 0.97 - 0.12 * look["neckline"])
                & (jnp.abs(local[3, ..., 0]) < 0.08 + 0.2 * look["neckline"]))
    skin = look["skin"] * 0.92
    albedo = jnp.stack([
        jnp.where(skull_hair[..., None], hair_col[0], skin),
        hair_col[1],
        jnp.broadcast_to(skin, cloth.shape),
        jnp.where(neckline[..., None], skin, cloth),
        jnp.broadcast_to(look["hat_colour"], cloth.shape)])
    gloss = jnp.stack([jnp.where(skull_hair, look["hair_shine"], 0.3), jnp.full(cloth.shape[:-1], look["hair_shine"]),
                       jnp.full(cloth.shape[:-1], 0.25), jnp.full(cloth.shape[:-1], 0.15),
                       jnp.full(cloth.shape[:-1], 0.2)])
    is_skin = jnp.stack([~skull_hair, jnp.zeros_like(neckline), jnp.ones_like(neckline), neckline,
                         jnp.zeros_like(neckline)])
    present = jnp.stack([True, look["long_hair"] > 0, True, True, look["hat"] > 0])
    present = present.reshape((5,) + (1,) * (depth.ndim - 1))
    hit = hit & present
    if no_head is not None:
        hit = hit.at[:2].set(hit[:2] & ~no_head)
    hit = hit.at[4].set(hit[4] & (local[4, ..., 1] > look["hat_cut"]))
    depth = jnp.where(hit, depth, -jnp.inf)
    best = jnp.argmax(depth, axis=0)

    def pick(a):  # a[best] per pixel, as selects (a per-pixel gather is slow on CPUs)
        out = a[0]
        for k in range(1, a.shape[0]):
            out = jnp.where((best == k).reshape(best.shape + (1,) * (a.ndim - 1 - best.ndim)), a[k], out)
        return out

    return pick(depth), pick(albedo), pick(normal), pick(gloss), pick(is_skin)


# --- light and shadow ------------------------------------------------------------------------

SHADOW_RES = 96


def _light_frame(light_dir):
    up = jnp.where(jnp.abs(light_dir[1]) < 0.9, jnp.array([0.0, 1.0, 0.0]), jnp.array([1.0, 0.0, 0.0]))
    e1 = jnp.cross(up, light_dir)
    e1 = e1 / jnp.linalg.norm(e1)
    return jnp.stack([e1, jnp.cross(light_dir, e1), light_dir])


def shadow_map(points, faces, light_dir, extent):
    """The mesh ``points (N, 3)`` (rotated model frame, mm), ``faces (F, 3)`` seen from the light:
    ``(depth (R, R), covered (R, R))`` with R = ``SHADOW_RES`` over ``extent`` mm, depth the
    largest projection on ``light_dir`` (mm) per cell, by :func:`jface.render.rasterize` in the
    light's orthographic view."""
    frame = _light_frame(light_dir)
    local = points @ frame.T
    half = 0.5 * extent
    ndc = jnp.stack([local[:, 0] / half, -local[:, 1] / half, -local[:, 2] / extent], -1)
    fragments = rasterize(ndc, faces, (SHADOW_RES, SHADOW_RES))
    return -fragments.depth * extent, fragments.mask


def in_shadow(depth_map, points, light_dir, extent, bias):
    """``(...,)`` in [0, 1]: how far each point ``(..., 3)`` lies behind the light's depth map
    (:func:`shadow_map`; soft over ``bias`` mm beyond ``bias``)."""
    depth, covered = depth_map
    frame = _light_frame(light_dir)
    local = points @ frame.T
    half = 0.5 * extent
    # rasterize's pixel centres: col = (x_ndc + 1) R / 2 - 0.5
    cols = (local[..., 0] / half + 1.0) * SHADOW_RES / 2 - 0.5
    rows = (-local[..., 1] / half + 1.0) * SHADOW_RES / 2 - 0.5
    occluder = _bilinear(jnp.stack([depth, covered], -1), rows, cols)
    near = occluder[..., 0] / jnp.maximum(occluder[..., 1], 1e-3)
    return jnp.clip((near - local[..., 2] - bias) / bias, 0.0, 1.0) * (occluder[..., 1] > 0.99)


def shade(albedo, normal, gloss, image_look, sh_light, shadow):
    """Colour ``(..., 3)`` = albedo (ambient SH + key light max(n.l, 0) (1 - shadow)) + specular
    (Blinn-Phong towards the camera, +z)."""
    light = image_look["light_dir"]
    ambient = jnp.clip(sh_shading(normal, sh_light), 0.0, 2.0) * image_look["ambient"]
    lambert = jnp.maximum(normal @ light, 0.0) * (1.0 - shadow)
    key = image_look["key_light"] * image_look["light_colour"] * lambert[..., None]
    half = light + jnp.array([0.0, 0.0, 1.0])
    half = half / jnp.linalg.norm(half)
    spec = jnp.maximum(normal @ half, 0.0) ** 24 * gloss * image_look["specular"] * (1.0 - shadow) * (lambert > 0)
    return albedo * (ambient + key) + spec[..., None] * (0.5 + image_look["key_light"])


# --- background, occluders, camera -----------------------------------------------------------

BOXES = 10


def _muted(key, shape):
    """Random colours ``shape + (3,)`` as scenes have them: a grey level U(0.05, 0.95) with a
    saturation U(0, 0.6) of a random hue."""
    keys = jax.random.split(key, 3)
    grey = jax.random.uniform(keys[0], shape + (1,), minval=0.05, maxval=0.95)
    hue = jax.random.uniform(keys[1], shape + (3,))
    saturation = jax.random.uniform(keys[2], shape + (1,), maxval=0.6)
    return jnp.clip(grey + saturation * (hue - jnp.mean(hue, -1, keepdims=True)), 0.0, 1.0)


def background(key, image_look, hw, photo=None, use_photo=None):
    """A procedural background ``(H, W, 3)`` in [0, 1] (or ``photo`` where ``use_photo``).

    Kinds (``image_look["background_kind"]``): 0 an indoor scene (a wall of a smooth colour field,
    a floor / furniture band, boxes and a window), 1 clutter (many coloured boxes and discs over a
    gradient), 2 a texture (stripes / noise). All get multi-scale noise and a defocus blur.
    """
    height, width = hw
    keys = jax.random.split(key, 8)
    ys, xs = jnp.meshgrid(jnp.linspace(0, 1, height), jnp.linspace(0, 1, width), indexing="ij")
    coarse = _muted(keys[0], (4, 4))
    smooth = jax.image.resize(coarse, (height, width, 3), "linear")
    angle = jax.random.uniform(keys[1], (), maxval=2 * jnp.pi)
    c = _muted(keys[2], (2,))
    t = jnp.clip(0.5 + (xs - 0.5) * jnp.cos(angle) + (ys - 0.5) * jnp.sin(angle), 0, 1)[..., None]
    image = _mix(smooth, c[0] * (1 - t) + c[1] * t, 0.5)
    boxes = jax.random.uniform(keys[3], (BOXES, 4, 1, 1))
    colours = _muted(keys[4], (BOXES,))
    kind = image_look["background_kind"]
    count = jnp.where(kind == 1, BOXES, jnp.where(kind == 0, 4, 0))
    x0, y0, w, h = boxes[:, 0], boxes[:, 1], 0.08 + 0.45 * boxes[:, 2], 0.08 + 0.6 * boxes[:, 3]
    inside = (jnp.abs(xs - x0) < w / 2) & (jnp.abs(ys - y0) < h / 2)
    disc = ((xs - x0) / w) ** 2 + ((ys - y0) / h) ** 2 < 0.25
    order = jnp.arange(BOXES).reshape(-1, 1, 1)
    shapes = jnp.where(order % 3 == 2, disc, inside) & (order < count)
    top = jnp.max(jnp.where(shapes, order, -1), axis=0)  # the painter's algorithm: the last box wins
    shade = 0.8 + 0.4 * (xs - jnp.take(x0[:, 0, 0], jnp.maximum(top, 0)))
    image = jnp.where((top >= 0)[..., None], colours[jnp.maximum(top, 0)] * shade[..., None], image)
    stripes = 0.5 + 0.5 * jnp.sin((xs * jnp.cos(angle) + ys * jnp.sin(angle)) * (10 + 60 * c[0, 0]))
    image = jnp.where(kind == 2, _mix(image, c[1], stripes * 0.6), image)
    noise = jax.image.resize(jax.random.normal(keys[5], (height // 4, width // 4, 1)), (height, width, 1), "linear")
    image = image * (1.0 + 0.08 * noise + 0.04 * jax.random.normal(keys[6], (height, width, 1)))
    if photo is not None:
        image = jnp.where(use_photo > 0, photo, image)
    return jnp.clip(_blur(image, image_look["background_blur"] * height / 128.0), 0.0, 1.0)


def _blur(image, sigma, taps: int = 9):
    """Separable Gaussian blur of ``(H, W, C)`` with a traced ``sigma`` (pixels; 0 = none)."""
    offsets = jnp.arange(taps) - taps // 2
    weights = jnp.exp(-0.5 * (offsets / jnp.maximum(sigma, 1e-3)) ** 2)
    weights = jnp.where(sigma < 0.05, (offsets == 0).astype(weights.dtype), weights)
    weights = weights / jnp.sum(weights)
    pad = taps // 2
    # each pass's input materialised (optimization_barrier): else XLA fuses it into every tap, and
    # the scene and the first pass are computed again for each of the taps
    padded = jax.lax.optimization_barrier(jnp.pad(image, ((pad, pad), (0, 0), (0, 0)), mode="edge"))
    image = sum(weights[k] * padded[k:k + image.shape[0]] for k in range(taps))
    padded = jax.lax.optimization_barrier(jnp.pad(image, ((0, 0), (pad, pad), (0, 0)), mode="edge"))
    return sum(weights[k] * padded[:, k:k + image.shape[1]] for k in range(taps))


def occluders(image, image_look, face_box, sh_light):
    """Paint an occluder over ``image (H, W, 3)`` (kind ``image_look["occluder"]``: 0 none, 1 a
    hand, 2 a microphone, 3 an object) placed relative to ``face_box`` = (centre column, centre row,
    size) in pixels. Returns (image, occluder coverage (H, W))."""
    height, width = image.shape[:2]
    rows, cols = _pixel_grid(height, width)
    kind = image_look["occluder"]
    size = image_look["occluder_size"] * face_box[2]
    centre = face_box[:2] + image_look["occluder_pos"] * face_box[2] * jnp.array([1.0, -1.0])
    angle = image_look["occluder_angle"]
    ca, sa = jnp.cos(angle), jnp.sin(angle)
    dx, dy = cols - centre[0], rows - centre[1]
    a = (ca * dx + sa * dy) / size  # along the occluder
    b = (-sa * dx + ca * dy) / size
    colour = image_look["occluder_colour"]
    # hand: a palm and four fingers pointing along +a
    palm = (a / 0.42) ** 2 + (b / 0.36) ** 2 < 1.0
    fingers = jnp.zeros_like(palm)
    for k, offset in enumerate((-0.27, -0.09, 0.09, 0.27)):
        length = 0.45 + 0.12 * (k in (1, 2))
        along = jnp.clip(a - 0.25, 0.0, length)
        fingers = fingers | ((a - 0.25 - along) ** 2 + (b - offset) ** 2 < 0.085 ** 2)
    hand = palm | fingers
    skin = jnp.array([0.85, 0.62, 0.50]) * (0.45 + 0.6 * colour[0])
    # microphone: a handle and a meshed ball
    ball = a ** 2 + b ** 2 < 0.2 ** 2
    mic = ((jnp.abs(b) < 0.07) & (a > -1.2) & (a < 0.0)) | ball
    mesh = 0.8 + 0.2 * jnp.sin(40 * a) * jnp.sin(40 * b)
    mic_col = jnp.where(ball[..., None], jnp.array([0.55, 0.55, 0.58]) * mesh[..., None], jnp.array([0.08, 0.08, 0.09]))
    # object: a rounded box
    q = jnp.abs(jnp.stack([a, b], -1)) - jnp.array([0.5, 0.3])
    box = jnp.linalg.norm(jnp.maximum(q, 0.0), axis=-1) + jnp.minimum(jnp.max(q, -1), 0.0) < 0.08
    cover = jnp.where(kind == 1, hand, jnp.where(kind == 2, mic, jnp.where(kind == 3, box, False)))
    flat = jnp.where(kind == 1, skin, colour)
    col = jnp.where((kind == 2), mic_col, jnp.broadcast_to(flat, image.shape))
    light = 0.75 + 0.35 * jnp.clip(-b, -1.0, 1.0)[..., None] * jnp.clip(sh_light[2, 0] + 0.5, 0, 1)
    image = jnp.where(cover[..., None], jnp.clip(col * light, 0, 1), image)
    return image, cover.astype(image.dtype)


def compose(layout: FaceLayout, look: dict, image_look: dict, rotation, rays, face, face_depth, face_covered,
            face_box, sh_light, photo=None, use_photo=None, *, body: bool = True, no_head=None):
    """The scene around a lit ``face (H, W, 3)`` (0 where not ``face_covered (H, W)``), per item:
    the :func:`background` (``photo`` where ``use_photo``), the :func:`body_layers` lit by
    :func:`shade` and depth-tested against ``face_depth (H, W)`` (rotated model z, mm, larger =
    nearer; ``rotation``, ``rays (H, W, 2)``, ``no_head``: as :func:`body_layers` takes them;
    ``body`` False: no body), then the :func:`occluders` (``face_box``). Returns (image (H, W, 3) in [0, 1] before the
    camera, the face's visible pixels (H, W) bool: covered, nearest and not occluded)."""
    image_key = noise_key(image_look["key"])
    image = background(jax.random.fold_in(image_key, 1), image_look, face.shape[:2], photo, use_photo)
    visible = face_covered
    if body:
        noise = face_noise(look["key"])
        depth, b_albedo, b_normal, b_gloss, _ = body_layers(layout, look, image_look, rotation, rays, noise, no_head)
        image = jnp.where((depth > -jnp.inf)[..., None],
                          shade(b_albedo, b_normal, b_gloss, image_look, sh_light, 0.0), image)
        visible = visible & (face_depth >= depth)
    image = jnp.where(visible[..., None], face, image)
    image, cover = occluders(image, image_look, face_box, sh_light)
    return jnp.clip(image, 0.0, 1.0), visible & (cover < 0.5)


BLUR_TAPS = 9


def _blur_kernels(sigma, motion, angle):
    """Per image ``(B, T, T)`` kernels (T = ``BLUR_TAPS``): a Gaussian of ``sigma`` swept along a
    motion line of ``motion`` pixels at ``angle``, normalised."""
    offsets = jnp.arange(BLUR_TAPS, dtype=jnp.float32) - BLUR_TAPS // 2
    yy, xx = jnp.meshgrid(offsets, offsets, indexing="ij")
    steps = jnp.linspace(-0.5, 0.5, 5)
    width = jnp.maximum(sigma, 0.35)[:, None, None]
    kernel = 0.0
    for step in steps:
        cx = (step * motion * jnp.cos(angle))[:, None, None]
        cy = (step * motion * jnp.sin(angle))[:, None, None]
        kernel = kernel + jnp.exp(-0.5 * ((xx - cx) ** 2 + (yy - cy) ** 2) / width ** 2)
    return kernel / jnp.sum(kernel, axis=(1, 2), keepdims=True)


def _camera_blur(image, sigma, motion, angle):
    """One image ``(H, W, 3)`` through its :func:`_blur_kernels` kernel. Without motion the kernel is
    a Gaussian, which separates into a column and a row pass (2 T taps instead of T^2)."""
    pad = BLUR_TAPS // 2
    padded = jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")

    def gaussian(_):
        offsets = jnp.arange(BLUR_TAPS, dtype=jnp.float32) - pad
        taps = jnp.exp(-0.5 * offsets ** 2 / jnp.maximum(sigma, 0.35) ** 2)
        taps = taps / jnp.sum(taps)
        rows = sum(taps[k] * padded[k:k + image.shape[0]] for k in range(BLUR_TAPS))
        return sum(taps[k] * rows[:, k:k + image.shape[1]] for k in range(BLUR_TAPS))

    def swept(_):
        kernel = _blur_kernels(sigma[None], motion[None], angle[None])[0]
        weights = jnp.repeat(kernel[:, :, None, None], 3, axis=3)  # (T, T, 1, 3)
        return jax.lax.conv_general_dilated(padded[None], weights, (1, 1), "VALID",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=3)[0]

    return jax.lax.cond(motion > 0, swept, gaussian, None)


def camera_effects(images, keys, image_look):
    """The camera on a batch ``images (B, H, W, 3)`` in [0, 1] (``keys (B,)``, ``image_look`` rows
    of :func:`sample_images`): defocus and motion blur (one per-image kernel), low resolution,
    white balance, exposure, contrast, saturation, greyscale, gamma, vignetting, sensor noise."""
    count, height, width, _ = images.shape
    scale = height / 128.0
    images = jax.lax.map(lambda item: _camera_blur(*item), (images, image_look["blur"] * scale,
                                                            image_look["motion"] * scale, image_look["motion_angle"]))
    small = (max(int(height * 0.4), 8), max(int(width * 0.4), 8))
    low = jax.image.resize(jax.image.resize(images, (count,) + small + (3,), "linear", antialias=True), images.shape,
                           "linear")
    look = {k: v[:, None, None, None] if v.ndim == 1 else v[:, None, None, :] for k, v in image_look.items()
            if k != "key"}
    images = jnp.where(look["low_res"] > 0, low, images)
    images = images * look["white_balance"] * look["exposure"]
    mean = jnp.mean(images, axis=(1, 2, 3), keepdims=True)
    images = (images - mean) * look["contrast"] + mean
    grey = jnp.sum(images * jnp.array([0.299, 0.587, 0.114]), -1, keepdims=True)
    images = grey + (images - grey) * look["saturation"]
    images = jnp.where(look["greyscale"] > 0, jnp.broadcast_to(grey, images.shape), images)
    images = jnp.clip(images, 0.0, 1.0) ** look["gamma"]
    rows, cols = _pixel_grid(height, width)
    radius = ((rows - height / 2) ** 2 + (cols - width / 2) ** 2) / (0.5 * (height ** 2 + width ** 2))
    images = images * (1.0 - look["vignette"] * radius[None, :, :, None])
    # one key at a time: unsafe_rbg's normal under vmap gives other numbers for other batch sizes
    noise = jax.lax.map(lambda key: jax.random.normal(key, (height, width, 3)), keys)
    return jnp.clip(images + noise * look["noise"] / 255.0, 0.0, 1.0)


def _bilinear(image, rows, cols):
    """``image (H, W, C)`` at fractional ``rows``, ``cols`` (...), clamped: ``(..., C)``."""
    r0 = jnp.clip(jnp.floor(rows).astype(jnp.int32), 0, image.shape[0] - 2)
    c0 = jnp.clip(jnp.floor(cols).astype(jnp.int32), 0, image.shape[1] - 2)
    fr = jnp.clip(rows - r0, 0.0, 1.0)[..., None]
    fc = jnp.clip(cols - c0, 0.0, 1.0)[..., None]
    top = image[r0, c0] * (1 - fc) + image[r0, c0 + 1] * fc
    bottom = image[r0 + 1, c0] * (1 - fc) + image[r0 + 1, c0 + 1] * fc
    return top * (1 - fr) + bottom * fr


def jpeg(images, qualities):
    """A JPEG round trip (Pillow, host side) of each of ``images (M, H, W, 3)`` uint8 whose
    ``qualities (M,)`` entry is > 0 (1-95). Returns a new array."""
    import io

    from PIL import Image

    out = np.array(images, copy=True)
    for i, quality in enumerate(np.asarray(qualities)):
        if quality > 0:
            buffer = io.BytesIO()
            Image.fromarray(out[i]).save(buffer, format="JPEG", quality=int(quality))
            buffer.seek(0)
            out[i] = np.asarray(Image.open(buffer).convert("RGB"))
    return out


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def load_backgrounds(folder) -> list:
    """The image files under ``folder`` (recursive, sorted); raises ``ValueError`` naming the folder
    when it is missing or holds no image."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ValueError(f"backgrounds: {root} is not a folder of images")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise ValueError(f"backgrounds: no image ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    return files


def background_crops(files, rng: np.random.Generator, count: int, size: int) -> np.ndarray:
    """``(count, size, size, 3)`` float32 in [0, 1]: random square crops (side 30-100 % of the short
    edge, random position, random mirror) of random files, resized with Pillow."""
    from PIL import Image

    out = np.zeros((count, size, size, 3), np.float32)
    for i in range(count):
        path = files[int(rng.integers(len(files)))]
        try:
            with Image.open(path) as handle:
                image = handle.convert("RGB")
        except OSError as exc:
            raise ValueError(f"backgrounds: cannot read {path} ({exc})") from exc
        short = min(image.size)
        side = max(int(short * rng.uniform(0.3, 1.0)), 1)
        x0 = int(rng.integers(0, image.size[0] - side + 1))
        y0 = int(rng.integers(0, image.size[1] - side + 1))
        crop = image.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.BILINEAR)
        array = np.asarray(crop, np.float32) / 255.0
        out[i] = array[:, ::-1] if rng.uniform() < 0.5 else array
    return out
