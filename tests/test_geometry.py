"""jface.geometry against float64 numpy references written from the originals' conventions."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jface import geometry as g

RNG = np.random.default_rng(0)


# ---------------------------------------------------------------- numpy references (float64)
def ref_rodrigues(r):
    """3DMM-STN vl_nnr2R.m: I at exactly 0, else the closed form."""
    r = np.asarray(r, np.float64)
    if not np.any(r):
        return np.eye(3)
    theta = np.linalg.norm(r)
    k = r / theta
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(theta) * kx + (1 - math.cos(theta)) * kx @ kx


def ref_gallego_yezzi(r):
    """dR/dr_i = (r_i [r]x + [r x ((I - R) e_i)]x) R / |r|^2 (vl_nnr2R.m, after Gallego & Yezzi 2015)."""
    r = np.asarray(r, np.float64)
    rot = ref_rodrigues(r)

    def skew(v):
        return np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])

    out = []
    for i in range(3):
        e = np.eye(3)[i]
        out.append((r[i] * skew(r) + skew(np.cross(r, (np.eye(3) - rot) @ e))) @ rot / (r @ r))
    return np.stack(out, axis=-1)  # (3, 3, 3): [a, b, i]


# ---------------------------------------------------------------- axis_angle_to_matrix
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rodrigues_matches_reference_and_keeps_dtype(dtype):
    rs = RNG.normal(size=(20, 3)) * RNG.uniform(0, 3, size=(20, 1))
    rot = g.axis_angle_to_matrix(jnp.asarray(rs, dtype))
    assert rot.dtype == dtype
    tol = 1e-6 if dtype == np.float32 else 1e-13
    for r, m in zip(rs, np.asarray(rot)):
        np.testing.assert_allclose(m, ref_rodrigues(r.astype(dtype)), atol=tol)


def test_rodrigues_identity_and_generators_at_zero():
    zero = jnp.zeros(3, jnp.float32)
    np.testing.assert_array_equal(np.asarray(g.axis_angle_to_matrix(zero)), np.eye(3))
    jac = np.asarray(jax.jacfwd(g.axis_angle_to_matrix)(jnp.zeros(3, jnp.float64)))
    jac_rev = np.asarray(jax.jacrev(g.axis_angle_to_matrix)(jnp.zeros(3, jnp.float64)))
    for i in range(3):
        gen = np.asarray(g.cross_product_matrix(np.eye(3)[i]))
        np.testing.assert_array_equal(jac[..., i], gen)
        np.testing.assert_array_equal(jac_rev[..., i], gen)
    assert np.all(np.isfinite(jac))


@pytest.mark.parametrize("scale", [1e-9, 1e-6, 1e-3, 0.5, math.pi - 1e-6, math.pi, math.pi + 0.1])
def test_rodrigues_tiny_and_near_pi(scale):
    axis = np.array([0.3, -0.5, 0.8])
    axis /= np.linalg.norm(axis)
    r = axis * scale
    rot = np.asarray(g.axis_angle_to_matrix(jnp.asarray(r)))
    np.testing.assert_allclose(rot, ref_rodrigues(r), atol=1e-14)
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-14)
    jac = np.asarray(jax.jacfwd(g.axis_angle_to_matrix)(jnp.asarray(r)))
    np.testing.assert_allclose(jac, ref_gallego_yezzi(r), atol=1e-9)


def test_rodrigues_gradients_finite_differences():
    for r in [np.zeros(3), np.array([1e-5, -2e-5, 3e-6]), np.array([0.4, -1.1, 2.0])]:
        check_grads(g.axis_angle_to_matrix, (jnp.asarray(r),), order=2, modes=("fwd", "rev"))


def test_rodrigues_batch_jit_vmap():
    rs = jnp.asarray(RNG.normal(size=(4, 5, 3)), jnp.float32)
    eager = g.axis_angle_to_matrix(rs)
    assert eager.shape == (4, 5, 3, 3)
    np.testing.assert_allclose(jax.jit(g.axis_angle_to_matrix)(rs), eager, atol=1e-6)
    np.testing.assert_allclose(jax.vmap(g.axis_angle_to_matrix)(rs), eager, atol=1e-6)


def _deca_batch_rodrigues_numpy_f32(r):
    """DECA lbs.batch_rodrigues transcribed op by op in float32 numpy (decalib/models/lbs.py)."""
    r = np.asarray(r, np.float32)
    angle = np.sqrt(np.sum(np.square(r + np.float32(1e-8)), axis=1, keepdims=True))
    rot_dir = r / angle
    cos = np.cos(angle)[:, None]
    sin = np.sin(angle)[:, None]
    rx, ry, rz = rot_dir[:, 0:1], rot_dir[:, 1:2], rot_dir[:, 2:3]
    zeros = np.zeros_like(rx)
    k = np.concatenate([zeros, -rz, ry, rz, zeros, -rx, -ry, rx, zeros], 1).reshape(-1, 3, 3)
    return np.eye(3, dtype=np.float32)[None] + sin * k + (1 - cos) * np.matmul(k, k)


def test_rodrigues_deca_matches_batch_rodrigues():
    rs = np.concatenate([np.zeros((1, 3)), RNG.normal(size=(64, 3))]).astype(np.float32)
    ours = np.asarray(g.axis_angle_to_matrix(jnp.asarray(rs), deca=True))
    assert ours.dtype == np.float32
    ref = _deca_batch_rodrigues_numpy_f32(rs)
    # Same operations in the same order; only sin/cos (XLA vs libm) may differ by an ulp.
    np.testing.assert_allclose(ours, ref, atol=5e-7, rtol=0)
    assert np.mean(ours == ref) > 0.4
    # r = 0 gives exactly I (DECA's 1e-8 shift makes sin(1.7e-8) K vanish below float32 eps).
    np.testing.assert_array_equal(ours[0], np.eye(3, dtype=np.float32))


def test_rodrigues_deca_bit_exact_against_torch():
    torch = pytest.importorskip("torch")

    def batch_rodrigues(rot_vecs):
        # DECA decalib/models/lbs.py batch_rodrigues, transcribed.
        batch_size = rot_vecs.shape[0]
        angle = torch.norm(rot_vecs + 1e-8, dim=1, keepdim=True)
        rot_dir = rot_vecs / angle
        cos = torch.unsqueeze(torch.cos(angle), dim=1)
        sin = torch.unsqueeze(torch.sin(angle), dim=1)
        rx, ry, rz = torch.split(rot_dir, 1, dim=1)
        zeros = torch.zeros((batch_size, 1), dtype=torch.float32)
        k = torch.cat([zeros, -rz, ry, rz, zeros, -rx, -ry, rx, zeros], dim=1).view((batch_size, 3, 3))
        ident = torch.eye(3, dtype=torch.float32).unsqueeze(dim=0)
        return ident + sin * k + (1 - cos) * torch.bmm(k, k)

    rs = RNG.normal(size=(256, 3)).astype(np.float32)
    ref = batch_rodrigues(torch.from_numpy(rs)).numpy()
    ours = np.asarray(jax.jit(lambda r: g.axis_angle_to_matrix(r, deca=True))(rs))
    # torch's CPU norm reduction and its SLEEF sin/cos differ from XLA's by an ulp or two, which
    # the (1 - cos) K K term can amplify to a few ulp; most entries are bit-identical.
    np.testing.assert_allclose(ours, ref, atol=6e-7, rtol=0)
    assert np.mean(ours == ref) > 0.4


# ---------------------------------------------------------------- inverse maps and Euler
def test_matrix_to_axis_angle_roundtrip():
    rs = RNG.normal(size=(50, 3))
    rs = rs / np.linalg.norm(rs, axis=1, keepdims=True) * RNG.uniform(0, math.pi - 1e-3, (50, 1))
    back = np.asarray(g.matrix_to_axis_angle(g.axis_angle_to_matrix(jnp.asarray(rs))))
    np.testing.assert_allclose(back, rs, atol=1e-9)
    near_pi = np.array([math.pi - 1e-7, 0.0, 0.0])
    back = np.asarray(g.matrix_to_axis_angle(g.axis_angle_to_matrix(jnp.asarray(near_pi))))
    np.testing.assert_allclose(np.abs(back), np.abs(near_pi), atol=1e-6)
    np.testing.assert_allclose(np.asarray(g.matrix_to_axis_angle(jnp.eye(3))), 0, atol=0)


def test_euler_convention_and_deca_yaw():
    angles = RNG.uniform(-1.2, 1.2, size=(30, 3))
    rot = np.asarray(g.euler_to_matrix(jnp.asarray(angles)))
    for a, m in zip(angles, rot):
        cx, sx, cy, sy, cz, sz = np.cos(a[0]), np.sin(a[0]), np.cos(a[1]), np.sin(a[1]), np.cos(a[2]), np.sin(a[2])
        rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
        ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
        np.testing.assert_allclose(m, rz @ ry @ rx, atol=1e-14)
        # DECA rot_mat_to_euler (decalib/models/lbs.py)
        yaw = math.atan2(-m[2, 0], math.sqrt(m[0, 0] ** 2 + m[1, 0] ** 2))
        assert abs(yaw - a[1]) < 1e-12
    np.testing.assert_allclose(np.asarray(g.matrix_to_euler(jnp.asarray(rot))), angles, atol=1e-12)
    # A pure yaw axis-angle (about +y) reads back as the same yaw: the face turns to +x.
    yaw = np.asarray(g.matrix_to_euler(g.axis_angle_to_matrix(jnp.array([0.0, 0.3, 0.0]))))
    np.testing.assert_allclose(yaw, [0, 0.3, 0], atol=1e-14)
    nose = np.asarray(g.rotate_points(jnp.array([[0.0, 0.0, 1.0]]), g.axis_angle_to_matrix(jnp.array([0.0, 0.3, 0.0]))))
    assert nose[0, 0] > 0


def test_deca_euler_to_axis_angle_matches_xyz_composition():
    angles = RNG.uniform(-1.0, 1.0, size=(20, 3))
    aa = np.asarray(g.deca_euler_to_axis_angle(jnp.asarray(angles)))
    for a, r in zip(angles, aa):
        cx, sx, cy, sy, cz, sz = np.cos(a[0]), np.sin(a[0]), np.cos(a[1]), np.sin(a[1]), np.cos(a[2]), np.sin(a[2])
        rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
        ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
        np.testing.assert_allclose(ref_rodrigues(r), rx @ ry @ rz, atol=1e-12)
    np.testing.assert_allclose(np.asarray(g.deca_euler_to_axis_angle(jnp.zeros(3))), 0)
    check_grads(g.deca_euler_to_axis_angle, (jnp.array([0.2, -0.3, 0.1]),), order=1)


# ---------------------------------------------------------------- STN pipeline pieces
def test_stn_scale_law_is_power_of_099():
    logs = jnp.array([0.0, 1.0, -3.0, 10.0], jnp.float32)
    s = np.asarray(g.stn_scale(logs))
    assert s.dtype == np.float32
    np.testing.assert_allclose(s, 0.99 ** np.array([0.0, 1.0, -3.0, 10.0]), rtol=1e-6)
    grad = jax.grad(lambda x: g.stn_scale(x))(jnp.float64(2.0))
    np.testing.assert_allclose(grad, 0.99**2 * math.log(0.99), rtol=1e-12)


def test_stn_chain_matches_reference_frame():
    """rotate -> project -> scale -> translate (vl_nnrotate3D, vl_nnprojection, vl_nnscale2D,
    vl_nntranslate2D), float64."""
    pts = RNG.normal(size=(7, 3)) * 50
    r, t, logs = np.array([0.1, 0.4, -0.2]), np.array([112.0, 100.0]), 3.0
    rot = ref_rodrigues(r)
    ref = 0.99**logs * (pts @ rot.T)[:, :2] + t

    def chain(pts, r, t, logs):
        x = g.rotate_points(pts, g.axis_angle_to_matrix(r))
        return g.translate_points(g.scale_points(g.orthographic_projection(x), g.stn_scale(logs)), t)

    args = tuple(jnp.asarray(a) for a in (pts, r, t, logs))
    np.testing.assert_allclose(np.asarray(chain(*args)), ref, atol=1e-11)
    check_grads(chain, args, order=1, modes=("rev",))
    batched = jax.vmap(chain, in_axes=(None, 0, 0, 0))(
        args[0], jnp.stack([args[1]] * 3), jnp.stack([args[2]] * 3), jnp.stack([args[3]] * 3)
    )
    np.testing.assert_allclose(np.asarray(batched[1]), ref, atol=1e-11)


def test_deca_camera_and_flip():
    pts = RNG.normal(size=(2, 6, 3))
    cam = np.array([[8.0, 0.01, -0.02], [5.0, 0.0, 0.03]])
    ref = cam[:, None, :1] * np.concatenate([pts[..., :2] + cam[:, None, 1:], pts[..., 2:]], -1)
    out = np.asarray(g.orthographic_camera(jnp.asarray(pts), jnp.asarray(cam)))
    np.testing.assert_allclose(out, ref, atol=1e-13)
    flipped = np.asarray(g.flip_yz(jnp.asarray(out)))
    np.testing.assert_allclose(flipped, out * [1, -1, -1])
    check_grads(g.orthographic_camera, (jnp.asarray(pts), jnp.asarray(cam)), order=1)
    f32 = g.orthographic_camera(jnp.asarray(pts, jnp.float32), jnp.asarray(cam, jnp.float32))
    assert f32.dtype == jnp.float32


def test_vertex_normals_area_weighted():
    verts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [5, 5, 5]], np.float64)
    faces = np.array([[0, 1, 2], [0, 3, 1]])
    n = np.asarray(g.vertex_normals(jnp.asarray(verts), jnp.asarray(faces)))
    f0 = np.cross(verts[1] - verts[0], verts[2] - verts[0])
    f1 = np.cross(verts[3] - verts[0], verts[1] - verts[0])
    expect0 = (f0 + f1) / np.linalg.norm(f0 + f1)
    np.testing.assert_allclose(n[0], expect0, atol=1e-14)
    np.testing.assert_allclose(n[2], [0, 0, 1], atol=1e-14)
    np.testing.assert_array_equal(n[4], 0)  # unused vertex
    check_grads(lambda v: g.vertex_normals(v, faces)[:4], (jnp.asarray(verts),), order=1)


def test_vertex_normals_gradient_finite_on_degenerate_faces():
    verts = jnp.zeros((4, 3), jnp.float64).at[3].set(1.0)
    faces = jnp.array([[0, 1, 2], [0, 1, 3]])
    grad = jax.grad(lambda v: jnp.sum(g.vertex_normals(v, faces) * jnp.arange(3.0)))(verts)
    assert np.all(np.isfinite(np.asarray(grad)))


# ---------------------------------------------------------------- argument checks (issue 23)
@pytest.mark.parametrize("r", [np.zeros(2), np.zeros(4), np.zeros((5, 2))])
def test_axis_angle_to_matrix_rejects_wrong_shape(r):
    for deca in (False, True):
        with pytest.raises(ValueError, match=r"r: expected shape \(\.\.\., 3\)"):
            g.axis_angle_to_matrix(r, deca=deca)


def test_euler_and_matrix_shapes_are_checked():
    with pytest.raises(ValueError, match=r"angles: expected shape \(\.\.\., 3\)"):
        g.euler_to_matrix(np.zeros(2))
    with pytest.raises(ValueError, match=r"angles: expected shape \(\.\.\., 3\)"):
        g.deca_euler_to_axis_angle(np.zeros(4))
    with pytest.raises(ValueError, match=r"rotation: expected shape \(\.\.\., 3, 3\), got \(3, 2\)"):
        g.matrix_to_euler(np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"rotation: expected shape \(\.\.\., 3, 3\)"):
        g.matrix_to_axis_angle(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"rotation: expected shape \(\.\.\., 3, 3\)"):
        g.rotate_points(np.zeros((4, 3)), np.zeros((3,)))
    with pytest.raises(ValueError, match=r"points: expected shape \(\.\.\., N, 3\)"):
        g.rotate_points(np.zeros((4, 2)), np.eye(3))
    with pytest.raises(ValueError, match=r"cam: expected shape \(\.\.\., 3\)"):
        g.orthographic_camera(np.zeros((4, 3)), np.zeros(2))
    with pytest.raises(ValueError, match=r"translation: expected shape \(\.\.\., 2\)"):
        g.translate_points(np.zeros((4, 2)), np.zeros(3))


@pytest.mark.parametrize("faces, match", [
    (np.array([[0, 1, 99]]), r"faces: vertex indices must lie in \[0, 4\).*99"),
    (np.array([[0, -7, 2]]), r"faces: vertex indices must lie in \[0, 4\).*-7"),
    (np.array([[0.0, 1.0, 2.0]]), r"faces: expected an integer dtype"),
    (np.array([0, 1, 2]), r"faces: expected shape \(F, 3\)"),
])
def test_vertex_normals_rejects_bad_faces(faces, match):
    with pytest.raises(ValueError, match=match):
        g.vertex_normals(np.zeros((4, 3)), faces)


def test_checks_leave_jit_vmap_and_grad_working():
    """Shape checks are static; the index check skips traced faces, so tracing is untouched."""
    r = jnp.asarray(RNG.normal(size=(5, 3)))
    np.testing.assert_allclose(np.asarray(jax.jit(g.axis_angle_to_matrix)(r)),
                               np.asarray(g.axis_angle_to_matrix(r)), atol=1e-12)
    np.testing.assert_allclose(np.asarray(jax.vmap(g.euler_to_matrix)(r)), np.asarray(g.euler_to_matrix(r)),
                               atol=1e-12)
    grad = jax.grad(lambda a: jnp.sum(g.matrix_to_euler(g.euler_to_matrix(a))))(r[0])
    assert grad.shape == (3,) and np.all(np.isfinite(np.asarray(grad)))
    verts = jnp.asarray(RNG.normal(size=(4, 3)))
    faces = jnp.array([[0, 1, 2], [0, 3, 1]])
    traced = jax.jit(g.vertex_normals)(verts, faces)  # faces traced: no value check, same result
    np.testing.assert_allclose(np.asarray(traced), np.asarray(g.vertex_normals(verts, faces)), atol=1e-12)
