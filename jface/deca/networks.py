"""DECA's networks in Flax: encoders, detail generator, and the frozen loss networks.

From ``decalib/models/encoders.py``, ``resnet.py``, ``decoders.py`` and ``decalib/utils/lossfunc.py``
(``VGGFace2Loss``, ``IDMRFLoss``).

Layout: NHWC images, ``(B, H, W, C)``. Parameter trees mirror the torch module paths exactly, with
``nn.Sequential`` indices fused onto their parent (torch ``encoder.layer1.0.downsample.0`` -> Flax
``encoder/layer1_0/downsample_0``), so that :mod:`jface.weights` can convert the released torch
weights mechanically. Convolution kernels are HWIO, dense kernels ``(in, out)``.

Every module takes ``train`` (bool). ``train=False`` uses the BatchNorm running statistics (eval mode);
``train=True`` normalises with batch statistics and updates ``batch_stats`` exactly as torch does
(momentum 0.1 in torch's convention, unbiased running variance) -- call ``apply`` with
``mutable=["batch_stats"]``.

``dtype`` is the compute dtype (e.g. ``jnp.bfloat16``); parameters are always stored in float32.
With ``dtype=None`` the computation follows the input (float64 in -> float64 out under x64).

Modules:
* :class:`ResNet50` -- torchvision v1.5 backbone (DECA's ``models/resnet.py``), 224x224 input, 2048-d output.
* :class:`ResNetEncoder` -- backbone + Linear(2048,1024) + ReLU + Linear(1024,outsize): E_coarse (236),
  E_detail (128). :func:`split_codes` splits the 236-d code.
* :class:`DetailGenerator` -- F_d, DECA's ``Generator`` (BN eps 0.8 quirk).
* :class:`VGGFace2ResNet50` -- identity network (Caffe-style strides, ceil-mode max pool).
* :class:`VGG19Features` -- torchvision VGG-19 ``features`` for ID-MRF, with DECA's layer names.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jface.deca.losses import identity_preprocess  # one implementation (checked against torch)

Dtype = Any

__all__ = [
    "BatchNorm",
    "Bottleneck",
    "ResNet50",
    "ResNetEncoder",
    "DetailGenerator",
    "VGGFace2ResNet50",
    "VGG19Features",
    "CODE_SPLITS",
    "split_codes",
    "detail_latent",
    "imagenet_normalize",
    "vggface2_preprocess",
    "max_pool_torch",
    "init_variables",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VGGFACE2_MEAN_BGR",
    "VGG19_LAYER_NAMES",
    "DETAIL_INIT_SCHEMES",
    "DETAIL_GENERATOR_WIDTHS",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VGGFACE2_MEAN_BGR = (91.4953, 103.8827, 131.0912)

# torch initialisers, as Flax initialisers.
# DECA's ResNet: normal(0, sqrt(2 / (k*k*out)))  == He normal, fan_out.
_resnet_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# torch's default Conv2d / Linear weight init: kaiming_uniform(a=sqrt(5)) == U(+-1/sqrt(fan_in)).
_torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _compute_dtype(dtype: Dtype | None, x) -> Dtype:
    """The dtype a layer computes in: ``dtype`` if given, else the input's promoted with float32."""
    if dtype is not None:
        return dtype
    return jnp.promote_types(jnp.asarray(x).dtype, jnp.float32)


def _check_input_size(size, name: str) -> None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 32 or size % 32:
        raise ValueError(f"{name}: expected a positive multiple of 32 (DECA: 224), got {size!r}")


def _check_images(images, name: str, size: int | None = 224) -> None:
    shape = tuple(np.shape(images))
    if len(shape) != 4 or shape[-1] != 3 or (size is not None and shape[1:3] != (size, size)):
        want = f"(B, {size}, {size}, 3)" if size is not None else "(B, H, W, 3)"
        raise ValueError(
            f"{name}: expected NHWC images of shape {want}"
            + (" (the network ends in AvgPool2d(7) on a 7x7 map, DECA's models/resnet.py)" if size == 224
               else " (the network's input_size)" if size else "")
            + f", got shape {shape}"
        )


# ----------------------------------------------------------------------------------------------
# Layers with torch semantics
# ----------------------------------------------------------------------------------------------


class BatchNorm(nn.Module):
    """``torch.nn.BatchNorm2d`` over the last (channel) axis.

    Params ``scale`` (torch ``weight``), ``bias``; batch_stats ``mean`` (``running_mean``), ``var``
    (``running_var``). In training mode the output uses the biased batch variance and the running
    variance is updated with the unbiased one, ``r <- (1 - momentum) r + momentum v * n / (n - 1)``,
    as torch does. ``momentum`` is in torch's convention (0.1 == Flax's 0.9). Statistics are always
    computed in at least float32. ``axis_name`` averages batch statistics over a mapped axis (pmap /
    shard_map); under plain ``jit`` with sharded arrays the mean is global already.
    """

    epsilon: float = 1e-5
    momentum: float = 0.1
    dtype: Dtype | None = None
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        channels = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((channels,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((channels,), jnp.float32))
        stat_dtype = jnp.promote_types(x.dtype, jnp.float32)
        if train:
            xs = x.astype(stat_dtype)
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(xs, axes)
            count = math.prod(x.shape[:-1])
            if self.axis_name is None:
                var = jnp.mean(jnp.square(xs - mean), axes)  # centred: accurate in float32
            else:  # statistics over all devices of the mapped axis: E[x^2] - E[x]^2
                mean_sq = jnp.mean(jnp.square(xs), axes)
                mean, mean_sq = jax.lax.pmean((mean, mean_sq), self.axis_name)
                var = jnp.maximum(mean_sq - jnp.square(mean), 0.0)
                count = count * jax.lax.psum(1, self.axis_name)
            if not self.is_initializing():
                m = self.momentum
                unbiased = var * (count / jnp.maximum(count - 1, 1))
                ra_mean.value = ((1 - m) * ra_mean.value + m * mean).astype(jnp.float32)
                ra_var.value = ((1 - m) * ra_var.value + m * unbiased).astype(jnp.float32)
        else:
            mean, var = ra_mean.value.astype(stat_dtype), ra_var.value.astype(stat_dtype)
        inv = scale.astype(stat_dtype) * jax.lax.rsqrt(var + self.epsilon)
        shift = bias.astype(stat_dtype) - mean * inv
        out_dtype = _compute_dtype(self.dtype, x)
        return (x.astype(out_dtype) * inv.astype(out_dtype) + shift.astype(out_dtype)).astype(out_dtype)


def max_pool_torch(x, kernel: int, stride: int, padding: int = 0, ceil_mode: bool = False):
    """``torch.nn.MaxPool2d(kernel, stride, padding, ceil_mode)`` on NHWC input.

    Padding is with -inf. With ``ceil_mode`` the output size is ``ceil((H + 2p - k) / s) + 1``, minus
    one if the last window would start in the right padding (torch's rule); the extra cells are
    implemented as -inf padding at the bottom/right.
    """

    def out_size(n):
        if ceil_mode:
            o = -(-(n + 2 * padding - kernel) // stride) + 1
            if (o - 1) * stride >= n + padding:
                o -= 1
        else:
            o = (n + 2 * padding - kernel) // stride + 1
        return o

    pads = [(0, 0)]
    for n in x.shape[1:3]:
        o = out_size(n)
        extra = max((o - 1) * stride + kernel - (n + 2 * padding), 0)
        pads.append((padding, padding + extra))
    pads.append((0, 0))
    # A concrete numpy init value lets JAX recognise the max monoid (differentiable) under jit too.
    neg_inf = np.array(-np.inf, dtype=x.dtype)
    return jax.lax.reduce_window(
        x, neg_inf, jax.lax.max, (1, kernel, kernel, 1), (1, stride, stride, 1), pads
    )


def _conv(
    features, kernel, stride=1, padding=0, use_bias=False, dtype=None, name=None, init=_resnet_conv_init
):
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=[(padding, padding), (padding, padding)],
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=init,
        name=name,
    )


# ----------------------------------------------------------------------------------------------
# ResNet-50 (torchvision v1.5 and the Caffe-style VGGFace2 variant)
# ----------------------------------------------------------------------------------------------


class Bottleneck(nn.Module):
    """ResNet bottleneck, expansion 4: 1x1 -> 3x3 -> 1x1 (+ projection shortcut when ``downsample``).

    ``caffe_style=False`` (torchvision v1.5, DECA's encoders): the stride sits on the 3x3 conv.
    ``caffe_style=True`` (the VGGFace2 port): the stride sits on the first 1x1 conv.
    Torch names: ``conv1 bn1 conv2 bn2 conv3 bn3 downsample.0 downsample.1``.
    """

    planes: int
    stride: int = 1
    downsample: bool = False
    caffe_style: bool = False
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        s1, s3 = (self.stride, 1) if self.caffe_style else (1, self.stride)
        out = _conv(self.planes, 1, s1, dtype=self.dtype, name="conv1")(x)
        out = nn.relu(BatchNorm(dtype=self.dtype, name="bn1")(out, train))
        out = _conv(self.planes, 3, s3, 1, dtype=self.dtype, name="conv2")(out)
        out = nn.relu(BatchNorm(dtype=self.dtype, name="bn2")(out, train))
        out = _conv(self.planes * 4, 1, dtype=self.dtype, name="conv3")(out)
        out = BatchNorm(dtype=self.dtype, name="bn3")(out, train)
        if self.downsample:
            residual = _conv(self.planes * 4, 1, self.stride, dtype=self.dtype, name="downsample_0")(x)
            residual = BatchNorm(dtype=self.dtype, name="downsample_1")(residual, train)
        else:
            residual = x.astype(out.dtype)
        return nn.relu(out + residual)


class ResNet50(nn.Module):
    """ResNet-50 backbone, torchvision v1.5 layout (DECA ``models/resnet.py``).

    stem conv7x7/2 (pad 3, no bias) -> BN -> ReLU -> maxpool 3x3/2 (pad 1); stages ``stage_sizes``
    of bottlenecks with widths ``width * (1, 2, 4, 8)`` (x4 expansion); ``AvgPool2d(7, stride=1)`` on
    the 7x7 output. BN eps 1e-5, momentum 0.1.

    Args (call): ``images`` (B, 224, 224, 3) NHWC -- DECA feeds RGB in [0, 1] with no normalisation;
    any other spatial size raises ``ValueError``. Returns (B, 8 * 4 * width) features (2048 for the
    real network).

    ``width``, ``stage_sizes`` and ``input_size`` exist only for small CPU configurations; converted
    weights need the defaults. ``input_size`` (a multiple of 32; DECA: 224) is the square input the
    network accepts; the final map is then ``input_size / 32`` square and is averaged over (for 224
    exactly DECA's ``AvgPool2d(7)`` on the 7x7 map). ``caffe_style=True`` gives the VGGFace2
    variant (see :class:`VGGFace2ResNet50`).
    """

    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    width: int = 64
    caffe_style: bool = False
    dtype: Dtype | None = None
    input_size: int = 224

    @nn.compact
    def __call__(self, images, train: bool = False):
        _check_input_size(self.input_size, f"{type(self).__name__}: input_size")
        _check_images(images, f"{type(self).__name__}: images", self.input_size)
        x = jnp.asarray(images)
        x = x.astype(_compute_dtype(self.dtype, x))
        x = _conv(self.width, 7, 2, 3, dtype=self.dtype, name="conv1")(x)
        x = nn.relu(BatchNorm(dtype=self.dtype, name="bn1")(x, train))
        if self.caffe_style:
            x = max_pool_torch(x, 3, 2, 0, ceil_mode=True)
        else:
            x = max_pool_torch(x, 3, 2, 1)
        for i, blocks in enumerate(self.stage_sizes):
            for j in range(blocks):
                x = Bottleneck(
                    self.width * 2**i,
                    stride=2 if (i > 0 and j == 0) else 1,
                    downsample=(j == 0),
                    caffe_style=self.caffe_style,
                    dtype=self.dtype,
                    name=f"layer{i + 1}_{j}",
                )(x, train)
        final = self.input_size // 32
        if x.shape[1:3] != (final, final):  # cannot happen; guards edits of the layout
            raise ValueError(f"{type(self).__name__}: expected a {final}x{final} final map, got {x.shape[1:3]}")
        return jnp.mean(x, axis=(1, 2))


class VGGFace2ResNet50(ResNet50):
    """VGGFace2 ResNet-50 "ft" identity network (cydonia999 port of the Caffe model).

    Same parameter tree as :class:`ResNet50` (top-level ``conv1``, ``bn1``, ``layer1_0`` ...), but the
    stride is on the first 1x1 conv of each bottleneck and the stem max pool is 3x3/2, pad 0,
    ``ceil_mode=True``. ``include_top=False``: returns the (B, 2048) pooled feature. Input: (B, 224,
    224, 3) preprocessed by :func:`vggface2_preprocess`. DECA uses it frozen and in eval mode
    (``train=False``); wrap the params in ``jax.lax.stop_gradient`` -- gradients still flow to the input.
    """

    caffe_style: bool = True


class ResNetEncoder(nn.Module):
    """DECA's ``ResnetEncoder``: ResNet50 -> Linear(2048, 1024) -> ReLU -> Linear(1024, outsize).

    No output activation. E_coarse (``E_flame``): ``outsize=236``; E_detail: ``outsize=128``.
    Torch names: ``encoder.*``, ``layers.0``, ``layers.2``.

    Call: ``images`` (B, 224, 224, 3) RGB in [0, 1], NHWC, no mean/std normalisation -> (B, outsize);
    (B, input_size, input_size, 3) for a small CPU configuration (see :class:`ResNet50`).
    """

    outsize: int
    hidden: int = 1024
    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    width: int = 64
    dtype: Dtype | None = None
    input_size: int = 224

    @nn.compact
    def __call__(self, images, train: bool = False):
        features = ResNet50(self.stage_sizes, self.width, dtype=self.dtype, input_size=self.input_size,
                            name="encoder")(images, train)
        dense = lambda n, name: nn.Dense(  # noqa: E731
            n, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=_torch_default_init, name=name
        )
        x = nn.relu(dense(self.hidden, "layers_0")(features))
        return dense(self.outsize, "layers_2")(x)


# Order and sizes of DECA's coarse code (``decalib/utils/config.py`` param_list; ``DECA.decompose_code``).
CODE_SPLITS = (("shape", 100), ("tex", 50), ("exp", 50), ("pose", 6), ("cam", 3), ("light", 27))


def split_codes(code) -> dict:
    """Split E_coarse's output ``(..., 236)`` into DECA's code dict (``decompose_code``).

    Returns ``shape (...,100)``, ``tex (...,50)``, ``exp (...,50)``, ``pose (...,6)`` = [global aa,
    jaw aa], ``cam (...,3)`` = (s, tx, ty), ``light (...,9,3)`` reshaped row-major:
    ``light[k, c] = code[209 + 3k + c]``.
    """
    code = jnp.asarray(code)
    total = sum(n for _, n in CODE_SPLITS)
    if code.ndim < 1 or code.shape[-1] != total:
        raise ValueError(f"split_codes: code must have shape (..., {total}), got {code.shape}")
    out, start = {}, 0
    for name, n in CODE_SPLITS:
        out[name] = code[..., start : start + n]
        start += n
    out["light"] = out["light"].reshape(code.shape[:-1] + (9, 3))
    return out


# ----------------------------------------------------------------------------------------------
# Detail generator F_d
# ----------------------------------------------------------------------------------------------


def detail_latent(jaw_pose, expression, detail_code):
    """F_d's input ``concat[jaw (.., 3), exp (.., 50), detail (.., 128)]`` (``DECA.decode``, that order)."""
    return jnp.concatenate(
        [jnp.asarray(jaw_pose), jnp.asarray(expression), jnp.asarray(detail_code)], axis=-1
    )


# F_d's (block conv, output conv) kernel initialisers per ``DetailGenerator.init_scheme``.
_GENERATOR_INITS = {
    "torch": (_torch_default_init, _torch_default_init),
    "he": (nn.initializers.variance_scaling(2.0 / (1.0 + 0.2**2), "fan_in", "uniform"), nn.initializers.zeros),
}
DETAIL_INIT_SCHEMES = tuple(_GENERATOR_INITS)  # the values ``DetailGenerator.init_scheme`` takes
# F_d's widths by name (DetailGenerator keyword arguments): "full" is DECA's (128 channels at 8x8,
# blocks 128, 64, 64, 32, 16: the module's defaults); "small" the same structure at a quarter of
# the widths (its forward + backward 3.4x cheaper).
DETAIL_GENERATOR_WIDTHS = {
    "full": {},
    "small": {"init_channels": 32, "block_channels": (32, 16, 16, 8, 8)},
}


class DetailGenerator(nn.Module):
    """DECA's detail decoder F_d (``models/decoders.py: Generator``).

    Linear(latent -> C0*S*S) reshaped channel-first to (C0, S, S) (torch ``view``), BN(eps 1e-5), then
    per block: bilinear x2 upsample (align_corners=False; ``jax.image.resize`` has the same half-pixel
    centres and edge clamping), Conv3x3 (pad 1, bias), BN(**eps 0.8**, the DCGAN quirk), LeakyReLU(0.2);
    finally Conv3x3 -> 1 channel, tanh, x ``out_scale``.

    Call: ``z`` (B, 181) from :func:`detail_latent` -> (B, 256, 256, 1) UV displacement in
    (-out_scale, out_scale). Torch names ``l1.0``, ``conv_blocks.{0,2,3,6,7,...,18,19,21}``.
    ``init_size``/``init_channels``/``block_channels`` exist for small test configurations.

    ``init_scheme`` (training from scratch only; converted weights replace every parameter):

    * ``"torch"`` (DECA's): every kernel U(±1/sqrt(fan_in)). With the eps-0.8 BatchNorms, which
      do not rescale activations whose variance is far below 0.8, each block shrinks the activations
      (std 1.0 after the first BN, 0.01 before the output conv), so D starts at ~3e-5 and the
      output layer's effective learning rate is ~100x below the nominal one.
    * ``"he"``: the block convs He-uniform for LeakyReLU(0.2) (variance 2 / (1.04 fan_in): the
      activations keep std ~1 through the blocks) and the output conv zero, so D = 0 exactly at
      initialisation and the first steps move it along the photometric gradient.
    """

    latent_dim: int = 181
    init_size: int = 8
    init_channels: int = 128
    block_channels: Sequence[int] = (128, 64, 64, 32, 16)
    out_channels: int = 1
    out_scale: float = 0.01
    dtype: Dtype | None = None
    init_scheme: str = "torch"

    @nn.compact
    def __call__(self, z, train: bool = False):
        if self.init_scheme not in DETAIL_INIT_SCHEMES:
            raise ValueError(f"DetailGenerator: init_scheme must be one of {sorted(DETAIL_INIT_SCHEMES)}, "
                             f"got {self.init_scheme!r}")
        block_init, out_init = _GENERATOR_INITS[self.init_scheme]
        z = jnp.asarray(z)
        if z.ndim != 2 or z.shape[-1] != self.latent_dim:
            raise ValueError(
                f"DetailGenerator: z must have shape (B, {self.latent_dim}) = [jaw 3, exp 50, detail 128], "
                f"got {z.shape}"
            )
        dt = _compute_dtype(self.dtype, z)
        c0, s = self.init_channels, self.init_size
        x = nn.Dense(
            c0 * s * s,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=_torch_default_init,
            name="l1_0",
        )(z.astype(dt))
        x = x.reshape(x.shape[0], c0, s, s).transpose(0, 2, 3, 1)  # torch .view(B, C, S, S) -> NHWC
        x = BatchNorm(1e-5, dtype=self.dtype, name="conv_blocks_0")(x, train)
        idx = 1
        for channels in self.block_channels:
            b, h, w, c = x.shape
            x = jax.image.resize(x, (b, 2 * h, 2 * w, c), method="bilinear", antialias=False)
            x = _conv(channels, 3, 1, 1, True, self.dtype, f"conv_blocks_{idx + 1}", block_init)(x)
            x = BatchNorm(0.8, dtype=self.dtype, name=f"conv_blocks_{idx + 2}")(x, train)
            x = nn.leaky_relu(x, 0.2)
            idx += 4
        x = _conv(self.out_channels, 3, 1, 1, True, self.dtype, f"conv_blocks_{idx}", out_init)(x)
        return jnp.tanh(x) * jnp.asarray(self.out_scale, x.dtype)


# ----------------------------------------------------------------------------------------------
# VGG-19 features for ID-MRF
# ----------------------------------------------------------------------------------------------

# torchvision vgg19 ``features``: conv widths per block; 'M' = MaxPool2d(2, 2).
_VGG19_CFG = (
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
)


def _vgg19_layers():
    """[(torch features index, kind, DECA name)] in order, with DECA's ``VGG19FeatLayer`` naming.

    DECA counts convs and ReLUs together inside a block, so its 'relu3_2' is the ReLU after conv3_1
    (``VGG19FeatLayer`` in ``decalib/utils/lossfunc.py``).
    """
    layers, idx, block, count = [], 0, 1, 0
    for item in _VGG19_CFG:
        if item == "M":
            layers.append((idx, "pool", f"pool_{block}", None))
            idx, block, count = idx + 1, block + 1, 0
        else:
            count += 1
            layers.append((idx, "conv", f"conv{block}_{count}", item))
            count += 1
            layers.append((idx + 1, "relu", f"relu{block}_{count}", None))
            idx += 2
    return tuple(layers)


_VGG19_LAYERS = _vgg19_layers()
VGG19_LAYER_NAMES = tuple(name for _, _, name, _ in _VGG19_LAYERS)


def imagenet_normalize(images):
    """(x - mean) / std with ImageNet's RGB mean/std, for images (..., 3) RGB in [0, 1] (``VGG19FeatLayer``)."""
    images = jnp.asarray(images)
    dt = jnp.promote_types(images.dtype, jnp.float32)
    mean = jnp.asarray(IMAGENET_MEAN, dt)
    std = jnp.asarray(IMAGENET_STD, dt)
    return (images.astype(dt) - mean) / std


class VGG19Features(nn.Module):
    """torchvision VGG-19 ``features`` up to the deepest requested layer (ID-MRF).

    Call: ``images`` (B, H, W, 3), already normalised with :func:`imagenet_normalize` -> dict
    ``{name: (B, h, w, C)}`` for ``layers``, named as DECA's ``VGG19FeatLayer`` does (counting convs
    and ReLUs together: the default 'relu3_2' / 'relu4_2' are the ReLUs after conv3_1 / conv4_1,
    torchvision indices 11 and 20). Conv params are named ``features_<index>`` after the torch keys.
    Frozen in DECA (eval; no BN in VGG-19).
    """

    layers: Sequence[str] = ("relu3_2", "relu4_2")
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, images):
        _check_images(images, "VGG19Features: images", size=None)
        unknown = [n for n in self.layers if n not in VGG19_LAYER_NAMES]
        if unknown:
            raise ValueError(f"VGG19Features: unknown layers {unknown}; known: {VGG19_LAYER_NAMES}")
        last = max(VGG19_LAYER_NAMES.index(n) for n in self.layers)
        x = jnp.asarray(images)
        x = x.astype(_compute_dtype(self.dtype, x))
        out = {}
        for index, kind, name, channels in _VGG19_LAYERS[: last + 1]:
            if kind == "conv":
                x = _conv(channels, 3, 1, 1, True, self.dtype, f"features_{index}", _torch_default_init)(x)
            elif kind == "relu":
                x = nn.relu(x)
            else:
                x = max_pool_torch(x, 2, 2)
            if name in self.layers:
                out[name] = x
        return out


def vggface2_preprocess(images):
    """DECA's identity-loss preprocessing for :class:`VGGFace2ResNet50` (``VGGFace2Loss``).

    ``images`` (B, 224, 224, 3) RGB in [0, 1] -> (B, 224, 224, 3): RGB -> BGR, x255, minus the mean
    (91.4953, 103.8827, 131.0912) in B,G,R order; crop 10 px per side (204x204); **x*2 - 1 on the
    mean-subtracted values** (DECA's quirk); bilinear resize to 224 (align_corners=False).
    """
    _check_images(images, "vggface2_preprocess: images")
    return identity_preprocess(jnp.asarray(images).astype(jnp.promote_types(jnp.asarray(images).dtype, jnp.float32)))


# ----------------------------------------------------------------------------------------------
# init helpers
# ----------------------------------------------------------------------------------------------


def _example_input(module: nn.Module, batch: int = 1):
    if isinstance(module, DetailGenerator):
        return jnp.zeros((batch, module.latent_dim), jnp.float32)
    if isinstance(module, VGG19Features):
        return jnp.zeros((batch, 32, 32, 3), jnp.float32)
    return jnp.zeros((batch, 224, 224, 3), jnp.float32)


def init_variables(module: nn.Module, rng=None, *, shapes_only: bool = False):
    """Initial variables ``{'params': ..., 'batch_stats': ...}`` of a module from this file.

    ``shapes_only=True`` returns ``jax.ShapeDtypeStruct`` leaves via ``jax.eval_shape`` (no compute:
    use it to check layouts of the full-size networks cheaply).
    """
    rng = jax.random.PRNGKey(0) if rng is None else rng
    x = _example_input(module)

    def init(key):
        return module.init(key, x)

    variables = jax.eval_shape(init, rng) if shapes_only else init(rng)
    return dict(variables)
