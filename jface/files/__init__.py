"""File formats, below the face models: readers that know file layouts but not what the arrays mean.

* :mod:`jface.files.paths`: path checks, whole-file reads, the limits on file size and on what a
  file may expand to (:class:`~jface.files.paths.ExpansionBudget`);
* :mod:`jface.files.checks`: field checks (presence, dtype, shape, finiteness, triangle indices);
* :mod:`jface.files.pickles`: the one restricted unpickler (numpy arrays, chumpy / scipy.sparse
  stand-ins, torch tensors), nothing outside its allow-list ever imported or run;
* :mod:`jface.files.torch_save`: ``torch.save`` zip / legacy files and nested storages, no torch;
* :mod:`jface.files.npy` / :mod:`jface.files.npz`: ``.npy`` headers and bounded ``.npz`` reading,
  and the project's npz container (arrays + JSON metadata, atomic writes);
* :mod:`jface.files.mat`: MATLAB ``.mat`` files, parsed in a child process with bounded memory;
* :mod:`jface.files.obj`: Wavefront OBJ with separate UV indices;
* :mod:`jface.files.weights`: the project's weight npz and the torch state dict -> Flax mapping.

Every error is a :class:`~jface.errors.ModelFileError` naming the file (and field).
"""

from jface.files.checks import ModelArrays
from jface.files.mat import load_mat
from jface.files.npz import read_npz
from jface.files.obj import load_obj
from jface.files.paths import read_file_bytes
from jface.files.pickles import load_numpy_pickle, safe_loads
from jface.files.torch_save import load_torch_file
from jface.files.weights import convert_state_dict, load_variables, save_variables

__all__ = [
    "ModelArrays",
    "load_mat",
    "read_npz",
    "load_obj",
    "read_file_bytes",
    "load_numpy_pickle",
    "safe_loads",
    "load_torch_file",
    "convert_state_dict",
    "load_variables",
    "save_variables",
]
