"""jface.deca appearance, encode and decode (``FLAMETex``, ``batch_orth_proj``, ``SRenderY``, ``DECA.decode``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jface import deca, flame
from jface.deca import appearance
from jface.deca import losses as L
from jface.flame.testing import random_flame_model
from jface.render import layout_fragments, world2uv

sh_shading = pytest.importorskip("jface.lighting", reason="jface.lighting (SH shading) not available").sh_shading
pytest.importorskip("jface.render", reason="jface.render (rasterizer) not available")

RNG = np.random.default_rng(0)


def _ref_flametex(mu, pc, alpha, size, out):
    """FLAMETex.forward step by step: BGR file layout, nearest resize, flip to RGB."""
    tex = (mu + pc[:, : len(alpha)] @ alpha).reshape(size, size, 3)
    idx = np.floor(np.arange(out) * size / out).astype(int)
    return tex[idx][:, idx][..., [2, 1, 0]]


def test_albedo_file_layout_and_conversion():
    size, out, k = 8, 4, 6
    mu, pc = RNG.random(size * size * 3), RNG.standard_normal((size * size * 3, k))
    alpha = RNG.standard_normal(4)
    ref = _ref_flametex(mu, pc, alpha, size, out)
    got = appearance.albedo_from_file_layout(mu, pc, alpha, image_size=size, uv_size=out)
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    # FLAME_texture.npz alternative: /255
    got = appearance.albedo_from_file_layout(mu * 255, pc * 255, alpha, scale=1 / 255, image_size=size, uv_size=out)
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    mean, basis = appearance.convert_albedo_model(mu, pc, image_size=size, uv_size=out)
    model = random_flame_model(0).replace(albedo_mean=mean, albedo_basis=basis)
    np.testing.assert_allclose(appearance.albedo(model, alpha), ref, rtol=1e-12)
    torch = pytest.importorskip("torch")
    t = torch.tensor(mu + pc[:, :4] @ alpha).reshape(1, size, size, 3).permute(0, 3, 1, 2)
    t = torch.nn.functional.interpolate(t, [out, out])[:, [2, 1, 0]].permute(0, 2, 3, 1)[0].numpy()
    np.testing.assert_allclose(ref, t, rtol=1e-12)


def test_project_is_translate_scale_flip():
    pts = RNG.standard_normal((5, 3))
    cam = np.array([7.5, 0.02, -0.03])
    ref = cam[0] * (pts + np.array([cam[1], cam[2], 0.0])) * np.array([1, -1, -1])
    np.testing.assert_allclose(appearance.project(pts, cam), ref, rtol=1e-12)


def test_decode_geometry_vmap_matches_single():
    model = random_flame_model(1)
    shape, exp = RNG.standard_normal((2, 6)), RNG.standard_normal((2, 4))
    pose, cam = 0.3 * RNG.standard_normal((2, 6)), np.array([[8.0, 0.01, 0.02], [6.0, 0.0, 0.0]])
    batched = jax.jit(jax.vmap(deca.decode_geometry, in_axes=(None, 0, 0, 0, 0)))(model, shape, exp, pose, cam)
    eager = jax.jit(deca.decode_geometry)(model, shape[1], exp[1], pose[1], cam[1])
    for key in eager:
        np.testing.assert_allclose(batched[key][1], eager[key], rtol=1e-10, atol=1e-12, err_msg=key)
    fl = jax.jit(flame.forward)(model, shape[1], exp[1], pose[1])
    np.testing.assert_allclose(eager["landmarks2d"], appearance.project(fl["landmarks2d"], cam[1])[:, :2])
    np.testing.assert_allclose(eager["landmarks3d"][:, :3], appearance.project(fl["landmarks3d"], cam[1]))
    np.testing.assert_allclose(eager["landmarks3d_world"], fl["landmarks3d"])
    vis = flame.landmark_visibility(model, eager["transformed_normals"])
    np.testing.assert_array_equal(eager["landmarks3d"][:, 3], vis)


def _codes(batch, n_shape, n_exp, n_tex, dtype=np.float32):
    light = 0.2 * RNG.standard_normal((batch, 9, 3))
    light[:, 0] += 2.0
    return {
        "shape": RNG.standard_normal((batch, n_shape)).astype(dtype),
        "exp": RNG.standard_normal((batch, n_exp)).astype(dtype),
        "tex": RNG.standard_normal((batch, n_tex)).astype(dtype),
        "pose": (0.15 * RNG.standard_normal((batch, 6))).astype(dtype),
        "cam": np.array([[8.0, 0.0, 0.0], [7.0, 0.01, -0.01]][:batch], dtype),
        "light": light.astype(dtype),
        "detail": RNG.standard_normal((batch, 128)).astype(dtype),
    }


def test_decode_render_detail_and_gradients():
    """One compiled decode (32² image, 32² UV, a small F_d): outputs, relations, gradients."""
    nets = pytest.importorskip("jface.deca.networks")
    model = random_flame_model(2, head=(8, 12), uv_size=32, dtype=np.float32)
    codes = _codes(2, 6, 4, 5)
    generator = nets.DetailGenerator(latent_dim=3 + 4 + 128, init_size=2, init_channels=8,
                                     block_channels=(8, 8, 4, 4))
    latent = jnp.zeros((1, 135), jnp.float32)
    params = {"D_detail": generator.init(jax.random.PRNGKey(0), latent)}
    fixed = (0.001 * RNG.standard_normal((32, 32))).astype(np.float32)

    images = RNG.random((2, 32, 32, 3)).astype(np.float32)
    lmk_gt = RNG.uniform(-0.5, 0.5, (2, 68, 2)).astype(np.float32)

    def features(x):
        return {"relu3_2": x, "relu4_2": x[:, ::2, ::2]}

    def loss(cam, codes):
        out = deca.decode(params, model, dict(codes, cam=cam), image_hw=(32, 32), fixed_displacement=fixed,
                          detail_generator=generator)
        return jnp.sum(out["rendered_images"] * out["mask_face_eye"]) + jnp.sum(out["landmarks2d"]), out

    (value, out), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(codes["cam"], codes)

    @jax.jit
    def stage_losses(out, codes):
        coarse = deca.losses.coarse_losses(out, codes, images, lmk_gt)
        uv_maps = deca.detail_uv_maps(model, out["trans_verts"], images, uv_size=32)
        tex_gt = deca.extract_texture(model, out["trans_verts"], images, uv_size=32)
        return coarse, deca.losses.detail_losses(out, uv_maps, features_fn=features), dict(uv_maps, tex_gt=tex_gt)

    coarse, fine, uv_maps = stage_losses(out, codes)
    b, h = 2, 32
    expected = {
        "verts": (b, 98, 3), "trans_verts": (b, 98, 3), "landmarks2d": (b, 68, 2), "landmarks3d": (b, 68, 4),
        "landmarks3d_world": (b, 68, 3), "grid": (b, h, h, 2), "rendered_images": (b, h, h, 3),
        "alpha_images": (b, h, h, 1), "normal_images": (b, h, h, 3), "albedo": (b, 32, 32, 3),
        "uv_texture": (b, 32, 32, 3), "normals": (b, 98, 3), "uv_detail_normals": (b, 32, 32, 3),
        "displacement_map": (b, 32, 32, 1), "mask_face_eye": (b, h, h, 1),
    }
    for key, shp in expected.items():
        assert out[key].shape == shp, key
        assert out[key].dtype == jnp.float32, key
    assert np.isfinite(float(value)) and np.all(np.isfinite(grad)) and np.any(grad != 0)
    np.testing.assert_allclose(out["trans_verts"], jax.vmap(appearance.project)(out["verts"], codes["cam"]), rtol=1e-6)
    alpha = np.asarray(out["alpha_images"])
    assert 0.05 < alpha.mean() < 0.95 and set(np.unique(alpha)) <= {0.0, 1.0}
    # paper version: shaded render = albedo image ⊙ SH(normal image) ⊙ alpha
    shading = jax.vmap(sh_shading)(out["normal_images"], codes["light"])
    np.testing.assert_allclose(out["rendered_images"], out["albedo_images"] * shading * alpha, rtol=1e-5, atol=1e-6)
    # albedo = mean + basis · tex; uv_texture = albedo ⊙ SH(detail normals); D + Δ
    alb = model.albedo_mean + np.einsum("hwck,bk->bhwc", model.albedo_basis, codes["tex"])
    np.testing.assert_allclose(out["albedo"], alb, rtol=1e-5, atol=1e-6)
    uv_sh = jax.vmap(sh_shading)(out["uv_detail_normals"], codes["light"])
    np.testing.assert_allclose(out["uv_texture"], out["albedo"] * uv_sh, rtol=1e-5, atol=1e-6)
    # (atol: where D + Δ nearly cancels, float32 rounding of the sum is ~1e-12 absolute)
    np.testing.assert_allclose(out["displacement_map"], out["displacement"] + fixed[None, :, :, None], rtol=1e-6,
                               atol=1e-9)
    assert np.all(np.abs(out["displacement"]) < 0.01)
    # the shared UV rasterization equals world2uv (SRenderY.world2uv) per item
    uv_pos = jax.jit(world2uv, static_argnums=4)(out["verts"][1], model.faces, model.uv_coords, model.uv_faces,
                                                 32)
    np.testing.assert_allclose(out["uv_positions"][1], uv_pos, rtol=1e-6, atol=1e-7)
    m = np.asarray(out["mask_face_eye"])
    assert m.min() >= 0 and m.max() <= 1 + 1e-6
    # coarse terms: weights and the shaded, masked photometric loss (Trainer.training_step)
    mask = m * alpha
    pho = np.mean(mask * np.abs(np.asarray(out["rendered_images"]) * mask - images))
    np.testing.assert_allclose(coarse["photometric"], 2.0 * pho, rtol=1e-5)
    np.testing.assert_allclose(coarse["landmark"], L.weighted_landmark_loss(out["landmarks2d"], lmk_gt), rtol=1e-6)
    np.testing.assert_allclose(coarse["reg_light"], L.light_regularizer(codes["light"]), rtol=1e-6)
    np.testing.assert_allclose(coarse["reg_shape"], 1e-4 * np.sum(codes["shape"] ** 2) / 2, rtol=1e-5)
    assert set(coarse) == set(L.COARSE_TERMS) - {"identity"}  # no identity network given
    assert set(fine) == set(L.DETAIL_TERMS)
    np.testing.assert_allclose(fine["reg_z"], 0.005 * np.abs(out["displacement"]).mean(), rtol=1e-5)
    # UV targets: world2uv(trans_verts) = project(world2uv(verts)) inside the charts, so the GT
    # texture is the image sampled there; uv_vis ⊆ the face/eye mask
    from jface.sampling import grid_sample

    uvp = jax.vmap(appearance.project)(out["uv_positions"].reshape(2, -1, 3), codes["cam"]).reshape(2, 32, 32, 3)
    ref = jax.vmap(grid_sample)(images, uvp[..., :2])
    covered = np.asarray(jnp.any(out["uv_positions"] != 0, axis=-1))
    np.testing.assert_allclose(np.asarray(uv_maps["uv_texture_gt"])[covered], np.asarray(ref)[covered], atol=1e-5)
    # DECA's uv_texture_gt: the same samples inside the face/eye mask, grey 0.7 outside
    uvm = np.asarray(model.uv_face_eye_mask)[None, ..., None]
    np.testing.assert_allclose(uv_maps["tex_gt"], uv_maps["uv_texture_gt"] * uvm + 0.7 * (1 - uvm), atol=1e-6)
    vis = np.asarray(uv_maps["uv_vis_mask"])[..., 0]
    assert vis.max() > 0 and np.all(vis <= np.asarray(model.uv_face_eye_mask)[None] + 1e-6)


def test_decode_detail_maps_take_the_uv_layout_given_from_outside():
    """``decode(uv_layout=...)``: the UV layout rasterized outside ``jit`` (for a program whose
    model is a traced argument, e.g. jface.reconstruct's) gives the detail maps decode's own
    rasterization gives; a layout of another size than the displacement map is not used."""
    nets = pytest.importorskip("jface.deca.networks")
    model = random_flame_model(2, head=(8, 12), uv_size=32, dtype=np.float32)
    codes = _codes(2, 6, 4, 5)
    generator = nets.DetailGenerator(latent_dim=3 + 4 + 128, init_size=2, init_channels=8,
                                     block_channels=(8, 8, 4, 4))
    params = {"D_detail": generator.init(jax.random.PRNGKey(0), jnp.zeros((1, 135), jnp.float32))}
    uv_coords, uv_faces = np.asarray(model.uv_coords, np.float32), np.asarray(model.uv_faces, np.int32)
    layout = layout_fragments(uv_coords, uv_faces, (32, 32))
    other_size = layout_fragments(uv_coords, uv_faces, (16, 16))
    run = jax.jit(lambda m, c, lay: deca.decode(params, m, c, image_hw=(32, 32), detail_generator=generator,
                                                uv_layout=lay))
    own, given, ignored = run(model, codes, None), run(model, codes, layout), run(model, codes, other_size)
    for key in ("uv_positions", "uv_normals", "uv_detail_normals", "uv_texture"):
        assert np.any(np.asarray(own[key]) != 0), key
        np.testing.assert_allclose(given[key], own[key], rtol=1e-5, atol=1e-6, err_msg=key)
        np.testing.assert_array_equal(ignored[key], own[key], err_msg=key)


def test_encode_shapes():
    nets = pytest.importorskip("jface.deca.networks")
    params = {
        "E_flame": nets.init_variables(nets.ResNetEncoder(236), shapes_only=True),
        "E_detail": nets.init_variables(nets.ResNetEncoder(128), shapes_only=True),
    }
    images = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
    codes = jax.eval_shape(deca.encode, params, images)
    shapes = {k: v.shape for k, v in codes.items()}
    assert shapes == {"shape": (2, 100), "tex": (2, 50), "exp": (2, 50), "pose": (2, 6), "cam": (2, 3),
                      "light": (2, 9, 3), "detail": (2, 128)}
    with pytest.raises(ValueError, match="224"):
        deca.encode(params, np.zeros((1, 112, 112, 3), np.float32))


def test_decode_bad_inputs():
    model = random_flame_model(1)
    codes = {"shape": np.zeros((2, 6)), "exp": np.zeros((2, 4)), "pose": np.zeros((2, 6)), "cam": np.ones((2, 3))}
    with pytest.raises(ValueError, match="UV layout"):
        deca.decode({}, model, codes)
    with pytest.raises(ValueError, match="pose"):
        deca.decode({}, model, dict(codes, pose=np.zeros((2, 15))), rendering=False, use_detail=False)
    with pytest.raises(ValueError, match="cam"):
        deca.decode({}, model, {k: v for k, v in codes.items() if k != "cam"})
    with pytest.raises(ValueError, match="batch"):
        deca.decode({}, model, dict(codes, exp=np.zeros((3, 4))))
