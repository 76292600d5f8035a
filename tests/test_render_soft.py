"""soft_rasterize vs a dense float64 SoftRas reference; gradients vs finite differences."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_render_reference import brute_soft

from jface.render import CapacityError, soft_rasterize

HW = (16, 20)


def _mesh(seed=0, num_vertices=30, num_faces=30):
    rng = np.random.default_rng(seed)
    vertices = rng.uniform(-1, 1, (num_vertices, 3))
    faces = rng.integers(0, num_vertices, (num_faces, 3)).astype(np.int32)
    return vertices, faces, rng.uniform(0, 1, (num_vertices, 3))


def test_matches_reference_silhouette_and_colour():
    vertices, faces, colors = _mesh()
    kw = dict(sigma=1e-3, gamma=1e-2)
    sil = soft_rasterize(vertices, faces, HW, sigma=1e-3, capacity=4, overflow_tiles=2, overflow_capacity=4)
    np.testing.assert_allclose(np.asarray(sil), brute_soft(vertices, faces, HW, sigma=1e-3), atol=1e-10)
    out = soft_rasterize(vertices, faces, HW, colors, background=[0.1, 0.2, 0.3], capacity=8,
                         overflow_tiles=4, overflow_capacity=32, **kw)
    ref = brute_soft(vertices, faces, HW, colors, background=[0.1, 0.2, 0.3], **kw)
    assert out.shape == HW + (4,)
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-10)
    out32 = soft_rasterize(vertices.astype(np.float32), faces, HW, sigma=1e-3, capacity=16)
    assert out32.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out32), brute_soft(vertices, faces, HW, sigma=1e-3), atol=2e-4)


def test_gradients_vs_finite_differences():
    vertices, faces, colors = _mesh(1, 12, 8)
    rng = np.random.default_rng(2)
    weights = rng.normal(size=HW + (4,))

    @jax.jit
    def loss(v, c):
        # one minimal overflow level keeps the compile small (8 faces never overflow capacity 16)
        out = soft_rasterize(v, faces, HW, c, sigma=2e-2, gamma=5e-2, capacity=16, overflow_tiles=1,
                             overflow_capacity=1)
        return jnp.sum(out * weights)

    gv, gc = jax.grad(loss, argnums=(0, 1))(vertices, colors)
    eps = 1e-6
    for idx in [(0, 0), (3, 1), (5, 2), (8, 0), (10, 1)]:
        dv = np.zeros_like(vertices)
        dv[idx] = eps
        fd = (loss(vertices + dv, colors) - loss(vertices - dv, colors)) / (2 * eps)
        np.testing.assert_allclose(gv[idx], fd, rtol=1e-4, atol=1e-6)
    for idx in [(0, 0), (4, 2), (9, 1)]:
        dc = np.zeros_like(colors)
        dc[idx] = eps
        fd = (loss(vertices, colors + dc) - loss(vertices, colors - dc)) / (2 * eps)
        np.testing.assert_allclose(gc[idx], fd, rtol=1e-5, atol=1e-8)
    assert np.all(np.isfinite(gv)) and np.any(np.abs(gv) > 1e-3)


def test_overflow_empty_and_errors():
    vertices, faces, _ = _mesh()
    with pytest.raises(CapacityError, match="overflow"):
        soft_rasterize(vertices, faces, HW, sigma=1e-3, capacity=2, overflow_tiles=1,
                       overflow_capacity=2, on_overflow="raise")
    jitted = jax.jit(lambda v: soft_rasterize(v, faces, HW, sigma=1e-3, capacity=2, overflow_tiles=1,
                                              overflow_capacity=2))
    with pytest.raises(Exception, match="capacity overflow"):
        jitted(vertices).block_until_ready()
    empty = soft_rasterize(vertices, np.zeros((0, 3), np.int32), HW)
    assert empty.shape == HW and np.all(np.asarray(empty) == 0)
    with pytest.raises(ValueError, match="colors"):
        soft_rasterize(vertices, faces, HW, np.ones((5, 3)))
    with pytest.raises(ValueError, match="sigma"):
        soft_rasterize(vertices, faces, HW, sigma=0.0)


def test_degenerate_faces_contribute_nothing():
    vertices = np.array([[-0.5, -0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 0.0], [0.2, 0.2, 0.0]])
    faces = np.array([[0, 1, 2], [3, 3, 3], [0, 0, 1]], np.int32)
    assert np.all(np.asarray(soft_rasterize(vertices, faces, HW, sigma=1e-2)) == 0)


def test_silhouette_custom_vjp_matches_autodiff_and_fd():
    """The silhouette's hand-written VJP equals autodiff of the plain jnp evaluation and FD."""
    from jface.render import soft

    vertices, faces, _ = _mesh(3, 12, 8)
    rng = np.random.default_rng(4)
    weights = rng.normal(size=HW)

    @jax.jit
    def loss(v):
        out = soft_rasterize(v, faces, HW, sigma=2e-2, capacity=16, overflow_tiles=1, overflow_capacity=1)
        return jnp.sum(out * weights)

    gv = jax.grad(loss)(vertices)
    eps = 1e-6
    for idx in [(0, 0), (3, 1), (5, 0), (8, 1), (10, 0)]:
        dv = np.zeros_like(vertices)
        dv[idx] = eps
        fd = (loss(vertices + dv) - loss(vertices - dv)) / (2 * eps)
        np.testing.assert_allclose(gv[idx], fd, rtol=1e-4, atol=1e-6)
    assert np.all(gv[:, 2] == 0) and np.any(np.abs(gv) > 1e-3)

    # custom VJP vs autodiff of the reference jnp part on one dense block of candidates
    thr = 2e-2 * np.log(1 / 1e-4 - 1)
    cand = jnp.asarray(np.tile(np.arange(faces.shape[0], dtype=np.int32), (4, 1)))
    px = jnp.asarray(rng.uniform(-1, 1, (4, 16)))
    py = jnp.asarray(rng.uniform(-1, 1, (4, 16)))
    valid = jnp.ones((faces.shape[0],), bool)
    hyper = (2e-2, 1.0, thr, 1e-3, -10.0, 10.0, jnp.asarray(faces))
    g = jnp.asarray(rng.normal(size=(4, 16)))
    xy = jnp.asarray(vertices[:, :2])
    ref = jax.grad(lambda a: jnp.sum(soft._soft_part(a, xy[:, 0] * 0, None, valid, cand, px, py, hyper)[0] * g))(xy)
    got = jax.grad(lambda a: jnp.sum(soft._sil_part(a, valid, cand, px, py, hyper) * g))(xy)
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-10)


def test_pallas_silhouette_kernels_match_reference_and_jnp():
    """The Pallas silhouette kernels (interpret mode here; Triton on GPUs): values vs the dense
    float64 reference, gradients vs the jnp path's custom VJP and central differences, tile sizes
    whose pixel count is not a power of two, vmap, and the pair-budget overflow (grow / raise)."""
    vertices, faces, _ = _mesh(3, 30, 40)
    for tile in (4, 6):
        sil = soft_rasterize(vertices, faces, HW, sigma=1e-3, tile_size=tile, impl="interpret")
        np.testing.assert_allclose(np.asarray(sil), brute_soft(vertices, faces, HW, sigma=1e-3), atol=1e-10)
    weights = np.random.default_rng(4).normal(size=HW)

    def loss(v, impl):
        return jnp.sum(soft_rasterize(v, faces, HW, sigma=1e-3, impl=impl) * weights)

    g_kernel = jax.grad(loss)(vertices, "interpret")
    g_jnp = jax.grad(loss)(vertices, "jnp")
    assert np.any(np.asarray(g_kernel) != 0)
    np.testing.assert_allclose(np.asarray(g_kernel), np.asarray(g_jnp), rtol=1e-9, atol=1e-9)
    step = 1e-6
    for i, k in ((3, 0), (7, 1), (11, 0)):
        d = np.zeros_like(vertices)
        d[i, k] = step
        fd = (loss(vertices + d, "interpret") - loss(vertices - d, "interpret")) / (2 * step)
        np.testing.assert_allclose(float(g_kernel[i, k]), float(fd), rtol=1e-4, atol=1e-6)
    batch = np.stack([vertices, vertices * 0.8])
    got = jax.vmap(lambda v: soft_rasterize(v, faces, HW, sigma=1e-3, impl="interpret"))(batch)
    np.testing.assert_allclose(np.asarray(got[1]), brute_soft(batch[1], faces, HW, sigma=1e-3), atol=1e-10)
    grown = soft_rasterize(vertices, faces, HW, sigma=1e-3, pair_budget=8, impl="interpret")
    np.testing.assert_allclose(np.asarray(grown), brute_soft(vertices, faces, HW, sigma=1e-3), atol=1e-10)
    with pytest.raises(CapacityError, match="pair_budget=8"):
        soft_rasterize(vertices, faces, HW, sigma=1e-3, pair_budget=8, impl="interpret", on_overflow="raise")


@pytest.mark.parametrize("faces, match", [
    (np.array([[0, 1, 99]], np.int32), r"faces: vertex indices must lie in \[0, 30\).*99"),
    (np.array([[0, -7, 2]], np.int32), r"faces: vertex indices must lie in \[0, 30\).*-7"),
    (np.array([[0.0, 1.0, 2.0]]), r"faces: expected an integer dtype"),
])
def test_bad_face_indices_are_named(faces, match):
    vertices, _, _ = _mesh()
    with pytest.raises(ValueError, match=match):
        soft_rasterize(vertices, faces, HW)
    with pytest.raises(ValueError, match=r"image_hw: expected positive sizes"):
        soft_rasterize(vertices, np.array([[0, 1, 2]], np.int32), (0, 0))
