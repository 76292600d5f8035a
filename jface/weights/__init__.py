"""Weight converters for the released torch / Caffe / MatConvNet weights (``jface.weights``).

Nothing here imports torch or executes pickled code: :func:`load_torch_file` reads ``torch.save``
archives with an allow-listed unpickler, :func:`load_numpy_pickle` reads pickles of numpy arrays.

Command line::

    python -m jface.weights convert deca deca_model.tar -o weights/deca.npz
    python -m jface.weights convert vggface2 resnet50_ft_weight.pkl -o weights/vggface2.npz
    python -m jface.weights convert vgg19 vgg19-dcbb9e9d.pth -o weights/vgg19.npz
    python -m jface.weights convert vggface-matconvnet vgg-face.mat -o weights/localiser.npz

Load the result with :func:`load_variables` and pass the subtrees to the Flax modules of
:mod:`jface.deca.networks`, e.g. ``ResNetEncoder(236).apply(w['E_flame'], images)``.
"""

from jface.weights.convert import (
    FORMAT_VERSION,
    WeightConversionError,
    convert_deca,
    convert_state_dict,
    convert_vgg19,
    convert_vggface2,
    load_variables,
    save_variables,
    strip_prefix,
    subset_vgg19,
    torch_module_path,
)
from jface.weights.numpy_pickle import load_numpy_pickle
from jface.weights.torch_archive import is_torch_zip, load_torch_file

__all__ = [
    "FORMAT_VERSION",
    "WeightConversionError",
    "convert_deca",
    "convert_state_dict",
    "convert_vgg19",
    "convert_vggface2",
    "load_variables",
    "save_variables",
    "strip_prefix",
    "subset_vgg19",
    "torch_module_path",
    "load_numpy_pickle",
    "load_torch_file",
    "is_torch_zip",
]
