"""interpolate: values vs numpy, gradients w.r.t. attributes and vertex positions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jface.render import barycentrics, face_attributes, interpolate, rasterize, world2uv

HW = (20, 24)


def _mesh():
    # two overlapping, well-separated-in-depth triangles plus a quad
    vertices = np.array([
        [-0.8, -0.7, 0.2], [0.7, -0.8, 0.1], [-0.1, 0.8, 0.3],
        [-0.3, -0.2, -0.2], [0.9, 0.1, -0.3], [0.2, 0.9, -0.1],
        [-0.95, 0.3, 0.5], [-0.4, 0.3, 0.5], [-0.95, 0.9, 0.5],
    ])
    faces = np.array([[0, 1, 2], [3, 4, 5], [6, 7, 8]], np.int32)
    # irrational-ish offsets keep pixel centres off the edges
    return vertices + np.sqrt(np.arange(27.0).reshape(9, 3) + 2) * 1e-3, faces


def test_values_vertex_and_corner_attributes():
    vertices, faces = _mesh()
    rng = np.random.default_rng(0)
    attrs = rng.normal(size=(9, 4))
    frags = rasterize(vertices, faces, HW)
    out = np.asarray(interpolate(frags, attrs, faces))
    fid, bary = np.asarray(frags.face_index), np.asarray(frags.bary)
    ref = np.einsum("hwk,hwkd->hwd", bary, attrs[faces[np.maximum(fid, 0)]])
    ref[fid < 0] = 0
    np.testing.assert_allclose(out, ref, atol=1e-12)
    corner = attrs[faces]
    np.testing.assert_allclose(np.asarray(interpolate(frags, corner)), ref, atol=1e-12)
    # partition of unity: interpolating ones gives the mask
    ones = np.asarray(interpolate(frags, np.ones((9, 1)), faces))[..., 0]
    np.testing.assert_allclose(ones, np.asarray(frags.mask), atol=1e-12)
    assert interpolate(frags, attrs.astype(np.float32), faces).dtype == jnp.float64
    with pytest.raises(ValueError, match="faces"):
        interpolate(frags, attrs)
    with pytest.raises(ValueError, match="attributes"):
        interpolate(frags, np.ones((9, 2, 2)))


def test_gradients_attributes_and_vertices():
    vertices, faces = _mesh()
    rng = np.random.default_rng(1)
    attrs = rng.normal(size=(9, 3))
    weights = rng.normal(size=HW + (3,))
    fid = rasterize(vertices, faces, HW).face_index

    def loss(v, a):
        frags = rasterize(v, faces, HW)
        return jnp.sum(interpolate(frags, a, faces) * weights)

    check_grads(lambda a: loss(vertices, a), (attrs,), order=1, modes=["rev"], eps=1e-4)
    # vertex gradient (through the barycentrics) vs central differences with the face ids frozen
    grad_v = np.asarray(jax.grad(loss)(vertices, attrs))
    eps = 1e-6
    for idx in [(0, 0), (1, 1), (2, 0), (4, 1), (5, 0), (7, 1)]:
        dv = np.zeros_like(vertices)
        dv[idx] = eps
        assert np.array_equal(np.asarray(rasterize(vertices + dv, faces, HW).face_index), np.asarray(fid))
        fd = (loss(vertices + dv, attrs) - loss(vertices - dv, attrs)) / (2 * eps)
        np.testing.assert_allclose(grad_v[idx], fd, rtol=1e-5, atol=1e-7)
    assert np.any(np.abs(grad_v[:, :2]) > 1e-3)
    assert np.all(grad_v[:, 2] == 0)  # z does not move barycentrics


def test_barycentrics_function_and_float32():
    vertices, faces = _mesh()
    frags = rasterize(vertices.astype(np.float32), faces, HW)
    assert frags.bary.dtype == jnp.float32
    again = barycentrics(vertices.astype(np.float32), faces, frags.face_index, HW)
    np.testing.assert_allclose(np.asarray(again), np.asarray(frags.bary), atol=1e-6)
    ref = rasterize(vertices, faces, HW)
    same = np.asarray(ref.face_index) == np.asarray(frags.face_index)
    assert same.mean() > 0.99
    np.testing.assert_allclose(np.asarray(frags.bary)[same], np.asarray(ref.bary)[same], atol=1e-5)
    with pytest.raises(ValueError, match="face_index"):
        barycentrics(vertices, faces, np.zeros((3, 3), np.int32), HW)


def _scatter_modes(jaxpr):
    """Modes of the scatter-adds with per-pixel ``(H, W, ...)`` updates, sub-jaxprs included."""
    modes = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scatter-add" and tuple(eqn.invars[2].aval.shape[:2]) == HW:
            modes.append(eqn.params["mode"])  # per-pixel updates only
        for value in eqn.params.values():
            inner = getattr(value, "jaxpr", None)
            if inner is not None and hasattr(inner, "eqns"):
                modes += _scatter_modes(inner)
    return modes


def test_background_pixels_scatter_nothing_in_the_backward():
    """The backward of the per-pixel gathers drops background pixels (no adds into face/vertex 0).

    Background pixels used to gather row 0 and be masked afterwards; their transposed scatter then
    added a zero per background pixel into row 0, which on a GPU serialises hundreds of thousands
    of atomic adds on one address (render fwd+bwd 8.8 ms -> 3.0 ms on an H100 after the change).
    """
    from jax import lax

    vertices, faces = _mesh()
    attrs = np.random.default_rng(1).normal(size=(9, 3))
    frags = rasterize(vertices, faces, HW)
    assert np.any(np.asarray(frags.face_index) < 0) and np.any(np.asarray(frags.face_index) == 0)

    def loss(v, a):
        fr = jax.tree_util.tree_map(lambda x: x, frags)
        fr = fr.replace(bary=barycentrics(v, faces, frags.face_index, HW))
        return jnp.sum(interpolate(fr, a, faces) ** 2)

    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(vertices, attrs).jaxpr
    modes = _scatter_modes(jaxpr)
    assert len(modes) >= 2, "expected the per-pixel gathers' transposes to be scatter-adds"
    assert all(m == lax.GatherScatterMode.FILL_OR_DROP for m in modes), modes
    # and the gradient is unchanged: background pixels contribute nothing to face 0's vertices
    g_v, g_a = jax.grad(loss, argnums=(0, 1))(vertices, attrs)
    fid = np.asarray(frags.face_index)
    bary = np.asarray(frags.bary)
    vals = np.einsum("hwk,hwkd->hwd", bary, attrs[faces[np.maximum(fid, 0)]]) * (fid >= 0)[..., None]
    ref = np.zeros_like(attrs)
    for k in range(3):
        np.add.at(ref, faces[fid[fid >= 0], k], 2 * vals[fid >= 0] * bary[fid >= 0][:, k:k + 1])
    np.testing.assert_allclose(np.asarray(g_a), ref, atol=1e-10)


def test_attribute_rows_and_face_indices_are_checked():
    vertices, faces = _mesh()
    frags = rasterize(vertices, faces, HW)
    # 2 attribute rows for faces that use 9 vertices: named, not a silent zero
    with pytest.raises(ValueError, match=r"attributes has 2 rows, one per vertex"):
        interpolate(frags, np.ones((2, 3)), faces)
    with pytest.raises(ValueError, match=r"attributes has 0 rows"):
        interpolate(frags, np.ones((0, 3)), faces)
    with pytest.raises(ValueError, match=r"faces: vertex indices must lie in \[0, 9\).*99"):
        interpolate(frags, np.ones((9, 3)), np.array([[0, 1, 99]], np.int32))
    with pytest.raises(ValueError, match=r"faces: vertex indices must lie in \[0, 9\).*-7"):
        interpolate(frags, np.ones((9, 3)), np.array([[0, -7, 2]], np.int32))
    with pytest.raises(ValueError, match=r"faces: expected an integer dtype"):
        interpolate(frags, np.ones((9, 3)), faces.astype(np.float32))
    with pytest.raises(ValueError, match=r"attributes has 4 rows"):
        face_attributes(np.ones((4, 3)), faces)
    # traced faces pass untouched under jit
    out = jax.jit(lambda a, f: interpolate(frags, a, f))(np.ones((9, 1)), faces)
    np.testing.assert_allclose(np.asarray(out)[..., 0], np.asarray(frags.mask), atol=1e-12)


def test_world2uv_checks_both_face_arrays():
    vertices, faces = _mesh()
    uv = np.array([[0.1, 0.1], [0.9, 0.1], [0.5, 0.9]])
    uv_faces = np.array([[0, 1, 2]] * 3, np.int32)
    out = world2uv(vertices, faces, uv, uv_faces, 8)
    assert out.shape == (8, 8, 3)
    with pytest.raises(ValueError, match=r"uv_faces: vertex indices must lie in \[0, 3\).*99"):
        world2uv(vertices, faces, uv, np.array([[0, 1, 99]] * 3, np.int32), 8)
    with pytest.raises(ValueError, match=r"faces: vertex indices must lie in \[0, 9\).*-7"):
        world2uv(vertices, np.array([[0, -7, 2]] * 3, np.int32), uv, uv_faces, 8)
    with pytest.raises(ValueError, match=r"faces: expected an integer dtype"):
        world2uv(vertices, faces.astype(np.float32), uv, uv_faces, 8)
    with pytest.raises(ValueError, match=r"attributes has 2 rows"):
        world2uv(vertices[:2], faces, uv, uv_faces, 8)
