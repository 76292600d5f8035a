"""A small residual localiser for 3DMM-STN: more capacity than the small VGG at CPU cost.

Not in the original (its localiser is VGG-Face, :class:`jface.stn.Localiser`, which stays as it
is). This one is for training from scratch on generated faces on a CPU: a ResNet-style network
(He et al. 2016, "basic" blocks of two 3x3 convolutions) with GroupNorm instead of BatchNorm, so
it has no batch statistics to carry and behaves the same in training and evaluation.

Topology for ``widths = (w1, w2, w3, w4)`` and ``blocks = (b1, ..., b4)`` at input H x W:

* input raw 0-255 RGB ``(B, H, W, 3)``, scaled to [-1, 1] (x / 127.5 - 1);
* stem: 3x3 conv stride 2 (w1 channels) + GroupNorm + ReLU -> H/2;
* stage k: b_k basic blocks of width w_k; the first block of stages 2-4 has stride 2 (with a
  1x1 stride-2 projection on the shortcut) -> H/4, H/8, H/16 after stages 2, 3, 4; the last
  GroupNorm of every block starts at scale 0, so every block starts as the identity;
* the final (H/16, W/16, w4) map flattened (not averaged: where the face is matters to theta),
  dense ``fc_dim`` + ReLU, and the theta layer ``fc_dim -> 6 + D`` with the
  original's initialisation (``dagnn_3dmmasstn_init.m``: weights randn sqrt(2 / fc_dim) 1e-3,
  biases 0 except t = ``translation_init``), computed in float32.

The module has the interface :func:`jface.stn.predict_theta` uses: ``config.input_hw`` and
``apply({"params": p}, images) -> theta (B, 6 + D)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jface.stn.localiser import check_images, theta_bias_init, theta_kernel_init

__all__ = ["ResNetLocaliserConfig", "ResNetLocaliser"]


@dataclasses.dataclass(frozen=True)
class ResNetLocaliserConfig:
    """Static configuration of :class:`ResNetLocaliser` (hashable).

    ``widths`` / ``blocks``: channels and basic blocks of the four stages; ``fc_dim``: the hidden
    dense layer; ``num_coeffs``: D; ``input_hw``: input size (a multiple of 16);
    ``translation_init``: the theta layer's t bias (the input's centre); ``theta_init_scale``: 1e-3
    as the original's theta layer; ``groups``: GroupNorm groups (fewer where a stage is narrower);
    ``input_norm``: how pixels enter (:func:`normalise_input`).
    """

    widths: Sequence[int] = (16, 32, 64, 128)
    blocks: Sequence[int] = (1, 1, 1, 1)
    fc_dim: int = 128
    num_coeffs: int = 10
    input_hw: tuple = (128, 128)
    translation_init: tuple = (64.0, 64.0)
    theta_init_scale: float = 1e-3
    groups: int = 8
    input_norm: str = "fixed"

    @classmethod
    def small(cls, num_coeffs: int = 10, input_hw=(128, 128), width: int = 16,
              input_norm: str = "fixed") -> ResNetLocaliserConfig:
        """Stages of ``width`` x (1, 2, 4, 8) channels, one block each, hidden layer 8 ``width``."""
        input_hw = tuple(int(v) for v in input_hw)
        if len(input_hw) != 2 or input_hw[0] % 16 or input_hw[1] % 16 or min(input_hw) < 16:
            raise ValueError(f"input_hw: expected two multiples of 16 (>= 16), got {input_hw}")
        if int(width) < 1:
            raise ValueError(f"width: expected >= 1, got {width}")
        _check_norm(input_norm)
        width = int(width)
        return cls(widths=(width, 2 * width, 4 * width, 8 * width), blocks=(1, 1, 1, 1), fc_dim=8 * width,
                   num_coeffs=num_coeffs, input_hw=input_hw,
                   translation_init=(input_hw[1] / 2.0, input_hw[0] / 2.0), input_norm=input_norm)

    @property
    def num_outputs(self) -> int:
        return 6 + self.num_coeffs


INPUT_NORMS = ("fixed", "image", "grey")


def _check_norm(mode: str) -> None:
    if mode not in INPUT_NORMS:
        raise ValueError(f"input_norm: expected one of {', '.join(INPUT_NORMS)}, got {mode!r}")


def normalise_input(images, mode: str = "fixed"):
    """``images (B, H, W, 3)`` raw 0-255 -> the network's input, float32: ``"fixed"`` x / 127.5 - 1;
    ``"image"`` each image's channels standardised over its pixels (blind to a photo's exposure,
    contrast and colour cast); ``"grey"`` each image's luminance (ITU-R 601 weights) standardised
    and repeated in the 3 channels (blind to colour as well)."""
    _check_norm(mode)
    x = images.astype(jnp.float32)
    if mode == "fixed":
        return x / 127.5 - 1.0
    if mode == "grey":  # one channel standardised, then repeated
        x = (x @ jnp.asarray([0.299, 0.587, 0.114], jnp.float32))[..., None]
    mean = x.mean(axis=(1, 2), keepdims=True)
    std = jnp.sqrt(jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True))
    out = (x - mean) / (std + 1.0)  # + 1 (of 255): a flat image stays finite
    return jnp.broadcast_to(out, images.shape) if mode == "grey" else out


def _norm(channels: int, groups: int, dtype, name: str, zero: bool = False):
    count = max(1, min(groups, channels // 4 if channels >= 4 else 1))
    while channels % count:
        count -= 1
    return nn.GroupNorm(num_groups=count, dtype=dtype, param_dtype=jnp.float32, name=name,
                        scale_init=nn.initializers.zeros if zero else nn.initializers.ones)


class _Block(nn.Module):
    width: int
    stride: int
    groups: int
    dtype: Any

    @nn.compact
    def __call__(self, x):
        conv = lambda w, k, s, name: nn.Conv(w, (k, k), strides=(s, s), padding="SAME", use_bias=False,  # noqa: E731
                                             dtype=self.dtype, param_dtype=jnp.float32, name=name)
        y = nn.relu(_norm(self.width, self.groups, self.dtype, "norm1")(conv(self.width, 3, self.stride, "conv1")(x)))
        y = _norm(self.width, self.groups, self.dtype, "norm2", zero=True)(conv(self.width, 3, 1, "conv2")(y))
        if self.stride != 1 or x.shape[-1] != self.width:
            x = _norm(self.width, self.groups, self.dtype, "proj_norm")(conv(self.width, 1, self.stride, "proj")(x))
        return nn.relu(x + y)


class ResNetLocaliser(nn.Module):
    """``images (B, H, W, 3)`` raw 0-255 -> ``theta (B, 6 + D)`` float32 (see the module docstring).

    ``dtype`` is the backbone's compute dtype; parameters are float32 and the theta layer always
    computes in float32.
    """

    config: ResNetLocaliserConfig = ResNetLocaliserConfig()
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images, *, return_features: bool = False):
        cfg = self.config
        images = check_images(images, cfg.input_hw, "ResNetLocaliserConfig")
        x = normalise_input(images, cfg.input_norm).astype(self.dtype)
        x = nn.Conv(cfg.widths[0], (3, 3), strides=(2, 2), padding="SAME", use_bias=False, dtype=self.dtype,
                    param_dtype=jnp.float32, name="stem")(x)
        x = nn.relu(_norm(cfg.widths[0], cfg.groups, self.dtype, "stem_norm")(x))
        for stage, (width, count) in enumerate(zip(cfg.widths, cfg.blocks)):
            for i in range(count):
                stride = 2 if stage > 0 and i == 0 else 1
                x = _Block(width, stride, cfg.groups, self.dtype, name=f"stage{stage + 1}_{i + 1}")(x)
        x = x.reshape(x.shape[0], -1)
        features = nn.relu(nn.Dense(cfg.fc_dim, dtype=self.dtype, param_dtype=jnp.float32, name="fc")(x))
        theta = nn.Dense(cfg.num_outputs, dtype=jnp.float32, param_dtype=jnp.float32,
                         kernel_init=theta_kernel_init(cfg), bias_init=theta_bias_init(cfg),
                         name="theta")(features.astype(jnp.float32))
        if return_features:
            return theta, features
        return theta
