"""DECA's detail stage: UV displacement -> detail normals (``DECA.displacement2normal`` in
``decalib/deca.py``), animation helper.

UV maps are channel-last ``(256, 256, C)``, row 0 = v = 1; positions and normals in them are in the
FLAME world frame (metres; y up, +z towards the camera). The dense UV-grid mesh has vertex
index row · W + col.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jface.deca.appearance import shade
from jface.geometry import vertex_normals

__all__ = [
    "generate_dense_triangles",
    "displacement_to_normals",
    "displacement_map",
    "detail_shading",
    "load_fixed_displacement",
    "animate",
]


@functools.lru_cache(maxsize=8)
def _dense_triangles(h, w, margin_x, margin_y):
    x = np.arange(margin_x, w - 1 - margin_x)
    y = np.arange(margin_y, h - 1 - margin_y)
    xx, yy = np.meshgrid(x, y, indexing="ij")  # outer loop x, inner loop y (DECA's order)
    i = (yy * w + xx).reshape(-1)
    t0 = np.stack([i, i + 1, i + w], axis=-1)
    t1 = np.stack([i + 1, i + w + 1, i + w], axis=-1)
    tris = np.stack([t0, t1], axis=1).reshape(-1, 3)
    tris = tris[:, [0, 2, 1]]
    tris.setflags(write=False)
    return tris.astype(np.int32)


def generate_dense_triangles(h=256, w=256, margin_x=2, margin_y=5):
    """DECA's ``util.generate_triangles``: triangles of the h×w UV-grid mesh.

    Loops x = margin_x .. w-2-margin_x (outer) and y = margin_y .. h-2-margin_y (inner); per cell
    with i = y·w + x: t0 = (i, i+1, i+w), t1 = (i+1, i+w+1, i+w), then the last two indices are
    swapped, giving (i, i+w, i+1) and (i+1, i+w, i+w+1). 122,990 triangles at the defaults.
    Returns a read-only int32 numpy array ``(T, 3)``.
    """
    return _dense_triangles(int(h), int(w), int(margin_x), int(margin_y))


def displacement_to_normals(displacement, uv_positions, uv_normals, mask, fixed_displacement=None):
    """DECA's ``displacement2normal`` for one item.

    Args:
      displacement: D ``(H, W)`` or ``(H, W, 1)`` (metres, along the coarse normal).
      uv_positions: P = world2uv(coarse vertices) ``(H, W, 3)``; detached here as in DECA.
      uv_normals: N = world2uv(coarse vertex normals) ``(H, W, 3)``; detached here.
      mask: M, the soft face/eye mask ``(H, W)`` or ``(H, W, 1)`` in [0, 1].
      fixed_displacement: Δ ``(H, W)`` or None (zeros); **not** masked.

    P_d = P + (D·M)·N + Δ·N is read as a grid mesh (vertex row·W + col, faces
    :func:`generate_dense_triangles`); its area-weighted unit normals n_d are blended as
    n_d·M + N·(1 − M). Returns ``(H, W, 3)`` detail normals (world frame), differentiable w.r.t. D.
    """
    disp = jnp.asarray(displacement)
    if disp.ndim == 3:
        if disp.shape[-1] != 1:
            raise ValueError(f"displacement: expected (H, W) or (H, W, 1), got shape {disp.shape}")
        disp = disp[..., 0]
    if disp.ndim != 2:
        raise ValueError(f"displacement: expected (H, W) or (H, W, 1), got shape {disp.shape}")
    height, width = disp.shape
    for name, arr in (("uv_positions", uv_positions), ("uv_normals", uv_normals)):
        if jnp.shape(arr) != (height, width, 3):
            raise ValueError(f"{name}: expected shape {(height, width, 3)}, got {jnp.shape(arr)}")
    dtype = jnp.result_type(disp.dtype, jnp.asarray(uv_positions).dtype, jnp.float32)
    disp = disp.astype(dtype)
    mask = jnp.asarray(mask, dtype)
    if mask.ndim == 3:
        mask = mask[..., 0]
    if mask.shape != (height, width):
        raise ValueError(f"mask: expected shape {(height, width)} or {(height, width, 1)}, got {mask.shape}")
    positions = jax.lax.stop_gradient(jnp.asarray(uv_positions, dtype))
    normals = jax.lax.stop_gradient(jnp.asarray(uv_normals, dtype))
    offset = disp * mask
    if fixed_displacement is not None:
        fixed = jnp.asarray(fixed_displacement, dtype)
        if fixed.shape != (height, width):
            raise ValueError(f"fixed_displacement: expected shape {(height, width)}, got {fixed.shape}")
        offset = offset + fixed
    detail_positions = positions + offset[..., None] * normals
    dense = detail_positions.reshape(height * width, 3)
    faces = jnp.asarray(generate_dense_triangles(height, width))
    dense_normals = vertex_normals(dense, faces).reshape(height, width, 3)
    m = mask[..., None]
    return dense_normals * m + normals * (1.0 - m)


def displacement_map(displacement, fixed_displacement=None):
    """``displacement_map`` output of DECA's decode: D + Δ, **without** the mask (``DECA.decode``).

    ``displacement (..., H, W)`` or ``(..., H, W, 1)``; ``fixed_displacement (H, W)`` or None.
    """
    disp = jnp.asarray(displacement)
    if fixed_displacement is None:
        return disp
    fixed = jnp.asarray(fixed_displacement, disp.dtype)
    if disp.ndim >= 3 and disp.shape[-1] == 1 and disp.shape[-3:-1] == fixed.shape:
        fixed = fixed[..., None]
    return disp + fixed


def detail_shading(uv_detail_normals, light, uv_albedo=None):
    """``uv_shading = SH(uv_detail_normals, light)`` and ``uv_texture = albedo ⊙ uv_shading``.

    Returns ``(uv_shading, uv_texture)``; ``uv_texture`` is None without ``uv_albedo``.
    """
    shading = shade(uv_detail_normals, light)
    return shading, (None if uv_albedo is None else jnp.asarray(uv_albedo) * shading)


def load_fixed_displacement(path):
    """Read DECA's ``fixed_displacement_256.npy`` (a (256, 256) float64 array, in DECA's ``data/``).

    Returns a float32 numpy array. Raises ValueError naming the file if the layout differs.
    """
    path = Path(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read a numpy array ({err})") from err
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"{path}: expected a square (256, 256) displacement map, got shape {arr.shape}")
    return arr.astype(np.float32)


def animate(codes, expression=None, jaw_pose=None):
    """Re-animate a reconstruction: new ``exp`` and/or jaw (pose[3:6]), identity and detail kept.

    ``codes``: a DECA code dict (``shape``, ``tex``, ``exp``, ``pose``, ``cam``, ``light``,
    ``detail``), per item or batched. ``expression (..., 50)``, ``jaw_pose (..., 3)`` axis-angle.
    The shape, albedo, camera, light, global pose and detail codes are unchanged, so the
    displacement (a function of jaw, exp and detail: F_d's input) follows the new expression
    (DECA's ``demo_transfer.py``).
    """
    out = dict(codes)
    if expression is not None:
        expression = jnp.asarray(expression)
        if expression.shape[-1] != jnp.shape(codes["exp"])[-1]:
            raise ValueError(
                f"expression: expected last dimension {jnp.shape(codes['exp'])[-1]}, got {expression.shape}"
            )
        out["exp"] = jnp.broadcast_to(expression, jnp.shape(codes["exp"])).astype(jnp.asarray(codes["exp"]).dtype)
    if jaw_pose is not None:
        jaw_pose = jnp.asarray(jaw_pose)
        if jaw_pose.shape[-1] != 3:
            raise ValueError(f"jaw_pose: expected (..., 3) axis-angle, got shape {jaw_pose.shape}")
        pose = jnp.asarray(codes["pose"])
        jaw = jnp.broadcast_to(jaw_pose, pose.shape[:-1] + (3,)).astype(pose.dtype)
        out["pose"] = jnp.concatenate([pose[..., :3], jaw], axis=-1)
    return out
