"""Rigid geometry and cameras shared by 3DMM-STN and DECA.

Every function is pure jnp, accepts any leading batch dimensions, and keeps the floating dtype
of its input (float32 in, float32 out; float64 in, float64 out). Frames are named in each
docstring; BUILD_NOTES.md keeps the table of frames.

Conventions (x' = R x, column vectors; points are row-major ``(..., N, 3)`` so a rotation is
applied as ``points @ R^T``):

* 3DMM-STN (the MatConvNet layers ``vl_nnr2R``, ``vl_nnrotate3D``, ``vl_nnprojection``,
  ``vl_nnlogScale2Scale``, ``vl_nnscale2D``, ``vl_nntranslate2D``): axis-angle r -> R, rotate,
  orthographic projection (drop z), scale s = 0.99**logs, translate by t in the y-up 224-pixel
  frame (BUILD_NOTES.md, Frames and conventions).
* DECA (``decalib/models/lbs.py: batch_rodrigues``, ``decalib/utils/util.py: batch_orth_proj``):
  ``batch_rodrigues`` with 1e-8 added to every component, scaled orthographic camera
  s * (X + t) with z scaled but not translated, then a y/z flip (``decalib/deca.py``, ``decode``).

Shapes are checked on the static shapes (free under ``jit``): a wrong trailing axis raises a
``ValueError`` naming the argument and the expected shape; face indices are range-checked when they
are concrete (not traced).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jface.arrays import as_float

__all__ = [
    "axis_angle_to_matrix",
    "matrix_to_axis_angle",
    "euler_to_matrix",
    "matrix_to_euler",
    "deca_euler_to_axis_angle",
    "rotate_points",
    "orthographic_projection",
    "stn_scale",
    "scale_points",
    "translate_points",
    "orthographic_camera",
    "flip_yz",
    "cross_product_matrix",
    "vertex_normals",
    "check_faces",
]

# Below this squared angle the Taylor branch is used. With terms up to theta**4 the truncation
# error is below theta**6 / 5040 < 2e-16 here, so both branches agree to float64 precision.
_SMALL_ANGLE_SQ = 1e-6


def _trailing(x: ArrayLike, name: str, tail: tuple[int, ...], layout: str) -> jax.Array:
    """``x`` as a float array whose last axes are ``tail``, else a ValueError naming ``name``."""
    x = as_float(x)
    if x.ndim < len(tail) or tuple(x.shape[x.ndim - len(tail):]) != tail:
        raise ValueError(f"{name}: expected shape {layout}, got {tuple(x.shape)}")
    return x


def check_faces(faces: ArrayLike, num_vertices: int, name: str = "faces", rows: str | None = None) -> jax.Array:
    """``faces`` as an int32 ``(F, 3)`` array of indices into ``num_vertices`` rows.

    The shape and the integer dtype are checked always (static); the index range [0, V) only when
    ``faces`` is concrete (a traced ``faces`` under ``jit``/``vmap`` passes untouched, so the check
    costs nothing there). Raises ``ValueError`` naming ``name``; ``rows`` says what the V rows are
    (default "V vertices").
    """
    if not hasattr(faces, "dtype"):
        faces = np.asarray(faces)
    shape, dtype = tuple(np.shape(faces)), faces.dtype
    if len(shape) != 2 or shape[-1] != 3:
        raise ValueError(f"{name}: expected shape (F, 3) of vertex indices, got {shape}")
    if not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"{name}: expected an integer dtype (vertex indices), got {dtype}")
    if shape[0] and not isinstance(faces, jax.core.Tracer):
        values = np.asarray(faces)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high >= num_vertices:
            raise ValueError(
                f"{name}: vertex indices must lie in [0, {num_vertices}) "
                f"({rows or f'{num_vertices} vertices'}), got indices from {low} to {high}"
            )
    return jnp.asarray(faces, jnp.int32)


def cross_product_matrix(v: ArrayLike) -> jax.Array:
    """``(..., 3) -> (..., 3, 3)`` skew matrix [v]x with [v]x w = v x w."""
    v = _trailing(v, "v", (3,), "(..., 3)")
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    zero = jnp.zeros_like(x)
    rows = [
        jnp.stack([zero, -z, y], axis=-1),
        jnp.stack([z, zero, -x], axis=-1),
        jnp.stack([-y, x, zero], axis=-1),
    ]
    return jnp.stack(rows, axis=-2)


def axis_angle_to_matrix(r: ArrayLike, *, deca: bool = False) -> jax.Array:
    """Rodrigues' formula: axis-angle ``(..., 3)`` (radians, angle = |r|) -> ``(..., 3, 3)``.

    R = I + sin(t)/t [r]x + (1 - cos(t))/t^2 [r]x^2, a right-handed rotation, x' = R x.

    ``deca=False`` (3DMM-STN ``vl_nnr2R.m``): exactly I at r = 0 with
    gradients equal to the so(3) generators there; a Taylor branch for tiny angles keeps values
    and gradients accurate down to |r| ~ 1e-9 and the closed form is exact up to and past pi.

    ``deca=True`` reproduces DECA's ``batch_rodrigues`` (``decalib/models/lbs.py``) operation by
    operation in float32: angle = |r + 1e-8|, k = r / angle, R = I + sin K + (1 - cos) K K.
    Results equal torch's to within a few float32 ulp (sin/cos and the norm's reduction order
    are library-specific; see BUILD_NOTES.md).
    """
    r = _trailing(r, "r", (3,), "(..., 3) (axis-angle vectors)")
    if deca:
        return _batch_rodrigues_deca(r)
    theta_sq = jnp.sum(r * r, axis=-1)
    small = theta_sq < _SMALL_ANGLE_SQ
    # Safe divisor: the closed-form branch never sees theta = 0, so its gradient stays finite.
    theta_sq_safe = jnp.where(small, jnp.ones_like(theta_sq), theta_sq)
    theta = jnp.sqrt(theta_sq_safe)
    a_closed = jnp.sin(theta) / theta
    b_closed = (1.0 - jnp.cos(theta)) / theta_sq_safe
    a_taylor = 1.0 - theta_sq / 6.0 + theta_sq * theta_sq / 120.0
    b_taylor = 0.5 - theta_sq / 24.0 + theta_sq * theta_sq / 720.0
    a = jnp.where(small, a_taylor, a_closed)[..., None, None]
    b = jnp.where(small, b_taylor, b_closed)[..., None, None]
    k = cross_product_matrix(r)
    eye = jnp.eye(3, dtype=r.dtype)
    return eye + a * k + b * (k @ k)


def _batch_rodrigues_deca(r):
    # Operation order of DECA's batch_rodrigues (decalib/models/lbs.py).
    # torch.norm(r + 1e-8); the sum is spelled out left to right, the order torch's CPU
    # kernel agrees with most often (float32 results then match to <= 4 ulp, sin/cos differ by
    # 1 ulp between libms, so exact bit equality across frameworks is not attainable).
    shifted = r + 1e-8
    x, y, z = shifted[..., 0:1], shifted[..., 1:2], shifted[..., 2:3]
    angle = jnp.sqrt((x * x + y * y) + z * z)
    rot_dir = r / angle
    cos = jnp.cos(angle)[..., None]
    sin = jnp.sin(angle)[..., None]
    k = cross_product_matrix(rot_dir)
    # K @ K with the three products summed left to right (a 3x3 bmm), not a dot primitive.
    kk = (k[..., :, 0:1] * k[..., 0:1, :] + k[..., :, 1:2] * k[..., 1:2, :]) + k[..., :, 2:3] * k[..., 2:3, :]
    eye = jnp.eye(3, dtype=r.dtype)
    return eye + sin * k + (1 - cos) * kk


def matrix_to_axis_angle(rotation: ArrayLike) -> jax.Array:
    """``(..., 3, 3) -> (..., 3)`` axis-angle, the inverse of :func:`axis_angle_to_matrix`.

    Uses the log map with a safe branch at the identity; angles near pi use the symmetric part.
    """
    rotation = _trailing(rotation, "rotation", (3, 3), "(..., 3, 3)")
    trace = rotation[..., 0, 0] + rotation[..., 1, 1] + rotation[..., 2, 2]
    cos = jnp.clip((trace - 1.0) / 2.0, -1.0, 1.0)
    vee = jnp.stack(
        [
            rotation[..., 2, 1] - rotation[..., 1, 2],
            rotation[..., 0, 2] - rotation[..., 2, 0],
            rotation[..., 1, 0] - rotation[..., 0, 1],
        ],
        axis=-1,
    )
    sin = 0.5 * jnp.linalg.norm(vee, axis=-1)
    angle = jnp.arctan2(sin, cos)
    small = sin < 1e-6
    near_pi = small & (cos < 0)
    scale = jnp.where(small, 0.5 + angle**2 / 12.0, angle / (2.0 * jnp.where(small, 1.0, sin)))
    generic = vee * scale[..., None]
    # Near pi: R ~ 2 k k^T - I, take the column with the largest diagonal entry.
    sym = (rotation + jnp.swapaxes(rotation, -1, -2)) / 2.0 + jnp.eye(3, dtype=rotation.dtype)
    col = jnp.argmax(jnp.diagonal(sym, axis1=-2, axis2=-1), axis=-1)
    axis = jnp.take_along_axis(sym, col[..., None, None], axis=-1)[..., 0]
    axis = axis / jnp.maximum(jnp.linalg.norm(axis, axis=-1, keepdims=True), 1e-12)
    axis = jnp.where(jnp.sum(axis * vee, axis=-1, keepdims=True) < 0, -axis, axis)
    return jnp.where(near_pi[..., None], axis * angle[..., None], generic)


def _rot_x(a):
    c, s = jnp.cos(a), jnp.sin(a)
    one, zero = jnp.ones_like(a), jnp.zeros_like(a)
    return jnp.stack(
        [jnp.stack([one, zero, zero], -1), jnp.stack([zero, c, -s], -1), jnp.stack([zero, s, c], -1)], -2
    )


def _rot_y(a):
    c, s = jnp.cos(a), jnp.sin(a)
    one, zero = jnp.ones_like(a), jnp.zeros_like(a)
    return jnp.stack(
        [jnp.stack([c, zero, s], -1), jnp.stack([zero, one, zero], -1), jnp.stack([-s, zero, c], -1)], -2
    )


def _rot_z(a):
    c, s = jnp.cos(a), jnp.sin(a)
    one, zero = jnp.ones_like(a), jnp.zeros_like(a)
    return jnp.stack(
        [jnp.stack([c, -s, zero], -1), jnp.stack([s, c, zero], -1), jnp.stack([zero, zero, one], -1)], -2
    )


def euler_to_matrix(angles: ArrayLike) -> jax.Array:
    """Euler angles ``(..., 3)`` = (x, y, z) radians -> ``(..., 3, 3)``, R = Rz(z) Ry(y) Rx(x).

    This is the convention whose y angle DECA reads back for the dynamic contour
    (``decalib/models/lbs.py: rot_mat_to_euler``: atan2(-R[2,0], sqrt(R[0,0]^2 + R[1,0]^2)), called
    by ``decalib/models/FLAME.py: _find_dynamic_lmk_idx_and_bcoords``), so
    ``matrix_to_euler(euler_to_matrix(a))[..., 1] == a[..., 1]`` for |y| < pi/2. The y angle is
    the head's yaw: positive yaw turns the face (+z) towards +x.
    """
    a = _trailing(angles, "angles", (3,), "(..., 3) (x, y, z angles)")
    return _rot_z(a[..., 2]) @ _rot_y(a[..., 1]) @ _rot_x(a[..., 0])


def matrix_to_euler(rotation: ArrayLike) -> jax.Array:
    """``(..., 3, 3) -> (..., 3)`` (x, y, z) angles of R = Rz Ry Rx; the inverse of euler_to_matrix.

    The y component is exactly DECA's ``rot_mat_to_euler`` (``decalib/models/lbs.py``).
    """
    rotation = _trailing(rotation, "rotation", (3, 3), "(..., 3, 3)")
    sy = jnp.sqrt(rotation[..., 0, 0] ** 2 + rotation[..., 1, 0] ** 2)
    y = jnp.arctan2(-rotation[..., 2, 0], sy)
    x = jnp.arctan2(rotation[..., 2, 1], rotation[..., 2, 2])
    z = jnp.arctan2(rotation[..., 1, 0], rotation[..., 0, 0])
    return jnp.stack([x, y, z], axis=-1)


def deca_euler_to_axis_angle(angles: ArrayLike) -> jax.Array:
    """DECA's ``batch_euler2axis`` (Euler -> quaternion -> axis-angle), ``(..., 3) -> (..., 3)``.

    DECA's ``euler_to_quaternion`` composes R = Rx(x) Ry(y) Rz(z) (note: a different order from
    :func:`euler_to_matrix`); it is used for ``jaw_type='euler'`` and the teaser's yaw sweep.
    The quaternion -> axis-angle step follows kornia 0.4's ``quaternion_to_angle_axis``.
    """
    a = _trailing(angles, "angles", (3,), "(..., 3) (x, y, z angles)") / 2.0
    cx, cy, cz = jnp.cos(a[..., 0]), jnp.cos(a[..., 1]), jnp.cos(a[..., 2])
    sx, sy, sz = jnp.sin(a[..., 0]), jnp.sin(a[..., 1]), jnp.sin(a[..., 2])
    qw = cx * cy * cz - sx * sy * sz
    qx = cx * sy * sz + cy * cz * sx
    qy = cx * cz * sy - sx * cy * sz
    qz = cx * cy * sz + sx * cz * sy
    sin_sq = qx * qx + qy * qy + qz * qz
    positive = sin_sq > 0.0
    sin_theta = jnp.sqrt(jnp.where(positive, sin_sq, 1.0))
    two_theta = 2.0 * jnp.where(
        qw < 0.0, jnp.arctan2(-sin_theta, -qw), jnp.arctan2(sin_theta, qw)
    )
    k = jnp.where(positive, two_theta / sin_theta, 2.0)
    return jnp.stack([qx * k, qy * k, qz * k], axis=-1)


def rotate_points(points: ArrayLike, rotation: ArrayLike) -> jax.Array:
    """Active rotation of row-major points: ``(..., N, 3), (..., 3, 3) -> (..., N, 3)``, x' = R x."""
    points = _trailing(points, "points", (3,), "(..., N, 3)")
    rotation = _trailing(rotation, "rotation", (3, 3), "(..., 3, 3)")
    return jnp.einsum("...ij,...nj->...ni", rotation.astype(points.dtype), points)


def orthographic_projection(points: ArrayLike) -> jax.Array:
    """Orthographic projection along z (3DMM-STN ``vl_nnprojection.m``): ``(..., N, 3) -> (..., N, 2)``
    = (x, y)."""
    return _trailing(points, "points", (3,), "(..., N, 3)")[..., :2]


def stn_scale(logs: ArrayLike) -> jax.Array:
    """3DMM-STN's scale law s = 0.99**logs (``vl_nnlogScale2Scale.m``; not exp(logs)).

    s = 1 at logs = 0; a larger logs gives a smaller face; ds/dlogs = s ln 0.99.
    """
    logs = as_float(logs)
    return jnp.exp(logs * math.log(0.99)).astype(logs.dtype)


def scale_points(points: ArrayLike, scale: ArrayLike) -> jax.Array:
    """``(..., N, D), (...) -> (..., N, D)``: multiply each item's points by its scalar scale."""
    points = as_float(points)
    if points.ndim < 2:
        raise ValueError(f"points: expected shape (..., N, D), got {tuple(points.shape)}")
    return points * jnp.asarray(scale, points.dtype)[..., None, None]


def translate_points(points: ArrayLike, translation: ArrayLike) -> jax.Array:
    """``(..., N, D), (..., D) -> (..., N, D)``: add the item's translation to every point."""
    points = as_float(points)
    if points.ndim < 2:
        raise ValueError(f"points: expected shape (..., N, D), got {tuple(points.shape)}")
    dims = points.shape[-1]
    translation = _trailing(translation, "translation", (dims,), f"(..., {dims}) (one offset per point axis)")
    return points + jnp.asarray(translation, points.dtype)[..., None, :]


def orthographic_camera(points: ArrayLike, cam: ArrayLike) -> jax.Array:
    """DECA's scaled orthographic camera (``decalib/utils/util.py: batch_orth_proj``), before the flip.

    ``points (..., N, 3)`` in FLAME world coordinates (metres, y up, +z towards the camera),
    ``cam (..., 3)`` = (s, t_x, t_y). Returns ``(..., N, 3)`` = s * (x + t_x, y + t_y, z):
    translate first, then scale; z is scaled but not translated.
    """
    points = _trailing(points, "points", (3,), "(..., N, 3)")
    cam = _trailing(cam, "cam", (3,), "(..., 3) (s, t_x, t_y)").astype(points.dtype)
    s = cam[..., 0][..., None, None]
    xy = points[..., :2] + cam[..., None, 1:3]
    return s * jnp.concatenate([xy, points[..., 2:3]], axis=-1)


def flip_yz(points: ArrayLike) -> jax.Array:
    """DECA's flip into its NDC (``decalib/deca.py``, ``decode``): (x, y, z) -> (x, -y, -z); y then
    points down."""
    points = _trailing(points, "points", (3,), "(..., 3)")
    sign = jnp.asarray([1.0, -1.0, -1.0], points.dtype)
    return points * sign


def vertex_normals(vertices: ArrayLike, faces: ArrayLike) -> jax.Array:
    """DECA's ``vertex_normals`` (``decalib/utils/util.py``): area-weighted unit vertex normals.

    ``vertices (..., V, 3)``, ``faces (F, 3)`` int -> ``(..., V, 3)``. Each face's unnormalised
    normal (v1 - v0) x (v2 - v0) is added to its three vertices; the sum is divided by
    max(|n|, 1e-6). Vertices used by no face get 0. Counter-clockwise faces seen from outside give
    outward normals.
    """
    vertices = _trailing(vertices, "vertices", (3,), "(..., V, 3)")
    if vertices.ndim < 2:
        raise ValueError(f"vertices: expected shape (..., V, 3), got {tuple(vertices.shape)}")
    faces = check_faces(faces, vertices.shape[-2])
    v0 = vertices[..., faces[:, 0], :]
    v1 = vertices[..., faces[:, 1], :]
    v2 = vertices[..., faces[:, 2], :]
    face_normals = jnp.cross(v1 - v0, v2 - v0)
    normals = jnp.zeros_like(vertices)
    for corner in range(3):
        normals = normals.at[..., faces[:, corner], :].add(face_normals)
    # max(|n|, 1e-6) with a finite gradient where n = 0 (isolated or zero-area neighbourhoods):
    # the sqrt never sees 0, and below 1e-12 the value is the same constant 1e-6.
    norm = jnp.sqrt(jnp.maximum(jnp.sum(normals * normals, axis=-1, keepdims=True), 1e-12))
    return normals / norm
