"""Small FLAME models for tests and examples (not a loader: see ``jface.models`` for files).

* :func:`random_flame_model`: a tiny random model with FLAME's kinematic tree (5 joints,
  parents [-1, 0, 1, 1, 1]) and a random landmark embedding, for fast gradient / jit tests.
* :func:`flame_model_from_arrays`: a :class:`FlameModel` from arrays in the layouts of FLAME
  2020's ``generic_model.pkl`` and DECA's ``landmark_embedding.npy`` (``decalib/models/FLAME.py``).
"""

from __future__ import annotations

import numpy as np

from jface.flame.heads import procedural_head
from jface.models.morphable import FlameModel

__all__ = ["random_flame_model", "flame_model_from_arrays"]


def flame_model_from_arrays(
    model_arrays, embedding=None, *, uv_coords=None, uv_faces=None, dtype=np.float32
):
    """Build a FlameModel from a ``generic_model.pkl``-style mapping (``f``, ``v_template``,
    ``shapedirs``, ``posedirs``, ``J_regressor`` dense, ``kintree_table``, ``weights``) and an
    optional landmark-embedding mapping (the field names DECA's ``FLAME.__init__`` reads).
    """
    parents = [int(p) for p in np.asarray(model_arrays["kintree_table"])[0]]
    parents[0] = -1
    shapedirs = np.asarray(model_arrays["shapedirs"], dtype)
    fields = dict(
        v_template=np.asarray(model_arrays["v_template"], dtype),
        shapedirs=shapedirs,
        posedirs=np.asarray(model_arrays["posedirs"], dtype),
        j_regressor=np.asarray(model_arrays["J_regressor"], dtype),
        lbs_weights=np.asarray(model_arrays["weights"], dtype),
        faces=np.asarray(model_arrays["f"], np.int32),
        parents=tuple(parents),
        n_shape=300 if shapedirs.shape[-1] == 400 else shapedirs.shape[-1] // 2,
    )
    if embedding is not None:
        fields.update(
            static_lmk_faces_idx=np.asarray(embedding["static_lmk_faces_idx"], np.int32),
            static_lmk_bary_coords=np.asarray(embedding["static_lmk_bary_coords"], dtype),
            dynamic_lmk_faces_idx=np.asarray(embedding["dynamic_lmk_faces_idx"], np.int32),
            dynamic_lmk_bary_coords=np.asarray(embedding["dynamic_lmk_bary_coords"], dtype),
            full_lmk_faces_idx=np.asarray(embedding["full_lmk_faces_idx"], np.int32).reshape(-1),
            full_lmk_bary_coords=np.asarray(embedding["full_lmk_bary_coords"], dtype).reshape(
                -1, 3
            ),
        )
    if uv_coords is not None:
        fields.update(
            uv_coords=np.asarray(uv_coords, dtype), uv_faces=np.asarray(uv_faces, np.int32)
        )
    return FlameModel(**fields)


def random_flame_model(
    seed=0, *, num_vertices=60, n_shape=6, n_expression=4, dtype=np.float64, head=None, uv_size=32,
    n_albedo=5,
):
    """A tiny random FLAME-like model: FLAME's 5-joint tree, random skinning, blendshapes and
    landmark embedding (51 static, 79×17 dynamic, 68 full).

    ``head=None``: a noisy sphere of ``num_vertices`` points (no UVs). ``head=(n_rings, n_lon)``:
    :func:`jface.flame.heads.procedural_head` geometry with its UV layout, plus a random UV albedo model
    (``uv_size``², ``n_albedo`` components) and a soft UV face/eye mask, for decode tests.
    """
    rng = np.random.default_rng(seed)
    if head is not None:
        return _random_head_model(rng, head, n_shape, n_expression, dtype, uv_size, n_albedo)
    # Fibonacci sphere points and a fan of faces: enough for LBS, landmarks and normals tests.
    k = np.arange(num_vertices) + 0.5
    phi = np.arccos(1 - 2 * k / num_vertices)
    theta = np.pi * (1 + 5**0.5) * k
    sphere = np.stack([np.cos(theta) * np.sin(phi), np.cos(phi), np.sin(theta) * np.sin(phi)], 1)
    v_template = 0.1 * sphere + 0.005 * rng.standard_normal((num_vertices, 3))
    from scipy.spatial import ConvexHull

    hull = ConvexHull(sphere)
    faces = hull.simplices.astype(np.int32)
    # Orient outward: (v1 - v0) x (v2 - v0) along the centroid direction.
    v0, v1, v2 = (sphere[faces[:, i]] for i in range(3))
    flip = np.einsum("fi,fi->f", np.cross(v1 - v0, v2 - v0), v0 + v1 + v2) < 0
    faces[flip] = faces[flip][:, [0, 2, 1]]
    n_faces = faces.shape[0]
    weights = rng.random((num_vertices, 5)) ** 3
    weights /= weights.sum(1, keepdims=True)
    j_regressor = rng.random((5, num_vertices))
    j_regressor /= j_regressor.sum(1, keepdims=True)

    def bary(*shape):
        b = rng.random(shape + (3,)) + 0.1
        return b / b.sum(-1, keepdims=True)

    return FlameModel(
        v_template=v_template.astype(dtype),
        shapedirs=(0.01 * rng.standard_normal((num_vertices, 3, n_shape + n_expression))).astype(
            dtype
        ),
        posedirs=(0.01 * rng.standard_normal((num_vertices, 3, 36))).astype(dtype),
        j_regressor=j_regressor.astype(dtype),
        lbs_weights=weights.astype(dtype),
        faces=faces,
        parents=(-1, 0, 1, 1, 1),
        n_shape=n_shape,
        static_lmk_faces_idx=rng.integers(0, n_faces, 51).astype(np.int32),
        static_lmk_bary_coords=bary(51).astype(dtype),
        dynamic_lmk_faces_idx=rng.integers(0, n_faces, (79, 17)).astype(np.int32),
        dynamic_lmk_bary_coords=bary(79, 17).astype(dtype),
        full_lmk_faces_idx=rng.integers(0, n_faces, 68).astype(np.int32),
        full_lmk_bary_coords=bary(68).astype(dtype),
    )


def _random_head_model(rng, head, n_shape, n_expression, dtype, uv_size, n_albedo):
    mesh = procedural_head(int(head[0]), int(head[1]), num_vertices=0)
    base = random_flame_model(
        int(rng.integers(1 << 30)), num_vertices=8, n_shape=n_shape, n_expression=n_expression, dtype=dtype
    )
    verts = mesh["vertices"].astype(dtype)
    num_vertices = verts.shape[0]
    faces = mesh["faces"].astype(np.int32)
    n_faces = faces.shape[0]
    weights = rng.random((num_vertices, 5)) ** 3
    weights[:, 0] += 1.0
    weights /= weights.sum(1, keepdims=True)
    j_regressor = rng.random((5, num_vertices))
    j_regressor /= j_regressor.sum(1, keepdims=True)
    t = (np.arange(uv_size) + 0.5) / uv_size
    vv, uu = np.meshgrid(1.0 - t, t, indexing="ij")
    mask = np.clip(1.5 - 6.0 * np.hypot(uu - 0.5, vv - 0.5), 0.0, 1.0)
    lmk = lambda shape: rng.integers(0, n_faces, shape).astype(np.int32)  # noqa: E731
    return base.replace(
        v_template=verts,
        shapedirs=(0.003 * rng.standard_normal((num_vertices, 3, n_shape + n_expression))).astype(dtype),
        posedirs=(0.003 * rng.standard_normal((num_vertices, 3, 36))).astype(dtype),
        j_regressor=j_regressor.astype(dtype),
        lbs_weights=weights.astype(dtype),
        faces=faces,
        static_lmk_faces_idx=lmk(51),
        dynamic_lmk_faces_idx=lmk((79, 17)),
        full_lmk_faces_idx=lmk(68),
        uv_coords=mesh["uv_coords"].astype(dtype),
        uv_faces=mesh["uv_faces"].astype(np.int32),
        albedo_mean=(0.5 + 0.1 * rng.standard_normal((uv_size, uv_size, 3))).astype(dtype),
        albedo_basis=(0.05 * rng.standard_normal((uv_size, uv_size, 3, n_albedo))).astype(dtype),
        uv_face_eye_mask=mask.astype(dtype),
    )
