"""Localiser (``dagnn_3dmmasstn_init.m``), the MatConvNet weight converter, and the batched forward."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.io

from jface import stn
from jface.stn.localiser import vggface_layer_names
from jface.stn.toy import toy_grid_model

SMALL = stn.LocaliserConfig.small(num_coeffs=4, input_hw=(32, 32), width=2)


@jax.jit
def _apply(params, images):
    return stn.Localiser(SMALL).apply({"params": params}, images)


def _features(module, params, images):
    return jax.jit(lambda p, x: module.apply({"params": p}, x, return_features=True))(params, images)


@pytest.fixture(scope="module")
def small():
    return stn.init_localiser(jax.random.PRNGKey(0), SMALL)


def test_vgg_face_config_shapes():
    cfg = stn.LocaliserConfig.vgg_face()
    assert cfg.num_outputs == 16 and cfg.fc6_kernel == (7, 7) and cfg.translation_init == (112.0, 112.0)
    module = stn.Localiser(cfg)
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))["params"]
    assert shapes["conv1_1"]["kernel"].shape == (3, 3, 3, 64)
    assert shapes["conv5_3"]["kernel"].shape == (3, 3, 512, 512)
    assert shapes["fc6"]["kernel"].shape == (7, 7, 512, 4096)
    assert shapes["fc7"]["kernel"].shape == (4096, 4096)
    assert shapes["theta"]["kernel"].shape == (4096, 16)
    assert len(vggface_layer_names(cfg)) == 15  # 13 convs + fc6 + fc7
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(shapes))


def test_theta_initialisation(small):
    module, params = small
    bias = np.asarray(params["theta"]["bias"])
    np.testing.assert_array_equal(bias, [0, 0, 0, 16, 16, 0, 0, 0, 0, 0])
    kernel = np.asarray(params["theta"]["kernel"])
    assert kernel.shape == (SMALL.fc_dim, 10)
    expected_std = np.sqrt(2.0 / SMALL.fc_dim) * 1e-3  # xavier(1,1,fc_dim,6+D) * 1e-3
    assert 0.6 * expected_std < kernel.std() < 1.5 * expected_std
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    theta = _apply(params, images)
    assert theta.shape == (2, 10) and theta.dtype == jnp.float32
    # near-identity pose at init: r ~ 0, t ~ centre, logs ~ 0, alpha ~ 0
    np.testing.assert_allclose(theta, np.broadcast_to(bias, theta.shape), atol=0.5)


def test_bfloat16_compute(small):
    module, params = small
    images = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    _, feat32 = _features(module, params, images)
    bf16 = stn.Localiser(SMALL, dtype=jnp.bfloat16)
    theta, feat16 = _features(bf16, params, images)
    assert feat16.dtype == jnp.bfloat16 and theta.dtype == jnp.float32
    scale = float(np.abs(feat32).max())
    np.testing.assert_allclose(np.asarray(feat16, np.float32), feat32, rtol=0.1, atol=0.05 * scale)
    with pytest.raises(ValueError, match="images"):
        module.apply({"params": params}, images[:, :16])


# ------------------------------------------------------------------ MatConvNet converter
def _np_conv(x, w, b, pad):
    """Cross-correlation (MatConvNet vl_nnconv): x (H, W, Cin), w (kh, kw, Cin, Cout)."""
    kh, kw = w.shape[:2]
    x = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
    out_h, out_w = x.shape[0] - kh + 1, x.shape[1] - kw + 1
    out = np.zeros((out_h, out_w, w.shape[3])) + b
    for dy in range(kh):
        for dx in range(kw):
            out += np.einsum("hwc,cd->hwd", x[dy:dy + out_h, dx:dx + out_w], w[dy, dx])
    return out


def _np_forward(weights, image, cfg):
    x = image.astype(np.float64)
    for block, count in enumerate(cfg.convs_per_block, start=1):
        for i in range(1, count + 1):
            f, b = weights[f"conv{block}_{i}"]
            x = np.maximum(_np_conv(x, f, b, 1), 0)
        h, w = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
        x = x[:h, :w].reshape(h // 2, 2, w // 2, 2, -1).max(axis=(1, 3))
    f, b = weights["fc6"]
    x = np.maximum(_np_conv(x, f, b, 0), 0).reshape(-1)
    f, b = weights["fc7"]
    x = np.maximum(x @ f.reshape(f.shape[-2], f.shape[-1]) + b, 0)
    return x


def _write_matconvnet(path, cfg, rng):
    """A MatConvNet SimpleNN-like vgg-face.mat: layers cell of structs (name/type/weights)."""
    weights, layers = {}, []
    cin = 3
    for block, (width, count) in enumerate(zip(cfg.channels, cfg.convs_per_block), start=1):
        for i in range(1, count + 1):
            f = rng.normal(0, np.sqrt(2.0 / (9 * cin)), (3, 3, cin, width)).astype(np.float32)
            b = rng.normal(0, 0.1, (width, 1)).astype(np.float32)  # MatConvNet stores Cout x 1
            weights[f"conv{block}_{i}"] = (f, b.ravel())
            layers.append({"name": f"conv{block}_{i}", "type": "conv", "weights": _cell(f, b),
                           "stride": np.array([1.0, 1.0]), "pad": np.array([1.0, 1.0, 1.0, 1.0])})
            layers.append({"name": f"relu{block}_{i}", "type": "relu"})
            cin = width
        layers.append({"name": f"pool{block}", "type": "pool", "method": "max", "pool": np.array([2.0, 2.0])})
    kh, kw = cfg.fc6_kernel
    f6 = rng.normal(0, np.sqrt(2.0 / (kh * kw * cin)), (kh, kw, cin, cfg.fc_dim)).astype(np.float32)
    f7 = rng.normal(0, np.sqrt(2.0 / cfg.fc_dim), (1, 1, cfg.fc_dim, cfg.fc_dim)).astype(np.float32)
    f8 = rng.normal(size=(1, 1, cfg.fc_dim, 7)).astype(np.float32)
    for name, f in (("fc6", f6), ("fc7", f7), ("fc8", f8)):
        b = rng.normal(0, 0.1, (f.shape[-1], 1)).astype(np.float32)
        weights[name] = (f, b.ravel())
        layers.append({"name": name, "type": "conv", "weights": _cell(f, b)})
        if name != "fc8":
            layers.append({"name": "relu" + name[2:], "type": "relu"})
    layers.append({"name": "prob", "type": "softmax"})
    cell = np.empty((1, len(layers)), dtype=object)
    for i, layer in enumerate(layers):
        cell[0, i] = layer
    scipy.io.savemat(path, {"layers": cell, "meta": {"inputSize": np.array([*cfg.input_hw, 3.0])}})
    return weights


def _cell(*arrays):
    cell = np.empty((1, len(arrays)), dtype=object)
    for i, a in enumerate(arrays):
        cell[0, i] = a
    return cell


def test_load_vggface_mat_matches_numpy_forward(tmp_path, small):
    module, params = small
    rng = np.random.default_rng(2)
    path = tmp_path / "vgg-face-small.mat"
    weights = _write_matconvnet(str(path), SMALL, rng)
    converted = stn.load_vggface_mat(path, SMALL, params=params)
    # theta layer kept from params, backbone replaced
    np.testing.assert_array_equal(converted["theta"]["bias"], params["theta"]["bias"])
    np.testing.assert_array_equal(converted["conv1_1"]["kernel"], weights["conv1_1"][0])
    image = rng.uniform(0, 255, (32, 32, 3))
    _, features = _features(module, converted, image[None].astype(np.float32))
    expected = _np_forward(weights, image, SMALL)
    np.testing.assert_allclose(features[0], expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    theta = _apply(converted, image[None].astype(np.float32))
    kernel, bias = np.asarray(converted["theta"]["kernel"]), np.asarray(converted["theta"]["bias"])
    np.testing.assert_allclose(theta[0], expected @ kernel + bias, rtol=1e-4, atol=1e-3)
    # python -m jface.weights convert vggface-matconvnet SRC -o DST, then load the npz
    from jface.weights.__main__ import main as weights_main

    npz = tmp_path / "vggface.npz"
    assert weights_main(["convert", "vggface-matconvnet", str(path), "-o", str(npz)]) == 0
    from_npz = stn.load_vggface_mat(npz, SMALL, params=params)
    for name in ("conv1_1", "conv5_3", "fc6", "fc7"):
        np.testing.assert_array_equal(from_npz[name]["kernel"], converted[name]["kernel"])
        np.testing.assert_array_equal(from_npz[name]["bias"], converted[name]["bias"])


def test_load_vggface_mat_errors(tmp_path, small):
    _, params = small
    bad = tmp_path / "bad.mat"
    scipy.io.savemat(str(bad), {"something": np.zeros(3)})
    with pytest.raises(ValueError, match="layers"):
        stn.load_vggface_mat(bad, SMALL, params=params)
    other = stn.LocaliserConfig.small(num_coeffs=4, input_hw=(32, 32), width=3)
    mat = tmp_path / "other.mat"
    _write_matconvnet(str(mat), other, np.random.default_rng(3))
    with pytest.raises(ValueError, match="conv1_1"):
        stn.load_vggface_mat(mat, SMALL, params=params)
    not_mat = tmp_path / "x.mat"
    not_mat.write_text("hello")
    with pytest.raises(ValueError, match="x.mat"):
        stn.load_vggface_mat(not_mat, SMALL, params=params)


# ------------------------------------------------------------------ forward
def test_forward_end_to_end(small):
    module, params = small
    model = toy_grid_model(8, num_shape=2, num_expression=2, dtype=np.float32)
    rng = np.random.default_rng(4)
    images = rng.uniform(1, 255, (1, 32, 32, 3)).astype(np.float32)
    labels = rng.uniform(4, 28, (1, 21, 2)).astype(np.float32)
    vis = np.ones((1, 21), np.float32)
    vis[0, 3] = 0
    images2, labels2, vis2 = stn.mirror_batch(images, labels, vis, )
    labels3 = jnp.concatenate([labels2, vis2[..., None]], -1)  # the original's (x, y, vis) rows
    def loss_fn(p):
        out = stn.forward(p, model, images2, labels3, localiser=module)
        return out["loss"], out

    # one compile: the loss, every output and the gradient w.r.t. the localiser params
    (_, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    assert out["theta"].shape == (2, 10) and out["texture"].shape == (2, 8, 8, 3)
    assert out["points"].shape == (2, 64, 2) and out["mask"].shape == (2, 8, 8)
    # each loss term with the original reduction, and the 0.8998 / 0.1 / 1e-4 / 1e-4 weights
    theta = np.asarray(out["theta"], np.float64)
    pred = np.asarray(out["points"])[:, np.asarray(model.landmarks["aflw21"])]
    np.testing.assert_allclose(out["landmarks"], pred, rtol=1e-5, atol=1e-4)
    terms = out["losses"]
    np.testing.assert_allclose(
        terms["landmark"], np.sum(np.asarray(vis2) * np.sum((pred - np.asarray(labels2)) ** 2, -1)), rtol=1e-4)
    np.testing.assert_allclose(terms["prior"], np.sum(theta[:, 6:] ** 2), rtol=1e-4)
    np.testing.assert_allclose(terms["symmetry"], stn.symmetry_loss_batch(out["texture"]), rtol=1e-5)
    np.testing.assert_allclose(terms["siamese"], stn.siamese_loss_batch(out["texture"]), rtol=1e-5)
    total = (0.8998 * terms["landmark"] + 0.1 * terms["prior"] + 1e-4 * terms["siamese"]
             + 1e-4 * terms["symmetry"])
    np.testing.assert_allclose(out["loss"], total, rtol=1e-5)
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(np.all(np.isfinite(g)) for g in leaves)
    assert float(np.abs(grads["theta"]["bias"]).sum()) > 0
    with pytest.raises(ValueError, match="even"):
        stn.forward(params, model, images, labels, localiser=module)
    with pytest.raises(ValueError, match="landmark_set"):
        stn.forward(params, model, images2, labels2, localiser=module, landmark_set="ibug68")


def test_predict_theta_resizes_whitens_and_forward_means(small):
    """predict_theta: images of another size are resized to the localiser's input for the localiser
    only; a ThetaWhitening maps raw -> mean + std (raw - init_bias). forward(reduction="mean") is the
    summed forward divided by B, term by term."""
    module, params = small
    model = toy_grid_model(8, num_shape=2, num_expression=2, dtype=np.float32)
    rng = np.random.default_rng(5)
    images = jnp.asarray(rng.uniform(1, 255, (2, 48, 48, 3)), jnp.float32)
    raw = stn.predict_theta(module, params, images)
    small_images = jax.image.resize(images, (2, 32, 32, 3), "linear", antialias=True)
    np.testing.assert_allclose(raw, _apply(params, small_images), rtol=1e-5, atol=1e-5)
    assert raw.dtype == jnp.float32 and raw.shape == (2, 10)
    whitening = stn.ThetaWhitening(mean=jnp.arange(10.0), std=jnp.full(10, 2.0), init_bias=raw[0])
    theta = stn.predict_theta(module, params, images, whitening)
    np.testing.assert_allclose(theta[0], np.arange(10.0), atol=1e-6)  # raw == init_bias -> the mean
    np.testing.assert_allclose(theta[1], np.arange(10.0) + 2.0 * (raw[1] - raw[0]), rtol=1e-5, atol=1e-5)

    labels = jnp.asarray(np.concatenate([rng.uniform(4, 44, (2, 21, 2)), np.ones((2, 21, 1))], -1), jnp.float32)
    summed = stn.forward(params, model, images, labels, localiser=module, whitening=whitening)
    mean = stn.forward(params, model, images, labels, localiser=module, whitening=whitening, reduction="mean")
    np.testing.assert_allclose(summed["theta"], theta, rtol=1e-6)
    np.testing.assert_allclose(mean["loss"], summed["loss"] / 2, rtol=1e-6)
    for name in ("landmark", "prior", "siamese", "symmetry"):
        np.testing.assert_allclose(mean["losses"][name], summed["losses"][name] / 2, rtol=1e-6)
    direct = stn.apply_theta(model, theta, images, labels)
    np.testing.assert_allclose(summed["loss"], direct["loss"], rtol=1e-5)
    with pytest.raises(ValueError, match="reduction"):
        stn.apply_theta(model, theta, images, labels, reduction="max")


def test_resnet_localiser_shapes_init_and_predict_theta():
    """jface.stn.resnet: theta from raw 0-255 images, the original's theta-layer initialisation (t at
    the input's centre), blocks that start as the identity, and predict_theta resizing to its input."""
    from jface.stn.resnet import ResNetLocaliser, ResNetLocaliserConfig

    cfg = ResNetLocaliserConfig.small(num_coeffs=4, input_hw=(32, 32), width=4)
    assert cfg.widths == (4, 8, 16, 32) and cfg.translation_init == (16.0, 16.0) and cfg.num_outputs == 10
    module = ResNetLocaliser(cfg)
    key = jax.random.key(0, impl="unsafe_rbg")  # compiles far faster on CPUs than threefry
    params = jax.jit(module.init)(key, jnp.zeros((1, 32, 32, 3)))["params"]
    np.testing.assert_array_equal(params["theta"]["bias"], [0, 0, 0, 16, 16, 0, 0, 0, 0, 0])
    assert params["fc"]["kernel"].shape == (2 * 2 * 32, 32)  # the flattened 2 x 2 x 32 map
    assert np.all(np.asarray(params["stage2_1"]["norm2"]["scale"]) == 0)
    images = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (2, 48, 48, 3)), jnp.float32)
    theta = jax.jit(lambda p, x: stn.predict_theta(module, p, x))(params, images)
    assert theta.shape == (2, 10) and theta.dtype == jnp.float32
    np.testing.assert_allclose(theta, np.broadcast_to(params["theta"]["bias"], theta.shape), atol=0.5)
    with pytest.raises(ValueError, match="input_hw"):
        ResNetLocaliserConfig.small(input_hw=(30, 32))
    with pytest.raises(ValueError, match="images"):
        module.apply({"params": params}, jnp.zeros((1, 16, 16, 3)))


def test_resnet_input_normalisations():
    """normalise_input against float64 numpy: "fixed" the original scaling; "image" per-image,
    per-channel standardisation, blind to exposure and contrast; "grey" the standardised luminance,
    blind to colour as well; an unknown mode is named; the localiser applies the configured one."""
    from jface.stn.resnet import ResNetLocaliser, ResNetLocaliserConfig, normalise_input

    rng = np.random.default_rng(3)
    x = rng.uniform(0, 255, (2, 16, 16, 3))
    np.testing.assert_allclose(normalise_input(jnp.asarray(x), "fixed"), x / 127.5 - 1, rtol=1e-6, atol=1e-6)
    mean, std = x.mean((1, 2), keepdims=True), x.std((1, 2), keepdims=True)
    np.testing.assert_allclose(normalise_input(jnp.asarray(x), "image"), (x - mean) / (std + 1), rtol=1e-5, atol=1e-5)
    grey = x @ [0.299, 0.587, 0.114]
    g = (grey - grey.mean((1, 2), keepdims=True)) / (grey.std((1, 2), keepdims=True) + 1)
    np.testing.assert_allclose(normalise_input(jnp.asarray(x), "grey"), np.repeat(g[..., None], 3, -1),
                               rtol=1e-5, atol=1e-5)
    darker = 0.6 * x + 10  # another exposure and contrast: nearly the same input (up to the + 1)
    assert np.abs(normalise_input(jnp.asarray(darker), "image") - normalise_input(jnp.asarray(x), "image")).max() < 0.05
    tinted = x * [1.2, 1.0, 0.8]  # a colour cast: standardised away per channel
    assert np.abs(normalise_input(jnp.asarray(tinted), "image") - normalise_input(jnp.asarray(x), "image")).max() < 0.05
    assert np.isfinite(np.asarray(normalise_input(jnp.full((1, 4, 4, 3), 7.0), "image"))).all()  # a flat image
    with pytest.raises(ValueError, match="input_norm"):
        ResNetLocaliserConfig.small(input_hw=(32, 32), input_norm="clahe")
    cfg = ResNetLocaliserConfig.small(num_coeffs=2, input_hw=(32, 32), width=2, input_norm="grey")
    module = ResNetLocaliser(cfg)
    params = jax.jit(module.init)(jax.random.key(0, impl="unsafe_rbg"), jnp.zeros((1, 32, 32, 3)))["params"]
    images = jnp.asarray(rng.uniform(0, 255, (1, 32, 32, 3)), jnp.float32)
    luminance = images @ jnp.asarray([0.299, 0.587, 0.114], jnp.float32)
    grey_image = jnp.broadcast_to(luminance[..., None], images.shape)  # no colour, the same luminance
    same = [module.apply({"params": params}, im) for im in (images, grey_image)]
    np.testing.assert_allclose(same[0], same[1], rtol=1e-5, atol=1e-5)
