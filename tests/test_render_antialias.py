"""jface.render.antialias: analytic edge coverage at silhouette and occlusion edges (nvdiffrast's
``antialias``). Float64 throughout (tests/conftest.py enables x64): finite-difference gradients
w.r.t. vertex positions on small meshes, unchanged interiors, blends between the pair's colours,
jit / vmap against eager, argument errors, and the silhouette-fitting demo."""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jface.render import Fragments, antialias, edge_neighbours, interpolate, rasterize

HW = (12, 14)
TRIANGLE = np.array([[-0.6, -0.5, 0.0], [0.7, -0.3, 0.0], [-0.2, 0.65, 0.0]])
# a front quad (z = 0, two triangles) over a back quad (z = 0.5) that fills the image
QUADS = np.array([
    [-0.45, -0.4, 0.0], [0.5, -0.35, 0.0], [0.4, 0.55, 0.0], [-0.5, 0.45, 0.0],
    [-1.2, -1.2, 0.5], [1.2, -1.2, 0.5], [1.2, 1.2, 0.5], [-1.2, 1.2, 0.5],
])
QUAD_FACES = np.array([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]], np.int32)
COLOURS = np.array([[1.0, 0.2], [0.8, 0.9], [0.3, 0.5], [0.6, 0.1],
                    [0.1, 0.0], [0.0, 0.3], [0.2, 0.1], [0.05, 0.2]])


def _image(vertices, faces, colours, hw=HW, aa=True):
    fragments = rasterize(vertices, faces, hw)
    color = interpolate(fragments, colours, faces)
    return antialias(color, fragments, vertices, faces) if aa else color


def _weights(hw, channels):
    return jnp.asarray(np.random.default_rng(0).uniform(0.5, 1.5, hw + (channels,)))


def _fd_grad(loss, vertices, eps=1e-6):
    loss = jax.jit(loss)
    out = np.zeros(vertices.shape)
    for index in np.ndindex(*vertices.shape):
        step = np.zeros(vertices.shape)
        step[index] = eps
        out[index] = (float(loss(vertices + step)) - float(loss(vertices - step))) / (2 * eps)
    return out


def test_edge_neighbours_pairs_shared_edges_and_marks_boundaries():
    faces = np.array([[0, 1, 2], [2, 1, 3]], np.int32)
    # face 0: edge 0 = (1, 2) is shared with face 1 (its opposite vertex 3); the others are boundary
    np.testing.assert_array_equal(edge_neighbours(faces), [[3, -1, -1], [-1, -1, 0]])
    np.testing.assert_array_equal(edge_neighbours(QUAD_FACES), [[-1, 3, -1], [-1, -1, 1], [-1, 7, -1], [-1, -1, 5]])
    assert edge_neighbours(np.zeros((0, 3), np.int32)).shape == (0, 3)


def test_triangle_over_background_matches_finite_differences_where_the_hard_path_has_no_gradient():
    vertices = jnp.asarray(TRIANGLE)
    faces = np.array([[0, 1, 2]], np.int32)
    ones = jnp.ones((3, 1))
    weights = _weights(HW, 1)

    def loss(v, aa=True):
        return jnp.sum(weights * _image(v, faces, ones, aa=aa))

    hard = jax.grad(lambda v: loss(v, aa=False))(vertices)
    np.testing.assert_array_equal(hard, 0.0)  # the hard mask has no position gradient
    grad = np.asarray(jax.grad(loss)(vertices))
    assert np.abs(grad[:, :2]).min() > 1.0  # every corner's x and y move a silhouette edge
    np.testing.assert_array_equal(grad[:, 2], 0.0)  # z moves no edge of a lone triangle
    np.testing.assert_allclose(grad, _fd_grad(loss, np.asarray(vertices)), rtol=1e-6, atol=1e-6)


def test_quad_occluding_a_quad_matches_finite_differences():
    vertices = jnp.asarray(QUADS)
    colours = jnp.asarray(COLOURS)
    weights = _weights(HW, 2)

    def loss(v, aa=True):
        return jnp.sum(weights * _image(v, QUAD_FACES, colours, aa=aa))

    grad = np.asarray(jax.grad(loss)(vertices))
    np.testing.assert_allclose(grad, _fd_grad(loss, np.asarray(vertices)), rtol=1e-6, atol=1e-6)
    hard = np.asarray(jax.grad(lambda v: loss(v, aa=False))(vertices))
    # the occlusion edges add a gradient to the front quad's corners beyond the barycentric one
    assert np.abs(grad[:4, :2] - hard[:4, :2]).min() > 1e-3


def test_occlusion_edge_mask_gradient_exists_only_with_antialias():
    vertices = jnp.asarray(QUADS)
    front = jnp.asarray([[1.0]] * 4 + [[0.0]] * 4)  # front quad white, back quad black
    weights = _weights(HW, 1)
    loss = lambda v, aa: jnp.sum(weights * _image(v, QUAD_FACES, front, aa=aa))  # noqa: E731
    np.testing.assert_array_equal(jax.grad(lambda v: loss(v, False))(vertices), 0.0)
    grad = np.asarray(jax.grad(lambda v: loss(v, True))(vertices))
    assert np.abs(grad[:4, :2]).min() > 1e-3  # the occluder's corners
    np.testing.assert_array_equal(grad[4:], 0.0)  # the occluded quad's edges are off screen


def _differing_neighbour(face_index):
    """(H, W) bool: a 4-neighbour has another face id."""
    f = np.asarray(face_index)
    out = np.zeros(f.shape, bool)
    out[:, :-1] |= f[:, :-1] != f[:, 1:]
    out[:, 1:] |= f[:, :-1] != f[:, 1:]
    out[:-1] |= f[:-1] != f[1:]
    out[1:] |= f[:-1] != f[1:]
    return out


def test_interior_pixels_and_non_silhouette_edges_are_unchanged():
    vertices = jnp.asarray(QUADS)
    # per-face-corner colours: the front quad's two triangles differ, so a blend across their
    # shared (non-silhouette) diagonal would show
    corner = jnp.asarray(np.repeat(np.array([[1.0], [0.4], [0.0], [0.0]]), 3, axis=1)[:, :, None] * np.ones((1, 3, 1)))
    fragments = rasterize(vertices, QUAD_FACES, HW)
    color = interpolate(fragments, corner)
    out = np.asarray(antialias(color, fragments, vertices, QUAD_FACES))
    color = np.asarray(color)
    face = np.asarray(fragments.face_index)
    interior = ~_differing_neighbour(face)
    assert interior.sum() > 50
    np.testing.assert_array_equal(out[interior], color[interior])
    # pixels whose only differing neighbours are across the front quad's diagonal (faces 0 / 1)
    diagonal = np.zeros(face.shape, bool)
    for i, j in zip(*np.nonzero(_differing_neighbour(face))):
        near = {face[a, b] for a, b in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1))
                if 0 <= a < face.shape[0] and 0 <= b < face.shape[1]} | {face[i, j]}
        diagonal[i, j] = near == {0, 1}
    assert diagonal.sum() >= 4
    np.testing.assert_array_equal(out[diagonal], color[diagonal])
    assert not np.array_equal(out, color)  # the occlusion edges do blend


def test_blend_lies_between_the_pair_colours():
    # one steep edge crossing the image: every changed pixel has exactly one differing pair
    vertices = jnp.asarray([[-0.1, -3.0, 0.0], [0.25, 3.0, 0.0], [3.0, 0.0, 0.0]])
    faces = np.array([[0, 1, 2]], np.int32)
    fragments = rasterize(vertices, faces, HW)
    color = jnp.asarray(np.random.default_rng(1).uniform(0.0, 1.0, HW + (3,)))
    out = np.asarray(antialias(color, fragments, vertices, faces))
    color = np.asarray(color)
    face = np.asarray(fragments.face_index)
    changed = np.any(out != color, axis=-1)
    assert changed.sum() >= HW[0] // 2
    for i, j in zip(*np.nonzero(changed)):
        other = j + 1 if face[i, j] < 0 else j - 1  # the neighbour across the edge
        assert face[i, other] != face[i, j]
        low = np.minimum(color[i, j], color[i, other]) - 1e-12
        high = np.maximum(color[i, j], color[i, other]) + 1e-12
        assert np.all((low <= out[i, j]) & (out[i, j] <= high)), (i, j)
        # at most half of the pixel goes to the other side
        assert np.all(np.abs(out[i, j] - color[i, j]) <= 0.5 * np.abs(color[i, other] - color[i, j]) + 1e-12)


def test_jit_and_vmap_agree_with_eager():
    faces = QUAD_FACES
    shifts = np.array([[0.0, 0.0], [0.05, -0.03], [-0.04, 0.02]])
    batch = np.stack([QUADS + np.concatenate([s, [0.0]]) for s in shifts])
    colours = jnp.asarray(COLOURS)
    topology = edge_neighbours(faces)

    def one(v):
        fragments = rasterize(v, faces, HW)
        return antialias(interpolate(fragments, colours, faces), fragments, v, faces, topology=topology)

    eager = np.stack([np.asarray(one(jnp.asarray(v))) for v in batch])
    np.testing.assert_allclose(jax.jit(jax.vmap(one))(jnp.asarray(batch)), eager, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(jax.jit(one)(jnp.asarray(batch[1])), eager[1], rtol=1e-12, atol=1e-12)
    grads = jax.jit(jax.vmap(jax.grad(lambda v: jnp.sum(one(v) ** 2))))(jnp.asarray(batch))
    eager_grad = jax.grad(lambda v: jnp.sum(one(v) ** 2))(jnp.asarray(batch[2]))
    np.testing.assert_allclose(grads[2], eager_grad, rtol=1e-10, atol=1e-10)


def test_float32_in_float32_out():
    vertices = jnp.asarray(TRIANGLE, jnp.float32)
    faces = np.array([[0, 1, 2]], np.int32)
    fragments = rasterize(vertices, faces, HW)
    color = interpolate(fragments, jnp.ones((3, 2), jnp.float32), faces)
    assert antialias(color, fragments, vertices, faces).dtype == jnp.float32


def test_bad_arguments_name_the_argument():
    vertices = jnp.asarray(TRIANGLE)
    faces = np.array([[0, 1, 2]], np.int32)
    fragments = rasterize(vertices, faces, HW)
    color = jnp.zeros(HW + (3,))
    with pytest.raises(ValueError, match="color: expected \\(H, W, C\\)"):
        antialias(jnp.zeros((5, 5, 3)), fragments, vertices, faces)
    with pytest.raises(ValueError, match="color: expected a floating dtype"):
        antialias(jnp.zeros(HW + (3,), jnp.int32), fragments, vertices, faces)
    with pytest.raises(ValueError, match="fragments: expected"):
        antialias(color, {"face_index": fragments.face_index}, vertices, faces)
    with pytest.raises(ValueError, match="vertices: expected \\(V, 3\\)"):
        antialias(color, fragments, vertices[:, :2], faces)
    with pytest.raises(ValueError, match="faces"):
        antialias(color, fragments, vertices, np.array([[0, 1, 7]]))
    with pytest.raises(ValueError, match="topology: expected"):
        antialias(color, fragments, vertices, faces, topology=np.zeros((2, 3), np.int32))
    bad = Fragments(face_index=fragments.face_index, bary=fragments.bary, depth=fragments.depth[:-1],
                    mask=fragments.mask)
    with pytest.raises(ValueError, match="fragments.depth"):
        antialias(color, bad, vertices, faces)


def test_silhouette_fit_demo_converges(capsys):
    from jface.demos import silhouette_fit

    result = silhouette_fit.fit(steps=40, size=32, log_every=0)
    assert result["loss"][0] > 10 * result["loss"][-1], result["loss"][::5]
    assert result["pose_error"][-1] < 0.2 * result["pose_error"][0]


def test_edge_corner_permutations_are_the_index_permutations():
    """The antialias stage reads each edge's corners by slicing (no index gather, whose transpose is
    a scatter-add on the backward pass); the slices are the permutations _EDGE_A and _EDGE_B."""
    module = importlib.import_module("jface.render.antialias")  # (jface.render.antialias is the function)

    x = jnp.arange(2 * 5 * 3, dtype=jnp.float32).reshape(2, 5, 3)
    np.testing.assert_array_equal(module._edge_a(x), x[..., module._EDGE_A])
    np.testing.assert_array_equal(module._edge_b(x), x[..., module._EDGE_B])
    hlo = jax.jit(jax.grad(lambda v: jnp.sum(module._edge_a(v) * module._edge_b(v) ** 2))).lower(x).as_text()
    assert "scatter" not in hlo and "gather" not in hlo


def _head_batch(size=40, batch=3):
    """Yawed views of a bumpy 128-face ellipsoid (triangles larger than pixels, as antialias wants);
    the items have different numbers of candidate pairs."""
    from jface.bench.render import subdivide

    octa = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], np.float64)
    faces = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]],
                     np.int32)
    vertices = octa
    for _ in range(2):
        vertices, faces = subdivide(vertices, faces)
        vertices = vertices / np.linalg.norm(vertices, axis=1, keepdims=True)
    vertices = vertices * np.array([0.55, 0.7, 0.5])  # an ellipsoid
    vertices = vertices + 0.12 * np.sin(4 * vertices[:, [1, 2, 0]])  # bumps: occlusion edges inside
    out = []
    for yaw in np.linspace(-0.5, 0.6, batch):
        c, s = np.cos(yaw), np.sin(yaw)
        out.append(vertices @ np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]).T * (1.0 + 0.2 * yaw))
    return jnp.asarray(np.stack(out)), faces, (size, size)


def test_compacted_rounds_equal_every_pair_at_once():
    """The default path gathers only the pairs that can blend, ``chunk`` per while_loop round (one
    pair per round, several rounds, one round); values and gradients (custom VJP) equal the dense
    evaluation of every pixel pair (chunk=0, plain autodiff), per item of a vmapped batch."""
    vertices, faces, hw = _head_batch()
    topology = edge_neighbours(faces)
    colours = jnp.asarray(np.random.default_rng(2).uniform(0.0, 1.0, (vertices.shape[1], 3)))
    weights = _weights(hw, 3)

    def image(v, c, chunk):
        fragments = rasterize(v, faces, hw)
        color = interpolate(fragments, c, faces)
        return color if chunk == "hard" else antialias(color, fragments, v, faces, topology=topology, chunk=chunk)

    def values_and_grads(chunk):
        loss = lambda v, c: jnp.sum(weights * image(v, c, chunk) ** 2)  # noqa: E731
        out = jax.vmap(lambda v: image(v, colours, chunk))(vertices)
        return out, jax.vmap(jax.grad(loss, argnums=(0, 1)), (0, None))(vertices, colours)

    dense, (gv_dense, gc_dense) = jax.jit(values_and_grads, static_argnums=0)(0)
    plain, (gv_hard, _) = jax.jit(values_and_grads, static_argnums=0)("hard")
    changed = np.asarray(np.any(dense != plain, axis=-1)).sum(axis=(1, 2))
    assert changed.min() >= 15 and len(set(changed.tolist())) > 1, changed  # many blends, differing per item
    assert np.abs(np.asarray(gv_dense) - np.asarray(gv_hard)).max() > 1e-3  # silhouette position gradients
    for chunk in (1, 16, None):
        out, (gv, gc) = jax.jit(values_and_grads, static_argnums=0)(chunk)
        np.testing.assert_allclose(out, dense, rtol=0, atol=1e-13, err_msg=f"chunk={chunk}")
        np.testing.assert_allclose(gv, gv_dense, rtol=1e-10, atol=1e-10, err_msg=f"chunk={chunk}")
        np.testing.assert_allclose(gc, gc_dense, rtol=1e-10, atol=1e-10, err_msg=f"chunk={chunk}")


def test_dense_path_has_forward_mode():
    vertices, faces, hw = _head_batch(size=24, batch=1)
    v = vertices[0]
    colours = jnp.ones((v.shape[0], 1))

    def total(v_, chunk):
        fragments = rasterize(v_, faces, hw)
        return jnp.sum(antialias(interpolate(fragments, colours, faces), fragments, v_, faces, chunk=chunk))

    tangent = jnp.asarray(np.random.default_rng(3).normal(size=v.shape))
    _, forward = jax.jvp(lambda x: total(x, 0), (v,), (tangent,))
    reverse = jnp.vdot(jax.grad(lambda x: total(x, None))(v), tangent)
    np.testing.assert_allclose(forward, reverse, rtol=1e-10)
    assert abs(float(forward)) > 1e-3


def test_bad_chunk_names_the_argument():
    vertices = jnp.asarray(TRIANGLE)
    faces = np.array([[0, 1, 2]], np.int32)
    fragments = rasterize(vertices, faces, HW)
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="chunk: expected an int >= 0"):
            antialias(jnp.zeros(HW + (3,)), fragments, vertices, faces, chunk=bad)
