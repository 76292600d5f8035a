"""DECA's coarse and detail losses with the original weights and reductions.

From ``decalib/utils/lossfunc.py`` and ``decalib/trainer.py`` (``Trainer.training_step``). All
functions are **batched** (leading batch axis B), channel-last images ``(B, H, W, C)``, and return
a scalar. Landmarks are in DECA's NDC (x right, y down; GT pixels p map to p/224·2 − 1, DECA's
``decalib/datasets/vggface.py``). Reductions follow the original: regularisers and the symmetry
loss are sums, the photometric and most others are means, the landmark loss is normalised by 2·Σw,
ID-MRF is summed over the batch.

The per-stage sums :func:`coarse_losses` and :func:`detail_losses` name their terms as
:data:`LOSS_WEIGHTS` does (``landmark``, ``eye``, ``lip``, ``reg_shape``, ``reg_exp``,
``photometric``, ``reg_tex``, ``reg_light``, ``identity``; ``photometric_detail``, ``id_mrf``,
``reg_z``, ``reg_diff``, ``reg_sym``); the training step logs each as ``loss_<name>``
(:func:`jface.deca.stages.stage_loss`). The single-term functions are unweighted.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jface.arrays import as_float
from jface.lighting import sh_shading

__all__ = [
    "LOSS_WEIGHTS",
    "COARSE_TERMS",
    "DETAIL_TERMS",
    "LANDMARK_WEIGHTS",
    "landmark_weights",
    "weighted_landmark_loss",
    "landmark_loss",
    "eye_distance",
    "lip_distance",
    "eye_closure_loss",
    "lip_closure_loss",
    "photometric_loss",
    "identity_preprocess",
    "identity_loss",
    "identity_overlay",
    "resize_bilinear",
    "shape_regularizer",
    "expression_regularizer",
    "texture_regularizer",
    "light_regularizer",
    "mrf_loss",
    "id_mrf_loss",
    "binary_erosion",
    "soft_symmetry_loss",
    "shading_smoothness_loss",
    "displacement_regularizer",
    "crop_uv_face",
    "detail_photometric_loss",
    "swap_within_identity",
    "euler_jaw_regularizer",
    "landmark_losses",
    "photometric_losses",
    "coarse_losses",
    "detail_losses",
]

# The weights λ of every term, DECA's (``decalib/utils/config.py`` and the paper; ``train.deca``'s
# ``paper`` preset). ID-MRF's weight is DECA's photo_D · mrf = 2.0 · 0.05.
LOSS_WEIGHTS = {
    # coarse stages (pretrain: the landmark and shape / expression terms only)
    "landmark": 1.0,
    "eye": 1.0,
    "lip": 0.5,
    "reg_shape": 1e-4,
    "reg_exp": 1e-4,
    "photometric": 2.0,
    "reg_tex": 1e-4,
    "reg_light": 1.0,
    "identity": 0.2,
    # detail stage
    "photometric_detail": 2.0,
    "id_mrf": 2.0 * 0.05,
    "reg_z": 0.005,
    "reg_diff": 0.005,
    "reg_sym": 0.005,
}
COARSE_TERMS = ("landmark", "eye", "lip", "reg_shape", "reg_exp", "photometric", "reg_tex", "reg_light", "identity")
DETAIL_TERMS = ("photometric_detail", "id_mrf", "reg_z", "reg_diff", "reg_sym")


def landmark_weights():
    """``(68,)`` DECA's per-landmark weights (``weighted_landmark_loss`` in ``lossfunc.py``): jaw 5-6,
    10-11 -> 2; nose 27-35 -> 1.5, 30, 31, 35 -> 3; mouth 48-67 -> 1.5, corners 48, 54 -> 3; others 1."""
    w = np.ones(68)
    w[5:7] = 2.0
    w[10:12] = 2.0
    w[27:36] = 1.5
    w[[30, 31, 35]] = 3.0
    w[48:68] = 1.5
    w[[48, 54]] = 3.0
    return w


LANDMARK_WEIGHTS = landmark_weights()


def _check_landmarks(pred, gt):
    pred, gt = as_float(pred), as_float(gt)
    if pred.ndim != 3 or pred.shape[-1] < 2:
        raise ValueError(f"predicted: expected (B, L, 2) landmarks, got shape {pred.shape}")
    if gt.ndim != 3 or gt.shape[:2] != pred.shape[:2] or gt.shape[-1] not in (2, 3):
        raise ValueError(
            f"landmarks_gt: expected (B, L, 2) or (B, L, 3) matching {pred.shape[:2]}, got {gt.shape}"
        )
    return pred, gt


def landmark_loss(predicted, landmarks_gt, weights=None):
    """DECA's ``batch_kp_2d_l1_loss`` (``lossfunc.py``): Σ w_bi (|Δx| + |Δy|) / (2 Σ w_bi + 1e-8).

    ``predicted (B, L, 2)``; ``landmarks_gt (B, L, 2|3)``; a third GT column (DECA's, always 1)
    multiplies the weights; ``weights (L,)`` or None (ones).
    """
    pred, gt = _check_landmarks(predicted, landmarks_gt)
    dtype = jnp.result_type(pred.dtype, gt.dtype)
    vis = gt[..., 2] if gt.shape[-1] == 3 else jnp.ones(gt.shape[:2], dtype)
    if weights is not None:
        vis = vis * jnp.asarray(weights, dtype)
    diff = jnp.sum(jnp.abs(gt[..., :2] - pred[..., :2]), axis=-1)
    return jnp.sum(diff * vis) / (2.0 * jnp.sum(vis) + 1e-8)


def weighted_landmark_loss(predicted, landmarks_gt):
    """λ_lmk term with ``useWlmk=True``: :func:`landmark_loss` with :data:`LANDMARK_WEIGHTS`."""
    return landmark_loss(predicted, landmarks_gt, LANDMARK_WEIGHTS)


def _safe_norm(x):
    # |x| with a finite (zero) gradient at x = 0 (closed eyes in both prediction and GT).
    sq = jnp.sum(x * x, axis=-1)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def eye_distance(landmarks):
    """``(B, 68, >=2) -> (B, 4)`` gaps |l_up − l_low| for pairs (37,41), (38,40), (43,47), (44,46)."""
    lm = as_float(landmarks)[..., :2]
    return _safe_norm(lm[:, jnp.array([37, 38, 43, 44])] - lm[:, jnp.array([41, 40, 47, 46])])


def lip_distance(landmarks):
    """``(B, 68, >=2) -> (B, 3)`` gaps for the inner-lip pairs (61,67), (62,66), (63,65)."""
    lm = as_float(landmarks)[..., :2]
    return _safe_norm(lm[:, jnp.array([61, 62, 63])] - lm[:, jnp.array([67, 66, 65])])


def eye_closure_loss(predicted, landmarks_gt):
    """mean_{b,pairs} |d_pred − d_gt| of the eye gaps (``eye_dis`` in ``lossfunc.py``, λ_eye = 1)."""
    pred, gt = _check_landmarks(predicted, landmarks_gt)
    return jnp.mean(jnp.abs(eye_distance(pred) - eye_distance(gt)))


def lip_closure_loss(predicted, landmarks_gt):
    """mean_{b,pairs} |d_pred − d_gt| of the inner-lip gaps (``lip_dis`` in ``lossfunc.py``, λ_lip = 0.5)."""
    pred, gt = _check_landmarks(predicted, landmarks_gt)
    return jnp.mean(jnp.abs(lip_distance(pred) - lip_distance(gt)))


def photometric_loss(predicted, images, mask):
    """mean over (B, H, W, 3) of M ⊙ |Î − I| (``Trainer.training_step``).

    ``predicted`` Î = rendered image ⊙ mask_face_eye ⊙ alpha (the caller masks, as DECA does);
    ``mask (B, H, W)`` or ``(B, H, W, 1)``: the skin segmentation, or mask_face_eye·alpha without it.
    """
    predicted, images = as_float(predicted), as_float(images)
    if predicted.shape != images.shape or predicted.ndim != 4:
        raise ValueError(f"predicted/images: expected equal (B, H, W, C) shapes, got {predicted.shape}, {images.shape}")
    mask = as_float(mask)
    if mask.ndim == 3:
        mask = mask[..., None]
    return jnp.mean(mask * jnp.abs(predicted - images))


# ----------------------------------------------------------------------------------------------
# identity loss


def _linear_weights(size_in, size_out):
    # torch F.interpolate(mode='bilinear', align_corners=False): src = (dst + 0.5) s - 0.5,
    # clamped below at 0; neighbours i0 = floor(src), i1 = min(i0 + 1, in - 1).
    src = (np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), size_in - 1)
    i1 = np.minimum(i0 + 1, size_in - 1)
    frac = src - i0
    return i0, i1, frac


@functools.cache
def _linear_taps(size_in: int, size_out: int, transpose: bool) -> tuple:
    """The 1-D interpolation matrix ``M (size_out, size_in)`` (or its transpose) as taps: row r of
    the result is ``sum_k weight[r, k] * x[index[r, k]]``; rows reached by fewer taps are padded with
    weight 0 on one of the row's own taps (so a NaN elsewhere does not leak in). The transpose's taps
    are a gather too, so the gradient needs no scatter-add."""
    i0, i1, frac = _linear_weights(size_in, size_out)
    matrix = np.zeros((size_out, size_in))
    np.add.at(matrix, (np.arange(size_out), i0), 1.0 - frac)
    np.add.at(matrix, (np.arange(size_out), i1), frac)
    if transpose:
        matrix = matrix.T
    count = max(1, int((matrix != 0).sum(axis=1).max()))
    index = np.zeros((matrix.shape[0], count), np.int64)
    weight = np.zeros((matrix.shape[0], count))
    for r, row in enumerate(matrix):
        cols = np.flatnonzero(row)
        index[r] = cols[0] if len(cols) else 0
        index[r, :len(cols)], weight[r, :len(cols)] = cols, row[cols]
    return index, weight


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _resample(x, axis: int, size_out: int, transpose: bool):
    # along ``axis`` (negative): M x with M the (size_out, n) interpolation from n = x.shape[axis];
    # with ``transpose``, M^T x with M the (n, size_out) interpolation from size_out
    n = x.shape[axis]
    index, weight = _linear_taps(size_out, n, True) if transpose else _linear_taps(n, size_out, False)
    shape = (-1,) + (1,) * (-axis - 1)
    taps = [jnp.take(x, index[:, k], axis=axis) * jnp.asarray(weight[:, k], x.dtype).reshape(shape)
            for k in range(index.shape[1])]
    return functools.reduce(jnp.add, taps)


def _resample_fwd(x, axis, size_out, transpose):
    return _resample(x, axis, size_out, transpose), x.shape[axis]


def _resample_bwd(axis, size_out, transpose, size_in, g):
    return (_resample(g, axis, size_in, not transpose),)


_resample.defvjp(_resample_fwd, _resample_bwd)


def resize_bilinear(images, out_hw):
    """torch ``F.interpolate(..., mode='bilinear', align_corners=False)`` (no antialias).

    ``images (..., H, W, C) -> (..., H', W', C)``. Each axis is a gather of two taps; its gradient
    is the transposed interpolation as a gather too, where autodiff of the gathers gives a
    scatter-add (atomic adds on a GPU).
    """
    images = as_float(images)
    out_h, out_w = (int(v) for v in out_hw)
    if images.ndim < 3 or min(images.shape[-3:-1]) < 1 or min(out_h, out_w) < 1:
        raise ValueError(f"resize_bilinear: expected images (..., H, W, C) with H, W >= 1 and an output size "
                         f">= 1, got images of shape {images.shape} and out_hw {tuple(out_hw)}")
    rows = _resample(images, -3, out_h, False)
    return _resample(rows, -2, out_w, False)


VGGFACE2_MEAN_BGR = (91.4953, 103.8827, 131.0912)


def identity_preprocess(images):
    """DECA's ``VGGFace2Loss`` preprocessing (``lossfunc.py``): ``(B, 224, 224, 3)`` RGB in [0, 1] ->
    ``(B, 224, 224, 3)`` BGR: ×255 − mean (B, G, R), crop 10 px per side, **×2 − 1 on the
    mean-subtracted values** (the quirk), bilinear resize 204 -> 224 (align_corners=False)."""
    images = as_float(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1:3] != (224, 224):
        raise ValueError(f"images: expected (B, 224, 224, 3) RGB, got shape {images.shape}")
    x = images[..., ::-1] * 255.0 - jnp.asarray(VGGFACE2_MEAN_BGR, images.dtype)
    x = x[:, 10:214, 10:214, :] * 2.0 - 1.0
    return resize_bilinear(x, (224, 224))


def _cosine_similarity(a, b, eps=1e-8):
    # torch F.cosine_similarity(dim=-1): a·b / (max(|a|, eps) max(|b|, eps)).
    na = jnp.maximum(jnp.linalg.norm(a, axis=-1), eps)
    nb = jnp.maximum(jnp.linalg.norm(b, axis=-1), eps)
    return jnp.sum(a * b, axis=-1) / (na * nb)


def identity_loss(identity_fn, rendered, images):
    """L_id = mean_b (1 − cos(f(overlay), f(I))) (``VGGFace2Loss.forward``).

    ``identity_fn``: ``(B, 224, 224, 3)`` preprocessed BGR (:func:`identity_preprocess`) ->
    ``(B, D)`` features (the frozen VGGFace2 ResNet-50, e.g. ``lambda x:
    VGGFace2ResNet50().apply(vars, x)``); gradients flow through it. ``rendered``: the overlay
    (albedo ⊙ SH(normals, stop_grad(L)) ⊙ mask + I ⊙ (1 − mask)); ``images``: I.
    """
    gen = identity_fn(identity_preprocess(rendered))
    tar = identity_fn(identity_preprocess(images))
    gen = gen.reshape(gen.shape[0], -1)
    tar = tar.reshape(tar.shape[0], -1)
    return jnp.mean(1.0 - _cosine_similarity(gen, tar))


def identity_overlay(albedo_images, shading_images, mask_face_eye, images):
    """The identity loss's input: albedo ⊙ shading ⊙ M + I ⊙ (1 − M); ``M (B, H, W[, 1])``.

    Pass stop_grad(albedo) and shading from stop_grad(light) as DECA does (``Trainer.training_step``)."""
    mask = as_float(mask_face_eye)
    if mask.ndim == 3:
        mask = mask[..., None]
    return albedo_images * shading_images * mask + images * (1.0 - mask)


# ----------------------------------------------------------------------------------------------
# regularisers


def shape_regularizer(shape_codes):
    """Σ β² / 2 over batch and components (a sum, as in ``Trainer.training_step``; weight 1e-4)."""
    return jnp.sum(jnp.square(as_float(shape_codes))) / 2.0


def expression_regularizer(expression_codes):
    """Σ ψ² / 2 (a sum; weight 1e-4)."""
    return jnp.sum(jnp.square(as_float(expression_codes))) / 2.0


def texture_regularizer(texture_codes):
    """Σ α² / 2 (a sum; weight 1e-4, 0 in pretrain)."""
    return jnp.sum(jnp.square(as_float(texture_codes))) / 2.0


def light_regularizer(light):
    """Colour-neutral SH: mean over (b, k, c) of (L[b,k,c] − mean_c L[b,k,:])² (``Trainer.training_step``).

    ``light (B, 9, 3)`` (or ``(B, 27)``)."""
    light = as_float(light)
    if light.ndim == 2 and light.shape[-1] == 27:
        light = light.reshape(light.shape[0], 9, 3)
    if light.ndim != 3 or light.shape[-1] != 3:
        raise ValueError(f"light: expected (B, 9, 3) or (B, 27), got shape {light.shape}")
    return jnp.mean(jnp.square(jnp.mean(light, axis=-1, keepdims=True) - light))


# ----------------------------------------------------------------------------------------------
# ID-MRF (``IDMRFLoss`` in ``decalib/utils/lossfunc.py``)


def _mrf_item(gen, tar):
    # gen, tar: (H, W, C) feature maps of one item.
    mean_t = jnp.mean(tar, axis=-1, keepdims=True)  # per-pixel mean over channels
    g = gen - mean_t
    t = tar - mean_t
    g = g / jnp.maximum(jnp.linalg.norm(g, axis=-1, keepdims=True), 1e-30)
    t = t / jnp.maximum(jnp.linalg.norm(t, axis=-1, keepdims=True), 1e-30)
    g = g.reshape(-1, g.shape[-1])  # i: generated positions
    t = t.reshape(-1, t.shape[-1])  # j: target positions
    cos = g @ t.T  # (I, J)
    dist = (1.0 - cos) / 2.0
    rel = dist / (jnp.min(dist, axis=1, keepdims=True) + 1e-5)
    w = jnp.exp((1.0 - rel) / 0.5)
    cs = w / jnp.sum(w, axis=1, keepdims=True)
    return -jnp.log(jnp.mean(jnp.max(cs, axis=0)))


def mrf_loss(gen_features, target_features):
    """DECA's ``IDMRFLoss.mrf_loss`` for one layer, summed over the batch.

    ``gen_features``, ``target_features``: ``(B, H, W, C)``. Per item: subtract the target's
    per-pixel channel mean from both, L2-normalise along channels, d_ij = (1 − cos_ij)/2 between
    generated position i and target position j, r_ij = d_ij / (min_j d_ij + 1e-5),
    CS_ij = softmax_j((1 − r_ij)/0.5), loss = −log(mean_j max_i CS_ij).
    """
    gen, tar = as_float(gen_features), as_float(target_features)
    if gen.ndim != 4 or gen.shape != tar.shape:
        raise ValueError(f"gen/target features: expected equal (B, H, W, C) shapes, got {gen.shape}, {tar.shape}")
    return jnp.sum(jax.vmap(_mrf_item)(gen, tar))


# DECA's feat_style_layers {relu3_2: 1, relu4_2: 1} and feat_content_layers {relu4_2: 1}.
ID_MRF_LAYERS = (("relu3_2", 1.0), ("relu4_2", 1.0), ("relu4_2", 1.0))


def id_mrf_loss(features_fn, generated, target, *, normalize=True, layers=ID_MRF_LAYERS):
    """DECA's ``IDMRFLoss``: Σ over layers (relu4_2 counted as style and content) of :func:`mrf_loss`.

    ``features_fn``: ``(B, H, W, 3)`` -> ``{layer name: (B, h, w, C)}`` (e.g. the frozen
    ``VGG19Features``); with ``normalize=True`` it receives ImageNet-normalised images
    ((x − mean)/std), as DECA's ``VGG19FeatLayer`` does. ``generated``, ``target``: RGB in [0, 1].
    """
    generated, target = as_float(generated), as_float(target)
    if normalize:
        mean = jnp.asarray((0.485, 0.456, 0.406), generated.dtype)
        std = jnp.asarray((0.229, 0.224, 0.225), generated.dtype)
        generated = (generated - mean) / std
        target = (target - mean) / std
    gen_f = features_fn(generated)
    tar_f = features_fn(target)
    total = 0.0
    for name, weight in layers:
        total = total + weight * mrf_loss(gen_f[name], tar_f[name])
    return total


# ----------------------------------------------------------------------------------------------
# detail regularisers


def binary_erosion(mask, size=5):
    """scipy ``binary_erosion`` with a size×size square (DECA's soft symmetry mask), per batch item.

    ``mask (B, H, W)`` or ``(B, H, W, 1)``: nonzero counts as True, pixels outside the image are
    False (scipy's ``border_value=0``). Returns float of the same shape, no gradient.
    """
    mask = as_float(mask)
    binary = (jax.lax.stop_gradient(mask) != 0).astype(mask.dtype)
    squeeze = binary.ndim == 3
    if squeeze:
        binary = binary[..., None]
    lo = size // 2
    hi = size - 1 - lo
    # border_value = 0: pad with False, then a min-pool (as -max(-x)) over the window.
    padded = jnp.pad(binary, ((0, 0), (lo, hi), (lo, hi), (0, 0)))
    eroded = -jax.lax.reduce_window(
        -padded, -jnp.inf, jax.lax.max, (1, size, size, 1), (1, 1, 1, 1), "VALID"
    )
    return eroded[..., 0] if squeeze else eroded


def soft_symmetry_loss(displacement, uv_vis_mask):
    """Σ over all pixels (a sum) of (1 − erode₅ₓ₅(uv_vis)) ⊙ |D − stop_grad(flip_x(D))|
    (``Trainer.training_step``).

    ``displacement (B, H, W[, 1])`` (the raw decoder output), ``uv_vis_mask`` the same shape.
    """
    disp = as_float(displacement)
    vis = as_float(uv_vis_mask)
    if vis.shape != disp.shape:
        raise ValueError(f"uv_vis_mask: expected shape {disp.shape}, got {vis.shape}")
    nonvis = 1.0 - binary_erosion(vis)
    flipped = jax.lax.stop_gradient(jnp.flip(disp, axis=2))
    return jnp.sum(nonvis * jnp.abs(disp - flipped))


def shading_smoothness_loss(uv_shading):
    """mean(dx²) + mean(dy²) with DECA's interior crops (``Trainer.training_step``); ``(B, H, W, C)``.

    dx = s[:, 1:-1, 1:] − s[:, 1:-1, :-1], dy = s[:, 1:, 1:-1] − s[:, :-1, 1:-1].
    """
    s = as_float(uv_shading)
    dx = s[:, 1:-1, 1:] - s[:, 1:-1, :-1]
    dy = s[:, 1:, 1:-1] - s[:, :-1, 1:-1]
    return jnp.mean(dx * dx) + jnp.mean(dy * dy)


def displacement_regularizer(displacement):
    """mean |D| of the raw decoder output, no mask (``Trainer.training_step``, reg_z = 0.005)."""
    return jnp.mean(jnp.abs(as_float(displacement)))


# DECA's "face" box [400, 1648] of 2048 UV pixels, scaled to 256: [50:206] (``Trainer.training_step``).
UV_FACE_BOX = (50, 206)


def crop_uv_face(uv_maps, size: int | None = None, box: tuple | None = None):
    """Crop ``(B, S, S, C)`` UV maps to DECA's face box and resize bilinearly to ``size`` x ``size``.

    ``box``: rows / cols [lo:hi]; default :data:`UV_FACE_BOX` scaled to the maps' size ([50:206]
    at S = 256, DECA's). ``size``: default S (DECA's 256 at 256)."""
    uv_maps = as_float(uv_maps)
    side = uv_maps.shape[1]
    lo, hi = box if box is not None else (UV_FACE_BOX[0] * side // 256, UV_FACE_BOX[1] * side // 256)
    size = side if size is None else int(size)
    return resize_bilinear(uv_maps[:, lo:hi, lo:hi, :], (size, size))


def detail_photometric_loss(uv_texture, uv_texture_gt, uv_vis_mask):
    """mean |uv_tex·vis − uv_gt·vis| (``Trainer.training_step``), on already cropped maps ``(B, H, W, C)``."""
    vis = as_float(uv_vis_mask)
    if vis.ndim == 3:
        vis = vis[..., None]
    return jnp.mean(jnp.abs(as_float(uv_texture) * vis - as_float(uv_texture_gt) * vis))


# ----------------------------------------------------------------------------------------------
# consistency by swapping (``Trainer.training_step`` in ``decalib/trainer.py``)


def swap_within_identity(codes, key, num_identities, k, *, swap="shape", layout="concat"):
    """DECA's shape / detail consistency batch (``Trainer.training_step``).

    ``codes``: dict of arrays with a leading axis B·K in identity-major order (codes and, if the
    caller wants them duplicated too, images / landmarks / masks). A permutation is drawn inside
    each identity (new_order = concat_i(perm(K) + i·K)); every entry is duplicated to 2·B·K, and
    the second copy of ``codes[swap]`` is permuted: ``swap="shape"`` (coarse stage) or
    ``"detail"`` (detail stage). ``num_identities`` and ``k`` are static.

    ``layout`` orders the 2·B·K rows:

    * ``"concat"`` (DECA's ``torch.cat([x, x_swapped])``): the B·K originals, then the B·K
      swapped copies;
    * ``"identity"``: per identity, its K originals then its K swapped copies
      (row ``2·K·i + j`` is original j of identity i, row ``2·K·i + K + j`` its copy). The same rows
      in another order, so every sum or mean over the batch is unchanged; but each identity's
      rows stay together, so on a batch sharded by identities (a multiple of K rows per device)
      nothing moves between devices — with ``"concat"`` XLA's partitioner reshards every entry
      (images included) through all-to-alls, all-gathers and collective-permutes.

    Returns ``(new_codes, new_order (B·K,) int32)``.
    """
    if swap not in codes:
        raise ValueError(f"swap: {swap!r} is not a key of codes (keys: {sorted(codes)})")
    if layout not in ("concat", "identity"):
        raise ValueError(f"layout: expected 'concat' or 'identity', got {layout!r}")
    b, k = int(num_identities), int(k)
    n = b * k
    for name, value in codes.items():
        if jnp.shape(value)[0] != n:
            raise ValueError(
                f"codes[{name!r}]: expected leading axis num_identities·k = {n}, got shape {jnp.shape(value)}"
            )
    keys = jax.random.split(key, b)
    perms = jax.vmap(lambda kk: jax.random.permutation(kk, k))(keys)
    new_order = (perms + jnp.arange(b)[:, None] * k).reshape(-1).astype(jnp.int32)
    out = {}
    for name, value in codes.items():
        value = jnp.asarray(value)
        if layout == "concat":
            second = value[new_order] if name == swap else value
            out[name] = jnp.concatenate([value, second], axis=0)
            continue
        grouped = value.reshape((b, k) + value.shape[1:])
        if name == swap:  # a gather batched over identities: local to each identity's device
            index = perms.reshape((b, k) + (1,) * (value.ndim - 1))
            second = jnp.take_along_axis(grouped, index, axis=1)
        else:
            second = grouped
        out[name] = jnp.concatenate([grouped, second], axis=1).reshape((2 * n,) + value.shape[1:])
    return out, new_order


# ----------------------------------------------------------------------------------------------
# the per-stage sums, on decode's outputs


def euler_jaw_regularizer(jaw_euler):
    """``jaw_type='euler'`` only (``Trainer.training_step``): (100 · Σ roll² / 2, 10 · Σ relu(−jaw_x)² / 2),
    with roll the last Euler component; ``jaw_euler (B, 3)``. Returns the two weighted terms."""
    jaw = as_float(jaw_euler)
    roll = 100.0 * jnp.sum(jaw[:, -1] ** 2) / 2.0
    close = 10.0 * jnp.sum(jax.nn.relu(-jaw[:, 0]) ** 2) / 2.0
    return roll, close


def _mask4(mask):
    mask = as_float(mask)
    return mask[..., None] if mask.ndim == 3 else mask


def _weights(weights: Mapping[str, float] | None) -> Mapping[str, float]:
    if weights is None:
        return LOSS_WEIGHTS
    unknown = sorted(set(weights) - set(LOSS_WEIGHTS))
    if unknown:
        raise ValueError(f"weights: unknown loss terms {unknown}; the terms are {sorted(LOSS_WEIGHTS)}")
    return {**LOSS_WEIGHTS, **weights}


def landmark_losses(landmarks2d, landmarks_gt, codes: Mapping, *, weights: Mapping | None = None) -> dict:
    """The weighted landmark terms of every coarse stage (DECA's pretraining has only these):
    ``landmark``, ``eye``, ``lip`` of ``landmarks2d (B, 68, 2)`` against ``landmarks_gt (B, 68, 2|3)``
    (DECA NDC) and the shape / expression regularisers ``reg_shape``, ``reg_exp`` of ``codes``."""
    w = _weights(weights)
    return {
        "landmark": w["landmark"] * weighted_landmark_loss(landmarks2d, landmarks_gt),
        "eye": w["eye"] * eye_closure_loss(landmarks2d, landmarks_gt),
        "lip": w["lip"] * lip_closure_loss(landmarks2d, landmarks_gt),
        "reg_shape": w["reg_shape"] * shape_regularizer(codes["shape"]),
        "reg_exp": w["reg_exp"] * expression_regularizer(codes["exp"]),
    }


def photometric_losses(outputs: Mapping, codes: Mapping, images, *, weights: Mapping | None = None,
                       seg_masks=None, identity_fn=None) -> dict:
    """The weighted terms the coarse stage adds to the landmark terms: ``photometric``, ``reg_tex``,
    ``reg_light`` and (with ``identity_fn``) ``identity``. See :func:`coarse_losses`."""
    w = _weights(weights)
    mask_face_eye = _mask4(outputs["mask_face_eye"])
    mask = mask_face_eye * _mask4(outputs["alpha_images"])
    predicted = outputs["rendered_images"] * mask
    photo_mask = mask if seg_masks is None else _mask4(seg_masks)
    terms = {
        "photometric": w["photometric"] * photometric_loss(predicted, images, photo_mask),
        "reg_tex": w["reg_tex"] * texture_regularizer(codes["tex"]),
        "reg_light": w["reg_light"] * light_regularizer(codes["light"]),
    }
    if identity_fn is not None and w["identity"]:
        light = jax.lax.stop_gradient(jnp.asarray(codes["light"]).reshape(-1, 9, 3))
        shading = jax.vmap(sh_shading)(outputs["normal_images"], light)
        albedo_images = jax.lax.stop_gradient(outputs["albedo_images"])
        overlay = identity_overlay(albedo_images, shading, outputs["mask_face_eye"], images)
        terms["identity"] = w["identity"] * identity_loss(identity_fn, overlay, images)
    return terms


def coarse_losses(outputs: Mapping, codes: Mapping, images, landmarks_gt, *, weights: Mapping | None = None,
                  use_photometric: bool = True, seg_masks=None, identity_fn=None) -> dict:
    """The weighted coarse-stage terms of DECA (``Trainer.training_step``, the paper's version), batched:
    :func:`landmark_losses` then :func:`photometric_losses`.

    ``outputs``: decoded geometry and, with ``use_photometric``, its render: ``landmarks2d (B, 68, 2)``;
    ``rendered_images``, ``alpha_images``, ``mask_face_eye (B, H, W, 1)``, ``normal_images``,
    ``albedo_images`` (:func:`jface.deca.decode` or :func:`jface.deca.stages.render_coarse`);
    ``codes``: DECA's code dict; ``images (B, H, W, 3)`` the target at the render's size;
    ``landmarks_gt (B, 68, 2|3)`` in DECA's NDC; ``weights``: λ per term (:data:`LOSS_WEIGHTS` for
    the ones not given). ``use_photometric=False`` is DECA's pretraining (the landmark, eye, lip
    and shape / expression terms only; nothing rendered). ``seg_masks (B, H, W[, 1])``: the skin
    segmentation of the photometric term, or None (mask_face_eye · alpha). ``identity_fn``: as in
    :func:`identity_loss`, or None (no identity term).

    Returns the weighted terms in :data:`COARSE_TERMS` order (the loss is their sum, in that order).
    The photometric image is the **shaded** render (the paper; HEAD's unshaded render is a bug).
    The identity overlay uses the detached albedo images and the shading of the detached light.
    """
    terms = landmark_losses(outputs["landmarks2d"], landmarks_gt, codes, weights=weights)
    if use_photometric:
        terms.update(photometric_losses(outputs, codes, images, weights=weights, seg_masks=seg_masks,
                                        identity_fn=identity_fn))
    return terms


def detail_losses(outputs: Mapping, uv_maps: Mapping, *, weights: Mapping | None = None,
                  features_fn=None) -> dict:
    """The weighted detail-stage terms of DECA (``Trainer.training_step``, detail branch), batched.

    ``outputs``: the detail half of decode (:func:`jface.deca.detail_outputs`): ``displacement
    (B, S, S, 1)`` (the raw F_d output), ``uv_shading``, ``uv_texture``; the coarse codes must be
    frozen by the caller, as DECA's E_flame is. ``uv_maps``: ``uv_texture_gt``, ``uv_vis_mask``
    (:func:`jface.deca.detail_uv_maps`). ``features_fn``: VGG-19 features for ID-MRF
    (:func:`id_mrf_loss`) or None (no ID-MRF). The photometric and ID-MRF terms use DECA's face box
    of the UV map ([50:206] at 256) resized to the map's size; the symmetry term the full map.

    Returns the weighted terms in :data:`DETAIL_TERMS` order (the loss is their sum, in that order).
    """
    w = _weights(weights)
    vis = _mask4(uv_maps["uv_vis_mask"])
    tex_patch = crop_uv_face(outputs["uv_texture"])
    gt_patch = crop_uv_face(uv_maps["uv_texture_gt"])
    vis_patch = crop_uv_face(vis)
    terms = {"photometric_detail": w["photometric_detail"] * detail_photometric_loss(tex_patch, gt_patch, vis_patch)}
    if features_fn is not None and w["id_mrf"]:
        terms["id_mrf"] = w["id_mrf"] * id_mrf_loss(features_fn, tex_patch * vis_patch, gt_patch * vis_patch)
    displacement = _mask4(outputs["displacement"])
    terms["reg_z"] = w["reg_z"] * displacement_regularizer(displacement)
    terms["reg_diff"] = w["reg_diff"] * shading_smoothness_loss(outputs["uv_shading"])
    terms["reg_sym"] = w["reg_sym"] * soft_symmetry_loss(displacement, vis)
    return terms
