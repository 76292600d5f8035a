"""DECA's training stages, assembled once: encode -> decode -> stage forward -> stage losses.

``Trainer.training_step`` in ``decalib/trainer.py``, as functions of the networks' variables, the
FLAME model and a batch. The training step (:mod:`jface.training.deca`), its held-out evaluation,
:mod:`jface.reconstruct` and the benchmarks all run these; nothing here knows about optimisers,
meshes or configs.

* :class:`Networks`: the stage networks (E_coarse, E_detail, F_d) and the frozen loss networks.
* :class:`DecaSetup`: what the forward pass needs besides variables, model and batch: the
  networks, the encoder's output map (code mean / std), the encoder and render sizes, the loss
  weights (:data:`jface.deca.losses.LOSS_WEIGHTS` names) and two hooks through which a caller
  places the work on devices (``apply_train``, ``map_items``; one device: plain calls).
* :class:`StageSpec`: a stage's name and batch layout (identities x images per identity).
* :func:`encoder_images`, :func:`predict_codes`, :func:`encode`: images -> DECA's code dict.
* :func:`render_coarse`: the coarse stage's render (``SRenderY.forward``) with the UV face/eye mask
  carried into the image.
* :func:`uv_targets`: the detail stage's UV targets.
* :func:`stage_loss`: one stage's total loss on a batch -> ``(loss, (metrics, batch_stats updates))``.
* :func:`uv_photometric_errors`: per-image UV photometric error with coarse and with detail normals.
* :func:`codes_from_labels`, :func:`code_statistics`: generated labels -> DECA's 236-d code, and
  the mean / std that whiten it.

Frames: images ``(B, H, W, 3)`` RGB (uint8 0-255 in batches, [0, 1] once read); landmarks in DECA's
NDC (x right, y down; BUILD_NOTES.md, Frames and conventions); UV maps with row 0 = v = 1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jface.deca import appearance
from jface.deca import losses as L
from jface.deca import networks as nets
from jface.deca.model import decode_geometry_batch, detail_outputs, detail_uv_maps
from jface.deca.render import render
from jface.models.morphable import uv_face_eye_mask
from jface.sampling import grid_sample

__all__ = [
    "STAGES", "TRAINABLE", "SWAPPED_CODE", "Networks", "DecaSetup", "StageSpec", "plain_apply_train", "vmap_items",
    "encoder_images", "predict_codes", "encode", "render_coarse", "uv_targets", "stage_loss",
    "uv_photometric_errors", "codes_from_labels", "code_statistics",
]

STAGES = ("pretrain", "coarse", "detail")
# The variables each stage's optimiser updates (DECA trains E_flame in the coarse stages; E_detail
# and F_d with E_flame frozen in the detail stage).
TRAINABLE = {"pretrain": ("E_flame",), "coarse": ("E_flame",), "detail": ("E_detail", "D_detail")}
# The code swapped within an identity for the consistency losses.
SWAPPED_CODE = {"pretrain": "shape", "coarse": "shape", "detail": "detail"}


def _stop(x):
    return jax.lax.stop_gradient(x)


@dataclasses.dataclass(frozen=True)
class Networks:
    """The Flax modules of DECA's stages; ``identity`` / ``vgg19`` are ``(module, variables)`` of
    the frozen loss networks (VGGFace2 ResNet-50, VGG-19 features) or None (that loss is off)."""

    coarse: Any  # ResNetEncoder(236): E_coarse ("E_flame")
    detail: Any  # ResNetEncoder(128): E_detail
    generator: Any  # DetailGenerator: F_d ("D_detail")
    identity: tuple | None = None
    vgg19: tuple | None = None


def plain_apply_train(module, variables, inputs):
    """``module`` in train mode (BatchNorm batch statistics): ``(outputs, {'batch_stats': ...})``."""
    return module.apply(variables, inputs, train=True, mutable=["batch_stats"])


def vmap_items(fn: Callable, *args, shared=()):
    """``jax.vmap(fn)`` over the leading axis of ``args``; ``shared`` pytrees go whole to every
    item as ``fn(*shared, *items)``."""
    shared = tuple(shared)
    return jax.vmap(fn, in_axes=(None,) * len(shared) + (0,) * len(args))(*shared, *args)


@dataclasses.dataclass(frozen=True)
class DecaSetup:
    """What DECA's forward pass needs besides the variables, the FLAME model and the batch.

    ``code_mean``, ``code_std`` ``(236,)``: E_coarse's raw output is read as code = mean + std · raw
    (the freshly initialised encoder predicts the training set's mean face, pose and camera).
    ``encoder_size``: the square size the encoders see (0: the images' own; else the images are
    resized to it, linear and antialiased, before the encoders only). ``render_size``: the
    photometric losses' render size (the target images are resized to it). ``weights``: λ per loss
    term (:data:`jface.deca.losses.LOSS_WEIGHTS` for the terms not given). ``apply_train(module,
    variables, inputs)``: a network in train mode (:func:`plain_apply_train`; a multi-device caller
    passes per-device BatchNorm statistics). ``map_items(fn, *args, shared=())``: per-item work
    such as rasterization (:func:`vmap_items`; a multi-device caller maps each device's shard).
    """

    networks: Networks
    code_mean: Any
    code_std: Any
    encoder_size: int = 0
    render_size: int = 224
    weights: Mapping[str, float] = dataclasses.field(default_factory=lambda: dict(L.LOSS_WEIGHTS))
    apply_train: Callable = plain_apply_train
    map_items: Callable = vmap_items


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """A stage and its batch layout: ``num_identities`` x ``k`` images, identity-major rows."""

    name: str
    num_identities: int
    k: int

    def __post_init__(self):
        if self.name not in STAGES:
            raise ValueError(f"stage: expected one of {STAGES}, got {self.name!r}")

    @property
    def trainable(self) -> tuple:
        return TRAINABLE[self.name]


# --- encode -------------------------------------------------------------------------------------

def encoder_images(images, size: int = 0):
    """``images (B, H, W, 3)`` -> the encoders' input: resized (linear, antialiased) to ``size`` x
    ``size`` when ``size`` is set and differs from H, W; unchanged (the same object) otherwise."""
    size = int(size) or images.shape[1]
    if images.shape[1:3] == (size, size):
        return images
    return jax.image.resize(images, (images.shape[0], size, size, images.shape[3]), "linear", antialias=True)


def predict_codes(setup: DecaSetup, variables, images, *, train: bool):
    """E_coarse -> DECA's code dict, ``(codes, batch_stats updates or None)``.

    The raw output is read through the fixed affine map code = ``code_mean`` + ``code_std`` · raw.
    ``images``: RGB in [0, 1] at full size (resized here by :func:`encoder_images`) or already at
    the encoder's size. ``train``: batch statistics through ``setup.apply_train``.
    """
    images = encoder_images(images, setup.encoder_size)
    if train:
        raw, mutated = setup.apply_train(setup.networks.coarse, variables, images)
    else:
        raw, mutated = setup.networks.coarse.apply(variables, images, train=False), None
    code = setup.code_mean + setup.code_std * raw.astype(jnp.float32)
    return nets.split_codes(code), mutated


def encode(setup: DecaSetup, params: Mapping, images) -> dict:
    """Inference encode (eval-mode BatchNorm): ``images (B, H, W, 3)`` RGB in [0, 1] -> DECA's code
    dict, with ``detail (B, 128)`` when ``params`` has ``'E_detail'``. Both encoders see the images
    at ``setup.encoder_size``, as in training."""
    codes, _ = predict_codes(setup, params["E_flame"], images, train=False)
    codes = dict(codes)
    if "E_detail" in params:
        small = encoder_images(images, setup.encoder_size)
        codes["detail"] = setup.networks.detail.apply(params["E_detail"], small, train=False).astype(jnp.float32)
    return codes


# --- stage forward ------------------------------------------------------------------------------

def render_coarse(setup: DecaSetup, model, geometry: Mapping, albedo, light, image_hw, uv_mask) -> dict:
    """The coarse stage's shaded render, per item through ``setup.map_items``.

    ``geometry``: :func:`jface.deca.decode_geometry_batch`; ``albedo (B, S, S, 3)`` UV albedo;
    ``light (B, 9, 3)``; ``uv_mask (S, S)`` the UV face/eye mask. Returns
    :func:`jface.deca.render.render`'s dict, batched, plus ``mask_face_eye (B, H, W, 1)``: the UV
    mask carried into the image with the detached UV grid (DECA's ``mask_face_eye``).
    """

    def render_item(faces, uv_coords, uv_faces, face_eye, verts, trans_verts, alb, lit):
        ops = render(verts, trans_verts, faces, uv_coords, uv_faces, alb, lit, image_hw=image_hw)
        ops["mask_face_eye"] = grid_sample(face_eye[..., None], _stop(ops["grid"]))
        return ops

    # per item: the renderer's Pallas kernels are custom calls with no SPMD partitioning rule
    return setup.map_items(render_item, geometry["verts"], geometry["trans_verts"], albedo, light,
                           shared=(model.faces, model.uv_coords, model.uv_faces, uv_mask))


def uv_targets(model, geometry: Mapping, images, face_mask, uv_mask, image_hw) -> tuple:
    """The detail stage's UV targets through :func:`jface.deca.detail_uv_maps`: ``(uv_texture_gt,
    uv_vis_mask)``, the image sampled at every texel's projected position, and uv_vis = (GT mask >
    0.5) ⊙ self-occlusion (world2uv(transformed normals).z < -0.05) ⊙ the UV face/eye mask.

    ``images (B, H, W, 3)`` at ``image_hw``; ``face_mask (B, h, w)`` (resized to ``image_hw`` when
    it differs); ``uv_mask (S, S)`` sets the UV size.
    """
    mask_img = face_mask[..., None]
    if face_mask.shape[1:3] != tuple(image_hw):
        mask_img = jax.image.resize(mask_img, (mask_img.shape[0],) + tuple(image_hw) + (1,), "linear")
    maps = detail_uv_maps(model, _stop(geometry["trans_verts"]), images, mask_img, uv_size=tuple(uv_mask.shape),
                          transformed_normals=_stop(geometry["transformed_normals"]), mask_threshold=0.5)
    return maps["uv_texture_gt"], maps["uv_vis_mask"]


def _frozen_fn(pair):
    """``(module, variables)`` of a frozen loss network -> ``x -> features`` (no gradient to its
    variables; gradients flow through it to ``x``)."""
    if pair is None:
        return None
    module, variables = pair
    return lambda x: module.apply(_stop(variables), x, train=False)


def _vgg_fn(pair):
    if pair is None:
        return None
    module, variables = pair
    return lambda x: module.apply(_stop(variables), x)


def stage_loss(setup: DecaSetup, stage: StageSpec, model, variables: Mapping, batch: Mapping, key):
    """Total loss of ``stage`` on one batch: ``(loss, (metrics, batch_stats updates))``.

    ``variables``: ``{'E_flame', 'E_detail', 'D_detail'}`` Flax variables (only the stage's
    trainable networks run in train mode; the detail stage reads E_coarse frozen, eval mode);
    ``batch``: ``images (B, H, W, 3)`` uint8, ``landmarks68 (B, 68, 3)`` (NDC x, y and visibility),
    ``face_mask (B, H, W)``, B = ``stage.num_identities`` x ``stage.k`` identity-major; ``key``: the
    random key of the consistency swap. ``model`` (the FLAME pytree) is an argument so that a
    jitted caller passes it as one: closed over, its arrays would become compile-time constants
    and XLA would constant-fold the UV-layout rasterization.

    Stages (``Trainer.training_step``): ``pretrain`` the landmark, eye, lip and shape / expression
    terms; ``coarse`` adds the shaded photometric loss, the texture and light regularisers and the
    identity loss (with ``setup.networks.identity``); ``detail`` the UV detail photometric loss,
    ID-MRF (with ``setup.networks.vgg19``), the displacement, shading-smoothness and soft-symmetry
    terms. With ``stage.k > 1`` every sample is duplicated and the copy takes the shape (coarse) or
    detail (detail) code of another image of its identity (consistency by swapping).

    ``metrics``: ``loss``, ``loss_<term>`` for every weighted term, ``landmark_l1`` and
    ``photometric_error`` (coarse) or ``uv_photometric_error`` (detail), unweighted.
    """
    weights = setup.weights
    images = batch["images"].astype(jnp.float32) / 255.0
    lmk_gt = batch["landmarks68"].astype(jnp.float32)
    updates = {}
    metrics = {}
    coarse_training = stage.name in ("pretrain", "coarse")
    encoder_in = encoder_images(images, setup.encoder_size)  # once for E_coarse and E_detail
    codes, mutated = predict_codes(setup, variables["E_flame"], encoder_in, train=coarse_training)
    if coarse_training:
        updates["E_flame"] = mutated["batch_stats"]
    else:
        codes = jax.tree_util.tree_map(_stop, codes)
    if stage.name == "detail":
        detail_raw, mutated = setup.apply_train(setup.networks.detail, variables["E_detail"], encoder_in)
        updates["E_detail"] = mutated["batch_stats"]
        codes = dict(codes, detail=detail_raw.astype(jnp.float32))

    extras = {"images": images, "landmarks68": lmk_gt, "face_mask": batch["face_mask"].astype(jnp.float32)}
    if stage.k > 1:
        both = {**codes, **{f"_{k}": v for k, v in extras.items()}}
        # grouped per identity (the same rows as DECA's concat order; every loss is a mean over them),
        # so on a mesh each device's identities stay on it: no resharding of images or codes
        both, _ = L.swap_within_identity(both, key, stage.num_identities, stage.k, swap=SWAPPED_CODE[stage.name],
                                         layout="identity")
        codes = {k: v for k, v in both.items() if not k.startswith("_")}
        extras = {k[1:]: v for k, v in both.items() if k.startswith("_")}
    images, lmk_gt = extras["images"], extras["landmarks68"]

    geo = decode_geometry_batch(model, codes)
    terms = {}
    if stage.name != "detail":
        terms.update(L.landmark_losses(geo["landmarks2d"], lmk_gt, codes, weights=weights))
    metrics["landmark_l1"] = L.landmark_loss(geo["landmarks2d"], lmk_gt[..., :2])

    if stage.name != "pretrain":
        size = (setup.render_size, setup.render_size)
        if size != images.shape[1:3]:
            target = jax.image.resize(images, (images.shape[0],) + size + (3,), "linear", antialias=True)
        else:
            target = images
        albedo = jax.vmap(lambda t: appearance.albedo(model, t, truncate=True))(codes["tex"])
        light = codes["light"]
        uv_mask = uv_face_eye_mask(model, jnp.float32)
        if stage.name == "coarse":
            ops = render_coarse(setup, model, geo, albedo, light, size, uv_mask)
            outputs = {"rendered_images": ops["images"], "alpha_images": ops["alpha_images"],
                       "mask_face_eye": ops["mask_face_eye"], "normal_images": ops["normal_images"],
                       "albedo_images": ops["albedo_images"]}
            terms.update(L.photometric_losses(outputs, codes, target, weights=weights,
                                              identity_fn=_frozen_fn(setup.networks.identity)))
            mask = ops["mask_face_eye"] * ops["alpha_images"]
            metrics["photometric_error"] = L.photometric_loss(ops["images"] * mask, target, mask)
        else:
            z = nets.detail_latent(codes["pose"][:, 3:], codes["exp"], codes["detail"])
            disp, mutated = setup.apply_train(setup.networks.generator, variables["D_detail"], z)
            updates["D_detail"] = mutated["batch_stats"]
            det = detail_outputs(model, _stop(geo["verts"]), _stop(geo["normals"]), disp, _stop(light),
                                 _stop(albedo), uv_mask)
            uv_gt, uv_vis = uv_targets(model, geo, target, extras["face_mask"], uv_mask, size)
            terms.update(L.detail_losses(det, {"uv_texture_gt": uv_gt, "uv_vis_mask": uv_vis}, weights=weights,
                                         features_fn=_vgg_fn(setup.networks.vgg19)))
            metrics["uv_photometric_error"] = L.detail_photometric_loss(
                L.crop_uv_face(det["uv_texture"]), L.crop_uv_face(uv_gt), L.crop_uv_face(uv_vis))
    loss = sum(terms.values())
    metrics.update({f"loss_{k}": v for k, v in terms.items()})
    metrics["loss"] = loss
    return loss, (metrics, updates)


# --- evaluation ---------------------------------------------------------------------------------

def uv_photometric_errors(setup: DecaSetup, model, params: Mapping, codes: Mapping, images, face_mask) -> tuple:
    """Per-image masked UV photometric error ``(coarse (B,), detail (B,))``: the UV texture shaded
    with the coarse normals and with the detail normals (E_detail and F_d of ``params``, eval mode)
    against the image sampled into UV, inside the detail stage's visibility mask, on DECA's UV face
    box. ``codes``: E_coarse's (:func:`predict_codes`); ``images (B, H, W, 3)`` uint8;
    ``face_mask (B, H, W)``."""
    images = images.astype(jnp.float32) / 255.0
    detail = setup.networks.detail.apply(params["E_detail"], encoder_images(images, setup.encoder_size),
                                         train=False).astype(jnp.float32)
    geo = decode_geometry_batch(model, codes)
    albedo = jax.vmap(lambda t: appearance.albedo(model, t, truncate=True))(codes["tex"])
    uv_mask = uv_face_eye_mask(model, jnp.float32)
    z = nets.detail_latent(codes["pose"][:, 3:], codes["exp"], detail)
    disp = setup.networks.generator.apply(params["D_detail"], z, train=False)
    det = detail_outputs(model, geo["verts"], geo["normals"], disp, codes["light"], albedo, uv_mask)
    flat = detail_outputs(model, geo["verts"], geo["normals"], jnp.zeros_like(disp), codes["light"], albedo, uv_mask)
    uv_gt, uv_vis = uv_targets(model, geo, images, face_mask.astype(jnp.float32), uv_mask, images.shape[1:3])
    vis = L.crop_uv_face(uv_vis)
    gt = L.crop_uv_face(uv_gt)

    def err(tex):
        tex = L.crop_uv_face(tex)
        return jnp.sum(jnp.abs(tex - gt) * vis, axis=(1, 2, 3)) / jnp.maximum(3 * jnp.sum(vis, axis=(1, 2, 3)), 1)

    return err(flat["uv_texture"]), err(det["uv_texture"])


# --- the encoder's output map -------------------------------------------------------------------

def codes_from_labels(labels: Mapping) -> np.ndarray:
    """Generated labels (:func:`jface.data.synthetic_deca.generate_deca`: ``shape``, ``albedo``,
    ``expression``, ``pose``, ``cam``, ``light``) -> DECA's 236-d coarse code ``(N, 236)`` in
    :data:`jface.deca.networks.CODE_SPLITS` order (shape, tex, exp, pose, cam, light); texture
    codes beyond the labels' albedo components are 0."""
    n = len(labels["shape"])
    tex = np.zeros((n, 50), np.float32)
    ka = min(50, labels["albedo"].shape[1])
    tex[:, :ka] = labels["albedo"][:, :ka]
    return np.concatenate(
        [labels["shape"][:, :100], tex, labels["expression"][:, :50], labels["pose"], labels["cam"],
         labels["light"].reshape(n, 27)], axis=1).astype(np.float32)


def code_statistics(labels: Mapping) -> tuple:
    """``(mean (236,), std (236,))`` of the labels' codes (:func:`codes_from_labels`), std at least
    1e-3: the encoder's output map of :class:`DecaSetup`."""
    codes = codes_from_labels(labels)
    return codes.mean(0), np.maximum(codes.std(0), 1e-3)
