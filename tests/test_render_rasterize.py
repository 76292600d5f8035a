"""Hard rasterizer vs a dense float64 numpy reference (DECA's pixel mapping and inside rule,
``decalib/utils/rasterizer/standard_rasterize_cuda_kernel.cu``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_render_reference import brute_rasterize

from jface.render import CapacityError, rasterize

HW = (40, 56)


def _random_mesh(seed, num_vertices=60, num_faces=80, spread=1.2):
    rng = np.random.default_rng(seed)
    vertices = rng.uniform(-spread, spread, (num_vertices, 3))
    faces = rng.integers(0, num_vertices, (num_faces, 3)).astype(np.int32)
    return vertices, faces


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_brute_force(dtype):
    agree = total = 0
    for seed in range(3):
        vertices, faces = _random_mesh(seed)
        vertices = vertices.astype(dtype)
        ref_id, ref_bary, ref_depth, gap, margin = brute_rasterize(vertices, faces, HW)
        frags = rasterize(vertices, faces, HW, tile_size=8, capacity=16)
        assert frags.bary.dtype == dtype and frags.depth.dtype == dtype
        assert frags.face_index.dtype == jnp.int32
        tol = 1e-9 if dtype == np.float64 else 1e-4
        clear = (gap > tol) & (margin > tol)  # away from exact depth ties and edges
        fid = np.asarray(frags.face_index)
        agree += np.sum((fid == ref_id) & clear)
        total += np.sum(clear)
        same = clear & (fid == ref_id)
        bary_tol = 1e-10 if dtype == np.float64 else 1e-5
        np.testing.assert_allclose(np.asarray(frags.bary)[same], ref_bary[same], atol=bary_tol)
        np.testing.assert_allclose(np.asarray(frags.depth)[same], ref_depth[same], atol=10 * bary_tol)
        np.testing.assert_array_equal(np.asarray(frags.mask), (fid >= 0).astype(dtype))
        assert np.all(np.asarray(frags.bary)[fid < 0] == 0)
    assert agree / total >= 0.999


def test_overflow_grow_is_exact_and_raise_is_clear():
    vertices, faces = _random_mesh(7)
    ref = np.asarray(rasterize(vertices, faces, HW, tile_size=8, capacity=256).face_index)
    # tiny budgets: many overflow rounds and several pair windows
    grown = rasterize(vertices, faces, HW, tile_size=8, capacity=2, overflow_tiles=3,
                      overflow_capacity=3, pair_budget=64)
    np.testing.assert_array_equal(np.asarray(grown.face_index), ref)
    with pytest.raises(CapacityError, match="capacity="):
        rasterize(vertices, faces, HW, tile_size=8, capacity=2, on_overflow="raise")
    jitted = jax.jit(lambda v: rasterize(v, faces, HW, tile_size=8, capacity=2, on_overflow="raise").face_index)
    with pytest.raises(Exception, match="capacity overflow"):
        jitted(vertices).block_until_ready()
    # (rasterize is jitted internally, so the "grow" call above already ran the jitted loops)


def test_tie_break_lower_face_index():
    tri = np.array([[-0.8, -0.8, 0.3], [0.8, -0.8, 0.3], [0.0, 0.8, 0.3]])
    vertices = np.concatenate([tri, tri])
    for faces, winner in (([[0, 1, 2], [3, 4, 5]], 0), ([[3, 4, 5], [0, 1, 2]], 0)):
        fid = np.asarray(rasterize(vertices, np.array(faces, np.int32), (16, 16)).face_index)
        assert np.all(fid[fid >= 0] == winner) and np.sum(fid >= 0) > 20
    # a nearer face wins regardless of order; the +10 offset does not change anything
    near = tri + [0, 0, -0.5]
    vertices = np.concatenate([tri, near])
    for offset in (0.0, 10.0):
        faces = np.array([[0, 1, 2], [3, 4, 5]], np.int32)
        fid = np.asarray(rasterize(vertices + [0, 0, offset], faces, (16, 16)).face_index)
        assert set(np.unique(fid)) == {-1, 1}


def test_pixel_centre_convention_and_inside_rule():
    # A triangle whose edges pass exactly through pixel centres (DECA's kernel: w1, w2 >= 0, w0 > 0).
    # With W = H = 4, col = (x + 1) * 2 - 0.5: x = -0.75 -> col 0, x = 0.25 -> col 2.
    vertices = np.array([[-0.75, -0.75, 0.0], [0.25, -0.75, 0.0], [-0.75, 0.25, 0.0]])
    fid = np.asarray(rasterize(vertices, np.array([[0, 1, 2]], np.int32), (4, 4)).face_index)
    ref = brute_rasterize(vertices, [[0, 1, 2]], (4, 4))[0]
    np.testing.assert_array_equal(fid, ref)
    # corner 0 at pixel (0, 0) has w0 = 1 > 0: inside; corners 1 and 2 have w0 = 0: outside
    assert fid[0, 0] == 0 and fid[0, 2] == -1 and fid[2, 0] == -1 and fid[0, 1] == 0


def test_degenerate_and_edge_on_paint_nothing():
    vertices = np.array([
        [-0.9, -0.9, 0.0], [0.9, 0.9, 0.0], [0.0, 0.0, 0.5],   # collinear in screen (edge-on)
        [0.3, 0.3, 0.0], [0.3, 0.3, 0.0], [0.3, 0.3, 0.0],     # a point
        [-0.5, 0.5, 0.0], [-0.5, 0.5, 0.0], [0.5, -0.5, 0.0],  # two equal corners
    ])
    faces = np.arange(9, dtype=np.int32).reshape(3, 3)
    frags = rasterize(vertices, faces, (24, 24))
    assert np.all(np.asarray(frags.face_index) == -1)
    assert np.all(np.asarray(frags.bary) == 0)


def test_offscreen_behind_and_empty():
    tri = np.array([[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [0.0, 0.5, 0.0]])
    faces = np.array([[0, 1, 2]], np.int32)
    for shift in ([3.0, 0, 0], [0, -4.0, 0], [0, 0, -20.0], [1e30, 0, 0], [np.inf, 0, 0], [np.nan, 0, 0]):
        fid = np.asarray(rasterize(tri + shift, faces, (16, 16)).face_index)
        assert np.all(fid == -1), shift
    # partly off-screen: clipped exactly like the reference
    big = np.array([[-3.0, -0.5, 0.0], [0.5, -0.5, 0.0], [0.0, 3.0, 0.0]])
    fid = np.asarray(rasterize(big, faces, (16, 16)).face_index)
    np.testing.assert_array_equal(fid, brute_rasterize(big, faces, (16, 16))[0])
    assert np.sum(fid >= 0) > 0
    # straddling the clip plane z = znear: per-pixel clipping
    tilt = np.array([[-0.9, -0.9, -12.0], [0.9, -0.9, -12.0], [0.0, 0.9, -8.0]])
    fid = np.asarray(rasterize(tilt, faces, (16, 16)).face_index)
    np.testing.assert_array_equal(fid, brute_rasterize(tilt, faces, (16, 16))[0])
    assert 0 < np.sum(fid >= 0) < np.sum(brute_rasterize(tilt, faces, (16, 16), znear=-1e9)[0] >= 0)
    # empty mesh
    frags = rasterize(tri, np.zeros((0, 3), np.int32), (16, 16))
    assert np.all(np.asarray(frags.face_index) == -1) and np.all(np.asarray(frags.mask) == 0)


def test_vmap_matches_per_item():
    meshes = [_random_mesh(s, 30, 40) for s in (11, 12, 13)]
    faces = meshes[0][1]
    batch = np.stack([m[0] for m in meshes])
    out = jax.jit(jax.vmap(lambda v: rasterize(v, faces, (24, 32), capacity=8)))(batch)
    for i in range(3):
        one = rasterize(batch[i], faces, (24, 32), capacity=8)
        np.testing.assert_array_equal(np.asarray(out.face_index[i]), np.asarray(one.face_index))
        np.testing.assert_allclose(np.asarray(out.bary[i]), np.asarray(one.bary), atol=1e-12)


def test_bad_inputs():
    tri = np.zeros((3, 3))
    faces = np.array([[0, 1, 2]], np.int32)
    with pytest.raises(ValueError, match="vertices"):
        rasterize(np.zeros((3, 2)), faces, (8, 8))
    with pytest.raises(ValueError, match="faces"):
        rasterize(tri, faces.astype(np.float32), (8, 8))
    with pytest.raises(ValueError, match="faces"):
        rasterize(tri, faces[:, :2], (8, 8))
    with pytest.raises(ValueError, match="image_hw"):
        rasterize(tri, faces, (0, 8))
    with pytest.raises(ValueError, match="on_overflow"):
        rasterize(tri, faces, (8, 8), on_overflow="drop")
    with pytest.raises(ValueError, match="capacity"):
        rasterize(tri, faces, (8, 8), capacity=0)


def test_pallas_kernel_matches_jnp_path():
    """The Pallas z-buffer kernel (interpret mode here; compiled Triton on GPUs) gives the jnp
    path's face ids: random overlapping meshes in both dtypes, exact depth ties (lower id wins),
    tiles with far more candidates than the jnp capacity, several pair windows, and vmap."""
    for seed, dtype in ((0, np.float64), (1, np.float32), (7, np.float64)):
        vertices, faces = _random_mesh(seed, num_faces=120)
        vertices = vertices.astype(dtype)
        ref = np.asarray(rasterize(vertices, faces, HW, tile_size=8, capacity=256, impl="jnp").face_index)
        got = np.asarray(rasterize(vertices, faces, HW, tile_size=8, impl="interpret").face_index)
        np.testing.assert_array_equal(got, ref)
        ref_b = brute_rasterize(vertices, faces, HW)[0]
        assert np.mean(got == ref_b) > 0.99
    # several windows (pair_budget 64) and a tile size whose pixel count is not a power of two
    vertices, faces = _random_mesh(3, num_faces=120)
    ref = np.asarray(rasterize(vertices, faces, HW, tile_size=6, capacity=256, impl="jnp").face_index)
    got = rasterize(vertices, faces, HW, tile_size=6, pair_budget=64, impl="interpret").face_index
    np.testing.assert_array_equal(np.asarray(got), ref)
    # exact ties: duplicated triangle, the lower index wins
    tri = np.array([[-0.8, -0.8, 0.3], [0.8, -0.8, 0.3], [0.0, 0.8, 0.3]])
    fid = np.asarray(rasterize(np.concatenate([tri, tri]), np.array([[3, 4, 5], [0, 1, 2]], np.int32), (16, 16),
                               impl="interpret").face_index)
    assert np.all(fid[fid >= 0] == 0) and np.sum(fid >= 0) > 20
    # vmap
    batch = np.stack([_random_mesh(s)[0] for s in (4, 5)])
    _, faces = _random_mesh(4)
    got = jax.vmap(lambda v: rasterize(v, faces, HW, impl="interpret").face_index)(batch)
    for b in range(2):
        np.testing.assert_array_equal(np.asarray(got[b]),
                                      np.asarray(rasterize(batch[b], faces, HW, impl="jnp").face_index))
    with pytest.raises(ValueError, match="impl"):
        rasterize(batch[0], faces, HW, impl="cuda")


@pytest.mark.parametrize("faces, match", [
    (np.array([[0, 1, 99]], np.int32), r"faces: vertex indices must lie in \[0, 3\).*99"),
    (np.array([[0, -7, 2]], np.int32), r"faces: vertex indices must lie in \[0, 3\).*-7"),
    (np.array([[0.0, 1.0, 2.0]]), r"faces: expected an integer dtype"),
    (np.array([[True, False, True]]), r"faces: expected an integer dtype"),
    (np.array([0, 1, 2], np.int32), r"faces: expected shape \(F, 3\)"),
])
def test_bad_face_indices_are_named(faces, match):
    tri = np.array([[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [0.0, 0.5, 0.0]])
    with pytest.raises(ValueError, match=match):
        rasterize(tri, faces, (8, 8))


@pytest.mark.parametrize("image_hw", [(0, 0), (0, 8), (8, -1)])
def test_empty_image_is_a_clear_error(image_hw):
    tri = np.array([[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [0.0, 0.5, 0.0]])
    with pytest.raises(ValueError, match=r"image_hw: expected positive sizes"):
        rasterize(tri, np.array([[0, 1, 2]], np.int32), image_hw)


def test_checks_pass_tracers_untouched():
    """Traced faces skip the value check: jit with faces as an argument, vmap over faces, and grad
    all give what the eager call gives."""
    vertices, faces = _random_mesh(3, num_vertices=20, num_faces=12)
    eager = rasterize(vertices, faces, (16, 16), impl="jnp")
    traced = jax.jit(lambda v, f: rasterize(v, f, (16, 16), impl="jnp"))(vertices, faces)
    np.testing.assert_array_equal(np.asarray(traced.face_index), np.asarray(eager.face_index))
    both = jax.vmap(lambda f: rasterize(vertices, f, (16, 16), impl="jnp").face_index)(np.stack([faces, faces]))
    np.testing.assert_array_equal(np.asarray(both[1]), np.asarray(eager.face_index))
    grad = jax.grad(lambda v: jnp.sum(rasterize(v, faces, (16, 16), impl="jnp").depth))(jnp.asarray(vertices))
    assert grad.shape == vertices.shape and np.all(np.isfinite(np.asarray(grad)))
