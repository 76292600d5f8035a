"""jface.flame.forward against references written from DECA's FLAME (``decalib/models/FLAME.py``,
``decalib/models/lbs.py``) in numpy float64 and torch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jface import flame
from jface.flame.testing import flame_model_from_arrays, random_flame_model

_forward = jax.jit(flame.forward)

# ----------------------------------------------------------------------------------------------
# numpy float64 reference of DECA's FLAME (lbs, batch_rodrigues, the dynamic contour), transcribed.


def ref_rodrigues(r):
    r = np.asarray(r, np.float64)
    angle = np.linalg.norm(r + 1e-8)
    k = r / angle
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx


def ref_flame(m, shape, expression, pose15):
    ns, ne = len(shape), len(expression)
    sd = np.asarray(m.shapedirs, np.float64)
    dirs = np.concatenate([sd[..., :ns], sd[..., m.n_shape : m.n_shape + ne]], -1)
    b = np.concatenate([shape, expression])
    v_shaped = np.asarray(m.v_template, np.float64) + dirs @ b
    joints = np.asarray(m.j_regressor, np.float64) @ v_shaped
    rots = [ref_rodrigues(pose15[3 * j : 3 * j + 3]) for j in range(5)]
    feat = np.concatenate([(rots[j] - np.eye(3)).reshape(-1) for j in range(1, 5)])
    posedirs_t = np.asarray(m.posedirs, np.float64).reshape(-1, 36).T
    v_posed = v_shaped + (feat @ posedirs_t).reshape(-1, 3)
    parents = m.parents
    world = []
    for j in range(5):
        t = np.eye(4)
        t[:3, :3] = rots[j]
        t[:3, 3] = joints[j] - (joints[parents[j]] if j > 0 else 0)
        world.append(t if j == 0 else world[parents[j]] @ t)
    rel = []
    for j in range(5):
        a = world[j].copy()
        a[:3, 3] = world[j][:3, 3] - world[j][:3, :3] @ joints[j]
        rel.append(a)
    w = np.asarray(m.lbs_weights, np.float64)
    mv = np.einsum("vj,jab->vab", w, np.stack(rel))
    verts = np.einsum("vab,vb->va", mv[:, :3, :3], v_posed) + mv[:, :3, 3]
    posed_joints = np.stack([g[:3, 3] for g in world])

    # dynamic contour row: rel = R_root R_neck, Euler-y in degrees, no minus sign
    relr = rots[0] @ rots[1]
    yaw = np.degrees(np.arctan2(-relr[2, 0], np.hypot(relr[0, 0], relr[1, 0])))
    a = int(np.round(min(yaw, 39.0)))
    row = a if a >= 0 else (78 if a < -39 else 39 - a)
    faces = np.asarray(m.faces)

    def lmk(face_idx, bc):
        return np.einsum("lkd,lk->ld", verts[faces[face_idx]], np.asarray(bc, np.float64))

    fidx = np.concatenate([np.asarray(m.dynamic_lmk_faces_idx)[row], m.static_lmk_faces_idx])
    bc = np.concatenate([np.asarray(m.dynamic_lmk_bary_coords)[row], m.static_lmk_bary_coords])
    return dict(
        vertices=verts,
        joints=posed_joints,
        landmarks2d=lmk(fidx, bc),
        landmarks3d=lmk(np.asarray(m.full_lmk_faces_idx).reshape(-1),
                        np.asarray(m.full_lmk_bary_coords).reshape(-1, 3)),
        row=row,
    )


def _pose15(pose6):
    return np.concatenate([pose6[:3], np.zeros(3), pose6[3:], np.zeros(6)])


@pytest.fixture(scope="module")
def tiny():
    return random_flame_model(0)


@pytest.fixture(scope="module")
def real_model(realdata):
    arrays = dict(np.load(realdata / "synthetic_flame" / "synthetic_flame_model.npz"))
    emb = dict(np.load(realdata / "deca" / "landmark_embedding_numpy.npz"))
    return flame_model_from_arrays(arrays, emb)


def _params(seed, ns, ne, scale=0.3):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(ns), rng.standard_normal(ne), scale * rng.standard_normal(6)


def test_forward_matches_float64_reference(tiny):
    shape, exp, pose = _params(1, 6, 4)
    out = _forward(tiny, shape, exp, pose)
    ref = ref_flame(tiny, shape, exp, _pose15(pose))
    assert out["vertices"].dtype == jnp.float64
    for key in ("vertices", "joints", "landmarks2d", "landmarks3d"):
        np.testing.assert_allclose(out[key], ref[key], rtol=1e-10, atol=1e-12, err_msg=key)


def test_subset_of_components_and_full_pose(tiny):
    # fewer coefficients than the model has: leading identity columns, expression from n_shape
    rng = np.random.default_rng(2)
    shape, exp = rng.standard_normal(3), rng.standard_normal(2)
    pose15 = 0.2 * rng.standard_normal(15)
    out = _forward(tiny, shape, exp, pose15)
    ref = ref_flame(tiny, shape, exp, pose15)
    np.testing.assert_allclose(out["vertices"], ref["vertices"], rtol=1e-10, atol=1e-12)
    # neck/eye given separately == the same 15-number pose
    pose6 = np.concatenate([pose15[:3], pose15[6:9]])
    out2 = _forward(tiny, shape, exp, pose6, neck_pose=pose15[3:6], eye_pose=pose15[9:])
    np.testing.assert_allclose(out2["vertices"], out["vertices"], rtol=1e-12, atol=1e-14)


def test_zero_parameters_give_template(tiny):
    out = _forward(tiny, np.zeros(6), np.zeros(4), np.zeros(6))
    np.testing.assert_allclose(out["vertices"], tiny.v_template, atol=1e-12)


def test_float32_in_float32_out(tiny):
    m32 = jax.tree_util.tree_map(
        lambda x: x.astype(np.float32) if np.issubdtype(np.asarray(x).dtype, np.floating) else x,
        tiny,
    )
    shape, exp, pose = _params(3, 6, 4)
    out = _forward(m32, shape.astype(np.float32), exp.astype(np.float32), pose.astype(np.float32))
    assert all(v.dtype == jnp.float32 for v in out.values())
    ref = ref_flame(tiny, shape, exp, _pose15(pose))
    np.testing.assert_allclose(out["vertices"], ref["vertices"], atol=1e-5)


def test_real_layout_model_and_torch_transcription(real_model):
    shape, exp, pose = _params(4, 100, 50, scale=0.25)
    out = _forward(real_model, shape, exp, pose)
    ref = ref_flame(real_model, shape, exp, _pose15(pose))
    for key in ("vertices", "joints", "landmarks2d", "landmarks3d"):
        np.testing.assert_allclose(out[key], ref[key], rtol=1e-9, atol=1e-9, err_msg=key)
    torch = pytest.importorskip("torch")
    tout = _torch_deca_flame(torch, real_model, shape, exp, pose)
    m32 = jax.tree_util.tree_map(
        lambda x: x.astype(np.float32) if np.issubdtype(np.asarray(x).dtype, np.floating) else x,
        real_model,
    )
    jout = _forward(m32, *(a.astype(np.float32) for a in (shape, exp, pose)))
    for key in ("vertices", "landmarks2d", "landmarks3d"):
        np.testing.assert_allclose(jout[key], tout[key], rtol=1e-4, atol=2e-5, err_msg=key)
    # the dynamic contour through the torch transcription, across the LUT's regimes
    for yaw in (-55.3, -20.4, 0.2, 12.6, 47.1):
        p = pose.copy()
        p[:3] = [0.05, np.radians(yaw), -0.03]
        tout = _torch_deca_flame(torch, real_model, shape, exp, p)
        jout = _forward(m32, *(a.astype(np.float32) for a in (shape, exp, p)))
        np.testing.assert_allclose(jout["landmarks2d"], tout["landmarks2d"], rtol=1e-4, atol=2e-5, err_msg=str(yaw))


def _torch_deca_flame(torch, m, shape, exp, pose):
    """Transcription of DECA's FLAME.forward / lbs / batch_rodrigues, float32."""
    f32 = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731

    def batch_rodrigues(rot_vecs):
        batch_size = rot_vecs.shape[0]
        angle = torch.norm(rot_vecs + 1e-8, dim=1, keepdim=True)
        rot_dir = rot_vecs / angle
        cos = torch.unsqueeze(torch.cos(angle), dim=1)
        sin = torch.unsqueeze(torch.sin(angle), dim=1)
        rx, ry, rz = torch.split(rot_dir, 1, dim=1)
        zeros = torch.zeros((batch_size, 1), dtype=torch.float32)
        K = torch.cat([zeros, -rz, ry, rz, zeros, -rx, -ry, rx, zeros], dim=1).view((batch_size, 3, 3))
        ident = torch.eye(3, dtype=torch.float32).unsqueeze(dim=0)
        return ident + sin * K + (1 - cos) * torch.bmm(K, K)

    v_template = f32(m.v_template)[None]
    sd = np.asarray(m.shapedirs)
    shapedirs = f32(np.concatenate([sd[..., :100], sd[..., 300:350]], -1))
    posedirs = f32(np.asarray(m.posedirs).reshape(-1, 36).T)
    jreg = f32(m.j_regressor)
    parents = torch.tensor(m.parents)
    weights = f32(m.lbs_weights)[None]
    betas = torch.cat([f32(shape), f32(exp)])[None]
    p = f32(pose)[None]
    full_pose = torch.cat([p[:, :3], torch.zeros(1, 3), p[:, 3:], torch.zeros(1, 6)], dim=1)
    v_shaped = v_template + torch.einsum("bl,mkl->bmk", [betas, shapedirs])
    J = torch.einsum("bik,ji->bjk", [v_shaped, jreg])
    rot_mats = batch_rodrigues(full_pose.view(-1, 3)).view([1, -1, 3, 3])
    pose_feature = (rot_mats[:, 1:, :, :] - torch.eye(3)).view([1, -1])
    v_posed = torch.matmul(pose_feature, posedirs).view(1, -1, 3) + v_shaped
    joints = torch.unsqueeze(J, dim=-1)
    rel_joints = joints.clone()
    rel_joints[:, 1:] -= joints[:, parents[1:]]
    R = rot_mats.reshape(-1, 3, 3)
    t = rel_joints.reshape(-1, 3, 1)
    tm = torch.cat([torch.nn.functional.pad(R, [0, 0, 0, 1]), torch.nn.functional.pad(t, [0, 0, 0, 1], value=1)], dim=2)
    tm = tm.reshape(1, -1, 4, 4)
    chain = [tm[:, 0]]
    for i in range(1, parents.shape[0]):
        chain.append(torch.matmul(chain[parents[i]], tm[:, i]))
    transforms = torch.stack(chain, dim=1)
    joints_homogen = torch.nn.functional.pad(joints, [0, 0, 0, 1])
    rel_transforms = transforms - torch.nn.functional.pad(
        torch.matmul(transforms, joints_homogen), [3, 0, 0, 0, 0, 0, 0, 0])
    T = torch.matmul(weights, rel_transforms.view(1, 5, 16)).view(1, -1, 4, 4)
    homogen = torch.ones([1, v_posed.shape[1], 1])
    v_posed_h = torch.cat([v_posed, homogen], dim=2)
    verts = torch.matmul(T, torch.unsqueeze(v_posed_h, dim=-1))[:, :, :3, 0]

    # _find_dynamic_lmk_idx_and_bcoords (DECA's class method: no minus sign)
    aa_pose = torch.index_select(full_pose.view(1, -1, 3), 1, torch.tensor([1, 0]))
    rmats = batch_rodrigues(aa_pose.view(-1, 3)).view(1, -1, 3, 3)
    rel_rot = torch.eye(3).unsqueeze_(dim=0)
    for idx in range(2):
        rel_rot = torch.bmm(rmats[:, idx], rel_rot)
    sy = torch.sqrt(rel_rot[:, 0, 0] ** 2 + rel_rot[:, 1, 0] ** 2)
    euler_y = torch.atan2(-rel_rot[:, 2, 0], sy)
    y = torch.round(torch.clamp(euler_y * 180.0 / np.pi, max=39)).to(dtype=torch.long)
    neg_mask = y.lt(0).to(dtype=torch.long)
    mask = y.lt(-39).to(dtype=torch.long)
    neg_vals = mask * 78 + (1 - mask) * (39 - y)
    y = neg_mask * neg_vals + (1 - neg_mask) * y
    dyn_idx = torch.tensor(np.asarray(m.dynamic_lmk_faces_idx), dtype=torch.long)[y]
    dyn_bc = f32(m.dynamic_lmk_bary_coords)[y]
    faces = torch.tensor(np.asarray(m.faces), dtype=torch.long)

    def v2l(fidx, bc):
        lf = faces[fidx.view(-1)].view(1, -1, 3)
        lv = verts[0][lf.view(-1)].view(1, -1, 3, 3)
        return torch.einsum("blfi,blf->bli", [lv, bc])

    lidx = torch.cat([dyn_idx, torch.tensor(np.asarray(m.static_lmk_faces_idx), dtype=torch.long)[None]], 1)
    lbc = torch.cat([dyn_bc, f32(m.static_lmk_bary_coords)[None]], 1)
    l2d = v2l(lidx, lbc)
    l3d = v2l(torch.tensor(np.asarray(m.full_lmk_faces_idx)), f32(np.asarray(m.full_lmk_bary_coords).reshape(1, 68, 3)))
    return {"vertices": verts[0].numpy(), "landmarks2d": l2d[0].numpy(), "landmarks3d": l3d[0].numpy()}


def test_dynamic_contour_over_yaw_range(real_model):
    """Yaw −70°..70° (offset from integer ties): contour landmarks == reference barycentrics."""
    yaws = np.arange(-70, 71, 7) + 0.3
    poses = np.zeros((len(yaws), 6))
    poses[:, 1] = np.radians(yaws)
    shape, exp, _ = _params(5, 100, 50)
    out = jax.jit(jax.vmap(flame.forward, in_axes=(None, None, None, 0)))(real_model, shape, exp, poses)
    rows = []
    for i, p in enumerate(poses):
        ref = ref_flame(real_model, shape, exp, _pose15(p))
        rows.append(ref["row"])
        np.testing.assert_allclose(out["landmarks2d"][i], ref["landmarks2d"], rtol=1e-9, atol=1e-9)
    # the rule itself: +1..39 -> 1..39, clamp at 39, negatives to 40..78, below -39 -> 78
    assert rows[0] == 78 and rows[-1] == 39
    expected = [int(np.round(min(y, 39))) for y in yaws]
    expected = [a if a >= 0 else (78 if a < -39 else 39 - a) for a in expected]
    assert rows == expected


@pytest.mark.parametrize(
    "yaw_deg,row",
    [(0.0, 0), (0.5, 0), (1.5, 2), (2.5, 2), (-0.5, 0), (-1.5, 41), (-2.5, 41), (39.4, 39),
     (39.6, 39), (80.0, 39), (-39.4, 78), (-39.5, 78), (-40.0, 78), (-20.0, 59), (-38.5, 77)],
)
def test_contour_row_rule(yaw_deg, row):
    """Half-to-even rounding, clamp at +39 only, negative rows 39 - a, below -39 -> 78."""
    assert int(flame.contour_row_from_yaw(jnp.float64(yaw_deg))) == row
    assert int(flame.contour_row_from_yaw(jnp.float32(yaw_deg))) == row


@pytest.mark.parametrize("yaw_deg,row", [(0.0, 0), (12.3, 12), (-12.3, 51), (50.0, 39), (-50.0, 78)])
def test_contour_row_uses_root_times_neck(yaw_deg, row):
    """The yaw is read from R_root · R_neck with no minus sign, as in
    FLAME._find_dynamic_lmk_idx_and_bcoords (lbs.find_dynamic_lmk_idx_and_bcoords, unused by DECA,
    has the minus sign)."""
    for joint in (0, 1):  # a global yaw or a neck yaw select the same row
        rot = np.zeros(15)
        rot[3 * joint + 1] = np.radians(yaw_deg)
        assert int(flame.dynamic_contour_row(jnp.asarray(rot))) == row
    rot = np.zeros(15)
    rot[1] = rot[4] = np.radians(yaw_deg / 2)
    assert int(flame.dynamic_contour_row(jnp.asarray(rot))) == row


def test_gradients(tiny):
    shape, exp, pose = _params(6, 6, 4)

    @jax.jit
    def f(s, e, p):
        out = flame.forward(tiny, s, e, p)
        return jnp.concatenate([out["vertices"].ravel(), out["landmarks2d"].ravel(), out["joints"].ravel()])

    check_grads(f, (shape, exp, pose), order=1, modes=("rev",), atol=1e-5, rtol=1e-5)
    # pose = 0: finite and correct (batch_rodrigues's 1e-8 keeps the norm away from 0)
    check_grads(lambda p: f(shape, exp, p), (np.zeros(6),), order=1, modes=("rev",), atol=1e-5, rtol=1e-5)


def test_jit_vmap_match_eager(tiny):
    rng = np.random.default_rng(7)
    shapes = rng.standard_normal((3, 6))
    exps = rng.standard_normal((3, 4))
    poses = 0.3 * rng.standard_normal((3, 6))
    batched = jax.jit(jax.vmap(flame.forward, in_axes=(None, 0, 0, 0)))(tiny, shapes, exps, poses)
    for i in range(3):
        eager = flame.forward(tiny, shapes[i], exps[i], poses[i])
        for key in eager:
            np.testing.assert_allclose(batched[key][i], eager[key], rtol=1e-12, atol=1e-13)


def test_landmark_visibility(tiny):
    from jface.geometry import flip_yz, vertex_normals

    verts = flip_yz(jnp.asarray(tiny.v_template))
    normals = vertex_normals(verts, tiny.faces)
    vis = flame.landmark_visibility(tiny, normals)
    faces = np.asarray(tiny.faces)
    lmk_n = np.einsum("lkd,lk->ld", np.asarray(normals)[faces[tiny.full_lmk_faces_idx]], tiny.full_lmk_bary_coords)
    np.testing.assert_array_equal(np.asarray(vis), (lmk_n[:, 2] < 0.1).astype(float))
    assert 0 < vis.sum() < 68  # a sphere: some landmarks face the camera, some do not


def test_bad_inputs(tiny):
    with pytest.raises(ValueError, match="shape"):
        flame.forward(tiny, np.zeros(7), np.zeros(4), np.zeros(6))
    with pytest.raises(ValueError, match="expression"):
        flame.forward(tiny, np.zeros(6), np.zeros(5), np.zeros(6))
    with pytest.raises(ValueError, match="pose"):
        flame.forward(tiny, np.zeros(6), np.zeros(4), np.zeros(9))
    with pytest.raises(ValueError, match="pose"):
        flame.forward(tiny, np.zeros(6), np.zeros(4), np.zeros(15), neck_pose=np.zeros(3))
    with pytest.raises(ValueError, match="eye_pose"):
        flame.forward(tiny, np.zeros(6), np.zeros(4), np.zeros(6), eye_pose=np.zeros(3))
    with pytest.raises(ValueError, match="vmap"):
        flame.forward(tiny, np.zeros((2, 6)), np.zeros(4), np.zeros(6))


def test_barycentric_landmarks_checks_indices():
    barycentric_landmarks = flame.barycentric_landmarks
    vertices = np.zeros((4, 3))
    faces = np.array([[0, 1, 2], [0, 2, 3]], np.int32)
    bary = np.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match=r"faces: vertex indices must lie in \[0, 4\).*99"):
        barycentric_landmarks(vertices, np.array([[0, 1, 99]], np.int32), np.array([0, 0]), bary)
    with pytest.raises(ValueError, match=r"face_idx: face indices must lie in \[0, 2\).*-7"):
        barycentric_landmarks(vertices, faces, np.array([0, -7]), bary)
    with pytest.raises(ValueError, match=r"face_idx: expected \(L,\) int"):
        barycentric_landmarks(vertices, faces, np.array([0.0, 1.0]), bary)
    with pytest.raises(ValueError, match=r"bary_coords: expected shape \(2, 3\)"):
        barycentric_landmarks(vertices, faces, np.array([0, 1]), np.ones((2, 2)))
    # traced indices pass untouched
    out = jax.jit(barycentric_landmarks)(jnp.arange(12.0).reshape(4, 3), faces, jnp.array([0, 1]), bary)
    np.testing.assert_allclose(np.asarray(out), [[3.0, 4.0, 5.0], [5.0, 6.0, 7.0]], atol=1e-6)
