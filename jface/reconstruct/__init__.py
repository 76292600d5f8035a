"""``python -m jface.reconstruct IMAGES_OR_DIRS... -o DIR``: DECA reconstruction of photographs.

Pipeline (DECA's ``demos/demo_reconstruct.py``): 68 landmarks (side file next to the image, or
``--detector``) -> DECA's test crop (``TestData`` in ``decalib/datasets/datasets.py``: landmark box
x 1.1 x 1.25, similarity warp to 224 x 224, :func:`jface.data.crops.deca_crop`) -> batched,
jit-compiled :func:`jface.deca.encode` -> :func:`jface.deca.decode` -> exports. Codes come from
converted DECA weights or a ``train.deca`` run folder (``--weights``; loaded from its checkpoints
alone by :func:`jface.training.deca.load_run`, no data generated), from randomly initialised
networks (a loud warning: the results are meaningless; this only exercises the pipeline), from a
gradient-descent fit of FLAME's 68 landmarks to the input landmarks (``--fit-landmarks``,
:func:`fit_codes`: shape, expression, pose and camera; mean albedo, white light), or from the
analysis-by-synthesis fit of :func:`jface.fit.fit_flame` (``--fit``: a landmark stage, then a
photometric stage that also fits albedo and SH light to the photo inside the face; both start from
``--weights``' network codes when given, else from the mean face).

Per image ``DIR/<identity>/<stem>/`` holds:

* ``codes.npz`` / ``codes.json``: DECA's codes (shape 100, tex 50, exp 50, pose 6 = [global, jaw]
  axis-angle, cam 3 = (s, t_x, t_y), light 9 x 3, detail 128 when present);
* ``flame.npz`` / ``flame.json``: the FLAME 2020 layout (shape 300, expression 100, zero padded;
  global / neck / jaw / eye poses), :func:`jface.export.pad_flame_parameters`;
* ``pose.json``: the head pose as yaw / pitch / roll in degrees (:func:`pose_angles`, which states
  the convention) and the rotation matrix;
* ``camera.json``: the orthographic camera as 4 x 4 matrices (:func:`jface.export.camera_record`):
  ``deca_ndc_matrix`` P with NDC = P [X; 1] = trans_verts (``batch_orth_proj`` and the y/z flip),
  the OpenGL (y-up)
  projection, the NDC -> crop pixel map and the crop -> original image similarity;
* ``coarse.obj`` (+ ``coarse.mtl``, ``coarse.png`` texture = the input sampled in UV inside the
  face mask where the surface is visible in the photo (the vertices that win a pixel of the
  z-buffer and face the camera), model albedo or grey 0.7 elsewhere, ``coarse_normals.png``) and
  ``coarse.ply``; ``uv_visibility.png`` that visibility in UV;
* ``detail.obj`` (+ mtl/png; one vertex per valid UV pixel, DECA's ``util.upsample_mesh``) and
  ``detail.ply`` (vertex colours);
* ``displacement.npy/png`` (D + Δ, metres; PNG scaled from [-0.01, 0.01]), ``normals.npy/png``
  (UV detail normals, n/2 + 1/2; the coarse normals when there is no detail stage);
* ``depth.npy`` / ``depth.png``: the visible surface's height towards the camera in crop pixels
  (-z of DECA's NDC x 112, the scale of the crop's x and y; NaN on the background), the PNG near =
  white; ``pncc.png``: 3DDFA's projected normalised coordinate code (the mean shape's x, y, z
  scaled to [0, 1] as vertex colours, :func:`pncc_colours`, rendered with the fitted mesh);
* the panels, each captioned below the picture: ``overlay.png`` (the render, with its albedo and
  light, blended at 60 % over the crop inside the rendered head, a wire of UV iso-lines over the
  surface, input landmarks green, model landmarks as red contours, the pose as text and a 3-axis
  gizmo), ``shape.png`` and ``shape_detail.png`` (DECA's grey shape renders), ``depth.png``,
  ``pncc.png`` and ``sheet.png`` (crop, overlay, shape, depth, PNCC side by side);
* ``landmarks.json`` (model landmarks in NDC, crop pixels and original-image pixels).

``--transfer SRC``: expression and jaw pose of SRC replace those of every other image (DECA's
``demo_transfer``); the animated results go to ``DIR/<identity>/<stem>_transfer/``.

Bad input (:mod:`jface.reconstruct.inputs`): a missing or unreadable input, model or weight file,
or an output folder that is a file or cannot be written, is one line ``error: ...`` and exit
status 2 before any work. A failure of one image (unreadable, no landmarks, a malformed landmark
file, a degenerate landmark box, a fit that diverged, outputs that cannot be written) skips that
image: the others are processed and the summary names every skipped file and why. Exit status 0
when at least one image was processed; 1 when every image was skipped (nothing was produced).
The progress bar counts images; the last line gives the throughput after compilation.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jface import export, flame, geometry
from jface.arrays import tuned_jit
from jface.data import detect
from jface.data.crops import deca_crop
from jface.deca import decode, decode_geometry_batch, encode, load_fixed_displacement
from jface.deca import networks as nets
from jface.deca.render import render_shape
from jface.errors import ModelFileError
from jface.files.weights import load_variables
from jface.fit import FitConfig, fit_flame
from jface.models import default_flame_model, load_flame, load_model
from jface.models.morphable import uv_face_eye_mask
from jface.reconstruct import draw, video
from jface.reconstruct.inputs import (
    SKIPPED_ERRORS,
    InputError,
    InputItem,
    LandmarkFileError,
    SkipImage,
    SkipReport,
    check_input_file,
    collect_inputs,
    describe_error,
    load_face,
    load_input_file,
    make_detector,
    prepare_output_dir,
    prepared_batches,
    progress_bar,
)
from jface.render import interpolate, layout_fragments, world2uv
from jface.sampling import grid_sample
from jface.training.checkpoint import RunFormatError
from jface.training.deca import load_run
from jface.training.distributed import enable_compilation_cache
from jface.training.state import init_network

__all__ = [
    "RANDOM_WEIGHTS_WARNING",
    "load_weights",
    "load_train_deca",
    "random_weights",
    "crop_faces",
    "encode_batch",
    "fit_codes",
    "transfer_codes",
    "pose_angles",
    "POSE_CONVENTION",
    "pncc_colours",
    "decode_batch",
    "write_outputs",
    "run",
    "main",
]

RANDOM_WEIGHTS_WARNING = (
    "\n" + "!" * 78 + "\n"
    "!! WARNING: no --weights given: DECA's networks are RANDOMLY INITIALISED.\n"
    "!! Every reconstruction below is MEANINGLESS; this run only exercises the pipeline.\n"
    "!! Convert DECA's release with `python -m jface.weights convert deca deca_model.tar -o out.npz`\n"
    "!! and pass --weights out.npz, or use --fit (or --fit-landmarks).\n" + "!" * 78 + "\n"
)

CODE_NAMES = ("shape", "tex", "exp", "pose", "cam", "light", "detail")


# ------------------------------------------------------------------------------------------------
# Weights


def random_weights(seed: int = 0, *, detail: bool = True) -> dict:
    """Randomly initialised DECA networks ``{'E_flame', 'E_detail', 'D_detail'}`` (plumbing only)."""
    modules = {"E_flame": nets.ResNetEncoder(236)}
    if detail:
        modules.update(E_detail=nets.ResNetEncoder(128), D_detail=nets.DetailGenerator())
    examples = {"E_flame": jnp.zeros((1, 224, 224, 3)), "E_detail": jnp.zeros((1, 224, 224, 3)),
                "D_detail": jnp.zeros((1, 181))}
    keys = jax.random.split(jax.random.PRNGKey(seed), len(modules))
    # compiled (an eager ResNet-50 init runs op by op and takes minutes on a small CPU), unoptimised on CPU
    return {name: dict(init_network(module.init, key, examples[name]))
            for (name, module), key in zip(modules.items(), keys)}


def load_weights(path) -> dict:
    """``--weights`` file: a converted DECA weight file (``python -m jface.weights convert deca``).
    Returns DECA's params dict (:mod:`jface.deca.model`). Folders: :func:`load_train_deca`."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"--weights {path}: a folder; use load_train_deca for train.deca runs")
    tree = load_variables(path, kind="deca")
    if "E_flame" not in tree:
        raise InputError(f"--weights {path}: expected DECA weights with an 'E_flame' entry, got {sorted(tree)}")
    return jax.tree_util.tree_map(jnp.asarray, tree)


def load_train_deca(path, *, model=None) -> tuple:
    """A ``train.deca`` run folder (``--weights RUN_DIR``) -> ``(params, encode, detail_generator)``.

    Read from the run's checkpoints alone (:func:`jface.training.deca.load_run`: the config, the
    face model check, the code whitening and the parameters of the latest stage present, detail >
    coarse > pretrain); no training data is generated. ``encode(images (B, 224, 224, 3) in [0, 1])
    -> codes`` is jit-compiled, with the detail code, both encoders seeing the crops at the run's
    encoder size as in training; ``detail_generator`` is the run's F_d module for
    :func:`jface.deca.decode`. ``model``: the FLAME model to decode with (checked against the one
    the run was trained on; default: that one). A run saved without its metadata raises
    :class:`InputError` naming what is missing.
    """
    run = _load_run(path, model)
    return run.params, run.encode, run.generator


def _load_run(path, model):
    try:
        return load_run(path, model=model)
    except (RunFormatError, FileNotFoundError) as err:
        raise InputError(f"--weights {path}: {err}") from None


# ------------------------------------------------------------------------------------------------
# Crops, encoding, fitting, transfer


def crop_faces(faces):
    """``[(image uint8 (H, W, 3), landmarks (68, 2) pixels)]`` -> DECA's test crops.

    Returns ``crops (B, 224, 224, 3)`` float32 RGB in [0, 1], ``landmarks_ndc (B, 68, 2)`` (the
    input landmarks in the crop's NDC, p / 224 * 2 - 1 as DECA's labels) and the list of
    :class:`jface.data.crops.CropTransform` (image pixels -> crop pixels).
    """
    crops, ndc, transforms = [], [], []
    for image, landmarks in faces:
        crop, lmk, transform = deca_crop(np.asarray(image, np.float64) / 255.0, landmarks, test=True)
        crops.append(crop)
        ndc.append(lmk[:, :2])
        transforms.append(transform)
    return np.stack(crops).astype(np.float32), np.stack(ndc).astype(np.float32), transforms


@jax.jit
def _encode(params, crops):
    return encode(params, crops)


def encode_batch(params, crops):
    """jit-compiled :func:`jface.deca.encode` -> numpy code dict (``light`` (B, 9, 3))."""
    return {k: np.asarray(v) for k, v in _encode(params, jnp.asarray(crops, jnp.float32)).items()}


def _landmarks2d(model, codes):
    return decode_geometry_batch(model, codes)["landmarks2d"]


@partial(jax.jit, static_argnames=("num_steps",))
def _fit(model, codes0, landmarks_ndc, prior_weight, num_steps):
    optimiser = optax.adam(0.01)
    names = ("shape", "exp", "pose", "cam")
    # per-group step sizes: coefficients in units of their prior std, poses in radians, cam s x 10
    scales = {"shape": 1.0, "exp": 1.0, "pose": 0.5, "cam": jnp.asarray([5.0, 0.1, 0.1])}

    def objective(z):
        codes = {k: codes0[k] + scales[k] * z[k] for k in names}
        err = _landmarks2d(model, codes) - landmarks_ndc
        prior = jnp.sum(jnp.square(codes["shape"])) + jnp.sum(jnp.square(codes["exp"]))
        return jnp.sum(jnp.square(err)) + prior_weight * prior

    def step(carry, _):
        z, state = carry
        loss, grad = jax.value_and_grad(objective)(z)
        updates, state = optimiser.update(grad, state, z)
        return (optax.apply_updates(z, updates), state), loss

    z = {k: jnp.zeros_like(codes0[k]) for k in names}
    (z, _), losses = jax.lax.scan(step, (z, optimiser.init(z)), None, length=num_steps)
    return {k: codes0[k] + scales[k] * z[k] for k in names}, losses


def fit_codes(model, landmarks_ndc, codes0=None, *, steps: int = 400, prior_weight: float = 1e-4):
    """Fit DECA's shape / exp / pose / cam to 68 landmarks by gradient descent (optax Adam).

    ``landmarks_ndc (B, 68, 2)`` in the crop's NDC (x right, y down); the model's ``landmarks2d``
    (17 dynamic contour + 51 static points, ``FLAME.forward``) are projected with DECA's camera
    (``batch_orth_proj``).
    The objective is the summed squared NDC error plus ``prior_weight`` (||shape||^2 + ||exp||^2).
    ``codes0`` (e.g. an encoder's output) is the starting point; by default zeros with the camera
    scale and translation from the landmarks' spread and centre. Other codes (tex, light, detail)
    pass through. Returns ``(codes, losses)``.
    """
    landmarks_ndc = np.asarray(landmarks_ndc, np.float32)
    if landmarks_ndc.ndim != 3 or landmarks_ndc.shape[1:] != (68, 2) or not np.all(np.isfinite(landmarks_ndc)):
        raise ValueError(f"landmarks_ndc: expected finite (B, 68, 2), got {landmarks_ndc.shape}")
    batch = landmarks_ndc.shape[0]
    if codes0 is None:
        mean_lmk = np.asarray(flame.forward(model, jnp.zeros(100), jnp.zeros(50), jnp.zeros(6))["landmarks2d"])
        mean_xy = mean_lmk[:, :2] * np.array([1.0, -1.0])  # world y up -> NDC y down, before scaling
        spread_model = np.std(mean_xy, axis=0).mean()
        cams = []
        for lmk in landmarks_ndc:
            s = float(np.std(lmk, axis=0).mean() / spread_model)
            t = (lmk.mean(0) / s - mean_xy.mean(0)) * np.array([1.0, -1.0])
            cams.append([s, t[0], t[1]])
        codes0 = {"shape": np.zeros((batch, 100)), "exp": np.zeros((batch, 50)), "pose": np.zeros((batch, 6)),
                  "cam": np.asarray(cams), "tex": np.zeros((batch, 50)), "light": np.zeros((batch, 9, 3))}
        codes0["light"][:, 0, :] = 3.0  # a flat white ambient light for the renders
    codes0 = {k: np.asarray(v, np.float32) for k, v in codes0.items()}
    fitted, losses = _fit(model, {k: jnp.asarray(codes0[k]) for k in ("shape", "exp", "pose", "cam")},
                          jnp.asarray(landmarks_ndc), jnp.float32(prior_weight), int(steps))
    codes = dict(codes0)
    codes.update({k: np.asarray(v) for k, v in fitted.items()})
    return codes, np.asarray(losses)


def transfer_codes(target, source):
    """DECA's ``demo_transfer``: ``target`` codes (B, ...) with ``exp`` and the jaw pose
    (``pose[:, 3:]``) replaced by those of ``source`` (one item, no batch axis). Everything else
    (identity, global pose, camera, texture, light, detail code) is the target's."""
    out = {k: np.array(v, copy=True) for k, v in target.items()}
    batch = out["exp"].shape[0]
    out["exp"] = np.broadcast_to(np.asarray(source["exp"]), out["exp"].shape).copy()
    out["pose"][:, 3:] = np.broadcast_to(np.asarray(source["pose"])[3:], (batch, 3))
    return out


# ------------------------------------------------------------------------------------------------
# Pose and the projected normalised coordinate code

POSE_CONVENTION = (
    "degrees; FLAME's global pose (codes pose[:3], axis-angle) as R = Rz(roll) Ry(yaw) Rx(pitch) "
    "(jface.geometry.matrix_to_euler) in FLAME's world frame (x = the head's left = image right, "
    "y up, z out of the face towards the camera): yaw about y, positive = the face turns towards "
    "the image's right (the subject's left); pitch about x, positive = the face tilts down (chin "
    "towards the chest); roll about z, positive = the top of the head tilts towards the image's "
    "left (counter-clockwise in the picture)"
)


def pose_angles(global_pose) -> dict:
    """FLAME's global pose (DECA's ``pose[:3]``, axis-angle in radians) -> ``{'yaw', 'pitch',
    'roll'}`` in degrees and the ``rotation`` matrix (3, 3); :data:`POSE_CONVENTION` states the
    axes and signs (a Tait-Bryan decomposition R = Rz(roll) Ry(yaw) Rx(pitch), whose yaw is DECA's
    ``rot_mat_to_euler`` angle of the dynamic contour, ``decalib/models/lbs.py``)."""
    global_pose = np.asarray(global_pose, np.float64)
    if global_pose.shape != (3,) or not np.all(np.isfinite(global_pose)):
        raise ValueError(f"global_pose: expected a finite axis-angle (3,), got {global_pose.shape}")
    rotation, angles = _rotation_and_euler(global_pose)
    pitch, yaw, roll = np.degrees(np.asarray(angles, np.float64))
    return {"yaw": float(yaw), "pitch": float(pitch), "roll": float(roll), "rotation": np.asarray(rotation)}


@jax.jit
def _rotation_and_euler(global_pose):
    # one small program (op-by-op dispatch of the same functions took ~1 s on a first image)
    rotation = geometry.axis_angle_to_matrix(global_pose)
    return rotation, geometry.matrix_to_euler(rotation)


def pncc_colours(model) -> jax.Array:
    """3DDFA's normalised coordinate code of a mesh model: the mean shape's (template's) vertex
    coordinates scaled per axis to [0, 1], ``(V, 3)`` float32 (x -> red, y -> green, z -> blue;
    3DDFA_V2's ``utils/pncc.py``). Rendered with a fitted mesh it is the PNCC image."""
    template = jnp.asarray(model.v_template, jnp.float32)
    low, high = template.min(0), template.max(0)
    return (template - low) / jnp.maximum(high - low, 1e-12)


def _vertex_visibility(fragments, faces, transformed_normals):
    """Per vertex 1.0 where it is a corner of a face that wins a pixel of the z-buffer and its
    normal faces the camera (NDC normal z < -0.05, DECA's ``pos_mask`` threshold in
    ``decalib/utils/renderer.py``), else 0. ``(V,)``."""
    num_faces = faces.shape[0]
    won = jnp.where(fragments.face_index >= 0, fragments.face_index, num_faces).reshape(-1)
    face_seen = jnp.zeros(num_faces + 1, jnp.float32).at[won].set(1.0)[:num_faces]
    seen = jnp.zeros(transformed_normals.shape[0], jnp.float32).at[faces.reshape(-1)].max(
        jnp.repeat(face_seen, 3))
    return seen * (transformed_normals[:, 2] < -0.05).astype(jnp.float32)


# ------------------------------------------------------------------------------------------------
# Decoding and the per-image products


def _decode_products(params, model, codes, crops, fixed_displacement, uv_layout, image_hw=(224, 224),
                     detail_generator=None):
    # One rasterization of the heads (decode's render) serves every image product below, and the UV
    # layout's comes rasterized from outside (``uv_layout``): no rasterizer is compiled twice.
    out = decode(params, model, codes, image_hw=image_hw, fixed_displacement=fixed_displacement,
                 detail_generator=detail_generator, uv_layout=uv_layout)
    faces = jnp.asarray(model.faces, jnp.int32)
    uv_size = out["albedo"].shape[1:3]
    uv_mask = uv_face_eye_mask(model, crops.dtype, size=uv_size)
    has_albedo = model.albedo_mean is not None and "tex" in codes
    ncc = pncc_colours(model)

    def per_item(o, crop):
        fragments = o["fragments"]
        visible = _vertex_visibility(fragments, faces, o["transformed_normals"])
        # one UV rasterization for every attribute: NDC position, visibility (, coarse normals)
        attributes = [o["trans_verts"], visible[:, None].astype(o["trans_verts"].dtype)]
        if "uv_detail_normals" not in o:
            attributes.append(o["normals"])
        uv = world2uv(jnp.concatenate(attributes, -1), faces, model.uv_coords, model.uv_faces, uv_size,
                      layout=uv_layout)
        uv_visible = (uv[..., 3] > 0.5).astype(crop.dtype)
        uv_gt = grid_sample(crop, uv[..., :2])
        fill = o["albedo"] if has_albedo else jnp.full(uv_gt.shape, 0.7, uv_gt.dtype)
        keep = (uv_mask * uv_visible)[..., None]
        texture = uv_gt * keep + fill * (1.0 - keep)
        shape = render_shape(o["verts"], o["trans_verts"], faces, image_hw=image_hw, fragments=fragments)
        result = {"uv_texture_gt": texture, "uv_visibility": uv_visible, "shape_images": shape["images"],
                  "depth_images": jnp.where(fragments.mask > 0, fragments.depth, jnp.nan),
                  "pncc_images": interpolate(fragments, ncc, faces), "coverage": fragments.mask}
        if "uv_detail_normals" in o:
            normal_images = grid_sample(o["uv_detail_normals"], o["grid"]) * o["alpha_images"]
            detail = render_shape(o["verts"], o["trans_verts"], faces, image_hw=image_hw,
                                  detail_normal_images=normal_images, fragments=fragments)
            result["shape_detail_images"] = detail["images"]
        else:
            result["uv_coarse_normals"] = uv[..., 4:7]
        return result

    keep = ("verts", "trans_verts", "normals", "transformed_normals", "albedo", "grid", "alpha_images",
            "uv_detail_normals", "fragments")
    extra = jax.vmap(per_item)({k: out[k] for k in keep if k in out}, crops)
    out.update(extra)
    out.pop("fragments", None)
    return out


# compiled on every start and run a few times: on CPU with LLVM's optimisation off (its compile is
# most of a first image's wait; it runs ~0.15 s longer per image, less than writing one image's files
# takes; BUILD_NOTES: reconstruct's first output)
_decode = tuned_jit(_decode_products, run_once=True, static_argnames=("image_hw", "detail_generator"))


def _uv_size(model, codes) -> tuple:
    """The UV size of :func:`jface.deca.decode`'s maps: the albedo's, else the face/eye mask's, else 256²."""
    if model.albedo_mean is not None and "tex" in codes:
        return tuple(int(n) for n in np.shape(model.albedo_mean)[:2])
    if model.uv_face_eye_mask is not None:
        return tuple(int(n) for n in np.shape(model.uv_face_eye_mask)[:2])
    return (256, 256)


def decode_batch(params, model, codes, crops, fixed_displacement=None, detail_generator=None):
    """jit-compiled :func:`jface.deca.decode` plus the export products (UV texture from the crop
    where the surface is visible (``uv_visibility``), grey shape renders, ``depth_images`` (DECA
    NDC z, NaN on the background), ``pncc_images``, ``coverage``); returns a numpy dict. With
    ``params['D_detail']`` and no detail code (landmark fit without E_detail) the detail code is
    zero."""
    codes = {k: jnp.asarray(v) for k, v in codes.items()}
    if "D_detail" not in params:
        codes.pop("detail", None)
    elif "detail" not in codes:
        codes["detail"] = jnp.zeros((codes["shape"].shape[0], 128), jnp.float32)
    out = _decode(params, model, codes, jnp.asarray(crops, jnp.float32),
                  None if fixed_displacement is None else jnp.asarray(fixed_displacement, jnp.float32),
                  layout_fragments(np.asarray(model.uv_coords, np.float32), np.asarray(model.uv_faces, np.int32),
                                   _uv_size(model, codes)),
                  detail_generator=detail_generator)
    return {k: np.asarray(v) for k, v in out.items() if hasattr(v, "shape")}


def _ndc_to_crop_pixels(ndc, size=224):
    """Landmark NDC -> 0-based crop pixels with the label convention p / 224 * 2 - 1 (DECA's
    ``decalib/datasets/vggface.py``)."""
    return (np.asarray(ndc, np.float64)[..., :2] + 1.0) * size / 2.0


OVERLAY_OPACITY = 0.6


def write_outputs(folder, model, codes_b, out_b, crop, landmarks_ndc, transform, table, label="reconstruction"):
    """Write every product of one image into ``folder`` (the module docstring's list); returns
    ``{name: path}``. ``label``: where the codes came from, the first word of every caption."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    codes_np = {k: np.asarray(v, np.float32) for k, v in codes_b.items()}
    np.savez(folder / "codes.npz", **codes_np)
    paths["codes_npz"] = folder / "codes.npz"
    paths["codes_json"] = export.save_json(folder / "codes.json", codes_np)
    pose = codes_np["pose"]
    flame = export.pad_flame_parameters(codes_np["shape"], codes_np["exp"], pose)
    np.savez(folder / "flame.npz", **flame)
    paths["flame_npz"] = folder / "flame.npz"
    paths["flame_json"] = export.save_json(folder / "flame.json", flame)
    camera = export.camera_record(codes_np["cam"], crop.shape[:2])
    camera["crop_from_image"] = transform.matrix().tolist()
    camera["note_crop_from_image"] = "0-based pixel (x, y, 1): crop = crop_from_image @ image (DECA test crop)"
    paths["camera"] = export.save_json(folder / "camera.json", camera)

    verts = out_b["verts"]
    faces = np.asarray(model.faces)
    uv_coords, uv_faces = np.asarray(model.uv_coords), np.asarray(model.uv_faces)
    texture = np.clip(out_b["uv_texture_gt"], 0.0, 1.0)
    normal_map = out_b.get("uv_detail_normals", out_b.get("uv_coarse_normals"))
    for p in export.write_obj(folder / "coarse.obj", verts, faces, uv_coords=uv_coords, uv_faces=uv_faces,
                              texture=texture, normal_map=normal_map):
        paths[p.name] = p
    paths["coarse.ply"] = export.write_ply(folder / "coarse.ply", verts, faces)[0]

    displacement = out_b.get("displacement_map")
    if displacement is None:
        displacement = np.zeros(texture.shape[:2] + (1,), np.float32)
    displacement = displacement[..., 0] if displacement.ndim == 3 else displacement
    dense_v, dense_f, dense_c = export.upsample_mesh(verts, faces, table, displacement, texture)
    dense_uv = np.stack([(table.cols + 0.5) / table.uv_hw[1], 1.0 - (table.rows + 0.5) / table.uv_hw[0]], -1)
    for p in export.write_obj(folder / "detail.obj", dense_v, dense_f, uv_coords=dense_uv, uv_faces=dense_f,
                              texture=texture):
        paths[p.name] = p
    paths["detail.ply"] = export.write_ply(folder / "detail.ply", dense_v, dense_f, vertex_colors=dense_c)[0]

    np.save(folder / "displacement.npy", displacement.astype(np.float32))
    paths["displacement_npy"] = folder / "displacement.npy"
    paths["displacement_png"] = export.save_png(folder / "displacement.png", displacement, (-0.01, 0.01))
    np.save(folder / "normals.npy", normal_map.astype(np.float32))
    paths["normals_npy"] = folder / "normals.npy"
    paths["normals_png"] = export.save_png(folder / "normals.png", normal_map * 0.5 + 0.5)

    paths["uv_visibility"] = export.save_png(folder / "uv_visibility.png", out_b["uv_visibility"])

    pose = pose_angles(codes_np["pose"][:3])
    paths["pose"] = export.save_json(folder / "pose.json", {
        "yaw_deg": pose["yaw"], "pitch_deg": pose["pitch"], "roll_deg": pose["roll"],
        "rotation": pose["rotation"], "convention": POSE_CONVENTION})
    model_px = _ndc_to_crop_pixels(out_b["landmarks2d"])
    input_px = _ndc_to_crop_pixels(landmarks_ndc)
    coverage = out_b["alpha_images"]
    picture = draw.blend(crop, np.clip(out_b["rendered_images"], 0.0, 1.0), coverage, OVERLAY_OPACITY)
    picture = draw.paint_mask(picture, draw.wire_mask(out_b["grid"], coverage), opacity=0.3)
    picture = draw.draw_points(picture, input_px, (0, 255, 0))
    picture = draw.draw_contours(picture, model_px, (255, 0, 0))
    picture = draw.draw_pose(picture, pose, pose["rotation"])
    overlay = draw.caption(picture, f"{label}: render (albedo x light) at 60% over the photo, surface wire; "
                                    "green = input landmarks, red = model")
    paths["overlay"] = export.save_png(folder / "overlay.png", overlay)
    shape_alpha = (out_b["shape_images"].sum(-1, keepdims=True) > 0).astype(np.float32)
    shape = draw.caption(out_b["shape_images"] * shape_alpha + crop * (1 - shape_alpha), f"{label}: shape")
    paths["shape"] = export.save_png(folder / "shape.png", shape)
    if "shape_detail_images" in out_b:
        paths["shape_detail"] = export.save_png(folder / "shape_detail.png", draw.caption(
            out_b["shape_detail_images"], f"{label}: shape with detail"))

    depth = -out_b["depth_images"] * (crop.shape[0] / 2.0)  # NDC z (smaller = closer) -> height, crop pixels
    np.save(folder / "depth.npy", depth.astype(np.float32))
    paths["depth_npy"] = folder / "depth.npy"
    seen = np.isfinite(depth)
    depth_grey = np.zeros(depth.shape)
    if seen.any():
        low, high = depth[seen].min(), depth[seen].max()
        depth_grey[seen] = 0.15 + 0.85 * (depth[seen] - low) / max(high - low, 1e-9)
    depth_panel = draw.caption(depth_grey, "depth: near = white (depth.npy: crop pixels)")
    paths["depth_png"] = export.save_png(folder / "depth.png", depth_panel)
    pncc = draw.caption(np.clip(out_b["pncc_images"], 0.0, 1.0), "PNCC: mean-shape x, y, z as RGB")
    paths["pncc"] = export.save_png(folder / "pncc.png", pncc)
    photo = draw.caption(crop, "photo (DECA's 224 crop)")
    paths["sheet"] = export.save_png(folder / "sheet.png", draw.sheet(
        [photo, overlay, shape, depth_panel, pncc]))
    landmarks = {
        "ndc": out_b["landmarks2d"],
        "crop_pixels": model_px,
        "image_pixels": transform.inverse(model_px),
        "input_ndc": landmarks_ndc,
        "convention": "ndc: DECA NDC (x right, y down); crop_pixels = (ndc + 1) * 112 (0-based, label "
                      "convention p / 224 * 2 - 1); image_pixels through the inverse crop similarity",
    }
    paths["landmarks"] = export.save_json(folder / "landmarks.json", landmarks)
    return paths


# ------------------------------------------------------------------------------------------------
# The tool


def _pad(arr, size):
    arr = np.asarray(arr)
    if arr.shape[0] == size:
        return arr
    return np.concatenate([arr, np.repeat(arr[-1:], size - arr.shape[0], axis=0)])


def _unique_stem(item, used):
    stem, k = item.path.stem, 1
    while (item.identity, stem) in used:
        k += 1
        stem = f"{item.path.stem}_{k}"
    used.add((item.identity, stem))
    return stem


def _landmark_error_px(model_ndc, input_ndc, size=224):
    """Mean distance of the 68 model landmarks to the input ones, in pixels of the crop."""
    diff = np.asarray(model_ndc, np.float64)[..., :2] - np.asarray(input_ndc, np.float64)[..., :2]
    return float(np.mean(np.linalg.norm(diff, axis=-1)) * size / 2.0)


def _throughput(batch_times):
    """``[(images, seconds)]`` per batch -> (a summary dict, its line). The first batch holds the
    compilation; the rate counts the batches after it (reading, cropping, encoding / fitting,
    decoding and writing every output)."""
    if not batch_times:
        return {}, "throughput: no image was processed"
    first_n, first_s = batch_times[0]
    rest_n = sum(n for n, _ in batch_times[1:])
    rest_s = sum(t for _, t in batch_times[1:])
    record = {"first_batch_images": first_n, "first_batch_s": first_s, "after_compile_images": rest_n,
              "after_compile_s": rest_s}
    if rest_n == 0:
        return record, (f"throughput: one batch only ({first_n} image(s) in {first_s:.1f} s including "
                        "compilation); give more images than --batch for a rate after compilation")
    rate = rest_n / max(rest_s, 1e-9)
    record["images_per_s"] = rate
    return record, (f"throughput: {rate:.2f} images/s after compilation ({rest_n} image(s) in {rest_s:.1f} s; "
                    f"the first batch of {first_n} took {first_s:.1f} s with compilation)")


def _float32(codes):
    # one dtype whatever the source (a fit under jax_enable_x64 returns float64), so that the
    # decode program compiled for one batch serves every other
    return {k: np.asarray(v, np.float32) for k, v in codes.items()}


def _codes_finite(codes, b) -> bool:
    return all(bool(np.all(np.isfinite(np.asarray(v[b])))) for v in codes.values())


def run(inputs, out_dir, *, weights=None, fit=False, fit_landmarks=False, fit_config: FitConfig | None = None,
        transfer=None, detector=False, batch_size=4, model=None, fixed_displacement=None, fit_steps=400, seed=0,
        params=None, detail_generator=None, log=print):
    """The tool's work (see the module docstring); returns a summary dict (``processed`` counts
    the images with outputs; ``images`` one record per output folder, with ``pose_deg``,
    ``landmark_error_px`` (crop pixels) and, with ``fit``, ``fit``: ``photometric_error_before``
    (mean |render - photo| inside the fit's face mask with the start's albedo and light: the mean
    albedo and white light, or the network's; on the landmark-fitted geometry) and
    ``photometric_error_after``; ``skipped`` every skipped image and why; ``throughput``).

    ``fit``: :func:`jface.fit.fit_flame` with ``fit_config`` (default :class:`jface.fit.FitConfig`)
    from the network's codes when there are networks, else from the mean face; ``fit_landmarks``:
    :func:`fit_codes` with ``fit_steps``. Library-only arguments: ``params`` (DECA's params dict,
    instead of ``weights``) and ``detail_generator`` (the F_d module matching
    ``params['D_detail']``, e.g. a small test one).
    """
    if fit and fit_landmarks:
        raise InputError("--fit and --fit-landmarks: expected at most one of them")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"--batch {batch_size}: expected a positive number of images per batch")
    items = collect_inputs(inputs)
    # fewer images than a batch: one batch of just them (the programs are compiled for that size)
    batch_size = min(batch_size, max(len(items), 1))
    out_dir = prepare_output_dir(out_dir, "-o")
    if weights is not None:
        check_input_file(weights, "--weights", folder=True)
    det = make_detector(detector)
    encode_fn = None
    if params is not None:
        source = "params given by the caller"
    elif weights is not None and Path(weights).is_dir():
        trained = _load_run(weights, model)
        params, encode_fn, detail_generator, model = trained.params, trained.encode, trained.generator, trained.model
        source = f"train.deca run {weights} ({trained.stage} step {trained.step})"
    elif weights is not None:
        params = load_weights(weights)
        source = f"weights {weights}"
    elif fit_landmarks or fit:
        params = {}
        source = "mean face"
    else:
        print(RANDOM_WEIGHTS_WARNING, file=sys.stderr, flush=True)
        params = random_weights(seed)
        source = "RANDOM weights (meaningless)"
    config = (FitConfig() if fit_config is None else fit_config) if fit else None
    if fit:
        source += f" + photometric fit ({config.landmark_steps} + {config.photometric_steps} steps)"
    elif fit_landmarks:
        source += f" + landmark fit ({fit_steps} steps)"
    label = "fit" if fit else "landmark fit" if fit_landmarks else "random" if source.startswith("RANDOM") \
        else "network"
    resources = {}

    def face_model():
        """The FLAME model and its UV pixel table, made when first needed: a run whose every image
        is skipped does not build the default model."""
        if not resources:
            face = default_flame_model() if model is None else model
            if face.uv_coords is None or face.uv_faces is None:
                raise InputError("model: reconstruction exports need the FLAME UV layout (uv_coords, uv_faces)")
            uv_hw = tuple(np.asarray(face.albedo_mean).shape[:2]) if face.albedo_mean is not None else (256, 256)
            resources.update(model=face, table=export.uv_pixel_table(face.uv_coords, face.uv_faces, uv_hw,
                                                                     face.uv_face_eye_mask))
        return resources["model"], resources["table"]

    if model is not None:
        face_model()  # a given model is checked at once

    def prepare(item):
        loaded, reason = load_face(item, det)
        if loaded is None:
            raise SkipImage(reason)
        crops, ndc, transforms = crop_faces([loaded])
        return crops[0], ndc[0], transforms[0]

    source_codes = None
    if transfer is not None:
        src_item = InputItem(Path(transfer), "transfer_source", False)
        if not src_item.path.is_file():
            raise InputError(f"--transfer {transfer}: no such image")
        try:
            crop, ndc, _ = prepare(src_item)
        except SKIPPED_ERRORS as err:
            raise InputError(f"--transfer {transfer}: {describe_error(err)}") from None

    def codes_for(crops, ndc):
        """Padded batch -> (codes, per-item fit records or None)."""
        face, _ = face_model()
        if encode_fn is not None:
            codes = {k: np.asarray(v) for k, v in encode_fn(jnp.asarray(crops, jnp.float32)).items()}
        else:
            codes = encode_batch(params, crops) if "E_flame" in params else None
        if fit_landmarks:
            codes, _ = fit_codes(face, ndc, codes, steps=fit_steps)
        elif fit:
            codes, history = fit_flame(face, crops, ndc, init=codes, config=config)
            # (photometric_steps + 1, B); no photometric stage (--photometric-steps 0): no record
            error = history.get("photometric", {}).get("photometric_error")
            records = [{} if error is None else
                       {"photometric_error_before": float(error[0, b]), "photometric_error_after": float(error[-1, b])}
                       for b in range(crops.shape[0])]
            return _float32(codes), records
        return _float32(codes), None

    if transfer is not None:
        codes, _ = codes_for(_pad(crop[None], batch_size), _pad(ndc[None], batch_size))
        source_codes = {k: v[0] for k, v in codes.items()}

    bar = progress_bar(len(items), "reconstruct")
    report = SkipReport(write=bar.write)
    used, results, batch_times = set(), [], []
    processed = 0
    try:
        for batch in prepared_batches(items, prepare, report, batch_size, bar):
            started = time.perf_counter()
            n = len(batch)
            crops = _pad(np.stack([prepared[0] for _, prepared in batch]), batch_size)
            ndc = _pad(np.stack([prepared[1] for _, prepared in batch]), batch_size)
            codes, fit_records = codes_for(crops, ndc)
            jobs = [("", codes)]
            if source_codes is not None:
                jobs.append(("_transfer", transfer_codes(codes, source_codes)))
            failed = set()
            for b, (item, _) in enumerate(batch):
                if not _codes_finite(codes, b):
                    report.add(item.path, "non-finite codes (the fit or the network diverged)")
                    failed.add(b)
            stems = [_unique_stem(item, used) for item, _ in batch]
            done_here = 0
            face, table = face_model()
            for suffix, job_codes in jobs:
                out = decode_batch(params, face, job_codes, crops, fixed_displacement, detail_generator)
                for b, (item, (_, _, transform)) in enumerate(batch):
                    if b in failed:
                        continue
                    folder = out_dir / item.identity / (stems[b] + suffix)
                    out_b = {k: v[b] for k, v in out.items()}
                    try:
                        paths = write_outputs(folder, face, {k: v[b] for k, v in job_codes.items()}, out_b,
                                              crops[b], ndc[b], transform, table, label=label)
                    except SKIPPED_ERRORS as err:
                        report.add(item.path, f"cannot write its outputs in {folder} ({describe_error(err)})")
                        failed.add(b)
                        continue
                    pose = pose_angles(job_codes["pose"][b][:3])
                    record = {"image": str(item.path), "folder": str(folder), "transfer": bool(suffix),
                              "pose_deg": {k: pose[k] for k in ("yaw", "pitch", "roll")},
                              "landmark_error_px": _landmark_error_px(out_b["landmarks2d"], ndc[b]),
                              "files": {k: str(v) for k, v in paths.items()}}
                    if fit_records is not None and not suffix:
                        record["fit"] = fit_records[b]
                    results.append(record)
                    done_here += not suffix
            processed += done_here
            bar.update(n)
            batch_times.append((done_here, time.perf_counter() - started))
    finally:
        bar.close()
    timing, timing_line = _throughput(batch_times)
    summary = {"source": source, "processed": processed, "images": results,
               "skipped": [{"image": p, "reason": r} for p, r in report.skipped],
               "pose_convention": POSE_CONVENTION, "throughput": timing}
    export.save_json(out_dir / "summary.json", summary)
    log(report.summary(processed))
    log(timing_line)
    if source.startswith("RANDOM"):
        print("reminder: results come from RANDOM weights and are meaningless", file=sys.stderr)
    return summary


def main(argv=None):
    """The command line (``python -m jface.reconstruct --help``). Exit status: 0 when at least one
    image was processed, 1 when every image was skipped, 2 for a usage or input error (one line)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--video" in argv:  # python -m jface.reconstruct --video CLIP_OR_FRAMES -o OUT [...]
        i = argv.index("--video")
        return video.main(argv[:i] + argv[i + 1:])
    parser = argparse.ArgumentParser(prog="python -m jface.reconstruct", description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="image files and/or folders (identity sub-folders); "
                        "--video CLIP_OR_FRAMES tracks a video instead (python -m jface.reconstruct.video --help)")
    parser.add_argument("-o", "--out", required=True, help="output folder")
    parser.add_argument("--weights", help="converted DECA weights (.npz) or a train.deca checkpoint folder")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--fit", action="store_true",
                      help="analysis-by-synthesis fit (jface.fit.fit_flame): landmarks, then the photo with albedo "
                           "and SH light (starting from --weights' codes if given)")
    mode.add_argument("--fit-landmarks", action="store_true",
                      help="landmark-only fit of shape/exp/pose/cam (starting from --weights' codes if given)")
    parser.add_argument("--fit-steps", type=int, default=None,
                        help="landmark steps (default: 400 for --fit-landmarks, 200 for --fit)")
    parser.add_argument("--photometric-steps", type=int, default=FitConfig().photometric_steps,
                        help="steps of --fit's photometric stage")
    parser.add_argument("--fit-size", type=int, default=FitConfig().render_size,
                        help="render size of --fit's photometric stage (pixels)")
    parser.add_argument("--transfer", help="image whose expression and jaw pose are transferred to the others")
    parser.add_argument("--detector", nargs="?", const="mediapipe", choices=sorted(detect.DETECTORS),
                        help="landmarks of images without a side file from a detector: mediapipe (the default with "
                             "no value; the [detect] extra) or dlib (the [detector] extra, non-commercial model)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--flame", help="FLAME model (generic_model.pkl or jface npz); default: default_flame_model()")
    parser.add_argument("--fixed-displacement", help="DECA's fixed_displacement_256.npy")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (no --weights)")
    args = parser.parse_args(argv)
    enable_compilation_cache()  # a second run on the same shapes loads its programs instead of compiling
    try:
        collect_inputs(args.inputs)
        prepare_output_dir(args.out, "-o")
        if args.weights is not None:
            check_input_file(args.weights, "--weights", folder=True)
        model = None
        if args.flame:
            model = load_input_file("--flame", args.flame, load_model if args.flame.endswith(".npz") else load_flame)
        fixed = None
        if args.fixed_displacement:
            fixed = load_input_file("--fixed-displacement", args.fixed_displacement, load_fixed_displacement)
        fit_steps = args.fit_steps if args.fit_steps is not None else (400 if args.fit_landmarks else
                                                                       FitConfig().landmark_steps)
        config = None
        if args.fit:
            try:
                config = FitConfig(landmark_steps=fit_steps, photometric_steps=args.photometric_steps,
                                   render_size=args.fit_size)
            except ValueError as err:
                raise InputError(f"--fit-steps / --photometric-steps / --fit-size: {err}") from None
        summary = run(args.inputs, args.out, weights=args.weights, fit=args.fit, fit_landmarks=args.fit_landmarks,
                      fit_config=config, transfer=args.transfer, detector=args.detector, batch_size=args.batch,
                      model=model, fixed_displacement=fixed, fit_steps=fit_steps, seed=args.seed)
    except (InputError, LandmarkFileError, ImportError, ModelFileError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if summary["processed"] == 0:
        print(f"error: no image could be processed ({len(summary['skipped'])} skipped; reasons above)",
              file=sys.stderr)
        return 1
    return 0
