"""DECA's renderer stages (``SRenderY`` in ``decalib/utils/renderer.py``), per item.

Recombinable pieces: :func:`jface.render.rasterize` -> :func:`jface.render.interpolate` ->
:func:`jface.sampling.grid_sample` / :func:`jface.lighting.sh_shading` -> :func:`composite`.
:func:`render` and :func:`render_shape` wire them the way DECA does (``SRenderY.forward``,
``SRenderY.render_shape``). Images are channel-last ``(H, W, C)``; masks are ``(H, W, 1)`` so
they broadcast against images.

Frames (BUILD_NOTES.md, "Frames and conventions"): ``vertices`` are FLAME world coordinates
(metres, y up, +z towards the camera); ``transformed_vertices`` are DECA's NDC after the y/z flip
(``batch_orth_proj`` in ``decalib/utils/util.py`` and the flip in ``decalib/deca.py``);
``uv_coords (T, 2)`` are texture coordinates in [0, 1] with v up, mapped to the UV NDC
(2u - 1, 1 - 2v) by :func:`jface.render.uv_ndc`, so UV image row 0 is v = 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jface.geometry import vertex_normals
from jface.lighting import directional_shading, sh_shading
from jface.render.interpolate import interpolate
from jface.render.rasterize import DEFAULT_CAPACITY, DEFAULT_TILE_SIZE, Fragments, rasterize
from jface.render.uv import as_hw, uv_ndc
from jface.sampling import grid_sample

__all__ = ["composite", "pos_mask", "render", "render_shape", "SHAPE_GREY"]

SHAPE_GREY = 180.0 / 255.0  # render_shape's constant albedo (SRenderY.render_shape)


def composite(image, alpha, background=None) -> jax.Array:
    """``image * alpha + background * (1 - alpha)``; ``alpha (H, W)`` or ``(H, W, 1)``.

    ``background``: None (black), a colour ``(C,)`` or an image ``(H, W, C)``.
    """
    image = jnp.asarray(image)
    alpha = jnp.asarray(alpha, image.dtype)
    if alpha.ndim == image.ndim - 1:
        alpha = alpha[..., None]
    if background is None:
        return image * alpha
    background = jnp.asarray(background, image.dtype)
    return image * alpha + background * (1.0 - alpha)


def pos_mask(transformed_normal_images, threshold: float = -0.05) -> jax.Array:
    """Camera-facing pixels (``pos_mask`` of ``SRenderY.forward``): interpolated transformed-normal z < ``threshold``.

    ``(H, W, 3)`` -> ``(H, W, 1)`` float. ``render`` uses -0.05; ``render_shape`` uses 0.15.
    """
    n = jnp.asarray(transformed_normal_images)
    return (n[..., 2:3] < threshold).astype(n.dtype)


def _sample_albedo(albedo, grid, covered):
    """``grid_sample(albedo, grid)`` where background pixels (grid 0) all take the centre sample.

    Same values as sampling every pixel (DECA samples the background at UV NDC (0, 0) too), but the
    background's gradient reaches the centre texels through one sum instead of a scatter of every
    background pixel into the same four texels (atomic contention on a GPU).
    """
    outside = jnp.asarray(-3.0, grid.dtype)  # all four neighbours outside: the backward drops them
    sampled = grid_sample(albedo, jnp.where(covered[..., None], grid, outside))
    centre = grid_sample(albedo, jnp.zeros((1, 1, 2), grid.dtype))[0, 0]
    # background x centre as an outer product: its transpose is one GEMV over the pixels (a
    # reduction to 3 values with the channels minor ran at ~35 GB/s on an H200: 0.56 ms)
    background = jnp.einsum("hw,c->hwc", (~covered).astype(sampled.dtype), centre.astype(sampled.dtype),
                            precision=lax.Precision.HIGHEST)
    return jnp.where(covered[..., None], sampled, 0.0) + background


def render(
    vertices,
    transformed_vertices,
    faces,
    uv_coords,
    uv_faces,
    albedo,
    lights=None,
    *,
    image_hw=(224, 224),
    background=None,
    tile_size: int = DEFAULT_TILE_SIZE,
    capacity: int = DEFAULT_CAPACITY,
    impl: str = "auto",
) -> dict:
    """DECA's ``SRenderY.forward`` (``decalib/utils/renderer.py``), per item.

    Args:
      vertices: ``(V, 3)`` world (FLAME) coordinates.
      transformed_vertices: ``(V, 3)`` DECA NDC after the y/z flip (rasterized).
      faces: ``(F, 3)``; uv_coords ``(T, 2)`` (v up); uv_faces ``(F, 3)``.
      albedo: ``(Hu, Wu, 3)`` UV albedo (row 0 = v = 1).
      lights: ``(9, 3)`` SH coefficients or None (then images = albedo images).
      image_hw: static output size. background: None, ``(3,)`` or ``(H, W, 3)``.

    Returns a dict (channel-last): ``images (H, W, 3)`` = albedo ⊙ shading ⊙ alpha (composited over
    ``background`` when given), ``albedo_images``, ``alpha_images (H, W, 1)`` (coverage, detached),
    ``pos_mask (H, W, 1)``, ``shading_images`` (when lights), ``grid (H, W, 2)`` UV NDC,
    ``normal_images (H, W, 3)`` interpolated world normals (not renormalised) ⊙ alpha,
    ``normals (V, 3)``, ``transformed_normals (V, 3)``, ``fragments``.
    Differentiable w.r.t. vertices (through the barycentrics and normals), albedo and lights.
    """
    vertices = jnp.asarray(vertices)
    transformed_vertices = jnp.asarray(transformed_vertices)
    faces = jnp.asarray(faces, jnp.int32)
    uv_faces = jnp.asarray(uv_faces, jnp.int32)
    albedo = jnp.asarray(albedo)
    if albedo.ndim != 3:
        raise ValueError(f"albedo: expected (Hu, Wu, C), got shape {albedo.shape}")
    if lights is not None and jnp.shape(lights) != (9, 3):
        raise ValueError(f"lights: expected (9, 3) SH coefficients, got shape {jnp.shape(lights)}")
    hw = as_hw(image_hw, "image_hw")
    normals = vertex_normals(vertices, faces)
    transformed_normals = vertex_normals(transformed_vertices, faces)
    fragments = rasterize(transformed_vertices, faces, hw, tile_size=tile_size, capacity=capacity, impl=impl)
    uvs = uv_ndc(uv_coords).astype(vertices.dtype)[uv_faces]  # (F, 3, 3)
    # DECA interpolates 12 channels at once (uv, transformed normals, world vertices, normals).
    # Here the channels whose attributes carry no gradient (uv; the detached transformed normals)
    # are one interpolation and the differentiable normals another, so the backward scatters
    # 3 channels per pixel instead of 12; the world-vertex channels are unused by the outputs.
    fixed = interpolate(fragments, jnp.concatenate([uvs[..., :2], lax.stop_gradient(transformed_normals[faces])], -1))
    normal_images = interpolate(fragments, normals[faces])
    alpha = lax.stop_gradient(fragments.mask)[..., None]
    grid = fixed[..., :2]
    albedo_images = _sample_albedo(albedo, grid, fragments.face_index >= 0)
    out = {
        "grid": grid,
        "albedo_images": albedo_images,
        "alpha_images": alpha,
        "pos_mask": pos_mask(fixed[..., 2:5], -0.05),
        "normal_images": normal_images * alpha,
        "normals": normals,
        "transformed_normals": transformed_normals,
        "fragments": fragments,
    }
    if lights is not None:
        shading = sh_shading(normal_images, lights)
        out["shading_images"] = shading
        images = albedo_images * shading
    else:
        images = albedo_images
    out["images"] = composite(images, alpha, background)
    return out


def render_shape(
    vertices,
    transformed_vertices,
    faces,
    *,
    image_hw=(224, 224),
    background=None,
    colors=None,
    detail_normal_images=None,
    light_directions=None,
    light_intensities=None,
    tile_size: int = DEFAULT_TILE_SIZE,
    capacity: int = DEFAULT_CAPACITY,
    impl: str = "auto",
    fragments: Fragments | None = None,
) -> dict:
    """DECA's grey "shape" render (``SRenderY.render_shape``), per item.

    Albedo grey 180/255 (or per-vertex ``colors (V, 3)``), 5 directional lights of intensity 1.7
    (:data:`jface.lighting.DECA_SHAPE_LIGHT_DIRECTIONS`) on the interpolated world vertex normals
    (detached, as in DECA; ``detail_normal_images (H, W, 3)`` replace them), alpha = coverage x
    (interpolated transformed-normal z < 0.15), composited over ``background`` (black by default).

    Returns a dict: ``images (H, W, 3)``, ``alpha_images (H, W, 1)``, ``normal_images (H, W, 3)``,
    ``fragments``. ``fragments``: the rasterization of ``transformed_vertices`` at ``image_hw``
    when the caller has it (e.g. :func:`render`'s), so that it is not rasterized again.
    """
    vertices = jnp.asarray(vertices)
    transformed_vertices = jnp.asarray(transformed_vertices)
    faces = jnp.asarray(faces, jnp.int32)
    hw = as_hw(image_hw, "image_hw")
    dtype = jnp.result_type(vertices.dtype, jnp.float32)
    normals = vertex_normals(vertices, faces)
    transformed_normals = vertex_normals(transformed_vertices, faces)
    if colors is None:
        colors = jnp.full(vertices.shape, SHAPE_GREY, dtype)
    colors = jnp.asarray(colors, dtype)
    if colors.shape != vertices.shape:
        raise ValueError(f"colors: expected per-vertex {vertices.shape}, got {colors.shape}")
    if fragments is None:
        fragments = rasterize(transformed_vertices, faces, hw, tile_size=tile_size, capacity=capacity, impl=impl)
    elif tuple(jnp.shape(fragments.face_index)) != hw:
        raise ValueError(f"fragments: expected a rasterization at {hw}, got {jnp.shape(fragments.face_index)}")
    attributes = jnp.concatenate(
        [colors[faces], lax.stop_gradient(transformed_normals[faces]), lax.stop_gradient(normals[faces])],
        axis=-1,
    )
    rendering = interpolate(fragments, attributes)
    albedo_images = rendering[..., 0:3]
    mask = pos_mask(rendering[..., 3:6], 0.15)
    normal_images = rendering[..., 6:9]
    if detail_normal_images is not None:
        detail_normal_images = jnp.asarray(detail_normal_images, dtype)
        if detail_normal_images.shape != normal_images.shape:
            raise ValueError(
                f"detail_normal_images: expected shape {normal_images.shape}, got {detail_normal_images.shape}"
            )
        normal_images = detail_normal_images
    shading = directional_shading(normal_images, light_directions, light_intensities)
    alpha = lax.stop_gradient(fragments.mask)[..., None] * mask
    return {
        "images": composite(albedo_images * shading, alpha, background),
        "alpha_images": alpha,
        "normal_images": normal_images,
        "fragments": fragments,
    }
