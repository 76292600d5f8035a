"""Model pytrees: the linear 3DMM (:class:`MorphableModel`) and FLAME (:class:`FlameModel`).

Both are ``flax.struct.dataclass`` pytrees: arrays are leaves (so a model passes through ``jit``
as an argument), sizes and names that shape computations are static fields.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import struct

Array = Any

__all__ = ["MorphableModel", "FlameModel", "synthesize", "uv_face_eye_mask"]


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
      (k // W', k % W'), the layout of the original's ``resampleModel.m``).
    """

    mean: Array
    shape_basis: Array
    expression_basis: Array
    faces: Array
    uv: Array | None = None
    landmarks: dict = struct.field(default_factory=dict)
    albedo_mean: Array | None = None
    albedo_basis: Array | None = None
    vertex_mirror: Array | None = None
    units: str = struct.field(pytree_node=False, default="mm")
    grid_hw: tuple | None = struct.field(pytree_node=False, default=None)

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

    Arrays keep the layouts of FLAME 2020's ``generic_model.pkl``:

    * ``v_template`` ``(V, 3)``; ``faces`` ``(F, 3)`` int32.
    * ``shapedirs`` ``(V, 3, n_shape + n_expression)``: identity columns then expression columns
      (FLAME 2020: 300 + 100).
    * ``posedirs`` ``(V, 3, 36)`` as stored in the pkl (DECA reshapes it to (3V, 36) and transposes).
    * ``j_regressor`` ``(J, V)`` dense; ``lbs_weights`` ``(V, J)``.
    * ``parents`` (static tuple): kintree_table[0] with the root's parent set to -1.
    * Landmark embedding (DECA's ``data/landmark_embedding.npy``), or None:
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
    static_lmk_faces_idx: Array | None = None
    static_lmk_bary_coords: Array | None = None
    dynamic_lmk_faces_idx: Array | None = None
    dynamic_lmk_bary_coords: Array | None = None
    full_lmk_faces_idx: Array | None = None
    full_lmk_bary_coords: Array | None = None
    uv_coords: Array | None = None
    uv_faces: Array | None = None
    albedo_mean: Array | None = None
    albedo_basis: Array | None = None
    uv_face_eye_mask: Array | None = None
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


def uv_face_eye_mask(model: FlameModel, dtype=jnp.float32, size=None):
    """The model's UV face/eye mask as ``(H, W)`` ``dtype`` (the first channel of an ``(H, W, C)``
    mask), in the UV image layout (row 0 = v = 1); ones of ``size`` (an int S for S x S, or
    ``(H, W)``) when the model has none. ``size`` is used only then: a model's own mask keeps its
    size. Works under ``jit`` with the model passed as an argument.
    """
    mask = model.uv_face_eye_mask
    if mask is None:
        if size is None:
            raise ValueError("model: has no uv_face_eye_mask; pass size=(H, W) for an all-ones mask")
        size = tuple(int(s) for s in size) if isinstance(size, (tuple, list)) else (int(size),) * 2
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"size: expected an int or (H, W) of positive ints, got {size}")
        return jnp.ones(size, dtype)
    mask = jnp.asarray(mask, dtype)
    if mask.ndim == 3:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise ValueError(f"model: uv_face_eye_mask must be (H, W) or (H, W, C), got shape {mask.shape}")
    return mask
