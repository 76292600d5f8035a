"""DECA's appearance and image formation: albedo model, camera, SH-shaded rendering.

Frames and layouts (``FLAMETex``, ``batch_orth_proj``, ``SRenderY``; BUILD_NOTES.md, Frames and
conventions), channel-last throughout:

* UV images ``(H, W, C)``: row 0 is v = 1 (a texture image as stored on disk), RGB.
* FLAME world: metres, x to the subject's left, y up, +z towards the camera.
* DECA NDC (``trans_verts``): x right, **y down**, smaller z = closer; x_ndc = s (X + t_x),
  y_ndc = -s (Y + t_y), z_ndc = -s Z.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jface.geometry import flip_yz, orthographic_camera
from jface.lighting import sh_shading

__all__ = [
    "project",
    "albedo_from_file_layout",
    "convert_albedo_model",
    "albedo",
    "shade",
]


def project(points, cam):
    """DECA's ``batch_orth_proj`` followed by the y/z flip (``decalib/utils/util.py``,
    ``decalib/deca.py``): world -> DECA NDC.

    ``points (..., N, 3)`` in FLAME world coordinates, ``cam (..., 3)`` = (s, t_x, t_y).
    Returns ``(..., N, 3)`` = (s (x + t_x), -s (y + t_y), -s z). Landmarks use the same map
    (``landmarks2d`` keeps the first two columns).
    """
    return flip_yz(orthographic_camera(points, cam))


def _nearest_indices(size_in, size_out):
    # F.interpolate(mode='nearest'): src = floor(dst * in / out) (``FLAMETex``).
    return np.floor(np.arange(size_out) * (size_in / size_out)).astype(np.int64)


def albedo_from_file_layout(mean, basis, coeffs, *, scale=1.0, image_size=512, uv_size=256):
    """DECA's ``FLAMETex.forward`` on the file layout, for one item (``decalib/models/FLAME.py``).

    ``mean (S*S*3,)`` and ``basis (S*S*3, K)`` as in ``FLAME_albedo_from_BFM.npz`` (``MU``, ``PC``;
    ``scale=1``) or ``FLAME_texture.npz`` (``mean``, ``tex_dir``; ``scale=1/255``), a row-major
    S×S×3 image with channels **B, G, R**; ``coeffs (n,)`` weights the first n columns.
    A = mean + basis[:, :n] α; reshaped to (S, S, 3); nearest resize S -> ``uv_size``
    (src = floor(dst · S / uv_size)); BGR -> RGB; **no clamping**. Returns ``(uv_size, uv_size, 3)``.
    """
    coeffs = jnp.asarray(coeffs)
    dtype = jnp.result_type(coeffs.dtype, jnp.float32)
    mean = jnp.asarray(mean, dtype).reshape(-1) * scale
    basis = jnp.asarray(basis, dtype).reshape(mean.shape[0], -1) * scale
    n = coeffs.shape[-1]
    if n > basis.shape[1]:
        raise ValueError(f"coeffs: the basis has {basis.shape[1]} components, got {n} coefficients")
    tex = (mean + basis[:, :n] @ coeffs.astype(dtype)).reshape(image_size, image_size, 3)
    idx = _nearest_indices(image_size, uv_size)
    return tex[idx][:, idx][..., ::-1]


def convert_albedo_model(mean, basis, *, scale=1.0, image_size=512, uv_size=256, num_components=None):
    """Pre-convert the file layout to :class:`FlameModel`'s ``albedo_mean (S', S', 3)`` and
    ``albedo_basis (S', S', 3, K)`` (RGB, row 0 = v = 1), with S' = ``uv_size``.

    The nearest resize and the channel flip are linear selections, so
    ``albedo(model, α) == albedo_from_file_layout(mean, basis, α)`` exactly. numpy in, numpy out.
    """
    mean = np.asarray(mean).reshape(image_size, image_size, 3) * scale
    basis = np.asarray(basis).reshape(image_size * image_size * 3, -1)
    if num_components is not None:
        basis = basis[:, :num_components]
    basis = basis.reshape(image_size, image_size, 3, -1) * scale
    idx = _nearest_indices(image_size, uv_size)
    return mean[idx][:, idx][:, :, ::-1].copy(), basis[idx][:, idx][:, :, ::-1].copy()


def albedo(model, coeffs, *, truncate=False):
    """UV albedo ``(H, W, 3)`` of a FlameModel: ``albedo_mean + albedo_basis[..., :n] · coeffs``.

    RGB, row 0 = v = 1, not clamped (``FLAMETex.forward``). A model without an albedo model gives zeros
    (DECA's ``use_tex=False``: black renders) of size ``uv_face_eye_mask`` or 256².
    More coefficients than basis columns raise, unless ``truncate=True``: then the extra
    coefficients are ignored (as if the basis were zero-padded; the synthetic default model has
    fewer albedo components than DECA's 50).
    """
    coeffs = jnp.asarray(coeffs)
    dtype = jnp.result_type(coeffs.dtype, jnp.float32)
    if model.albedo_mean is None:
        size = (256, 256) if model.uv_face_eye_mask is None else tuple(model.uv_face_eye_mask.shape[:2])
        return jnp.zeros(size + (3,), dtype)
    basis = jnp.asarray(model.albedo_basis, dtype)
    n = coeffs.shape[-1]
    if n > basis.shape[-1]:
        if not truncate:
            raise ValueError(
                f"coeffs: the model's albedo basis has {basis.shape[-1]} components, got {n} coefficients"
            )
        n = basis.shape[-1]
        coeffs = coeffs[..., :n]
    return jnp.asarray(model.albedo_mean, dtype) + jnp.einsum(
        "hwck,k->hwc", basis[..., :n], coeffs.astype(dtype)
    )


def shade(normals, light):
    """SH shading (``SRenderY.add_SHlight``) of world-frame ``normals (..., 3)`` with ``light (9, 3)`` or ``(27,)``."""
    light = jnp.asarray(light)
    if light.shape == (27,):
        light = light.reshape(9, 3)
    return sh_shading(normals, light)
