"""DECA's losses (jface.deca.losses) against numpy references written from ``decalib/utils/lossfunc.py``
and ``Trainer.training_step`` (``decalib/trainer.py``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
from jax.test_util import check_grads

from jface.deca import losses as L

RNG = np.random.default_rng(0)


def test_landmark_weights_table():
    w = L.landmark_weights()
    assert w.shape == (68,)
    assert list(w[[5, 6, 10, 11]]) == [2, 2, 2, 2]
    assert list(w[[27, 28, 29, 32, 33, 34]]) == [1.5] * 6
    assert list(w[[30, 31, 35, 48, 54]]) == [3] * 5
    assert w[49] == 1.5 and w[67] == 1.5 and w[60] == 1.5
    assert w[0] == 1 and w[17] == 1 and w[36] == 1 and w[47] == 1 and w[7] == 1


def _ref_landmark(pred, gt, w):
    vis = gt[..., 2] * w[None]
    d = np.abs(gt[..., :2] - pred).sum(-1)
    return (d * vis).sum() / (2 * vis.sum() + 1e-8)


def test_landmark_losses_vs_reference():
    pred = RNG.uniform(-1, 1, (3, 68, 2))
    gt = np.concatenate([RNG.uniform(-1, 1, (3, 68, 2)), np.ones((3, 68, 1))], -1)
    got = L.weighted_landmark_loss(pred, gt)
    np.testing.assert_allclose(got, _ref_landmark(pred, gt, L.landmark_weights()), rtol=1e-12)
    np.testing.assert_allclose(L.landmark_loss(pred, gt[..., :2]), _ref_landmark(pred, gt, np.ones(68)), rtol=1e-12)
    check_grads(lambda p: L.weighted_landmark_loss(p, gt), (pred,), order=1, modes=("rev",))

    def gaps(lm, up, low):
        return np.linalg.norm(lm[:, up, :2] - lm[:, low, :2], axis=-1)

    upper, lower = [37, 38, 43, 44], [41, 40, 47, 46]
    ref_eye = np.mean(np.abs(gaps(pred, upper, lower) - gaps(gt, upper, lower)))
    ref_lip = np.mean(np.abs(gaps(pred, [61, 62, 63], [67, 66, 65]) - gaps(gt, [61, 62, 63], [67, 66, 65])))
    np.testing.assert_allclose(L.eye_closure_loss(pred, gt), ref_eye, rtol=1e-12)
    np.testing.assert_allclose(L.lip_closure_loss(pred, gt), ref_lip, rtol=1e-12)
    check_grads(lambda p: L.eye_closure_loss(p, gt), (pred,), order=1, modes=("rev",))
    # closed eyes (coincident points): finite gradient
    closed = pred.copy()
    closed[:, [41, 40, 47, 46]] = closed[:, [37, 38, 43, 44]]
    g = jax.grad(lambda p: L.eye_closure_loss(p, gt))(closed)
    assert np.all(np.isfinite(g))


def test_photometric_and_regularisers():
    pred, img = RNG.random((2, 5, 6, 3)), RNG.random((2, 5, 6, 3))
    mask = RNG.random((2, 5, 6))
    np.testing.assert_allclose(
        L.photometric_loss(pred, img, mask), np.mean(mask[..., None] * np.abs(pred - img)), rtol=1e-12
    )
    beta = RNG.standard_normal((4, 100))
    np.testing.assert_allclose(L.shape_regularizer(beta), (beta**2).sum() / 2, rtol=1e-12)
    np.testing.assert_allclose(L.expression_regularizer(beta[:, :50]), (beta[:, :50] ** 2).sum() / 2, rtol=1e-12)
    np.testing.assert_allclose(L.texture_regularizer(beta[:, :7]), (beta[:, :7] ** 2).sum() / 2, rtol=1e-12)
    light = RNG.standard_normal((4, 9, 3))
    ref = np.mean((light.mean(-1, keepdims=True) - light) ** 2)
    np.testing.assert_allclose(L.light_regularizer(light), ref, rtol=1e-12)
    np.testing.assert_allclose(L.light_regularizer(light.reshape(4, 27)), ref, rtol=1e-12)
    # white light (equal colour columns) is not penalised
    assert float(L.light_regularizer(np.repeat(light[..., :1], 3, -1))) < 1e-30
    check_grads(L.light_regularizer, (light,), order=1, modes=("rev",))


def _ref_mrf(gen, tar):
    """Numpy transcription of IDMRFLoss.mrf_loss (NCHW in the original; NHWC here)."""
    total = 0.0
    for g, t in zip(gen, tar):
        mean_t = t.mean(-1, keepdims=True)
        g, t = g - mean_t, t - mean_t
        g = g / np.linalg.norm(g, axis=-1, keepdims=True)
        t = t / np.linalg.norm(t, axis=-1, keepdims=True)
        # conv2d with target 1x1 patches: out[j, i] = <t_j, g_i>; dims (target j, generated i)
        cos = np.einsum("jc,ic->ji", t.reshape(-1, t.shape[-1]), g.reshape(-1, g.shape[-1]))
        d = -(cos - 1) / 2
        rel = d / (d.min(axis=0, keepdims=True) + 1e-5)  # min over target (torch dim=1)
        w = np.exp((1 - rel) / 0.5)
        cs = w / w.sum(axis=0, keepdims=True)  # normalise over target
        k_max = cs.max(axis=1)  # max over generated positions, per target j
        total += -np.log(k_max.mean())
    return total


def test_mrf_vs_reference_and_grad():
    gen = RNG.standard_normal((2, 3, 4, 5))
    tar = RNG.standard_normal((2, 3, 4, 5))
    np.testing.assert_allclose(L.mrf_loss(gen, tar), _ref_mrf(gen, tar), rtol=1e-10)
    # identical features: max_i CS_ij is large and the loss small but positive
    assert 0 <= float(L.mrf_loss(tar, tar)) < float(L.mrf_loss(gen, tar))
    check_grads(lambda g: L.mrf_loss(g, tar), (gen,), order=1, modes=("rev",), atol=1e-4, rtol=1e-4)


def test_id_mrf_layers_and_normalisation():
    gen, tar = RNG.random((2, 8, 8, 3)), RNG.random((2, 8, 8, 3))
    seen = []

    def feats(x):
        seen.append(np.asarray(x))
        return {"relu3_2": x * 2.0 + 0.1, "relu4_2": jnp.tanh(x)[:, ::2, ::2]}

    got = L.id_mrf_loss(feats, gen, tar)
    norm = lambda x: (x - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])  # noqa: E731
    np.testing.assert_allclose(seen[0], norm(gen), rtol=1e-12)
    g, t = norm(gen), norm(tar)
    ref = _ref_mrf(g * 2 + 0.1, t * 2 + 0.1) + 2 * _ref_mrf(np.tanh(g)[:, ::2, ::2], np.tanh(t)[:, ::2, ::2])
    np.testing.assert_allclose(got, ref, rtol=1e-10)


def test_binary_erosion_matches_scipy():
    mask = (RNG.random((2, 20, 17)) > 0.15) * RNG.random((2, 20, 17))  # soft: nonzero == True
    mask[0, 5:15, 4:14] = 0.7
    got = np.asarray(L.binary_erosion(mask))
    for b in range(2):
        ref = scipy.ndimage.binary_erosion(mask[b], np.ones((5, 5)))
        np.testing.assert_array_equal(got[b], ref.astype(float))
    assert got[0, 7:13, 6:12].all()
    np.testing.assert_array_equal(np.asarray(L.binary_erosion(mask[..., None]))[..., 0], got)


def test_soft_symmetry_and_smoothness():
    disp = RNG.standard_normal((2, 12, 10, 1)) * 0.01
    vis = (RNG.random((2, 12, 10, 1)) > 0.2).astype(float)
    nonvis = np.stack([1 - scipy.ndimage.binary_erosion(vis[b, ..., 0], np.ones((5, 5))) for b in range(2)])[..., None]
    ref = np.sum(nonvis * np.abs(disp - disp[:, :, ::-1]))
    np.testing.assert_allclose(L.soft_symmetry_loss(disp, vis), ref, rtol=1e-12)
    # stop_grad on the flipped copy: d/dD = nonvis * sign(D - flip(D))
    g = jax.grad(L.soft_symmetry_loss)(disp, vis)
    np.testing.assert_allclose(g, nonvis * np.sign(disp - disp[:, :, ::-1]), atol=1e-12)

    s = RNG.random((2, 7, 9, 3))
    dx = s[:, 1:-1, 1:] - s[:, 1:-1, :-1]
    dy = s[:, 1:, 1:-1] - s[:, :-1, 1:-1]
    np.testing.assert_allclose(L.shading_smoothness_loss(s), (dx**2).mean() + (dy**2).mean(), rtol=1e-12)
    np.testing.assert_allclose(L.displacement_regularizer(disp), np.abs(disp).mean(), rtol=1e-12)
    tex, gt, v = RNG.random((2, 6, 6, 3)), RNG.random((2, 6, 6, 3)), RNG.random((2, 6, 6))
    np.testing.assert_allclose(
        L.detail_photometric_loss(tex, gt, v), np.mean(np.abs(tex * v[..., None] - gt * v[..., None])), rtol=1e-12
    )


def test_resize_and_identity_preprocess_vs_torch():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    img = RNG.random((2, 224, 224, 3))
    ref = torch.tensor(img).permute(0, 3, 1, 2)
    ref = ref[:, [2, 1, 0]].permute(0, 2, 3, 1) * 255 - torch.tensor([91.4953, 103.8827, 131.0912], dtype=torch.float64)
    ref = ref.permute(0, 3, 1, 2)[:, :, 10:214, 10:214]
    ref = F.interpolate(ref * 2.0 - 1.0, [224, 224], mode="bilinear", align_corners=False)
    got = L.identity_preprocess(img)
    np.testing.assert_allclose(got, ref.permute(0, 2, 3, 1).numpy(), rtol=1e-10, atol=1e-9)
    # the UV crop of the detail losses: [50:206] -> 256, bilinear
    uv = RNG.random((1, 256, 256, 2))
    ref = F.interpolate(torch.tensor(uv).permute(0, 3, 1, 2)[:, :, 50:206, 50:206], [256, 256], mode="bilinear")
    np.testing.assert_allclose(L.crop_uv_face(uv), ref.permute(0, 2, 3, 1).numpy(), rtol=1e-10, atol=1e-12)
    # the gradient (a product with the interpolation matrices' transposes) equals torch's autograd
    weights = RNG.normal(size=(2, 224, 224, 3))
    src = RNG.random((2, 204, 204, 3))
    ours = jax.grad(lambda x: jnp.sum(L.resize_bilinear(x, (224, 224)) * weights))(src)
    x = torch.tensor(src).permute(0, 3, 1, 2).requires_grad_(True)
    out = F.interpolate(x, [224, 224], mode="bilinear", align_corners=False)
    (out * torch.tensor(weights).permute(0, 3, 1, 2)).sum().backward()
    np.testing.assert_allclose(np.asarray(ours), x.grad.permute(0, 2, 3, 1).numpy(), rtol=1e-10, atol=1e-10)
    # downsampling too (every input row reached by at most two output rows, some by none)
    small = jax.grad(lambda x: jnp.sum(L.resize_bilinear(x, (7, 5)) ** 2))(src[:1, :20, :20])
    x = torch.tensor(src[:1, :20, :20]).permute(0, 3, 1, 2).requires_grad_(True)
    (F.interpolate(x, [7, 5], mode="bilinear", align_corners=False) ** 2).sum().backward()
    np.testing.assert_allclose(np.asarray(small), x.grad.permute(0, 2, 3, 1).numpy(), rtol=1e-10, atol=1e-12)


def _resize_by_gathers(images, out_hw):
    # the plain two-tap gathers, differentiated by autodiff (its transpose is a scatter-add)
    r0, r1, fr = L._linear_weights(images.shape[-3], out_hw[0])
    c0, c1, fc = L._linear_weights(images.shape[-2], out_hw[1])
    fr, fc = jnp.asarray(fr)[:, None, None], jnp.asarray(fc)[:, None]
    rows = images[..., r0, :, :] * (1 - fr) + images[..., r1, :, :] * fr
    return rows[..., c0, :] * (1 - fc) + rows[..., c1, :] * fc


@pytest.mark.parametrize("in_hw,out_hw", [((204, 204), (224, 224)), ((20, 20), (7, 5)), ((5, 9), (13, 2)),
                                          ((1, 3), (4, 4))])
def test_resize_gradient_is_the_transpose_without_scatter(in_hw, out_hw):
    """resize_bilinear's hand-written gradient (the transposed interpolation as gathers) equals
    autodiff of the plain gathers in float64, under jit and vmap and differentiated again, and its
    compiled gradient has no scatter."""
    # float64 throughout (tests/conftest.py enables x64)
    x = jnp.asarray(RNG.random((2,) + in_hw + (3,)))
    w = jnp.asarray(RNG.normal(size=(2,) + out_hw + (3,)))

    def f(x):
        return jnp.sum(jnp.sin(L.resize_bilinear(x, out_hw)) * w)

    def g(x):
        return jnp.sum(jnp.sin(_resize_by_gathers(x, out_hw)) * w)

    np.testing.assert_allclose(L.resize_bilinear(x, out_hw), _resize_by_gathers(x, out_hw), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(jax.jit(jax.grad(f))(x), jax.grad(g)(x), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(jax.vmap(jax.grad(f))(jnp.stack([x, x + 1]))[1], jax.grad(g)(x + 1),
                               rtol=1e-10, atol=1e-13)

    def second(fn):
        return jax.grad(lambda x: jnp.sum(jax.grad(fn)(x) ** 2))(x)

    np.testing.assert_allclose(second(f), second(g), rtol=1e-9, atol=1e-12)
    hlo = jax.jit(jax.grad(f)).lower(x).as_text()
    assert "scatter" not in hlo
    assert "scatter" in jax.jit(jax.grad(g)).lower(x).as_text()  # what autodiff of the gathers gives


def test_resize_keeps_a_nan_in_its_neighbourhood():
    x = RNG.random((1, 204, 204, 3))
    x[0, 0, 0, 0] = np.nan
    bad = np.isnan(np.asarray(L.resize_bilinear(x, (224, 224))))
    assert bad[0, :2, :2, 0].all()  # the output pixels whose taps reach input (0, 0)
    assert bad.sum() == 4  # and no other


def test_resize_names_a_bad_shape():
    cases = ((np.zeros((4, 4)), (2, 2)), (np.zeros((1, 0, 4, 3)), (2, 2)), (np.zeros((1, 4, 4, 3)), (0, 2)))
    for images, out_hw in cases:
        with pytest.raises(ValueError, match="resize_bilinear: expected images"):
            L.resize_bilinear(images, out_hw)


def test_identity_loss():
    img, ren = RNG.random((2, 224, 224, 3)), RNG.random((2, 224, 224, 3))
    proj = RNG.standard_normal((3, 4))

    def ident(x):  # a stand-in feature network: pooled channels -> 4 features
        return jnp.mean(x, axis=(1, 2)) @ proj

    fa = np.asarray(ident(L.identity_preprocess(ren)))
    fb = np.asarray(ident(L.identity_preprocess(img)))
    cos = (fa * fb).sum(1) / (np.linalg.norm(fa, axis=1) * np.linalg.norm(fb, axis=1))
    np.testing.assert_allclose(L.identity_loss(ident, ren, img), np.mean(1 - cos), rtol=1e-10)
    assert abs(float(L.identity_loss(ident, img, img))) < 1e-12
    m = RNG.random((2, 224, 224))
    over = L.identity_overlay(ren, 0.5 * np.ones_like(ren), m, img)
    np.testing.assert_allclose(over, ren * 0.5 * m[..., None] + img * (1 - m[..., None]), rtol=1e-12)


def test_swap_within_identity():
    b, k = 3, 4
    codes = {"shape": np.arange(b * k)[:, None] * np.ones((1, 2)), "detail": np.arange(b * k) + 100.0,
             "images": np.arange(b * k) + 1000.0}
    out, order = L.swap_within_identity(codes, jax.random.PRNGKey(1), b, k)
    order = np.asarray(order)
    assert sorted(order) == list(range(b * k))
    assert all(sorted(order[i * k:(i + 1) * k]) == list(range(i * k, (i + 1) * k)) for i in range(b))
    np.testing.assert_array_equal(out["shape"][: b * k], codes["shape"])
    np.testing.assert_array_equal(out["shape"][b * k:], codes["shape"][order])
    np.testing.assert_array_equal(out["detail"], np.concatenate([codes["detail"]] * 2))
    np.testing.assert_array_equal(out["images"], np.concatenate([codes["images"]] * 2))
    out_d, order_d = L.swap_within_identity(codes, jax.random.PRNGKey(1), b, k, swap="detail")
    np.testing.assert_array_equal(out_d["detail"][b * k:], codes["detail"][np.asarray(order_d)])
    np.testing.assert_array_equal(out_d["shape"][b * k:], codes["shape"])
    with pytest.raises(ValueError, match="swap"):
        L.swap_within_identity(codes, jax.random.PRNGKey(1), b, k, swap="tex")
    with pytest.raises(ValueError, match="num_identities"):
        L.swap_within_identity(codes, jax.random.PRNGKey(1), 2, k)


def test_swap_within_identity_identity_layout_is_a_row_permutation_of_concat():
    """layout="identity": the same 2·B·K rows as DECA's concat order, grouped per identity."""
    b, k = 3, 4
    rng = np.random.default_rng(0)
    codes = {"shape": rng.normal(size=(b * k, 5)), "images": rng.normal(size=(b * k, 2, 3, 3))}
    cat, order = L.swap_within_identity(codes, jax.random.PRNGKey(7), b, k)
    grp, order_g = L.swap_within_identity(codes, jax.random.PRNGKey(7), b, k, layout="identity")
    np.testing.assert_array_equal(order, order_g)
    order = np.asarray(order)
    # row 2·K·i + j is original j of identity i; row 2·K·i + K + j its swapped copy
    rows = np.concatenate([np.concatenate([np.arange(i * k, (i + 1) * k), b * k + np.arange(i * k, (i + 1) * k)])
                           for i in range(b)])
    for name in codes:
        np.testing.assert_array_equal(np.asarray(grp[name]), np.asarray(cat[name])[rows])
    np.testing.assert_array_equal(np.asarray(grp["shape"])[k:2 * k], codes["shape"][order[:k]])
    np.testing.assert_array_equal(np.asarray(grp["images"])[k:2 * k], codes["images"][:k])
    with pytest.raises(ValueError, match="layout"):
        L.swap_within_identity(codes, jax.random.PRNGKey(7), b, k, layout="interleaved")


def test_jit_matches_eager_and_bad_inputs():
    pred = RNG.uniform(-1, 1, (2, 68, 2))
    gt = RNG.uniform(-1, 1, (2, 68, 3))
    np.testing.assert_allclose(jax.jit(L.weighted_landmark_loss)(pred, gt), L.weighted_landmark_loss(pred, gt),
                               rtol=1e-12)
    with pytest.raises(ValueError, match="landmarks_gt"):
        L.landmark_loss(pred, gt[:, :60])
    with pytest.raises(ValueError, match="light"):
        L.light_regularizer(np.zeros((2, 9, 4)))
    with pytest.raises(ValueError, match="images"):
        L.identity_preprocess(np.zeros((1, 200, 200, 3)))
    with pytest.raises(ValueError, match="uv_vis_mask"):
        L.soft_symmetry_loss(np.zeros((1, 8, 8, 1)), np.zeros((1, 8, 8)))
