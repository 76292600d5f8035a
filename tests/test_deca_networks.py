"""DECA's networks (jface.deca.networks): layouts, numerics against torch references, BN semantics.

The torch reference modules below are written from DECA's code (``decalib/models/encoders.py``,
``resnet.py``, ``decoders.py``; torchvision-v1.5 ResNet, DECA's Generator, the Caffe-style VGGFace2
ResNet, torchvision VGG-19 features); their state dicts go through our converters, so these tests
prove layouts and converters together. Full-size layouts are checked on torch's meta device
(shapes only); numerics run on reduced widths/depths, which share the code paths of the full
networks.
"""

from __future__ import annotations

import pickle

import jax
import jax.numpy as jnp
import jax.test_util  # noqa: F401  (check_grads)
import numpy as np
import pytest

from jface.deca import networks as nw
from jface.deca import weights as cv
from jface.files import weights as fw

_TEMPLATES: dict = {}


def _template(module):
    """``init_variables(module, shapes_only=True)``, cached per module configuration (tracing full nets costs)."""
    key = repr(module)
    if key not in _TEMPLATES:
        _TEMPLATES[key] = nw.init_variables(module, shapes_only=True)
    return _TEMPLATES[key]


def _random_variables(module, x, seed=0, dtype=np.float32, scale=0.5):
    """Random variables in the module's layout without running (compiling) ``init``."""
    template = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)
    rng = np.random.default_rng(seed)
    out = {
        "params": jax.tree.map(lambda s: (rng.normal(size=s.shape) * scale).astype(dtype), template["params"])
    }
    if "batch_stats" in template:
        out["batch_stats"] = {
            k: {
                "mean": rng.normal(size=v["mean"].shape).astype(dtype) * 0.1,
                "var": rng.uniform(0.5, 1.5, v["var"].shape).astype(dtype),
            }
            for k, v in template["batch_stats"].items()
        }
    return out


# ------------------------------------------------------------------------------------------------
# torch-free tests
# ------------------------------------------------------------------------------------------------


def test_full_size_parameter_layouts():
    enc = _template(nw.ResNetEncoder(236))
    p = enc["params"]
    assert p["encoder"]["conv1"]["kernel"].shape == (7, 7, 3, 64)
    assert "bias" not in p["encoder"]["conv1"]
    assert p["encoder"]["layer1_0"]["downsample_0"]["kernel"].shape == (1, 1, 64, 256)
    assert p["encoder"]["layer4_2"]["conv3"]["kernel"].shape == (1, 1, 512, 2048)
    assert [k for k in p["encoder"] if k.startswith("layer3_")] == [f"layer3_{i}" for i in range(6)]
    assert p["layers_0"]["kernel"].shape == (2048, 1024)
    assert p["layers_2"]["kernel"].shape == (1024, 236)
    assert enc["batch_stats"]["encoder"]["bn1"]["var"].shape == (64,)
    n = lambda t: sum(x.size for x in jax.tree.leaves(t))  # noqa: E731
    # torchvision resnet50 without fc: 23,508,032 params; + 2048*1024+1024 + 1024*236+236.
    assert n(p) == 23_508_032 + 2_098_176 + 241_900
    assert n(_template(nw.ResNetEncoder(128))["params"]["layers_2"]) == 1024 * 128 + 128
    gen = _template(nw.DetailGenerator())
    assert gen["params"]["l1_0"]["kernel"].shape == (181, 8192)
    assert gen["params"]["conv_blocks_2"]["kernel"].shape == (3, 3, 128, 128)
    assert gen["params"]["conv_blocks_18"]["kernel"].shape == (3, 3, 32, 16)
    assert gen["params"]["conv_blocks_21"]["kernel"].shape == (3, 3, 16, 1)
    assert sorted(gen["batch_stats"]) == [
        "conv_blocks_0",
        "conv_blocks_11",
        "conv_blocks_15",
        "conv_blocks_19",
        "conv_blocks_3",
        "conv_blocks_7",
    ]
    vgg = _template(nw.VGG19Features(layers=(nw.VGG19_LAYER_NAMES[-1],)))
    assert n(vgg["params"]) == 20_024_384  # torchvision vgg19().features
    face = _template(nw.VGGFace2ResNet50())
    assert jax.tree.structure(face) == jax.tree.structure(_template(nw.ResNet50()))


def test_vgg19_layer_names_follow_deca():
    names = nw.VGG19_LAYER_NAMES
    # DECA counts convs and relus together: 'relu3_2' is the ReLU after conv3_1 = features[11].
    layers = dict((name, idx) for idx, _, name, _ in nw._VGG19_LAYERS)
    assert layers["conv3_1"] == 10 and layers["relu3_2"] == 11
    assert layers["conv4_1"] == 19 and layers["relu4_2"] == 20
    assert names[-1] == "pool_5" and len(names) == 37


def test_detail_generator_init_schemes():
    """'torch' (DECA's): the eps-0.8 BatchNorms let the activations shrink block by block, so D
    starts near zero through a vanishing signal; 'he': the blocks keep std ~1 and the zero output
    conv makes D exactly 0, with the output layer's gradient fed by unit-scale activations."""
    z = jax.random.normal(jax.random.PRNGKey(1), (4, 181))

    def stats(scheme):
        gen = nw.DetailGenerator(init_channels=16, block_channels=(16, 16, 8, 8, 8), init_scheme=scheme)
        variables = gen.init(jax.random.PRNGKey(0), z)
        (out, state) = gen.apply(variables, z, True, mutable=["batch_stats", "intermediates"],
                                 capture_intermediates=True)
        last_act = state["intermediates"]["conv_blocks_19"]["__call__"][0]
        grad = jax.grad(lambda p: jnp.sum(gen.apply({**variables, "params": p}, z, True,
                                                    mutable=["batch_stats"])[0] * jnp.sin(jnp.arange(256.0))[:, None]))(
            variables["params"])
        return variables, out, float(jnp.std(jax.nn.leaky_relu(last_act, 0.2))), grad

    v_t, out_t, act_t, _ = stats("torch")
    v_h, out_h, act_h, grad_h = stats("he")
    assert act_t < 0.05 and act_h > 0.15 and act_h > 20 * act_t  # the signal reaching the output conv
    assert 0 < float(jnp.max(jnp.abs(out_t))) < 1e-3  # small (< 1 mm) but non-zero D (metres)
    assert float(jnp.max(jnp.abs(out_h))) == 0.0
    assert not np.any(np.asarray(v_h["params"]["conv_blocks_21"]["kernel"]))
    # same shapes and the same random draws, rescaled by the He / torch bound ratio sqrt(3 * 1.923)
    ratio = np.asarray(v_h["params"]["conv_blocks_6"]["kernel"]) / np.asarray(v_t["params"]["conv_blocks_6"]["kernel"])
    np.testing.assert_allclose(ratio, np.sqrt(3 * 2 / 1.04), rtol=1e-5)
    np.testing.assert_array_equal(v_h["params"]["l1_0"]["kernel"], v_t["params"]["l1_0"]["kernel"])
    # at D = 0 only the output conv has a gradient, and it is not zero
    assert float(jnp.max(jnp.abs(grad_h["conv_blocks_21"]["kernel"]))) > 0
    assert float(jnp.max(jnp.abs(grad_h["conv_blocks_18"]["kernel"]))) == 0.0
    with pytest.raises(ValueError, match="init_scheme must be one of"):
        jax.eval_shape(nw.DetailGenerator(init_scheme="kaiming").init, jax.random.PRNGKey(0), z)


def test_input_errors():
    enc = nw.ResNetEncoder(236, hidden=4, stage_sizes=(1, 1, 1, 1), width=2)
    with pytest.raises(ValueError, match=r"images.*224, 224, 3"):
        jax.eval_shape(enc.init, jax.random.PRNGKey(0), jnp.zeros((1, 112, 112, 3)))
    with pytest.raises(ValueError, match=r"images.*224, 224, 3"):
        jax.eval_shape(enc.init, jax.random.PRNGKey(0), jnp.zeros((1, 3, 224, 224)))
    with pytest.raises(ValueError, match=r"z must have shape \(B, 181\)"):
        jax.eval_shape(nw.DetailGenerator().init, jax.random.PRNGKey(0), jnp.zeros((1, 180)))
    with pytest.raises(ValueError, match="unknown layers"):
        jax.eval_shape(
            nw.VGG19Features(layers=("relu3_1x",)).init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3))
        )
    with pytest.raises(ValueError, match=r"code must have shape \(\.\.\., 236\)"):
        nw.split_codes(jnp.zeros((2, 235)))


def test_split_codes():
    code = jnp.arange(2 * 236, dtype=jnp.float64).reshape(2, 236)
    d = jax.tree.map(np.asarray, nw.split_codes(code))
    code = np.asarray(code)
    assert {k: v.shape for k, v in d.items()} == {
        "shape": (2, 100),
        "tex": (2, 50),
        "exp": (2, 50),
        "pose": (2, 6),
        "cam": (2, 3),
        "light": (2, 9, 3),
    }
    np.testing.assert_array_equal(d["pose"][1], code[1, 200:206])
    np.testing.assert_array_equal(d["cam"][0], code[0, 206:209])
    for k in range(9):
        for c in range(3):
            assert d["light"][1, k, c] == code[1, 209 + 3 * k + c]
    assert d["light"].dtype == np.float64
    assert nw.split_codes(code[0])["light"].shape == (9, 3)
    z = nw.detail_latent(d["pose"][:, 3:], d["exp"], jnp.zeros((2, 128)))
    np.testing.assert_array_equal(z[:, :3], code[:, 203:206])
    np.testing.assert_array_equal(z[:, 3:53], code[:, 150:200])


def _np_max_pool(x, k, s, p, ceil):
    """Plain-loop torch MaxPool2d reference (NHWC)."""
    b, h, w, c = x.shape

    def osz(n):
        if ceil:
            o = -(-(n + 2 * p - k) // s) + 1
            if (o - 1) * s >= n + p:
                o -= 1
            return o
        return (n + 2 * p - k) // s + 1

    oh, ow = osz(h), osz(w)
    out = np.full((b, oh, ow, c), -np.inf)
    for i in range(oh):
        for j in range(ow):
            r0, c0 = i * s - p, j * s - p
            win = x[:, max(r0, 0) : min(r0 + k, h), max(c0, 0) : min(c0 + k, w)]
            out[:, i, j] = win.max(axis=(1, 2))
    return out


@pytest.mark.parametrize(
    "size,k,s,p,ceil", [(112, 3, 2, 0, True), (9, 3, 2, 0, True), (10, 3, 2, 1, False), (8, 2, 2, 0, False)]
)
def test_max_pool_torch_reference(size, k, s, p, ceil):
    x = np.random.default_rng(0).normal(size=(1, size, size + 1, 2))
    got = nw.max_pool_torch(jnp.asarray(x), k, s, p, ceil_mode=ceil)
    np.testing.assert_array_equal(np.asarray(got), _np_max_pool(x, k, s, p, ceil))
    if size == 112:
        assert got.shape[1] == 56  # the VGGFace2 stem: 112 -> 56 only with ceil_mode


def test_batchnorm_matches_torch_semantics():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 4, 5, 6)) * 2 + 1
    bn = nw.BatchNorm(epsilon=0.8)
    variables = {
        "params": {"scale": jnp.asarray(rng.normal(size=6)), "bias": jnp.asarray(rng.normal(size=6))},
        "batch_stats": {
            "mean": jnp.asarray(rng.normal(size=6)),
            "var": jnp.asarray(rng.uniform(0.5, 2, size=6)),
        },
    }
    y, upd = bn.apply(variables, jnp.asarray(x), True, mutable=["batch_stats"])
    mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
    g, b = np.asarray(variables["params"]["scale"]), np.asarray(variables["params"]["bias"])
    np.testing.assert_allclose(np.asarray(y), (x - mean) / np.sqrt(var + 0.8) * g + b, rtol=1e-10, atol=1e-12)
    assert y.dtype == jnp.float64
    n = x.size // 6
    rm, rv = np.asarray(variables["batch_stats"]["mean"]), np.asarray(variables["batch_stats"]["var"])
    np.testing.assert_allclose(np.asarray(upd["batch_stats"]["mean"]), 0.9 * rm + 0.1 * mean, rtol=1e-6)
    np.testing.assert_allclose(
        np.asarray(upd["batch_stats"]["var"]), 0.9 * rv + 0.1 * var * n / (n - 1), rtol=1e-6
    )
    y_eval = bn.apply(variables, jnp.asarray(x), False)
    np.testing.assert_allclose(
        np.asarray(y_eval),
        (x - rm) / np.sqrt(np.asarray(variables["batch_stats"]["var"]) + 0.8) * g + b,
        rtol=1e-6,
    )
    # gradients (training mode, float64) against finite differences
    f = jax.jit(lambda xx: jnp.sum(jnp.sin(bn.apply(variables, xx, True, mutable=["batch_stats"])[0])))
    jax.test_util.check_grads(f, (jnp.asarray(x),), order=1, modes=("rev",))
    pool = jax.jit(lambda xx: jnp.sum(jnp.sin(nw.max_pool_torch(xx, 3, 2, 0, True))))
    jax.test_util.check_grads(pool, (jnp.asarray(x),), order=1, modes=("rev",))


def test_batchnorm_axis_name_equals_global_batch():
    """Statistics averaged over a mapped axis equal those of the concatenated batch."""
    x = np.random.default_rng(11).normal(size=(4, 3, 5, 5, 2)) * 3 + 1
    v = {
        "params": {"scale": jnp.ones(2), "bias": jnp.zeros(2)},
        "batch_stats": {"mean": jnp.zeros(2), "var": jnp.ones(2)},
    }
    mapped = jax.jit(
        jax.vmap(
            lambda xx: nw.BatchNorm(axis_name="d").apply(v, xx, True, mutable=["batch_stats"]), axis_name="d"
        )
    )
    y, upd = mapped(jnp.asarray(x))
    y_all, upd_all = jax.jit(lambda xx: nw.BatchNorm().apply(v, xx, True, mutable=["batch_stats"]))(
        jnp.asarray(x.reshape(12, 5, 5, 2))
    )
    np.testing.assert_allclose(np.asarray(y).reshape(12, 5, 5, 2), np.asarray(y_all), rtol=1e-9, atol=1e-9)
    for k in ("mean", "var"):
        np.testing.assert_allclose(
            np.asarray(upd["batch_stats"][k][0]), np.asarray(upd_all["batch_stats"][k]), rtol=1e-9
        )


def test_bottleneck_dtypes():
    block = nw.Bottleneck(4, stride=2, downsample=True)
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 8, 8, 8)), jnp.float32)
    variables = _random_variables(block, x)
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables))
    apply = jax.jit(block.apply)
    y32 = apply(variables, x)
    assert y32.shape == (2, 4, 4, 16) and y32.dtype == jnp.float32
    y64 = apply(variables, x.astype(jnp.float64))
    assert y64.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(y64), np.asarray(y32), rtol=1e-4, atol=1e-5)
    bf = nw.Bottleneck(4, stride=2, downsample=True, dtype=jnp.bfloat16)
    y16 = jax.jit(bf.apply)(variables, x)
    assert y16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y16, np.float32), np.asarray(y32), rtol=0.05, atol=0.05)


def test_detail_generator_gradient_float64():
    gen = nw.DetailGenerator(latent_dim=5, init_size=1, init_channels=3, block_channels=(2, 2, 2, 2, 2))
    z = jnp.asarray(np.random.default_rng(3).normal(size=(2, 5)))
    variables = _random_variables(gen, z, seed=1, dtype=np.float64, scale=1.0)

    def loss(zz):
        out, _ = gen.apply(variables, zz, True, mutable=["batch_stats"])
        return jnp.sum(out * jnp.cos(jnp.arange(out.size, dtype=out.dtype).reshape(out.shape)))

    vg = jax.jit(jax.value_and_grad(loss))
    value, grad = vg(z)
    assert grad.dtype == jnp.float64 and np.all(np.isfinite(grad))
    direction = jnp.asarray(np.random.default_rng(4).normal(size=z.shape))
    eps = 1e-5
    fd = (vg(z + eps * direction)[0] - vg(z - eps * direction)[0]) / (2 * eps)
    np.testing.assert_allclose(float(jnp.vdot(grad, direction)), float(fd), rtol=1e-5, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# torch references (skipped without torch)
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tref():
    """Torch reference modules written from DECA's code (``decalib/models/``)."""
    pytest.importorskip("torch")
    return torch_reference()


def torch_reference():
    """Namespace of torch reference modules (also used by the full-size check in BUILD_NOTES.md (networks section))."""
    import torch

    nn = torch.nn
    torch.manual_seed(0)

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, inplanes, planes, stride=1, downsample=None, caffe=False):
            super().__init__()
            s1, s3 = (stride, 1) if caffe else (1, stride)
            self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=s1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride=s3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(planes * 4)
            self.relu = nn.ReLU()
            self.downsample = downsample

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            res = x if self.downsample is None else self.downsample(x)
            return self.relu(out + res)

    class ResNet(nn.Module):
        def __init__(self, layers=(3, 4, 6, 3), width=64, caffe=False, num_classes=None):
            super().__init__()
            self.inplanes = width
            self.caffe = caffe
            self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.relu = nn.ReLU()
            self.maxpool = (
                nn.MaxPool2d(3, 2, padding=0, ceil_mode=True) if caffe else nn.MaxPool2d(3, 2, padding=1)
            )
            for i, n in enumerate(layers):
                setattr(self, f"layer{i + 1}", self._make_layer(width * 2**i, n, 1 if i == 0 else 2))
            self.avgpool = nn.AvgPool2d(7, stride=1)
            if num_classes:
                self.fc = nn.Linear(self.inplanes, num_classes)

        def _make_layer(self, planes, blocks, stride):
            down = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False), nn.BatchNorm2d(planes * 4)
            )
            layers = [Bottleneck(self.inplanes, planes, stride, down, self.caffe)]
            self.inplanes = planes * 4
            layers += [Bottleneck(self.inplanes, planes, caffe=self.caffe) for _ in range(1, blocks)]
            return nn.Sequential(*layers)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.avgpool(x).view(x.size(0), -1)

    class ResnetEncoder(nn.Module):
        def __init__(self, outsize, layers=(3, 4, 6, 3), width=64, hidden=1024):
            super().__init__()
            self.encoder = ResNet(layers, width)
            self.layers = nn.Sequential(nn.Linear(width * 32, hidden), nn.ReLU(), nn.Linear(hidden, outsize))

        def forward(self, x):
            return self.layers(self.encoder(x))

    class Generator(nn.Module):
        def __init__(self, latent_dim=181, init_size=8, c0=128, chans=(128, 64, 64, 32, 16)):
            super().__init__()
            self.init_size, self.c0 = init_size, c0
            self.l1 = nn.Sequential(nn.Linear(latent_dim, c0 * init_size**2))
            mods, cin = [nn.BatchNorm2d(c0)], c0
            for c in chans:
                mods += [
                    nn.Upsample(scale_factor=2, mode="bilinear"),
                    nn.Conv2d(cin, c, 3, stride=1, padding=1),
                    nn.BatchNorm2d(c, 0.8),
                    nn.LeakyReLU(0.2),
                ]
                cin = c
            mods += [nn.Conv2d(cin, 1, 3, stride=1, padding=1), nn.Tanh()]
            self.conv_blocks = nn.Sequential(*mods)

        def forward(self, z):
            out = self.l1(z).view(z.shape[0], self.c0, self.init_size, self.init_size)
            return self.conv_blocks(out) * 0.01

    cfg = [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        512,
        "M",
    ]

    def vgg19_features(upto=None):
        mods, cin = [], 3
        for v in cfg:
            if v == "M":
                mods.append(nn.MaxPool2d(2, 2))
            else:
                mods += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU()]
                cin = v
        return nn.Sequential(*mods[:upto])

    def randomize_bn(module):
        """Non-trivial BN statistics/affine so eval mode is really tested."""
        with torch.no_grad():
            for m in module.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0, 0.2)
                    m.running_mean.normal_(0, 0.2)
                    m.running_var.uniform_(0.5, 1.5)
        return module

    ns = dict(
        torch=torch,
        Bottleneck=Bottleneck,
        ResNet=ResNet,
        ResnetEncoder=ResnetEncoder,
        Generator=Generator,
        vgg19_features=vgg19_features,
        randomize_bn=randomize_bn,
    )
    return type("TorchRef", (), ns)


def _sd_numpy(module):
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def _sd_zeros(module):
    return {
        k: np.zeros(tuple(v.shape), np.float32 if v.is_floating_point() else np.int64)
        for k, v in module.state_dict().items()
    }


def _nhwc(t):
    return np.asarray(t.detach().numpy()).transpose(0, 2, 3, 1)


def test_full_size_torch_layouts_convert(tref):
    """DECA's E_flame / E_detail / D_detail, VGGFace2 (+fc) and VGG-19 (+classifier) state-dict layouts."""
    torch = tref.torch
    with torch.device("meta"):
        modules = {
            "E_flame": (tref.ResnetEncoder(236), nw.ResNetEncoder(236), None),
            "E_detail": (tref.ResnetEncoder(128), nw.ResNetEncoder(128), None),
            "D_detail": (tref.Generator(), nw.DetailGenerator(), None),
            "vggface2": (
                tref.ResNet(caffe=True, num_classes=8631),
                nw.VGGFace2ResNet50(),
                lambda k: k.startswith("fc."),
            ),
        }
        vgg = tref.vgg19_features()
    for name, (tmod, jmod, ignore) in modules.items():
        variables = fw.convert_state_dict(_sd_zeros(tmod), _template(jmod), source=name, ignore=ignore)
        assert jax.tree.structure(variables) == jax.tree.structure(_template(jmod))
    sd = {f"features.{k}": v for k, v in _sd_zeros(vgg).items()}
    sd["classifier.0.weight"] = np.zeros((2, 2), np.float32)
    fw.convert_state_dict(
        sd, _template(nw.VGG19Features(layers=("pool_5",))), ignore=lambda k: k.startswith("classifier.")
    )


def test_bilinear_upsample_matches_torch(tref):
    torch = tref.torch
    x = np.random.default_rng(5).normal(size=(2, 3, 5, 7)).astype(np.float32)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(x), scale_factor=2, mode="bilinear", align_corners=False
    )
    got = jax.image.resize(jnp.asarray(x.transpose(0, 2, 3, 1)), (2, 10, 14, 3), "bilinear", antialias=False)
    np.testing.assert_allclose(np.asarray(got), _nhwc(ref), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("caffe", [False, True])
def test_bottleneck_matches_torch_eval_and_train(tref, caffe):
    torch = tref.torch
    down = torch.nn.Sequential(torch.nn.Conv2d(6, 16, 1, stride=2, bias=False), torch.nn.BatchNorm2d(16))
    tblock = tref.randomize_bn(tref.Bottleneck(6, 4, 2, down, caffe=caffe))
    block = nw.Bottleneck(4, stride=2, downsample=True, caffe_style=caffe)
    x = np.random.default_rng(6).normal(size=(2, 6, 9, 9)).astype(np.float32)
    template = jax.eval_shape(block.init, jax.random.PRNGKey(0), jnp.zeros((2, 9, 9, 6)))
    variables = fw.convert_state_dict(_sd_numpy(tblock), template)
    apply_eval = jax.jit(block.apply)
    apply_train = jax.jit(lambda v, xx: block.apply(v, xx, True, mutable=["batch_stats"]))
    tblock.eval()
    with torch.no_grad():
        ref = tblock(torch.from_numpy(x))
    got = apply_eval(variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(np.asarray(got), _nhwc(ref), rtol=1e-4, atol=1e-5)
    tblock.train()
    with torch.no_grad():
        ref = tblock(torch.from_numpy(x))
    got, upd = apply_train(variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(np.asarray(got), _nhwc(ref), rtol=1e-4, atol=1e-5)
    after = fw.convert_state_dict(_sd_numpy(tblock), template)
    for a, b in zip(jax.tree.leaves(upd["batch_stats"]), jax.tree.leaves(after["batch_stats"])):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-6)


def test_deca_encoders_and_generator_match_torch(tref, tmp_path):
    """Small-width DECA model saved with torch.save -> convert_deca -> same outputs (eval mode).

    Train-mode BN (batch statistics, eps 0.8, running-stat updates) is covered by the BatchNorm and
    bottleneck tests."""
    torch = tref.torch
    small = dict(layers=(1, 1, 1, 1), width=4)
    t_flame = tref.randomize_bn(tref.ResnetEncoder(236, hidden=16, **small)).eval()
    t_detail = tref.randomize_bn(tref.ResnetEncoder(128, hidden=8, **small)).eval()
    t_gen = tref.randomize_bn(tref.Generator(init_size=2, c0=8, chans=(8, 4, 4, 4, 4))).eval()
    src = tmp_path / "deca_model.tar"
    torch.save(
        {
            "E_flame": t_flame.state_dict(),
            "E_detail": t_detail.state_dict(),
            "D_detail": t_gen.state_dict(),
            "global_step": 7,
        },
        src,
    )
    j = dict(stage_sizes=(1, 1, 1, 1), width=4)
    modules = {
        "E_flame": nw.ResNetEncoder(236, hidden=16, **j),
        "E_detail": nw.ResNetEncoder(128, hidden=8, **j),
        "D_detail": nw.DetailGenerator(init_size=2, init_channels=8, block_channels=(8, 4, 4, 4, 4)),
    }
    weights = cv.convert_deca(src, modules=modules)
    # through the project's file format as well
    dst = fw.save_variables(tmp_path / "deca.npz", weights, kind="deca", source=src)
    weights = fw.load_variables(dst, kind="deca")

    images = np.random.default_rng(7).uniform(size=(2, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        ref = t_flame(torch.from_numpy(images)).numpy()
    got = jax.jit(modules["E_flame"].apply)(weights["E_flame"], jnp.asarray(images.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-4, atol=2e-5)
    assert nw.split_codes(got)["light"].shape == (2, 9, 3)

    z = np.random.default_rng(8).normal(size=(3, 181)).astype(np.float32)
    gen = modules["D_detail"]
    with torch.no_grad():
        ref = t_gen(torch.from_numpy(z))
    got = jax.jit(gen.apply)(weights["D_detail"], jnp.asarray(z))
    assert got.shape == (3, 64, 64, 1)
    np.testing.assert_allclose(np.asarray(got), _nhwc(ref), rtol=1e-4, atol=1e-7)


def test_vggface2_matches_torch_from_numpy_pickle(tref, tmp_path):
    torch = tref.torch
    tnet = tref.randomize_bn(tref.ResNet((1, 1, 1, 1), width=4, caffe=True, num_classes=10)).eval()
    src = tmp_path / "resnet50_ft_weight.pkl"
    with open(src, "wb") as f:  # cydonia999's format: a pickle of name -> numpy array
        pickle.dump(_sd_numpy(tnet), f, protocol=2)
    module = nw.VGGFace2ResNet50(stage_sizes=(1, 1, 1, 1), width=4)
    variables = cv.convert_vggface2(src, module=module)
    rgb = np.random.default_rng(9).uniform(size=(2, 224, 224, 3))
    # DECA's VGGFace2Loss.transform + reg_features, in torch (float64 to compare the preprocessing tightly)
    t = torch.from_numpy(rgb.transpose(0, 3, 1, 2))
    t = (
        t[:, [2, 1, 0]].permute(0, 2, 3, 1) * 255
        - torch.tensor([91.4953, 103.8827, 131.0912], dtype=torch.float64)
    ).permute(0, 3, 1, 2)
    t = torch.nn.functional.interpolate(t[:, :, 10:214, 10:214] * 2.0 - 1.0, [224, 224], mode="bilinear")
    pre = nw.vggface2_preprocess(jnp.asarray(rgb))
    assert pre.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(pre), _nhwc(t), rtol=1e-10, atol=1e-8)
    with torch.no_grad():
        ref = tnet(t.float()).numpy()
    got = jax.jit(module.apply)(variables, pre.astype(jnp.float32))
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-4, atol=1e-3 * np.abs(ref).max())


def test_vgg19_features_match_torch(tref, tmp_path):
    torch = tref.torch
    feats = tref.vgg19_features(upto=21)  # through relu4_2 (DECA's name) = features[20]
    src = tmp_path / "vgg19.pth"
    sd = {f"features.{k}": v for k, v in feats.state_dict().items()}
    sd["classifier.0.weight"] = torch.zeros(2, 2)
    torch.save(sd, src)
    module = nw.VGG19Features(layers=("relu3_2", "relu4_2"))
    variables = cv.convert_vgg19(src, module=module)
    rgb = np.random.default_rng(10).uniform(size=(1, 16, 16, 3)).astype(np.float32)
    x = nw.imagenet_normalize(jnp.asarray(rgb))
    got = jax.jit(module.apply)(variables, x)
    t = (
        torch.from_numpy(rgb.transpose(0, 3, 1, 2)) - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    ) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        r32 = feats[:12](t)
        r42 = feats[:21](t)
    np.testing.assert_allclose(np.asarray(got["relu3_2"]), _nhwc(r32), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(got["relu4_2"]), _nhwc(r42), rtol=1e-4, atol=1e-4)


def full_size_check():
    """Full-size E_flame, D_detail and VGGFace2 vs the torch references (random weights, randomised BN).

    Not a test (about a minute on a loaded 2-core box). Run:
    ``python -c "import sys; sys.path.insert(0, 'tests'); import test_deca_networks as t; t.full_size_check()"``
    """
    torch = pytest.importorskip("torch")
    tr = torch_reference()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    img = rng.uniform(size=(2, 224, 224, 3)).astype(np.float32)
    z = rng.normal(size=(2, 181)).astype(np.float32)
    cases = [
        ("E_flame", tr.ResnetEncoder(236), nw.ResNetEncoder(236), img, None),
        ("D_detail", tr.Generator(), nw.DetailGenerator(), z, None),
        (
            "VGGFace2",
            tr.ResNet(caffe=True, num_classes=8631),
            nw.VGGFace2ResNet50(),
            img * 100,
            lambda k: k.startswith("fc."),
        ),
    ]
    for name, tmod, jmod, inp, ignore in cases:
        tr.randomize_bn(tmod).eval()
        tinp = torch.from_numpy(inp.transpose(0, 3, 1, 2) if inp.ndim == 4 else inp)
        with torch.no_grad():
            ref = tmod(tinp).numpy()
        ref = ref.transpose(0, 2, 3, 1) if ref.ndim == 4 else ref
        variables = fw.convert_state_dict(_sd_numpy(tmod), _template(jmod), ignore=ignore)
        got = np.asarray(jax.jit(jmod.apply)(variables, jnp.asarray(inp)))
        err = np.abs(got - ref).max()
        print(
            f"{name}: output {got.shape}, max|ours - torch| = {err:.3g}, max|torch| = {np.abs(ref).max():.3g}, "
            f"relative {err / np.abs(ref).max():.3g}"
        )
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
