"""The FLAME layer as DECA calls it (``decalib/models/FLAME.py``): parameters -> vertices, joints,
landmarks.

Frame of every output: FLAME world (metres; x to the subject's left, y up, +z towards the
camera), before DECA's camera (jface.geometry.orthographic_camera) and y/z flip.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jface.flame.lbs import lbs
from jface.geometry import axis_angle_to_matrix, check_faces, matrix_to_euler
from jface.models.morphable import FlameModel

__all__ = [
    "forward",
    "full_pose",
    "barycentric_landmarks",
    "dynamic_contour_row",
    "contour_row_from_yaw",
    "dynamic_landmark_embedding",
    "landmark_visibility",
]

# DECA's neck_kin_chain (FLAME.__init__): the ancestors of the neck up to the root.
NECK_KIN_CHAIN = (1, 0)
# Yaw clamp of DECA's contour LUT, in degrees (FLAME._find_dynamic_lmk_idx_and_bcoords).
_YAW_LIMIT = 39


def _compute_dtype(*arrays):
    dtype = jnp.result_type(*[jnp.asarray(a).dtype for a in arrays])
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.float32
    return dtype


def _vector(x, name, dtype=None):
    x = jnp.asarray(x) if dtype is None else jnp.asarray(x, dtype)
    if x.ndim != 1:
        raise ValueError(
            f"{name}: expected a 1-D vector for one item (batch with jax.vmap), got shape {x.shape}"
        )
    return x


def full_pose(pose: ArrayLike, neck_pose: ArrayLike | None = None, eye_pose: ArrayLike | None = None) -> jax.Array:
    """FLAME's 15-number pose [global, neck, jaw, eye0, eye1] from DECA's parameters (``FLAME.forward``).

    ``pose (6,)`` = [global aa, jaw aa] (DECA's network output; neck and eyes are zero unless
    ``neck_pose (3,)`` / ``eye_pose (6,)`` are given), or ``pose (15,)``, already the full pose (then
    ``neck_pose`` and ``eye_pose`` must be None).
    """
    pose = _vector(pose, "pose")
    if pose.shape[0] == 15:
        if neck_pose is not None or eye_pose is not None:
            raise ValueError(
                "pose: a full 15-number pose already holds the neck and eye rotations; "
                "pass neck_pose/eye_pose only with a 6-number [global, jaw] pose"
            )
        return pose
    if pose.shape[0] != 6:
        raise ValueError(
            f"pose: expected 6 numbers [global aa, jaw aa] or 15 (the full FLAME pose), "
            f"got shape {pose.shape}"
        )
    neck = jnp.zeros((3,), pose.dtype) if neck_pose is None else _vector(neck_pose, "neck_pose")
    eyes = jnp.zeros((6,), pose.dtype) if eye_pose is None else _vector(eye_pose, "eye_pose")
    if neck.shape != (3,):
        raise ValueError(f"neck_pose: expected shape (3,), got {neck.shape}")
    if eyes.shape != (6,):
        raise ValueError(f"eye_pose: expected shape (6,) (two axis-angles), got {eyes.shape}")
    dtype = jnp.result_type(pose.dtype, neck.dtype, eyes.dtype)
    return jnp.concatenate(
        [pose[:3].astype(dtype), neck.astype(dtype), pose[3:].astype(dtype), eyes.astype(dtype)]
    )


def barycentric_landmarks(vertices: ArrayLike, faces: ArrayLike, face_idx: ArrayLike,
                          bary_coords: ArrayLike) -> jax.Array:
    """DECA's ``vertices2landmarks`` (``decalib/models/lbs.py``): l = Σ_k bc_k V[F[face_idx, k]].

    ``vertices (V, D)``, ``faces (F, 3)``, ``face_idx (L,)`` int, ``bary_coords (L, 3)`` ->
    ``(L, D)``. Works for any per-vertex attribute (positions, normals). Shapes are checked
    always, the indices (faces into V, face_idx into F) when they are concrete (not traced).
    """
    vertices = jnp.asarray(vertices)
    if vertices.ndim != 2:
        raise ValueError(f"vertices: expected (V, D), got shape {vertices.shape}")
    faces = check_faces(faces, vertices.shape[0])
    face_idx = jnp.asarray(face_idx) if isinstance(face_idx, jax.core.Tracer) else np.asarray(face_idx)
    bary_coords = jnp.asarray(bary_coords)
    if face_idx.ndim != 1 or not jnp.issubdtype(face_idx.dtype, jnp.integer):
        raise ValueError(f"face_idx: expected (L,) int face indices, got shape {face_idx.shape}, {face_idx.dtype}")
    if bary_coords.shape != (face_idx.shape[0], 3):
        raise ValueError(f"bary_coords: expected shape ({face_idx.shape[0]}, 3), got {bary_coords.shape}")
    if face_idx.size and isinstance(face_idx, np.ndarray):
        low, high = int(face_idx.min()), int(face_idx.max())
        if low < 0 or high >= faces.shape[0]:
            raise ValueError(f"face_idx: face indices must lie in [0, {faces.shape[0]}) ({faces.shape[0]} faces), "
                             f"got indices from {low} to {high}")
    corners = vertices[faces[face_idx]]  # (L, 3, D)
    return jnp.einsum("lkd,lk->ld", corners, bary_coords.astype(vertices.dtype))


def dynamic_contour_row(full_pose_aa: ArrayLike) -> jax.Array:
    """Row of DECA's dynamic-contour LUT for a full pose ``(15,)`` (an int32 scalar), as
    ``FLAME._find_dynamic_lmk_idx_and_bcoords``.

    rel = R_root · R_neck (DECA's batch_rodrigues), γ = Euler-y of rel in degrees (no minus sign),
    a = round(min(γ, 39)) half to even; row = a if a >= 0, 78 if a < -39, else 39 - a.
    The row is piecewise constant in the pose, so no gradient flows through it.
    """
    aa = jax.lax.stop_gradient(full_pose_aa).reshape(-1, 3)
    rotations = axis_angle_to_matrix(aa[jnp.asarray(NECK_KIN_CHAIN)], deca=True)
    rel = jnp.eye(3, dtype=rotations.dtype)
    for idx in range(len(NECK_KIN_CHAIN)):
        rel = rotations[idx] @ rel
    return contour_row_from_yaw(matrix_to_euler(rel)[1] * (180.0 / jnp.pi))


def contour_row_from_yaw(yaw_degrees: ArrayLike) -> jax.Array:
    """DECA's LUT row rule (``FLAME._find_dynamic_lmk_idx_and_bcoords``) for a yaw γ in degrees
    (any shape, int32).

    a = round(min(γ, 39)) with round half to even (torch.round == jnp.round); the row is a if
    a >= 0, 78 if a < -39, else 39 - a. Only the upper clamp exists in DECA.
    """
    a = jnp.round(jnp.minimum(jnp.asarray(yaw_degrees), _YAW_LIMIT)).astype(jnp.int32)
    negative = jnp.where(a < -_YAW_LIMIT, 2 * _YAW_LIMIT, _YAW_LIMIT - a)
    return jnp.where(a < 0, negative, a)


def dynamic_landmark_embedding(model: FlameModel, full_pose_aa: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """``(face_idx (17,), bary (17, 3))`` of the contour row chosen for this pose."""
    row = dynamic_contour_row(full_pose_aa)
    return jnp.asarray(model.dynamic_lmk_faces_idx)[row], jnp.asarray(model.dynamic_lmk_bary_coords)[row]


def _check_coeffs(model, shape, expression):
    if shape.shape[0] > model.n_shape:
        raise ValueError(
            f"shape: expected at most {model.n_shape} identity coefficients (the model's), "
            f"got {shape.shape[0]}"
        )
    if expression.shape[0] > model.n_expression:
        raise ValueError(
            f"expression: expected at most {model.n_expression} expression coefficients (the "
            f"model's), got {expression.shape[0]}"
        )


def forward(model: FlameModel, shape: ArrayLike, expression: ArrayLike, pose: ArrayLike, *,
            neck_pose: ArrayLike | None = None, eye_pose: ArrayLike | None = None) -> dict[str, jax.Array]:
    """DECA's FLAME forward pass for one item (``decalib/models/FLAME.py``, ``FLAME.forward``).

    Args:
      model: a :class:`jface.models.FlameModel` (FLAME 2020 layouts).
      shape: ``(Ns,)`` identity coefficients β, Ns <= model.n_shape; they weight the first Ns
        identity columns of ``shapedirs`` (DECA: Ns = 100).
      expression: ``(Ne,)`` ψ, weighting expression columns n_shape .. n_shape + Ne - 1
        (DECA: Ne = 50, columns 300..349).
      pose: ``(6,)`` = [global aa, jaw aa] (DECA) or ``(15,)`` the full FLAME pose
        [global, neck, jaw, eye0, eye1].
      neck_pose, eye_pose: optional ``(3,)`` / ``(6,)`` axis-angles for a 6-number pose
        (DECA keeps them zero).

    Returns a dict (FLAME world frame, metres), dtype = the promoted dtype of the inputs:
      ``vertices (V, 3)``; ``joints (5, 3)`` posed joints; and, if the model has a landmark
      embedding, ``landmarks2d (68, 3)`` = [17 dynamic contour points (the LUT row for the head's
      yaw), 51 static points] and ``landmarks3d (68, 3)`` (the fixed full embedding).
    """
    shape = _vector(shape, "shape")
    expression = _vector(expression, "expression")
    pose_full = full_pose(pose, neck_pose, eye_pose)
    _check_coeffs(model, shape, expression)
    num_joints = model.j_regressor.shape[0]
    if pose_full.shape[0] != 3 * num_joints:
        raise ValueError(
            f"pose: the model has {num_joints} joints, so the full pose needs {3 * num_joints} "
            f"numbers; got {pose_full.shape[0]}"
        )
    dtype = _compute_dtype(shape, expression, pose_full, model.v_template)
    ns, ne = shape.shape[0], expression.shape[0]
    dirs = jnp.concatenate(
        [model.shapedirs[..., :ns], model.shapedirs[..., model.n_shape : model.n_shape + ne]],
        axis=-1,
    ).astype(dtype)
    coeffs = jnp.concatenate([shape.astype(dtype), expression.astype(dtype)])
    vertices, joints, _ = lbs(
        coeffs,
        pose_full.astype(dtype),
        model.v_template.astype(dtype),
        dirs,
        model.posedirs.astype(dtype),
        model.j_regressor.astype(dtype),
        tuple(model.parents),
        model.lbs_weights.astype(dtype),
    )
    out = {"vertices": vertices, "joints": joints}
    if model.has_landmarks:
        faces = jnp.asarray(model.faces, jnp.int32)
        dyn_idx, dyn_bary = dynamic_landmark_embedding(model, pose_full)
        face_idx = jnp.concatenate([dyn_idx, model.static_lmk_faces_idx]).astype(jnp.int32)
        bary = jnp.concatenate(
            [dyn_bary.astype(dtype), model.static_lmk_bary_coords.astype(dtype)], axis=0
        )
        out["landmarks2d"] = barycentric_landmarks(vertices, faces, face_idx, bary)
        out["landmarks3d"] = barycentric_landmarks(
            vertices,
            faces,
            model.full_lmk_faces_idx.reshape(-1).astype(jnp.int32),
            model.full_lmk_bary_coords.reshape(-1, 3),
        )
    return out


def landmark_visibility(model: FlameModel, transformed_normals: ArrayLike, threshold: float = 0.1) -> jax.Array:
    """DECA's ``DECA.visofp`` (``decalib/deca.py``): ``(68,)`` 1.0 where a full landmark faces the camera.

    ``transformed_normals (V, 3)``: vertex normals of ``trans_verts`` (DECA's NDC after the y/z
    flip, where visible surfaces have z < 0). The normals are interpolated at the 68 full
    landmarks with their barycentrics (not renormalised); a landmark is visible if z < 0.1.
    Returned in the normals' dtype (as DECA's ``.float()``); no gradient.
    """
    normals = jnp.asarray(transformed_normals)
    if normals.ndim != 2 or normals.shape[-1] != 3:
        raise ValueError(f"transformed_normals: expected (V, 3), got shape {normals.shape}")
    if model.full_lmk_faces_idx is None:
        raise ValueError("model: the FLAME model has no landmark embedding (full_lmk_faces_idx)")
    lmk_normals = barycentric_landmarks(
        normals,
        jnp.asarray(model.faces, jnp.int32),
        model.full_lmk_faces_idx.reshape(-1).astype(jnp.int32),
        model.full_lmk_bary_coords.reshape(-1, 3),
    )
    return jax.lax.stop_gradient((lmk_normals[:, 2] < threshold).astype(normals.dtype))
