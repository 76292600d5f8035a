"""FLAME linear blend skinning exactly as DECA's ``decalib/models/lbs.py`` (``lbs``, ``batch_rodrigues``).

Frames: FLAME world (metres; x to the subject's left, y up, +z towards the camera). Rotations
act on column vectors (x' = R x); points are row-major ``(V, 3)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jface.geometry import axis_angle_to_matrix

__all__ = ["blend_shapes", "pose_feature", "pose_offsets", "rigid_transforms", "skin", "lbs"]


def blend_shapes(v_template: jax.Array, shapedirs: jax.Array, coeffs: jax.Array) -> jax.Array:
    """Step 1 of ``lbs`` (``blend_shapes``): ``T̄ (V,3) + Σ_l b_l S[:, :, l]`` with
    ``shapedirs (V,3,L)``, ``coeffs (L,)``."""
    return v_template + jnp.einsum("vcl,l->vc", shapedirs, coeffs)


def pose_feature(rotations: jax.Array) -> jax.Array:
    """``lbs``'s pose feature: ``rotations (J,3,3) -> (9(J-1),)`` = concat_{j>=1} vec(R_j - I), row-major.

    The root (joint 0) is excluded, as in DECA/SMPL.
    """
    eye = jnp.eye(3, dtype=rotations.dtype)
    return (rotations[1:] - eye).reshape(-1)


def pose_offsets(posedirs: jax.Array, feature: jax.Array) -> jax.Array:
    """Pose-corrective offsets ``(V, 3)`` from ``posedirs (V,3,P)`` in the pkl layout.

    DECA reshapes ``posedirs`` to ``(3V, P)`` (row index 3v + c) and transposes it to ``(P, 3V)``
    (``FLAME.__init__``); the offsets are ``feature (P,) @ posedirs_T``, reshaped to ``(V, 3)``.
    """
    num_vertices = posedirs.shape[0]
    posedirs_t = posedirs.reshape(num_vertices * 3, -1).T
    return (feature @ posedirs_t).reshape(num_vertices, 3)


def rigid_transforms(rotations: jax.Array, joints: jax.Array,
                     parents: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """DECA's ``batch_rigid_transform``, for one item.

    ``rotations (J,3,3)``, rest ``joints (J,3)``, ``parents`` a static tuple with -1 for the root.
    Returns ``(posed_joints (J,3), relative (J,4,4))``: the world transforms G_j (G_0 = T_0,
    G_j = G_parent · T_j with T_j = [R_j | J_j - J_parent]) give the posed joints as their
    translations; the relative transforms are A_j = G_j · [I | -J_j].
    """
    dtype = rotations.dtype
    num_joints = rotations.shape[0]
    parent_idx = jnp.asarray([max(p, 0) for p in parents], jnp.int32)
    rel_joints = joints - jnp.where(
        (jnp.arange(num_joints) > 0)[:, None], joints[parent_idx], jnp.zeros_like(joints)
    )
    bottom = jnp.broadcast_to(jnp.asarray([0.0, 0.0, 0.0, 1.0], dtype), (num_joints, 1, 4))
    local = jnp.concatenate(
        [jnp.concatenate([rotations, rel_joints[:, :, None]], axis=2), bottom], axis=1
    )
    chain = [local[0]]
    for j in range(1, num_joints):
        chain.append(chain[parents[j]] @ local[j])
    world = jnp.stack(chain, axis=0)
    posed_joints = world[:, :3, 3]
    # A_j = G_j - [0 | G_j [J_j; 0]]: translation t_j - R^G_j J_j (DECA's F.pad trick).
    correction = jnp.einsum("jab,jb->ja", world[:, :3, :3], joints)
    relative = world.at[:, :3, 3].add(-correction)
    return posed_joints, relative


def skin(v_posed: jax.Array, lbs_weights: jax.Array, relative: jax.Array) -> jax.Array:
    """The skinning step of ``lbs``: M_v = Σ_j w_vj A_j and V_v = M_v[:3,:3] v + M_v[:3,3]; ``(V,3)``."""
    blended = jnp.einsum("vj,jab->vab", lbs_weights, relative)
    return jnp.einsum("vab,vb->va", blended[:, :3, :3], v_posed) + blended[:, :3, 3]


def lbs(coeffs: jax.Array, full_pose: jax.Array, v_template: jax.Array, shapedirs: jax.Array, posedirs: jax.Array,
        j_regressor: jax.Array, parents: tuple[int, ...],
        lbs_weights: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """DECA's ``lbs`` for one item, all arrays of one floating dtype.

    ``coeffs (L,)`` blendshape weights for ``shapedirs (V,3,L)``; ``full_pose (J*3,)`` axis-angle
    per joint (DECA's ``batch_rodrigues``, 1e-8 added to every component).
    Returns ``(vertices (V,3), posed_joints (J,3), rotations (J,3,3))``.
    """
    v_shaped = blend_shapes(v_template, shapedirs, coeffs)
    joints = j_regressor @ v_shaped
    rotations = axis_angle_to_matrix(full_pose.reshape(-1, 3), deca=True)
    v_posed = v_shaped + pose_offsets(posedirs, pose_feature(rotations))
    posed_joints, relative = rigid_transforms(rotations, joints, parents)
    vertices = skin(v_posed, lbs_weights, relative)
    return vertices, posed_joints, rotations
