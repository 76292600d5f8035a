"""Model pytrees: the linear 3DMM (:class:`MorphableModel`) and FLAME (:class:`FlameModel`).

Both are ``flax.struct.dataclass`` pytrees: arrays are leaves (so a model passes through ``jit``
as an argument), sizes and names that shape computations are static fields.
"""

from __future__ import annotations

from typing import Any, Optional

import jax.numpy as jnp
from flax import struct

Array = Any

__all__ = ["MorphableModel", "FlameModel", "synthesize"]


@struct.dataclass
class MorphableModel:
    """A linear 3D morphable model in row-major layout.

    Fields (model frame: BFM axes, x to the subject's left, y up, z towards the camera;
    ``units`` says mm or um):

    * ``mean`` ``(N, 3)``: mean shape.
    * ``shape_basis`` ``(N, 3, Ks)``: identity basis, scaled so coefficients are N(0, 1).
    * ``expression_basis`` ``(N, 3, Ke)``: expression basis (Ke may be 0).
    * ``faces`` ``(F, 3)`` int32, 0-based.
    * ``uv`` ``(N, 2)`` or None: per-vertex texture coordinates in [0, 1]^2 (u right, v up).
    * ``landmarks``: name -> ``(L,)`` int32 vertex indices (0-based), e.g. ``"aflw21"``, ``"ibug68"``.
    * ``albedo_mean`` ``(N, 3)`` / ``albedo_basis`` ``(N, 3, Ka)`` or None: per-vertex colour in [0, 1].
    * ``vertex_mirror`` ``(N,)`` int32 or None: index of each vertex's bilateral mirror.
    * ``units`` (static): ``"mm"`` or ``"um"``.
    * ``grid_hw`` (static) or None: (H', W') when the vertices are a UV grid (vertex k <-> texel
      (k // W', k % W'), spec 3dmm_stn.md §0).
    """

    mean: Array
    shape_basis: Array
    expression_basis: Array
    faces: Array
    uv: Optional[Array] = None
    landmarks: dict = struct.field(default_factory=dict)
    albedo_mean: Optional[Array] = None
    albedo_basis: Optional[Array] = None
    vertex_mirror: Optional[Array] = None
    units: str = struct.field(pytree_node=False, default="mm")
    grid_hw: Optional[tuple] = struct.field(pytree_node=False, default=None)

    @property
    def num_vertices(self) -> int:
        return self.mean.shape[0]

    @property
    def num_shape(self) -> int:
        return self.shape_basis.shape[-1]

    @property
    def num_expression(self) -> int:
        return self.expression_basis.shape[-1]

    @property
    def basis(self):
        """``(N, 3, Ks + Ke)``: identity then expression columns (the 3DMM-STN's alpha order)."""
        return jnp.concatenate([self.shape_basis, self.expression_basis], axis=-1)


def synthesize(model: MorphableModel, shape_coeffs, expression_coeffs=None):
    """mean + shape_basis . shape_coeffs + expression_basis . expression_coeffs.

    ``shape_coeffs (..., Ks)``, ``expression_coeffs (..., Ke)`` or None -> ``(..., N, 3)`` in the
    model's frame and units. Works under ``jit`` with the model passed as an argument.
    """
    shape_coeffs = jnp.asarray(shape_coeffs)
    dtype = jnp.result_type(model.mean.dtype, shape_coeffs.dtype)
    if shape_coeffs.shape[-1] != model.num_shape:
        raise ValueError(
            f"shape_coeffs: expected last dimension {model.num_shape} (the model's identity "
            f"components), got shape {shape_coeffs.shape}"
        )
    out = model.mean.astype(dtype) + jnp.einsum(
        "nck,...k->...nc", model.shape_basis.astype(dtype), shape_coeffs.astype(dtype)
    )
    if expression_coeffs is not None:
        expression_coeffs = jnp.asarray(expression_coeffs)
        if expression_coeffs.shape[-1] != model.num_expression:
            raise ValueError(
                f"expression_coeffs: expected last dimension {model.num_expression} (the model's "
                f"expression components), got shape {expression_coeffs.shape}"
            )
        out = out + jnp.einsum(
            "nck,...k->...nc", model.expression_basis.astype(dtype), expression_coeffs.astype(dtype)
        )
    return out


@struct.dataclass
class FlameModel:
    """FLAME in its own layouts and units (metres; x to the subject's left, y up, +z to camera).

    Arrays keep the layouts of ``generic_model.pkl`` (spec deca.md §2.2):

    * ``v_template`` ``(V, 3)``; ``faces`` ``(F, 3)`` int32.
    * ``shapedirs`` ``(V, 3, n_shape + n_expression)``: identity columns then expression columns
      (FLAME 2020: 300 + 100).
    * ``posedirs`` ``(V, 3, 36)`` as stored in the pkl (DECA reshapes it to (3V, 36) and transposes).
    * ``j_regressor`` ``(J, V)`` dense; ``lbs_weights`` ``(V, J)``.
    * ``parents`` (static tuple): kintree_table[0] with the root's parent set to -1.
    * Landmark embedding (DECA's ``landmark_embedding.npy``, spec deca.md §2.3), or None:
      ``static_lmk_faces_idx (51,)``, ``static_lmk_bary_coords (51, 3)``,
      ``dynamic_lmk_faces_idx (79, 17)``, ``dynamic_lmk_bary_coords (79, 17, 3)``,
      ``full_lmk_faces_idx (68,)``, ``full_lmk_bary_coords (68, 3)``.
    * UV layout, or None: ``uv_coords (T, 2)`` (vt, v up), ``uv_faces (F, 3)`` (ft).
    * Albedo in UV space, or None: ``albedo_mean (H, W, 3)``, ``albedo_basis (H, W, 3, K)``
      (RGB, row 0 = v = 1); ``uv_face_eye_mask (H, W)`` in [0, 1].
    """

    v_template: Array
    shapedirs: Array
    posedirs: Array
    j_regressor: Array
    lbs_weights: Array
    faces: Array
    parents: tuple = struct.field(pytree_node=False, default=(-1, 0, 1, 1, 1))
    n_shape: int = struct.field(pytree_node=False, default=300)
    static_lmk_faces_idx: Optional[Array] = None
    static_lmk_bary_coords: Optional[Array] = None
    dynamic_lmk_faces_idx: Optional[Array] = None
    dynamic_lmk_bary_coords: Optional[Array] = None
    full_lmk_faces_idx: Optional[Array] = None
    full_lmk_bary_coords: Optional[Array] = None
    uv_coords: Optional[Array] = None
    uv_faces: Optional[Array] = None
    albedo_mean: Optional[Array] = None
    albedo_basis: Optional[Array] = None
    uv_face_eye_mask: Optional[Array] = None
    units: str = struct.field(pytree_node=False, default="m")

    @property
    def num_vertices(self) -> int:
        return self.v_template.shape[0]

    @property
    def n_expression(self) -> int:
        return self.shapedirs.shape[-1] - self.n_shape

    @property
    def has_landmarks(self) -> bool:
        return self.static_lmk_faces_idx is not None
