"""``python -m jface.reconstruct IMAGES_OR_DIRS... -o DIR``: DECA reconstruction of photographs.

Pipeline (DECA's ``demos/demo_reconstruct.py``): 68 landmarks (side file next to the image, or
``--detector``) -> DECA's test crop (``TestData`` in ``decalib/datasets/datasets.py``: landmark box
x 1.1 x 1.25, similarity warp to 224 x 224, :func:`jface.data.crops.deca_crop`) -> batched,
jit-compiled :func:`jface.deca.encode` -> :func:`jface.deca.decode` -> exports. Codes come from
converted DECA weights or a ``train.deca`` run folder (``--weights``; loaded from its checkpoints
alone by :func:`jface.training.deca.load_run`, no data generated), from randomly initialised
networks (a loud warning: the results are meaningless; this only exercises the pipeline), or from
a gradient-descent fit of FLAME's 68 landmarks to the input landmarks (``--fit-landmarks``,
:func:`fit_codes`).

Per image ``DIR/<identity>/<stem>/`` holds:

* ``codes.npz`` / ``codes.json``: DECA's codes (shape 100, tex 50, exp 50, pose 6 = [global, jaw]
  axis-angle, cam 3 = (s, t_x, t_y), light 9 x 3, detail 128 when present);
* ``flame.npz`` / ``flame.json``: the FLAME 2020 layout (shape 300, expression 100, zero padded;
  global / neck / jaw / eye poses), :func:`jface.export.pad_flame_parameters`;
* ``camera.json``: the orthographic camera as 4 x 4 matrices (:func:`jface.export.camera_record`):
  ``deca_ndc_matrix`` P with NDC = P [X; 1] = trans_verts (``batch_orth_proj`` and the y/z flip),
  the OpenGL (y-up)
  projection, the NDC -> crop pixel map and the crop -> original image similarity;
* ``coarse.obj`` (+ ``coarse.mtl``, ``coarse.png`` texture = the input sampled in UV inside the
  face mask, model albedo or grey 0.7 outside, ``coarse_normals.png``) and ``coarse.ply``;
* ``detail.obj`` (+ mtl/png; one vertex per valid UV pixel, DECA's ``util.upsample_mesh``) and
  ``detail.ply`` (vertex colours);
* ``displacement.npy/png`` (D + Δ, metres; PNG scaled from [-0.01, 0.01]), ``normals.npy/png``
  (UV detail normals, n/2 + 1/2; the coarse normals when there is no detail stage);
* ``overlay.png`` (render over the crop, input landmarks green, model landmarks red),
  ``shape.png`` and ``shape_detail.png`` (DECA's grey shape renders), ``landmarks.json``
  (model landmarks in NDC, crop pixels and original-image pixels).

``--transfer SRC``: expression and jaw pose of SRC replace those of every other image (DECA's
``demo_transfer``); the animated results go to ``DIR/<identity>/<stem>_transfer/``.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jface import export, flame
from jface.data.crops import deca_crop
from jface.deca import decode, decode_geometry_batch, encode, load_fixed_displacement
from jface.deca import networks as nets
from jface.deca.render import render_shape
from jface.errors import ModelFileError
from jface.files.weights import load_variables
from jface.models import default_flame_model, load_flame, load_model
from jface.models.morphable import uv_face_eye_mask
from jface.reconstruct.inputs import (
    InputError,
    InputItem,
    LandmarkFileError,
    SkipReport,
    collect_inputs,
    load_face,
    make_detector,
    progress,
)
from jface.render import world2uv
from jface.sampling import grid_sample
from jface.training.checkpoint import RunFormatError
from jface.training.deca import load_run
from jface.training.distributed import enable_compilation_cache

__all__ = [
    "RANDOM_WEIGHTS_WARNING",
    "load_weights",
    "load_train_deca",
    "random_weights",
    "crop_faces",
    "encode_batch",
    "fit_codes",
    "transfer_codes",
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
    "!! and pass --weights out.npz, or use --fit-landmarks.\n" + "!" * 78 + "\n"
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
    # jit: an eager ResNet-50 init runs op by op and takes minutes on a small CPU
    return {name: dict(jax.jit(module.init)(key, examples[name]))
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
# Decoding and the per-image products


@partial(jax.jit, static_argnames=("image_hw", "detail_generator"))
def _decode(params, model, codes, crops, fixed_displacement, image_hw=(224, 224), detail_generator=None):
    out = decode(params, model, codes, image_hw=image_hw, fixed_displacement=fixed_displacement,
                 detail_generator=detail_generator)
    faces = jnp.asarray(model.faces, jnp.int32)
    uv_size = out["albedo"].shape[1:3]
    uv_mask = uv_face_eye_mask(model, crops.dtype, size=uv_size)
    has_albedo = model.albedo_mean is not None and "tex" in codes

    def per_item(o, crop):
        uv_trans = world2uv(o["trans_verts"], faces, model.uv_coords, model.uv_faces, uv_size)
        uv_gt = grid_sample(crop, uv_trans[..., :2])
        fill = o["albedo"] if has_albedo else jnp.full(uv_gt.shape, 0.7, uv_gt.dtype)
        texture = uv_gt * uv_mask[..., None] + fill * (1.0 - uv_mask[..., None])
        shape = render_shape(o["verts"], o["trans_verts"], faces, image_hw=image_hw)
        result = {"uv_texture_gt": texture, "shape_images": shape["images"]}
        if "uv_detail_normals" in o:
            normal_images = grid_sample(o["uv_detail_normals"], o["grid"]) * o["alpha_images"]
            detail = render_shape(o["verts"], o["trans_verts"], faces, image_hw=image_hw,
                                         detail_normal_images=normal_images)
            result["shape_detail_images"] = detail["images"]
        else:
            uv_normals = world2uv(o["normals"], faces, model.uv_coords, model.uv_faces, uv_size)
            result["uv_coarse_normals"] = uv_normals
        return result

    keep = ("verts", "trans_verts", "normals", "albedo", "grid", "alpha_images", "uv_detail_normals")
    extra = jax.vmap(per_item)({k: out[k] for k in keep if k in out}, crops)
    out.update(extra)
    out.pop("fragments", None)
    return out


def decode_batch(params, model, codes, crops, fixed_displacement=None, detail_generator=None):
    """jit-compiled :func:`jface.deca.decode` plus the export products (UV texture from the crop,
    grey shape renders); returns a numpy dict. With ``params['D_detail']`` and no detail code
    (landmark fit without E_detail) the detail code is zero."""
    codes = {k: jnp.asarray(v) for k, v in codes.items()}
    if "D_detail" not in params:
        codes.pop("detail", None)
    elif "detail" not in codes:
        codes["detail"] = jnp.zeros((codes["shape"].shape[0], 128), jnp.float32)
    out = _decode(params, model, codes, jnp.asarray(crops, jnp.float32),
                  None if fixed_displacement is None else jnp.asarray(fixed_displacement, jnp.float32),
                  detail_generator=detail_generator)
    return {k: np.asarray(v) for k, v in out.items() if hasattr(v, "shape")}


def _draw_points(image, groups):
    from PIL import Image, ImageDraw

    pil = Image.fromarray(export.to_uint8(image))
    draw = ImageDraw.Draw(pil)
    for points, colour in groups:
        for x, y in points:
            draw.ellipse((x - 1.5, y - 1.5, x + 1.5, y + 1.5), outline=colour)
    return np.asarray(pil)


def _ndc_to_crop_pixels(ndc, size=224):
    """Landmark NDC -> 0-based crop pixels with the label convention p / 224 * 2 - 1 (DECA's
    ``decalib/datasets/vggface.py``)."""
    return (np.asarray(ndc, np.float64)[..., :2] + 1.0) * size / 2.0


def write_outputs(folder, model, codes_b, out_b, crop, landmarks_ndc, transform, table):
    """Write every product of one image into ``folder``; returns ``{name: path}``."""
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

    alpha = out_b["alpha_images"]
    rendered = out_b["rendered_images"] * alpha + crop * (1.0 - alpha)
    model_px = _ndc_to_crop_pixels(out_b["landmarks2d"])
    input_px = _ndc_to_crop_pixels(landmarks_ndc)
    overlay = _draw_points(np.clip(rendered, 0, 1), [(input_px, (0, 255, 0)), (model_px, (255, 0, 0))])
    paths["overlay"] = export.save_png(folder / "overlay.png", overlay)
    shape_alpha = (out_b["shape_images"].sum(-1, keepdims=True) > 0).astype(np.float32)
    paths["shape"] = export.save_png(folder / "shape.png", out_b["shape_images"] * shape_alpha
                                     + crop * (1 - shape_alpha))
    if "shape_detail_images" in out_b:
        paths["shape_detail"] = export.save_png(folder / "shape_detail.png", out_b["shape_detail_images"])
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


def _batches(seq, size):
    return [seq[i:i + size] for i in range(0, len(seq), size)]


def _pad(arr, size):
    arr = np.asarray(arr)
    if arr.shape[0] == size:
        return arr
    return np.concatenate([arr, np.repeat(arr[-1:], size - arr.shape[0], axis=0)])


def run(inputs, out_dir, *, weights=None, fit_landmarks=False, transfer=None, detector=False, batch_size=4,
        model=None, fixed_displacement=None, fit_steps=400, seed=0, params=None, detail_generator=None,
        log=print):
    """The tool's work (see the module docstring); returns a summary dict.

    Library-only arguments: ``params`` (DECA's params dict, instead of ``weights``) and
    ``detail_generator`` (the F_d module matching ``params['D_detail']``, e.g. a small test one).
    """
    items = collect_inputs(inputs)
    det = make_detector(detector)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
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
    elif fit_landmarks:
        params = {}
        source = "landmark fit"
    else:
        print(RANDOM_WEIGHTS_WARNING, file=sys.stderr, flush=True)
        params = random_weights(seed)
        source = "RANDOM weights (meaningless)"
    if model is None:
        model = default_flame_model()
    if model.uv_coords is None or model.uv_faces is None:
        raise InputError("model: reconstruction exports need the FLAME UV layout (uv_coords, uv_faces)")
    report = SkipReport()

    def load(item):
        loaded, reason = load_face(item, det)
        if loaded is None:
            report.add(item.path, reason)
        return loaded

    faces = [(item, loaded) for item in items if (loaded := load(item)) is not None]
    source_face = None
    if transfer is not None:
        src_item = InputItem(Path(transfer), "transfer_source", False)
        if not src_item.path.is_file():
            raise InputError(f"--transfer {transfer}: no such image")
        src_loaded, reason = load_face(src_item, det)
        if src_loaded is None:
            raise InputError(f"--transfer {transfer}: {reason}")
        source_face = (src_item, src_loaded)

    uv_hw = tuple(np.asarray(model.albedo_mean).shape[:2]) if model.albedo_mean is not None else (256, 256)
    table = export.uv_pixel_table(model.uv_coords, model.uv_faces, uv_hw, model.uv_face_eye_mask)

    def codes_for(batch_faces):
        crops, ndc, transforms = crop_faces([f[1] for f in batch_faces])
        n = len(batch_faces)
        crops_p, ndc_p = _pad(crops, batch_size), _pad(ndc, batch_size)
        if encode_fn is not None:
            codes = {k: np.asarray(v) for k, v in encode_fn(jnp.asarray(crops_p, jnp.float32)).items()}
        else:
            codes = encode_batch(params, crops_p) if "E_flame" in params else None
        if fit_landmarks:
            codes, _ = fit_codes(model, ndc_p, codes, steps=fit_steps)
        return codes, crops_p, ndc_p, transforms, n

    src_codes = None
    if source_face is not None:
        codes, _, _, _, _ = codes_for([source_face])
        src_codes = {k: v[0] for k, v in codes.items()}

    used, results = set(), []
    for batch in progress(_batches(faces, batch_size), total=-(-len(faces) // batch_size), desc="reconstruct"):
        codes, crops, ndc, transforms, n = codes_for(batch)
        jobs = [("", codes)]
        if src_codes is not None:
            jobs.append(("_transfer", transfer_codes(codes, src_codes)))
        stems = []
        for item, _ in batch:
            stem, k = item.path.stem, 1
            while (item.identity, stem) in used:
                k += 1
                stem = f"{item.path.stem}_{k}"
            used.add((item.identity, stem))
            stems.append(stem)
        for suffix, job_codes in jobs:
            out = decode_batch(params, model, job_codes, crops, fixed_displacement, detail_generator)
            for b in range(n):
                item = batch[b][0]
                folder = out_dir / item.identity / (stems[b] + suffix)
                paths = write_outputs(folder, model, {k: v[b] for k, v in job_codes.items()},
                                      {k: v[b] for k, v in out.items()}, crops[b], ndc[b], transforms[b], table)
                results.append({"image": str(item.path), "folder": str(folder), "transfer": bool(suffix),
                                "files": {k: str(v) for k, v in paths.items()}})
    summary = {"source": source, "images": results,
               "skipped": [{"image": p, "reason": r} for p, r in report.skipped]}
    export.save_json(out_dir / "summary.json", summary)
    log(report.summary(sum(not r["transfer"] for r in results)))
    if source.startswith("RANDOM"):
        print("reminder: results come from RANDOM weights and are meaningless", file=sys.stderr)
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m jface.reconstruct", description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="image files and/or folders (identity sub-folders)")
    parser.add_argument("-o", "--out", required=True, help="output folder")
    parser.add_argument("--weights", help="converted DECA weights (.npz) or a train.deca checkpoint folder")
    parser.add_argument("--fit-landmarks", action="store_true",
                        help="fit shape/exp/pose/cam to the 68 landmarks (starting from --weights' codes if given)")
    parser.add_argument("--transfer", help="image whose expression and jaw pose are transferred to the others")
    parser.add_argument("--detector", action="store_true", help="use the optional dlib detector when no side file")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--flame", help="FLAME model (generic_model.pkl or jface npz); default: default_flame_model()")
    parser.add_argument("--fixed-displacement", help="DECA's fixed_displacement_256.npy")
    parser.add_argument("--fit-steps", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (no --weights)")
    args = parser.parse_args(argv)
    enable_compilation_cache()  # a second run on the same shapes loads its programs instead of compiling
    try:
        model = None
        if args.flame:
            model = load_model(args.flame) if args.flame.endswith(".npz") else load_flame(args.flame)
        fixed = None
        if args.fixed_displacement:
            fixed = load_fixed_displacement(args.fixed_displacement)
        run(args.inputs, args.out, weights=args.weights, fit_landmarks=args.fit_landmarks, transfer=args.transfer,
            detector=args.detector, batch_size=args.batch, model=model, fixed_displacement=fixed,
            fit_steps=args.fit_steps, seed=args.seed)
    except (InputError, LandmarkFileError, ImportError, ModelFileError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
