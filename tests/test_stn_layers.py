"""3DMM-STN layers vs float64 numpy references written from the original's ``layer/vl_nn*.m`` (MATLAB layouts)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jface import stn
from jface.models import MorphableModel
from jface.stn.toy import toy_grid_model

RES = 8  # an 8x8 UV grid: N = 64 vertices

# Compiled once and reused (op-by-op dispatch compiles every primitive; jit is cheaper overall).
_project = jax.jit(stn.project)
_visibility = jax.jit(stn.visibility, static_argnames="mode")
_normals = jax.jit(stn.visibility_normals, static_argnames="mode")


# ----------------------------------------------------------------------------- numpy references
def ref_r2R(r):
    """vl_nnr2R forward, entries written out."""
    if np.all(r == 0):
        return np.eye(3)
    theta = np.linalg.norm(r)
    k = r / theta
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(theta) * K + (1 - math.cos(theta)) * K @ K


def ref_forward_matlab(shape_mu, shape_pc, theta):
    """x42 from the MATLAB layout: shapeMU (3N,) interleaved, shapePC (3N, D); returns 2 x N."""
    r, t, logs, alpha = theta[0:3], theta[3:5], theta[5], theta[6:]
    X = np.reshape(shape_mu + shape_pc @ alpha, (3, -1), order="F")  # column n = vertex n
    Xr = ref_r2R(r) @ X
    return 0.99**logs * Xr[:2] + t[:, None], Xr


def ref_grid_matlab(x42, g, centre=112.0):
    """vl_nngrid: G(1, j, i) vertical, G(2, j, i) horizontal, n = i + g (j - 1)."""
    G = np.zeros((2, g, g))
    for j in range(1, g + 1):
        for i in range(1, g + 1):
            n = i + g * (j - 1)
            G[0, j - 1, i - 1] = (centre - x42[1, n - 1]) / centre
            G[1, j - 1, i - 1] = (x42[0, n - 1] - centre) / centre
    return G


def ref_visibility_matlab(X, faces1, last_write=True):
    """visibilityNotSelf.m literally: vectorised N(v_c) = N(v_c) + a_c n_f per slot (1-based faces).

    MATLAB evaluates the right-hand side with the old N for every face, then assigns in face order,
    so a repeated vertex keeps its last face's write. ``last_write=False`` accumulates instead.
    """
    P = X.T
    v1, v2, v3 = (faces1[:, c] - 1 for c in range(3))
    e1, e2, e3 = P[v2] - P[v1], P[v3] - P[v1], P[v2] - P[v3]
    unit = lambda e: e / np.linalg.norm(e, axis=1, keepdims=True)  # noqa: E731
    a1 = np.real(np.arccos(np.clip(np.sum(unit(e1) * unit(e2), 1), -1, 1)))
    a2 = np.real(np.arccos(np.clip(np.sum(unit(e3) * unit(e1), 1), -1, 1)))
    a3 = np.pi - a1 - a2
    n = np.cross(e1, e3)
    N = np.zeros_like(P)
    for v, a in ((v1, a1), (v2, a2), (v3, a3)):
        if last_write:
            old = N.copy()
            for f in range(len(v)):
                N[v[f]] = old[v[f]] + a[f] * n[f]
        else:
            np.add.at(N, v, a[:, None] * n)
    return N[:, 2] >= 0, N


@pytest.fixture(scope="module")
def toy():
    return toy_grid_model(RES, num_shape=3, num_expression=2, dtype=np.float64)


def _theta(rng, d=5):
    return np.concatenate([rng.normal(0, 0.3, 3), [110.0, 115.0], [rng.normal(0, 5)], rng.normal(size=d)])


# ----------------------------------------------------------------------------- tests
def test_split_theta_any_d():
    theta = np.arange(6 + 4.0)
    r, t, logs, alpha = stn.split_theta(theta)
    np.testing.assert_array_equal(r, [0, 1, 2])
    np.testing.assert_array_equal(t, [3, 4])
    assert float(logs) == 5.0 and alpha.shape == (4,)
    assert stn.split_theta(np.zeros(6))[3].shape == (0,)
    with pytest.raises(ValueError, match="theta"):
        stn.split_theta(np.zeros((2, 16)))
    with pytest.raises(ValueError, match="theta"):
        stn.split_theta(np.zeros(5))


def test_project_matches_matlab_layout_reference(toy):
    """Model in MATLAB's interleaved layout (shapeMU 3N, shapePC 3N x D) vs row-major project."""
    rng = np.random.default_rng(0)
    basis = np.asarray(toy.basis)
    shape_mu = np.asarray(toy.mean).reshape(-1)  # interleaved x1 y1 z1 x2 ...
    shape_pc = basis.reshape(-1, basis.shape[-1])
    # MATLAB layouts -> row-major (BUILD_NOTES.md, "Frames and conventions"):
    # shapeMU.reshape(N, 3) / shapePC.reshape(N, 3, D)
    np.testing.assert_array_equal(shape_mu.reshape(-1, 3), toy.mean)
    for theta in (_theta(rng), np.r_[0, 0, 0, 112.0, 112.0, 1.0, rng.normal(size=5)]):
        x42, xr = ref_forward_matlab(shape_mu, shape_pc, theta)
        out = _project(toy, theta)
        assert out["points"].dtype == jnp.float64
        np.testing.assert_allclose(out["points"], x42.T, rtol=1e-12, atol=1e-10)
        np.testing.assert_allclose(out["rotated"], xr.T, rtol=1e-12, atol=1e-10)
        np.testing.assert_allclose(out["scale"], 0.99 ** theta[5], rtol=1e-14)
    # float32 in -> float32 out
    toy32 = toy_grid_model(RES, num_shape=3, num_expression=2)
    assert jax.eval_shape(stn.project, toy32, np.float32(theta))["points"].dtype == jnp.float32


def test_project_conventions(toy):
    """s = 0.99**logs (not exp); positive r2 moves the nose (largest z) towards image right."""
    theta = np.zeros(11)
    theta[3:5] = 112.0
    theta[5] = 10.0
    pts = np.asarray(_project(toy, theta)["points"])
    np.testing.assert_allclose(pts, 0.99**10 * np.asarray(toy.mean)[:, :2] + 112.0, rtol=1e-12)
    nose = int(np.argmax(np.asarray(toy.mean)[:, 2]))
    theta[1] = 0.3
    assert _project(toy, theta)["points"][nose, 0] > pts[nose, 0]
    with pytest.raises(ValueError, match="alpha"):
        stn.project(toy, np.zeros(6 + 3))


def test_project_gradients_finite_at_r_zero(toy):
    """demo.m starts at r = 0 exactly: gradients must be finite and match central differences."""
    rng = np.random.default_rng(1)
    theta = np.r_[0.0, 0.0, 0.0, 112.0, 112.0, 1.0, rng.normal(size=5)]
    weights = rng.normal(size=(RES * RES, 2))
    f = jax.jit(lambda th: jnp.sum(stn.project(toy, th)["points"] * weights))
    grad = np.asarray(jax.jit(jax.grad(f))(theta))
    assert np.all(np.isfinite(grad))
    eps = 1e-6
    fd = np.array([(f(theta + eps * e) - f(theta - eps * e)) / (2 * eps) for e in np.eye(theta.size)])
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-5)


def test_sampling_grid_matlab_layout_and_223_factor():
    rng = np.random.default_rng(2)
    g = 5
    x42 = rng.uniform(1, 224, (2, g * g))
    grid = np.asarray(jax.jit(stn.sampling_grid, static_argnums=(1, 2))(x42.T, (g, g), (224, 224)))
    G = ref_grid_matlab(x42, g)
    np.testing.assert_allclose(grid[..., 0], G[0], rtol=1e-14)  # channel 0 vertical
    np.testing.assert_allclose(grid[..., 1], G[1], rtol=1e-14)  # channel 1 horizontal
    # vertex k <-> texel (k // W', k % W')
    for k in (0, 3, 7, 24):
        np.testing.assert_allclose(grid[k // g, k % g], [(112 - x42[1, k]) / 112, (x42[0, k] - 112) / 112])
    # composite mapping with the align-corners sampler: row = (224 - y) 223/224, col = x 223/224
    rows = (grid[..., 0] + 1) / 2 * 223
    cols = (grid[..., 1] + 1) / 2 * 223
    np.testing.assert_allclose(rows.ravel(), (224 - x42[1]) * 223 / 224, rtol=1e-12)
    np.testing.assert_allclose(cols.ravel(), x42[0] * 223 / 224, rtol=1e-12)
    # generalised only through arguments: a 64-px image is centred on 32
    centre = (64 - np.arange(8.0).reshape(4, 2)) * 0 + 32.0
    np.testing.assert_allclose(np.asarray(stn.sampling_grid(centre, (2, 2), (64, 64))), 0.0)
    with pytest.raises(ValueError, match="points"):
        stn.sampling_grid(np.zeros((10, 2)), (3, 3))


def test_select_points_gradient_accumulates_duplicates():
    """Autodiff sums the gradients of a repeated index; the original's selection backward keeps the
    last one (``vl_nnselection``). The 21-point list has no duplicates, so the two agree there."""
    points = np.arange(10.0).reshape(5, 2)
    weights = np.array([[1.0, 2.0], [10.0, 20.0], [5.0, 7.0]])
    grad = jax.grad(lambda p: jnp.sum(stn.select_points(p, [0, 0, 3]) * weights))(points)
    np.testing.assert_array_equal(grad[0], [11.0, 22.0])  # the original: [10, 20]
    np.testing.assert_array_equal(grad[3], [5.0, 7.0])
    np.testing.assert_array_equal(stn.select_points(points, [4, 1]), points[[4, 1]])


def test_grid_faces_order():
    faces = stn.grid_faces(112)
    assert faces.shape == (2 * 111 * 111, 3) and faces.dtype == np.int32
    # resampleModel.m: the first faces are [1 2 113], [114 113 2], [113 114 225] (1-based)
    np.testing.assert_array_equal(faces[:3] + 1, [[1, 2, 113], [114, 113, 2], [113, 114, 225]])


def test_visibility_last_write_matches_matlab_loop(toy):
    rng = np.random.default_rng(3)
    for yaw in (0.0, 0.9, -1.2):
        theta = _theta(rng)
        theta[1] = yaw
        rotated = np.asarray(_project(toy, theta)["rotated"])
        faces = np.asarray(toy.faces)
        ref_last, n_last = ref_visibility_matlab(rotated.T, faces + 1, last_write=True)
        ref_sum, n_sum = ref_visibility_matlab(rotated.T, faces + 1, last_write=False)
        np.testing.assert_array_equal(_visibility(rotated, faces, mode="last_write"), ref_last)
        np.testing.assert_array_equal(_visibility(rotated, faces, mode="angle_weighted"), ref_sum)
        np.testing.assert_allclose(_normals(rotated, faces), n_last, atol=1e-9)
        np.testing.assert_allclose(
            _normals(rotated, faces, mode="angle_weighted"), n_sum, atol=1e-9
        )
    # a strongly turned head hides part of the grid
    assert not ref_last.all()


def test_visibility_last_write_differs_from_true_sum():
    """A fan where vertex 0 is slot 1 of five front faces and, last, of one folded-over face.

    n_z of (p2 - p1) x (p2 - p3) depends only on the (x, y) winding: faces [0, i+2, i+1] of a
    counter-clockwise ring face +z; the last face [0, 6, 1] has the reversed winding (-z). With
    last-write-wins only that face counts for vertex 0 (invisible); the true sum is +z (visible).
    """
    angles = np.linspace(0, 2 * np.pi, 7)[:-1] + np.array([0.0, 0.1, -0.05, 0.12, 0.02, -0.2])
    ring = [(np.cos(a), 1.3 * np.sin(a), 0.1 * np.sin(3 * a)) for a in angles]  # no exact ties
    vertices = np.array([(0.0, 0.0, 0.2)] + ring)
    faces = np.array([[0, i + 2, i + 1] for i in range(5)] + [[0, 6, 1]], np.int32)
    normals_last = np.asarray(_normals(vertices, faces))
    normals_sum = np.asarray(_normals(vertices, faces, mode="angle_weighted"))
    ref_last, ref_n_last = ref_visibility_matlab(vertices.T, faces + 1, last_write=True)
    ref_sum, ref_n_sum = ref_visibility_matlab(vertices.T, faces + 1, last_write=False)
    np.testing.assert_allclose(normals_last, ref_n_last, atol=1e-12)
    np.testing.assert_allclose(normals_sum, ref_n_sum, atol=1e-12)
    last = np.asarray(_visibility(vertices, faces))
    total = np.asarray(_visibility(vertices, faces, mode="angle_weighted"))
    assert not last[0] and total[0], (normals_last[0], normals_sum[0])
    np.testing.assert_array_equal(last, ref_last)
    np.testing.assert_array_equal(total, ref_sum)


def test_visibility_edge_cases_and_errors():
    # a degenerate (zero-length) edge gives NaN normals -> invisible, as NaN >= 0 is false
    vertices = np.array([[0.0, 0, 0], [0.0, 0, 0], [0.0, 1, 0]])
    vis = np.asarray(_visibility(vertices, np.array([[0, 1, 2]])))
    assert not vis.any()
    with pytest.raises(ValueError, match="mode"):
        stn.visibility(vertices, np.array([[0, 1, 2]]), mode="zbuffer")
    with pytest.raises(ValueError, match="faces"):
        stn.visibility(vertices, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="rotated"):
        stn.visibility(vertices[:, :2], np.array([[0, 1, 2]]))


def _ref_sample(image, G):
    """MatConvNet sampler on a MATLAB-layout grid G (2 x Ho x Wo), symmetric zero padding."""
    H, W, C = image.shape
    out = np.zeros(G.shape[1:] + (C,))
    for j in range(G.shape[1]):
        for i in range(G.shape[2]):
            py, px = (G[0, j, i] + 1) / 2 * (H - 1), (G[1, j, i] + 1) / 2 * (W - 1)
            sy, sx = math.floor(py), math.floor(px)
            for r, wr in ((sy, 1 - (py - sy)), (sy + 1, py - sy)):
                for c, wc in ((sx, 1 - (px - sx)), (sx + 1, px - sx)):
                    if 0 <= r < H and 0 <= c < W:
                        out[j, i] += wr * wc * image[r, c]
    return out


def test_flatten_matches_reference_pipeline(toy):
    """x42 -> grid -> sampler -> visibility mask -> masking against the MATLAB-layout references."""
    rng = np.random.default_rng(4)
    image = rng.uniform(1, 255, (224, 224, 3))
    theta = _theta(rng)
    theta[1] = 1.0  # turned enough to mask part of the grid
    theta[5] = 40.0  # s ~ 0.67: the 8x8 grid spans part of the image
    out = jax.jit(stn.flatten)(toy, theta, image)
    basis = np.asarray(toy.basis)
    x42, xr = ref_forward_matlab(np.asarray(toy.mean).reshape(-1), basis.reshape(-1, basis.shape[-1]), theta)
    G = ref_grid_matlab(x42, RES)
    sampled = _ref_sample(image, G)
    vis, _ = ref_visibility_matlab(xr, np.asarray(toy.faces) + 1)
    # the original: per-vertex boolean -> reshape / imrotate(-90) / fliplr = the same texel layout
    mask = np.fliplr(np.rot90(vis.reshape(RES, RES, order="F"), -1))
    np.testing.assert_array_equal(mask, vis.reshape(RES, RES))
    np.testing.assert_allclose(out["sampled"], sampled, rtol=1e-10, atol=1e-9)
    np.testing.assert_array_equal(out["mask"], mask.astype(float))
    np.testing.assert_allclose(out["texture"], sampled * mask[..., None], rtol=1e-10, atol=1e-9)
    assert 0 < mask.mean() < 1


def test_flatten_gradients_match_finite_differences(toy):
    """d(sum(texture * w))/dtheta (through sampler + grid + geometry; mask constant) vs central FD."""
    rng = np.random.default_rng(5)
    yy, xx = np.meshgrid(np.arange(224.0), np.arange(224.0), indexing="ij")
    image = np.stack([np.sin(xx / 9.0) + yy / 50, np.cos(yy / 7.0), xx * yy / 5e4], -1) * 100
    theta = _theta(rng)
    weights = rng.normal(size=(RES, RES, 3))
    f = jax.jit(lambda th: jnp.sum(stn.flatten(toy, th, image)["texture"] * weights))
    grad = np.asarray(jax.jit(jax.grad(f))(theta))
    eps = 1e-5
    fd = np.array([(f(theta + eps * e) - f(theta - eps * e)) / (2 * eps) for e in np.eye(theta.size)])
    np.testing.assert_allclose(grad, fd, rtol=1e-4, atol=1e-4 * np.abs(fd).max())


def test_flatten_vmap_float32_and_errors():
    toy32 = toy_grid_model(RES, num_shape=3, num_expression=2)
    images = np.full((2, 32, 32, 3), 100.0, np.float32)
    theta = np.tile(np.r_[0, 0, 0, 16.0, 16.0, 150.0, np.zeros(5)], (2, 1)).astype(np.float32)
    out = jax.jit(jax.vmap(lambda th, im: stn.flatten(toy32, th, im)))(theta, images)
    assert out["texture"].shape == (2, RES, RES, 3) and out["texture"].dtype == jnp.float32
    # s = 0.99**150 ~ 0.22: the face (~45 px of a 32 px image) samples the constant image inside
    assert float(out["mask"].min()) == 1.0
    with pytest.raises(ValueError, match="image"):
        stn.flatten(toy32, theta[0], images)
    bad = MorphableModel(mean=np.zeros((10, 3)), shape_basis=np.zeros((10, 3, 1)),
                         expression_basis=np.zeros((10, 3, 0)), faces=np.zeros((1, 3), np.int32))
    with pytest.raises(ValueError, match="grid"):
        stn.flatten(bad, np.zeros(7), images[0])
