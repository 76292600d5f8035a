"""DECA's released weights -> Flax variables for the networks of :mod:`jface.deca.networks`.

Each converter reads the release with the torch-free readers of :mod:`jface.files` and maps its
state dicts with :func:`jface.files.weights.convert_state_dict`; ``python -m jface.weights
convert ...`` writes the result with :func:`jface.files.weights.save_variables`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from jface.deca.networks import (
    VGG19_LAYER_NAMES,
    DetailGenerator,
    ResNetEncoder,
    VGG19Features,
    VGGFace2ResNet50,
    init_variables,
)
from jface.errors import WeightConversionError
from jface.files.pickles import load_numpy_pickle
from jface.files.torch_save import load_torch_file
from jface.files.weights import as_state_dict, convert_state_dict

__all__ = ["deca_modules", "convert_deca", "convert_vggface2", "convert_vgg19", "subset_vgg19"]


def deca_modules():
    """The three networks of ``deca_model.tar``: ``E_flame``, ``E_detail``, ``D_detail``."""
    return {"E_flame": ResNetEncoder(236), "E_detail": ResNetEncoder(128),
            "D_detail": DetailGenerator()}


def convert_deca(src, *, modules=None) -> dict:
    """DECA's ``deca_model.tar`` (torch.save zip of ``{'E_flame', 'E_detail', 'D_detail', ...}``).

    Returns ``{'E_flame': variables, 'E_detail': variables, 'D_detail': variables}`` for
    ``ResNetEncoder(236)``, ``ResNetEncoder(128)`` and ``DetailGenerator()``. Extra top-level
    entries of training checkpoints (``opt``, ``global_step``, ``batch_size``) are ignored.
    ``modules`` overrides the three modules (small test configurations).
    """
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
        sd = as_state_dict(checkpoint[group], src, group)
        template = init_variables(module, shapes_only=True)
        out[group] = convert_state_dict(sd, template, source=f"{src} [{group}]")
    return out


def convert_vggface2(src, *, module=None) -> dict:
    """cydonia999's ``resnet50_ft_weight.pkl`` (pickle of name -> numpy array) -> VGGFace2ResNet50
    variables.

    The classifier ``fc.*`` (8631 classes) is dropped: DECA uses ``include_top=False``.
    A torch.save file with the same keys is accepted as well.
    """
    module = VGGFace2ResNet50() if module is None else module
    with open(src, "rb") as f:
        head = f.read(2)
    weights = load_torch_file(src) if head == b"PK" else load_numpy_pickle(src)
    sd = as_state_dict(weights, src, "VGGFace2 weights")
    template = init_variables(module, shapes_only=True)
    return convert_state_dict(sd, template, source=src, ignore=lambda k: k.startswith("fc."))


def convert_vgg19(src, *, module=None) -> dict:
    """torchvision VGG-19 weights (``features.N.weight/bias``; ``classifier.*`` dropped) ->
    VGG19Features params.

    Accepts the full model state dict (e.g. ``vgg19-dcbb9e9d.pth``, zip or legacy layout) or the
    ``features`` state dict alone (keys ``N.weight``). All 16 convs are converted; a
    ``VGG19Features(layers=...)`` with fewer layers uses the leading ones and Flax ignores the rest
    (:func:`subset_vgg19` trims them).
    """
    module = VGG19Features(layers=(VGG19_LAYER_NAMES[-1],)) if module is None else module
    sd = as_state_dict(load_torch_file(src), src, "VGG-19 weights")
    if all(k.split(".", 1)[0].isdigit() for k in sd):
        sd = {f"features.{k}": v for k, v in sd.items()}
    template = init_variables(module, shapes_only=True)
    return convert_state_dict(sd, template, source=src, ignore=lambda k: k.startswith("classifier."))


def subset_vgg19(variables, layers: Iterable[str]) -> dict:
    """Keep only the convs ``VGG19Features(layers)`` uses (Flax ignores extras; this keeps trees
    small)."""
    template = init_variables(VGG19Features(layers=tuple(layers)), shapes_only=True)
    names = set(template["params"])
    return {"params": {k: v for k, v in variables["params"].items() if k in names}}
