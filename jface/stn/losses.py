"""The four 3DMM-STN losses with the original reductions (``layer/vl_nneuclideanloss.m``,
``vl_nnsse.m``, ``vl_nnsiamese.m``, ``vl_nnsymmetry.m``), and the mirror augmentation of the batch
function (``refineData`` in ``dagnn_3dmmasstn.m``). Also :func:`shape_loss`, jface's own: a 3D
vertex loss against known shapes (generated faces carry theirs exactly), not one of the original's.

All losses are un-normalised sums (pixel^2, 0-255 units) as in the original; gradients are true
autodiff gradients. Where the original's hand-written backward differs (BUILD_NOTES.md,
"Departures from the originals"):

* landmark and prior: identical (2 vis (pred - label), 2 alpha).
* symmetry: the original returns 2 w D (no /count); the true gradient is 4 w D / count.
* siamese: the original gives +2 w D_k to *both* members (no /count); the true gradient is
  +2 w D_k / count to the first member and -2 w D_k / count to the second.

Per-item functions take no batch axis; the ``*_batch`` variants take a leading batch axis and reduce
over it exactly as the original does (the symmetry and siamese counts are over the *whole* batch,
so they are not the sum of the per-item losses).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jface.arrays import as_float
from jface.models.landmarks import AFLW21_MIRROR

__all__ = [
    "AFLW21_MIRROR",
    "landmark_loss",
    "prior_loss",
    "symmetry_loss",
    "siamese_loss",
    "landmark_loss_batch",
    "prior_loss_batch",
    "symmetry_loss_batch",
    "siamese_loss_batch",
    "shape_loss",
    "shape_loss_batch",
    "mirror_labels",
    "mirror_image",
    "mirror_batch",
]


def _check_texture(texture, name, ndim=3):
    if texture.ndim != ndim:
        layout = "(H', W', C)" if ndim == 3 else "(B, H', W', C)"
        raise ValueError(f"{name}: expected {layout}, got shape {texture.shape}")


def landmark_loss(points: ArrayLike, labels: ArrayLike, vis: ArrayLike | None = None,
                  indices: ArrayLike | None = None) -> jax.Array:
    """Landmark loss (``vl_nneuclideanloss``): sum_k vis_k ||p_k - l_k||^2, per item.

    ``points (L, 2)`` predicted landmarks in the y-up 224-pixel frame, or ``(N, 2)`` all projected
    vertices together with ``indices (L,)`` (0-based vertex indices, e.g.
    ``model.landmarks["aflw21"]``); ``labels (L, 2)`` (x, y) in the same frame; ``vis (L,)`` 0/1
    (default all 1; a missing label has x = y = 0 and vis = 0). No mean: a plain sum.
    """
    points = as_float(points)
    if indices is not None:
        points = points[jnp.asarray(indices, jnp.int32)]
    labels = jnp.asarray(labels, points.dtype)
    if points.ndim != 2 or points.shape[1] != 2 or labels.shape != points.shape:
        raise ValueError(
            f"labels: expected shape {points.shape} matching the predicted landmarks (L, 2), got "
            f"{labels.shape}"
        )
    if vis is None:
        vis = jnp.ones(points.shape[:1], points.dtype)
    vis = jnp.asarray(vis, points.dtype)
    if vis.shape != points.shape[:1]:
        raise ValueError(f"vis: expected shape {points.shape[:1]}, got {vis.shape}")
    return jnp.sum(vis * jnp.sum(jnp.square(points - labels), axis=-1))


def prior_loss(alpha: ArrayLike) -> jax.Array:
    """Statistical prior (``vl_nnsse``): sum alpha^2 over the D coefficients."""
    alpha = as_float(alpha)
    return jnp.sum(jnp.square(alpha))


def _symmetry_terms(texture):
    flipped = texture[:, ::-1]
    both = (texture != 0) & (flipped != 0)
    diff = jnp.where(both, texture - flipped, 0.0)
    count = jnp.sum(texture != 0)
    return jnp.sum(jnp.square(diff)), count


def symmetry_loss(texture: ArrayLike) -> jax.Array:
    """Bilateral symmetry loss (``vl_nnsymmetry``), per item: ``texture (H', W', C)``.

    F = texture flipped left-right (U <-> 1 - U); D = (T - F) where T != 0 and F != 0 (zero means
    invisible); L = ||D||^2 / #{T != 0} (count guarded to >= 1; the original gives NaN on an
    all-zero texture).
    """
    texture = as_float(texture)
    _check_texture(texture, "texture")
    total, count = _symmetry_terms(texture)
    return total / jnp.maximum(count, 1).astype(texture.dtype)


def _siamese_terms(tex_a, tex_b):
    both = (tex_a != 0) & (tex_b != 0)
    diff = jnp.where(both, tex_a - tex_b, 0.0)
    return jnp.sum(jnp.square(diff)), jnp.sum(tex_a != 0) + jnp.sum(tex_b != 0)


def siamese_loss(tex_a: ArrayLike, tex_b: ArrayLike) -> jax.Array:
    """Siamese multi-view loss (``vl_nnsiamese``) for one (image, mirror) pair.

    ``tex_a``, ``tex_b`` ``(H', W', C)``, compared texel by texel **without** flipping either.
    D = (a - b) where a != 0 and b != 0; L = ||D||^2 / (#{a != 0} + #{b != 0}) (count guarded).
    """
    tex_a = as_float(tex_a)
    tex_b = jnp.asarray(tex_b, tex_a.dtype)
    _check_texture(tex_a, "tex_a")
    if tex_b.shape != tex_a.shape:
        raise ValueError(f"tex_b: expected shape {tex_a.shape} like tex_a, got {tex_b.shape}")
    total, count = _siamese_terms(tex_a, tex_b)
    return total / jnp.maximum(count, 1).astype(tex_a.dtype)


def shape_loss(shape: ArrayLike, true_shape: ArrayLike) -> jax.Array:
    """3D shape loss against known geometry (not one of the original's losses; jface's generated
    faces carry their exact shape): mean over the N vertices of the squared distance,
    ``shape``, ``true_shape`` ``(N, 3)`` in the model's frame and units (mm for the default model)."""
    shape = as_float(shape)
    true_shape = jnp.asarray(true_shape, shape.dtype)
    if shape.ndim != 2 or shape.shape[-1] != 3:
        raise ValueError(f"shape: expected (N, 3), got shape {shape.shape}")
    if true_shape.shape != shape.shape:
        raise ValueError(f"true_shape: expected shape {shape.shape} like shape, got {true_shape.shape}")
    return jnp.mean(jnp.sum(jnp.square(shape - true_shape), axis=-1))


def landmark_loss_batch(points: ArrayLike, labels: ArrayLike, vis: ArrayLike | None = None,
                        indices: ArrayLike | None = None) -> jax.Array:
    """Batched :func:`landmark_loss`: ``(B, L, 2)`` (or ``(B, N, 2)`` with ``indices``), summed over B."""
    points = as_float(points)
    if points.ndim != 3:
        raise ValueError(f"points: expected (B, L, 2) or (B, N, 2), got shape {points.shape}")
    if vis is None:
        return jnp.sum(jax.vmap(lambda p, l: landmark_loss(p, l, None, indices))(points, labels))
    return jnp.sum(jax.vmap(lambda p, l, v: landmark_loss(p, l, v, indices))(points, labels, vis))


def prior_loss_batch(alpha: ArrayLike) -> jax.Array:
    """Batched :func:`prior_loss`: ``alpha (B, D)``, summed over the batch."""
    alpha = as_float(alpha)
    if alpha.ndim != 2:
        raise ValueError(f"alpha: expected (B, D), got shape {alpha.shape}")
    return jnp.sum(jnp.square(alpha))


def shape_loss_batch(shapes: ArrayLike, true_shapes: ArrayLike, weights: ArrayLike | None = None) -> jax.Array:
    """Batched :func:`shape_loss` ``(B, N, 3)``: the ``weights (B,)``-weighted mean over the batch
    (default all 1; the sum of weights guarded to >= 1e-12, so all-zero weights give 0)."""
    shapes = as_float(shapes)
    if shapes.ndim != 3:
        raise ValueError(f"shapes: expected (B, N, 3), got shape {shapes.shape}")
    per_item = jax.vmap(shape_loss)(shapes, jnp.asarray(true_shapes, shapes.dtype))
    if weights is None:
        return jnp.mean(per_item)
    weights = jnp.asarray(weights, shapes.dtype)
    if weights.shape != per_item.shape:
        raise ValueError(f"weights: expected shape {per_item.shape}, got {weights.shape}")
    return jnp.sum(weights * per_item) / jnp.maximum(jnp.sum(weights), 1e-12)


def symmetry_loss_batch(textures: ArrayLike) -> jax.Array:
    """Batched symmetry loss ``(B, H', W', C)``: sum_b ||D_b||^2 / #{T != 0 over the whole batch}."""
    textures = as_float(textures)
    _check_texture(textures, "textures", ndim=4)
    totals, counts = jax.vmap(_symmetry_terms)(textures)
    return jnp.sum(totals) / jnp.maximum(jnp.sum(counts), 1).astype(textures.dtype)


def siamese_loss_batch(textures: ArrayLike) -> jax.Array:
    """Batched siamese loss on an interleaved batch ``(2P, H', W', C)`` = (image, mirror) pairs.

    Pairs are batch positions (2k, 2k+1) (``refineData``); L = sum_k ||D_k||^2 / #{T != 0 over the whole
    batch}.
    """
    textures = as_float(textures)
    _check_texture(textures, "textures", ndim=4)
    if textures.shape[0] % 2:
        raise ValueError(
            f"textures: expected an even batch of interleaved (image, mirror) pairs, got batch "
            f"size {textures.shape[0]}"
        )
    totals, counts = jax.vmap(_siamese_terms)(textures[0::2], textures[1::2])
    return jnp.sum(totals) / jnp.maximum(jnp.sum(counts), 1).astype(textures.dtype)


def mirror_labels(labels: ArrayLike, vis: ArrayLike | None = None, *, image_width: int = 224,
                  order: ArrayLike = AFLW21_MIRROR) -> tuple[jax.Array, jax.Array | None]:
    """Mirror 21 AFLW labels like the original batch function (``refineData`` in
    ``dagnn_3dmmasstn.m``).

    ``labels (..., 21, 2)`` = (x, y) in the y-up pixel frame, ``vis (..., 21)`` or None.
    x' = (W + 1 - x) where x != 0 (missing points stay 0), y unchanged, then landmark k takes old
    landmark ``order[k]`` (the fixed left/right reorder), for labels and vis alike. Returns
    ``(labels', vis')`` (``vis'`` None when ``vis`` is None). Mirroring twice is the identity.
    """
    labels = as_float(labels)
    order = jnp.asarray(order, jnp.int32)
    if labels.ndim < 2 or labels.shape[-2:] != (order.shape[0], 2):
        raise ValueError(
            f"labels: expected (..., {order.shape[0]}, 2) (x, y) landmarks, got shape {labels.shape}"
        )
    x = labels[..., 0]
    x = jnp.where(x != 0, (image_width + 1.0) - x, 0.0).astype(labels.dtype)
    mirrored = jnp.stack([x, labels[..., 1]], axis=-1)[..., order, :]
    if vis is None:
        return mirrored, None
    vis = jnp.asarray(vis)
    if vis.shape != labels.shape[:-1]:
        raise ValueError(f"vis: expected shape {labels.shape[:-1]}, got {vis.shape}")
    return mirrored, vis[..., order]


def mirror_image(image: ArrayLike) -> jax.Array:
    """Left-right mirror of an image ``(..., H, W, C)`` (``fliplr`` in the batch function)."""
    image = jnp.asarray(image)
    if image.ndim < 3:
        raise ValueError(f"image: expected (..., H, W, C), got shape {image.shape}")
    return image[..., :, ::-1, :]


def mirror_batch(images: ArrayLike, labels: ArrayLike | None = None, vis: ArrayLike | None = None
                 ) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
    """Build the original's doubled batch (``refineData``): each image followed by its mirror.

    ``images (B, H, W, C)``, ``labels (B, 21, 2)`` or None, ``vis (B, 21)`` or None ->
    ``(images (2B, ...), labels (2B, 21, 2) or None, vis (2B, 21) or None)`` with position 2i the
    original and 2i + 1 its mirror (the siamese loss depends on this adjacency).
    """
    images = jnp.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images: expected (B, H, W, C), got shape {images.shape}")

    def interleave(a, b):
        return jnp.stack([a, b], axis=1).reshape((-1,) + a.shape[1:])

    out_images = interleave(images, mirror_image(images))
    if labels is None:
        return out_images, None, None
    m_labels, m_vis = mirror_labels(labels, vis, image_width=images.shape[2])
    out_labels = interleave(as_float(labels), m_labels)
    out_vis = None if vis is None else interleave(jnp.asarray(vis), m_vis)
    return out_images, out_labels, out_vis
