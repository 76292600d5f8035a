"""Torch state dicts -> Flax variables for the networks of :mod:`jface.deca.networks`.

Name mapping (mechanical, the Flax modules mirror the torch module paths):
* module path: ``nn.Sequential`` indices are fused onto their parent, ``encoder.layer1.0.downsample.0``
  -> ``('encoder', 'layer1_0', 'downsample_0')``;
* ``weight`` -> ``params/.../kernel`` (conv OIHW -> HWIO, linear (out, in) -> (in, out)) for conv / dense
  modules, ``params/.../scale`` for BatchNorm; ``bias`` -> ``params/.../bias``;
* ``running_mean`` / ``running_var`` -> ``batch_stats/.../mean`` / ``var``; ``num_batches_tracked``
  is dropped (torch's BN uses it only when ``momentum=None``).

Every key of the state dict must find its place and every Flax leaf must be filled, with equal shapes;
otherwise :class:`WeightConversionError` lists all unexpected keys, missing leaves and shape mismatches.

The project's weight files (``.npz``): one entry per leaf, keyed ``<group>/<collection>/<module path>/
<leaf>`` (e.g. ``E_flame/params/encoder/conv1/kernel``), plus ``__jface_weights__`` (JSON metadata:
format version, kind, source file name). :func:`save_variables` / :func:`load_variables`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable, Mapping

import jax
import numpy as np

from jface.models.errors import ModelFileError

__all__ = [
    "WeightConversionError",
    "torch_module_path",
    "convert_state_dict",
    "strip_prefix",
    "convert_deca",
    "convert_vggface2",
    "convert_vgg19",
    "save_variables",
    "load_variables",
    "subset_vgg19",
    "deca_modules",
    "FORMAT_VERSION",
]

FORMAT_VERSION = 1
_META_KEY = "__jface_weights__"


class WeightConversionError(ModelFileError):
    """A state dict does not fit the Flax module: lists unexpected keys, missing leaves, bad shapes."""


def torch_module_path(module_path: str) -> tuple[str, ...]:
    """``'encoder.layer1.0.downsample.0'`` -> ``('encoder', 'layer1_0', 'downsample_0')``."""
    out: list[str] = []
    for part in module_path.split("."):
        if part.isdigit() and out:
            out[-1] = f"{out[-1]}_{part}"
        else:
            out.append(part)
    return tuple(out)


def strip_prefix(state_dict: Mapping, prefix: str = "module.") -> dict:
    """Drop a prefix (DataParallel's ``module.``) if every key carries it."""
    if state_dict and all(isinstance(k, str) and k.startswith(prefix) for k in state_dict):
        return {k[len(prefix) :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def _flatten(tree, prefix=()):
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def _unflatten(flat):
    tree: dict = {}
    for path, v in flat.items():
        node = tree
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = v
    return tree


def convert_state_dict(
    state_dict: Mapping,
    template,
    *,
    source="state_dict",
    ignore: Callable[[str], bool] | None = None,
) -> dict:
    """Map a torch state dict onto a Flax variables template.

    Args:
      state_dict: torch name -> numpy array (from :func:`jface.weights.load_torch_file` or a numpy pickle).
      template: Flax variables (arrays or ``jax.ShapeDtypeStruct``), e.g.
        ``init_variables(module, shapes_only=True)``; only shapes and structure are used.
      source: a name for error messages (file / group).
      ignore: predicate for keys to skip silently (e.g. a classifier head the module lacks).

    Returns:
      ``{'params': ..., 'batch_stats': ...}`` (collections as in the template), float32 numpy leaves.
    """
    expected = _flatten(dict(template))
    filled: dict = {}
    unexpected, mismatched, seen = [], [], set()
    for key, value in state_dict.items():
        if not isinstance(key, str):
            unexpected.append(repr(key))
            continue
        if key.endswith("num_batches_tracked") or (ignore is not None and ignore(key)):
            continue
        if "." not in key:
            unexpected.append(key)
            continue
        module, leaf = key.rsplit(".", 1)
        mpath = torch_module_path(module)
        target, transform = None, None
        if leaf == "weight":
            if ("params", *mpath, "kernel") in expected:
                target = ("params", *mpath, "kernel")
                transform = "kernel"
            elif ("params", *mpath, "scale") in expected:
                target = ("params", *mpath, "scale")
        elif leaf == "bias":
            target = ("params", *mpath, "bias")
        elif leaf == "running_mean":
            target = ("batch_stats", *mpath, "mean")
        elif leaf == "running_var":
            target = ("batch_stats", *mpath, "var")
        if target is None or target not in expected:
            unexpected.append(key)
            continue
        array = np.asarray(value)
        if transform == "kernel":
            if array.ndim == 4:  # conv OIHW -> HWIO
                array = array.transpose(2, 3, 1, 0)
            elif array.ndim == 2:  # linear (out, in) -> (in, out)
                array = array.T
        want = tuple(expected[target].shape)
        seen.add(target)
        if array.shape != want:
            mismatched.append(
                f"{key}: {tuple(np.shape(value))} -> {array.shape}, expected {want} at {'/'.join(target)}"
            )
            continue
        if not np.issubdtype(array.dtype, np.floating):
            mismatched.append(f"{key}: dtype {array.dtype} is not floating point")
            continue
        filled[target] = np.array(array, dtype=np.float32, order="C", copy=True)  # never alias the source
    missing = ["/".join(p) for p in expected if p not in seen]
    if unexpected or missing or mismatched:
        parts = []
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {', '.join(unexpected)}")
        if missing:
            parts.append(f"{len(missing)} missing leaf/leaves: {', '.join(missing)}")
        if mismatched:
            parts.append(f"{len(mismatched)} shape/dtype mismatch(es): {'; '.join(mismatched)}")
        raise WeightConversionError(source, " | ".join(parts))
    return _unflatten(filled)


def _as_state_dict(obj, path, what: str) -> dict:
    if not isinstance(obj, Mapping) or not obj:
        raise WeightConversionError(
            path, f"{what}: expected a non-empty state dict (name -> tensor), got {type(obj).__name__}"
        )
    return strip_prefix(obj)


# ---------------------------------------------------------------------------------------------
# The four kinds
# ---------------------------------------------------------------------------------------------


def deca_modules():
    from jface.deca.networks import DetailGenerator, ResNetEncoder

    return {"E_flame": ResNetEncoder(236), "E_detail": ResNetEncoder(128), "D_detail": DetailGenerator()}


def convert_deca(src, *, modules=None) -> dict:
    """DECA's ``deca_model.tar`` (torch.save zip of ``{'E_flame', 'E_detail', 'D_detail', ...}``).

    Returns ``{'E_flame': variables, 'E_detail': variables, 'D_detail': variables}`` for
    ``ResNetEncoder(236)``, ``ResNetEncoder(128)`` and ``DetailGenerator()``. Extra top-level entries
    of training checkpoints (``opt``, ``global_step``, ``batch_size``) are ignored. ``modules``
    overrides the three modules (small test configurations).
    """
    from jface.deca.networks import init_variables
    from jface.weights.torch_archive import load_torch_file

    modules = deca_modules() if modules is None else modules
    checkpoint = load_torch_file(src)
    if not isinstance(checkpoint, Mapping):
        raise WeightConversionError(
            src, f"expected a dict with {sorted(modules)}, got {type(checkpoint).__name__}"
        )
    absent = [g for g in modules if g not in checkpoint]
    if absent:
        raise WeightConversionError(
            src, f"missing state dict(s) {absent}; the file has keys {sorted(map(str, checkpoint))}"
        )
    out = {}
    for group, module in modules.items():
        sd = _as_state_dict(checkpoint[group], src, group)
        template = init_variables(module, shapes_only=True)
        out[group] = convert_state_dict(sd, template, source=f"{src} [{group}]")
    return out


def convert_vggface2(src, *, module=None) -> dict:
    """cydonia999's ``resnet50_ft_weight.pkl`` (pickle of name -> numpy array) -> VGGFace2ResNet50 variables.

    The classifier ``fc.*`` (8631 classes) is dropped: DECA uses ``include_top=False``.
    A torch.save file with the same keys is accepted as well.
    """
    from jface.deca.networks import VGGFace2ResNet50, init_variables
    from jface.weights.numpy_pickle import load_numpy_pickle
    from jface.weights.torch_archive import load_torch_file

    module = VGGFace2ResNet50() if module is None else module
    with open(src, "rb") as f:
        head = f.read(2)
    weights = load_torch_file(src) if head == b"PK" else load_numpy_pickle(src)
    sd = _as_state_dict(weights, src, "VGGFace2 weights")
    template = init_variables(module, shapes_only=True)
    return convert_state_dict(sd, template, source=src, ignore=lambda k: k.startswith("fc."))


def convert_vgg19(src, *, module=None) -> dict:
    """torchvision VGG-19 weights (``features.N.weight/bias``; ``classifier.*`` dropped) -> VGG19Features params.

    Accepts the full model state dict (e.g. ``vgg19-dcbb9e9d.pth``, zip or legacy layout) or the
    ``features`` state dict alone (keys ``N.weight``). All 16 convs are converted; a
    ``VGG19Features(layers=...)`` with fewer layers uses the leading ones and Flax ignores the rest
    (:func:`subset_vgg19` trims them).
    """
    from jface.deca.networks import VGG19_LAYER_NAMES, VGG19Features, init_variables
    from jface.weights.torch_archive import load_torch_file

    module = VGG19Features(layers=(VGG19_LAYER_NAMES[-1],)) if module is None else module
    sd = _as_state_dict(load_torch_file(src), src, "VGG-19 weights")
    if all(k.split(".", 1)[0].isdigit() for k in sd):
        sd = {f"features.{k}": v for k, v in sd.items()}
    template = init_variables(module, shapes_only=True)
    return convert_state_dict(sd, template, source=src, ignore=lambda k: k.startswith("classifier."))


def subset_vgg19(variables, layers: Iterable[str]) -> dict:
    """Keep only the convs ``VGG19Features(layers)`` uses (Flax ignores extras; this keeps trees small)."""
    from jface.deca.networks import VGG19Features, init_variables

    template = init_variables(VGG19Features(layers=tuple(layers)), shapes_only=True)
    names = set(template["params"])
    return {"params": {k: v for k, v in variables["params"].items() if k in names}}


# ---------------------------------------------------------------------------------------------
# Project weight files
# ---------------------------------------------------------------------------------------------


def save_variables(path, tree: Mapping, *, kind: str, source: str | None = None) -> Path:
    """Write a nested dict of arrays to ``path`` (.npz, uncompressed) in the project's weight format."""
    path = Path(path)
    flat = {"/".join(k): np.asarray(v) for k, v in _flatten(dict(jax.device_get(tree))).items()}
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "source": None if source is None else Path(source).name,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, **flat, **{_META_KEY: np.array(json.dumps(meta))})
    return path


def load_variables(path, *, kind: str | None = None, with_meta: bool = False):
    """Read a file written by :func:`save_variables` -> nested dict of numpy arrays.

    ``kind`` checks the recorded kind ('deca', 'vggface2', 'vgg19'). ``with_meta=True`` returns
    ``(tree, metadata)``.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(
            path, "weight file not found (create it with `python -m jface.weights convert ...`)"
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            if _META_KEY not in z.files:
                raise ModelFileError(path, f"not a jface weight file (no {_META_KEY} entry)")
            meta = json.loads(str(z[_META_KEY]))
            flat = {tuple(k.split("/")): z[k] for k in z.files if k != _META_KEY}
    except (OSError, ValueError) as e:
        raise ModelFileError(path, f"unreadable weight file ({e})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            path, f"weight format version {meta.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    if kind is not None and meta.get("kind") != kind:
        raise ModelFileError(path, f"weights are of kind {meta.get('kind')!r}, expected {kind!r}")
    tree = _unflatten(flat)
    return (tree, meta) if with_meta else tree
