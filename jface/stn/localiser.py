"""The 3DMM-STN localiser: VGG-Face (VGG-16 topology) through relu7 plus the theta layer
(``dagnn_3dmmasstn_init.m``).

Topology (MatConvNet ``vgg-face.mat`` names): 5 blocks of 3x3 conv (pad 1) + ReLU with
(2, 2, 3, 3, 3) convs of (64, 128, 256, 512, 512) channels, each block followed by a 2x2/2 max-pool;
``fc6`` a 7x7 VALID conv on the 7x7x512 map (a dense layer) + ReLU; ``fc7`` 4096 -> 4096 + ReLU;
``theta`` 4096 -> 6 + D. Input: raw 0-255 RGB ``(B, H, W, 3)``, no mean subtraction
(``dagnn_3dmmasstn.m``'s batch function passes the images unchanged).

The theta layer is initialised as in ``dagnn_3dmmasstn_init.m``: weights randn * sqrt(2/4096) *
1e-3 (``xavier`` x 0.001), biases 0 except t = (112, 112) (positions 4 and 5, 1-based), so at
initialisation r ~ 0, t = image centre, logs ~ 0 (s ~ 1), alpha ~ 0.

``LocaliserConfig.small()`` keeps the structure with fewer channels and a smaller input for CPU runs.
``dtype=jnp.bfloat16`` computes the backbone in bf16 with float32 parameters; the theta layer always
computes in float32 (t ~ 112 needs more than bf16's 8 bits).

:func:`load_vggface_mat` converts MatConvNet weights (a user-supplied ``vgg-face.mat``) to params.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jface.errors import ModelFileError
from jface.files.weights import load_variables, save_variables

__all__ = [
    "LocaliserConfig",
    "Localiser",
    "init_localiser",
    "check_images",
    "theta_bias_init",
    "load_vggface_mat",
    "read_vggface_mat",
    "convert_matconvnet",
    "vggface_layer_names",
]


@dataclasses.dataclass(frozen=True)
class LocaliserConfig:
    """Static configuration of the localiser (hashable; a field of the Flax module).

    ``channels``/``convs_per_block``: the conv blocks; ``fc_dim``: width of fc6/fc7;
    ``num_coeffs``: D (theta has 6 + D outputs); ``input_hw``: the input size (the fc6 kernel is
    input_hw / 32); ``translation_init``: the t bias (the original's 112, 112);
    ``theta_init_scale``: 1e-3 in the original.
    """

    channels: Sequence[int] = (64, 128, 256, 512, 512)
    convs_per_block: Sequence[int] = (2, 2, 3, 3, 3)
    fc_dim: int = 4096
    num_coeffs: int = 10
    input_hw: tuple = (224, 224)
    translation_init: tuple = (112.0, 112.0)
    theta_init_scale: float = 1e-3

    @classmethod
    def vgg_face(cls, num_coeffs: int = 10) -> LocaliserConfig:
        """The original: VGG-Face through relu7, 224x224 input, 16 outputs for D = 10."""
        return cls(num_coeffs=num_coeffs)

    @classmethod
    def small(cls, num_coeffs: int = 10, input_hw=(64, 64), width: int = 4) -> LocaliserConfig:
        """Same structure (13 convs, 5 pools, fc6, fc7, theta) with few channels, for CPU runs."""
        return cls(
            channels=(width, 2 * width, 4 * width, 8 * width, 8 * width),
            fc_dim=16 * width,
            num_coeffs=num_coeffs,
            input_hw=tuple(input_hw),
            translation_init=(input_hw[1] / 2.0, input_hw[0] / 2.0),
        )

    @property
    def num_outputs(self) -> int:
        return 6 + self.num_coeffs

    @property
    def fc6_kernel(self) -> tuple:
        return (self.input_hw[0] // 32, self.input_hw[1] // 32)


def vggface_layer_names(config: LocaliserConfig) -> list:
    """Parameterised layer names in order: conv1_1 ... conv5_3, fc6, fc7 (MatConvNet names)."""
    names = []
    for block, count in enumerate(config.convs_per_block, start=1):
        names += [f"conv{block}_{i}" for i in range(1, count + 1)]
    return names + ["fc6", "fc7"]


def check_images(images, input_hw, config_name: str):
    """``images`` as an array, checked to be ``(B, *input_hw, 3)`` (raw 0-255 RGB) for a localiser
    whose config class is ``config_name``."""
    images = jnp.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or tuple(images.shape[1:3]) != tuple(input_hw):
        raise ValueError(f"images: expected (B, {input_hw[0]}, {input_hw[1]}, 3) raw 0-255 RGB "
                         f"({config_name}.input_hw), got shape {images.shape}")
    return images


def theta_bias_init(config: LocaliserConfig):
    """Bias initialiser of the theta layer: zeros except t = ``config.translation_init``."""

    def init(key, shape, dtype=jnp.float32):
        del key
        bias = jnp.zeros(shape, dtype)
        return bias.at[3:5].set(jnp.asarray(config.translation_init, dtype))

    return init


def theta_kernel_init(config: LocaliserConfig):
    """``xavier(1, 1, fc_dim, 6 + D) * 1e-3``: randn * sqrt(2 / fc_dim) * 1e-3."""

    def init(key, shape, dtype=jnp.float32):
        std = np.sqrt(2.0 / shape[0]) * config.theta_init_scale
        return (jax.random.normal(key, shape, dtype) * std).astype(dtype)

    return init


class Localiser(nn.Module):
    """VGG-Face localiser: ``images (B, H, W, 3)`` raw 0-255 -> ``theta (B, 6 + D)`` float32.

    theta = [r (3), t (2), logs (1), alpha (D)] (``vl_nnsplit``). ``dtype`` is the backbone's compute
    dtype (e.g. ``jnp.bfloat16``); parameters are always float32.
    """

    config: LocaliserConfig = LocaliserConfig()
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images, *, return_features: bool = False):
        cfg = self.config
        images = check_images(images, cfg.input_hw, "LocaliserConfig")
        x = images.astype(self.dtype)
        for block, (width, count) in enumerate(zip(cfg.channels, cfg.convs_per_block), start=1):
            for i in range(1, count + 1):
                x = nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                            param_dtype=jnp.float32, name=f"conv{block}_{i}")(x)
                x = nn.relu(x)
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.Conv(cfg.fc_dim, cfg.fc6_kernel, padding="VALID", dtype=self.dtype,
                    param_dtype=jnp.float32, name="fc6")(x)
        x = nn.relu(x).reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(cfg.fc_dim, dtype=self.dtype, param_dtype=jnp.float32, name="fc7")(x))
        features = x
        theta = nn.Dense(
            cfg.num_outputs,
            dtype=jnp.float32,
            param_dtype=jnp.float32,
            kernel_init=theta_kernel_init(cfg),
            bias_init=theta_bias_init(cfg),
            name="theta",
        )(x.astype(jnp.float32))
        if return_features:
            return theta, features
        return theta


def init_localiser(key: Any, config: LocaliserConfig | None = None, *, dtype: Any = jnp.float32
                   ) -> tuple[Localiser, dict]:
    """``(Localiser, params)`` initialised like the original (``dagnn_3dmmasstn_init.m``), without
    compiling anything.

    ``key``: a ``jax.random`` key or an int seed (it seeds a numpy generator). Backbone weights are
    ``xavier``: randn * sqrt(2 / (h w c_in)) (``vedaldi/practical-cnn-reg/xavier.m``), biases 0;
    the theta layer gets randn * sqrt(2 / fc_dim) * 1e-3 and biases 0 except t =
    ``config.translation_init``. (Flax's ``module.init`` also works, with Flax's default
    initialisers for the backbone; it compiles the random number generator, which is slow on CPU.)
    Replace the backbone with :func:`load_vggface_mat` for the pretrained VGG-Face.
    """
    config = LocaliserConfig() if config is None else config
    module = Localiser(config=config, dtype=dtype)
    dummy = jax.ShapeDtypeStruct((1,) + tuple(config.input_hw) + (3,), jnp.float32)
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), dummy)["params"]
    if isinstance(key, (int, np.integer)):
        seed = int(key)
    else:
        if not hasattr(key, "dtype"):
            key = np.asarray(key)
        if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
            key = jax.random.key_data(key)
        seed = [int(v) for v in np.asarray(key).ravel()]
    rng = np.random.default_rng(seed)
    params = {}
    for name, leaf in shapes.items():
        kernel_shape = leaf["kernel"].shape
        fan_in = int(np.prod(kernel_shape[:-1]))
        std = np.sqrt(2.0 / fan_in) * (config.theta_init_scale if name == "theta" else 1.0)
        bias = np.zeros(leaf["bias"].shape, np.float32)
        if name == "theta":
            bias[3:5] = config.translation_init
        params[name] = {
            "kernel": jnp.asarray((rng.standard_normal(kernel_shape) * std).astype(np.float32)),
            "bias": jnp.asarray(bias),
        }
    return module, params


def _field(obj, name, path):
    if isinstance(obj, dict):
        if name in obj:
            return obj[name]
    elif hasattr(obj, name):
        return getattr(obj, name)
    raise ModelFileError(path, f"a MatConvNet layer struct has no field {name!r}")


def _matlab_str(value):
    if isinstance(value, np.ndarray):
        value = value.squeeze()
        if value.dtype.kind in "US":
            return str(value.item()) if value.ndim == 0 else "".join(value.tolist())
    return str(value)


def _backbone_shapes(config: LocaliserConfig) -> dict:
    module = Localiser(config=config)
    dummy = jax.ShapeDtypeStruct((1,) + tuple(config.input_hw) + (3,), jnp.float32)
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), dummy)["params"]
    return {name: tuple(shapes[name]["kernel"].shape) for name in vggface_layer_names(config)}


def read_vggface_mat(path, config: LocaliserConfig | None = None) -> dict:
    """Read the backbone of a MatConvNet ``vgg-face.mat`` (SimpleNN layout) as Flax arrays.

    The file holds ``layers`` (a cell of structs with ``name``, ``type`` and ``weights`` = {filters,
    biases}), at the top level or inside a ``net`` struct. Conv filters are H x W x Cin x Cout, which
    is Flax's HWIO (MatConvNet's conv is a cross-correlation, like Flax's); fc6 is a 7x7x512x4096
    conv and stays one; fc7 (1x1x4096x4096) becomes a dense kernel. Layers after relu7 (fc8, prob)
    are ignored. ``config=None`` infers the topology (blocks, widths, fc6 kernel) from the file.
    Returns ``{conv1_1 ... fc7: {"kernel", "bias"}}`` float32 numpy arrays; raises
    :class:`~jface.errors.ModelFileError` naming the file and layer on any mismatch.
    """
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=False)
    except Exception as err:  # scipy raises MatReadError, ValueError, OSError, ...
        raise ModelFileError(path, f"cannot read as a MATLAB .mat file ({err})") from err
    layers = mat.get("layers")
    if layers is None and "net" in mat:
        layers = getattr(mat["net"], "layers", None)
    if layers is None:
        raise ModelFileError(path, "expected a MatConvNet SimpleNN net with a 'layers' cell")
    by_name = {}
    for i, layer in enumerate(np.atleast_1d(layers)):
        by_name[_matlab_str(_field(layer, "name", f"{path}: layers{{{i + 1}}}"))] = layer
    if config is None:
        config = _infer_config(by_name, path)
    out = {}
    for name, expected in _backbone_shapes(config).items():
        if name not in by_name:
            raise ModelFileError(path, f"layer {name!r} not found (have {sorted(by_name)})", field=name)
        weights = np.atleast_1d(_field(by_name[name], "weights", f"{path}: layer {name}"))
        if weights.shape[0] < 2:
            raise ModelFileError(path, "expected weights = {filters, biases}", field=name)
        filters = np.asarray(weights[0], np.float32)
        biases = np.asarray(weights[1], np.float32).reshape(-1)
        # squeeze_me drops MATLAB's singleton dimensions (fc7 is 1x1x4096x4096): compare squeezed.
        if np.squeeze(filters).shape != tuple(d for d in expected if d != 1) or biases.shape != (
            expected[-1],
        ):
            raise ModelFileError(
                path,
                f"filters {filters.shape} / biases {biases.shape} do not match the localiser config "
                f"(expected {expected} / ({expected[-1]},))",
                field=name,
            )
        out[name] = {"kernel": filters.reshape(expected), "bias": biases}
    return out


def _infer_config(by_name, path) -> LocaliserConfig:
    blocks = {}
    for name in by_name:
        match = re.fullmatch(r"conv(\d+)_(\d+)", name)
        if match:
            blocks.setdefault(int(match.group(1)), []).append(int(match.group(2)))
    if sorted(blocks) != [1, 2, 3, 4, 5] or "fc6" not in by_name or "fc7" not in by_name:
        raise ModelFileError(path, f"expected VGG layers conv1_* ... conv5_*, fc6, fc7; have {sorted(by_name)}")

    def filters(name):
        weights = np.atleast_1d(_field(by_name[name], "weights", f"{path}: layer {name}"))
        return np.asarray(weights[0])

    counts = tuple(len(blocks[b]) for b in range(1, 6))
    channels = tuple(int(filters(f"conv{b}_{counts[b - 1]}").shape[-1]) for b in range(1, 6))
    fc6 = filters("fc6")
    kernel = fc6.shape[:2] if fc6.ndim == 4 else (1, 1)
    fc_dim = int(filters("fc7").shape[-1])
    input_hw = (32 * int(kernel[0]), 32 * int(kernel[1]))
    return LocaliserConfig(channels=channels, convs_per_block=counts, fc_dim=fc_dim, input_hw=input_hw,
                           translation_init=(input_hw[1] / 2.0, input_hw[0] / 2.0))


def convert_matconvnet(src, dst, config: LocaliserConfig | None = None) -> str:
    """``vgg-face.mat`` -> the project's weight npz (kind ``"vggface-matconvnet"``, backbone only).

    Used by ``python -m jface.weights convert vggface-matconvnet vgg-face.mat -o vggface.npz``;
    :func:`load_vggface_mat` reads either file. ``config=None`` infers the topology from the file.
    """
    backbone = read_vggface_mat(src, config)
    save_variables(dst, backbone, kind="vggface-matconvnet", source=str(src))
    count = sum(v.size for layer in backbone.values() for v in layer.values())
    return f"converted {src} -> {dst} (vggface-matconvnet: {len(backbone)} layers, {count} values)"


def load_vggface_mat(path, config: LocaliserConfig | None = None, *, params: dict | None = None,
                     key: Any = None) -> dict:
    """Localiser params with the VGG-Face backbone from ``path`` (MatConvNet's ``vgg-face.mat``).

    ``path``: MatConvNet ``vgg-face.mat`` (:func:`read_vggface_mat`) or the ``.npz`` written by
    :func:`convert_matconvnet`. The theta layer is not in the file: it comes from ``params`` if
    given, else the original initialisation (:func:`init_localiser` with ``key``, default 0).
    """
    config = LocaliserConfig() if config is None else config
    if str(path).endswith(".npz"):
        backbone = load_variables(path, kind="vggface-matconvnet")
        for name, expected in _backbone_shapes(config).items():
            got = tuple(np.shape(backbone.get(name, {}).get("kernel", ())))
            if got != expected:
                raise ModelFileError(path, f"kernel {got}, expected {expected}", field=name)
    else:
        backbone = read_vggface_mat(path, config)
    if params is None:
        _, params = init_localiser(0 if key is None else key, config)
    params = dict(params)
    for name, layer in backbone.items():
        params[name] = {"kernel": jnp.asarray(layer["kernel"]), "bias": jnp.asarray(layer["bias"])}
    return params
