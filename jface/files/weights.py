"""The project's weight files and the mapping of torch state dicts onto Flax variables.

Weight files (``.npz``, uncompressed): one entry per leaf, keyed ``<group>/<collection>/<module
path>/<leaf>`` (e.g. ``E_flame/params/encoder/conv1/kernel``), plus ``__jface_weights__`` (JSON
metadata: format version, kind, source file name). :func:`save_variables` /
:func:`load_variables`; ``python -m jface.weights convert ...`` writes them.

State-dict mapping (:func:`convert_state_dict`; mechanical, since the Flax modules mirror the
torch module paths):

* module path: ``nn.Sequential`` indices are fused onto their parent,
  ``encoder.layer1.0.downsample.0`` -> ``('encoder', 'layer1_0', 'downsample_0')``;
* ``weight`` -> ``params/.../kernel`` (conv OIHW -> HWIO, linear (out, in) -> (in, out)) for conv /
  dense modules, ``params/.../scale`` for BatchNorm; ``bias`` -> ``params/.../bias``;
* ``running_mean`` / ``running_var`` -> ``batch_stats/.../mean`` / ``var``; ``num_batches_tracked``
  is dropped (torch's BN uses it only when ``momentum=None``).

Every key of the state dict must find its place and every Flax leaf must be filled, with equal
shapes; otherwise :class:`~jface.errors.WeightConversionError` lists all unexpected keys, missing
leaves and shape mismatches.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from jface.errors import ModelFileError, WeightConversionError
from jface.files.npz import npz_member_names, read_npz

__all__ = [
    "FORMAT_VERSION",
    "META_KEY",
    "torch_module_path",
    "strip_prefix",
    "flatten_tree",
    "unflatten_tree",
    "convert_state_dict",
    "as_state_dict",
    "save_variables",
    "load_variables",
]

FORMAT_VERSION = 1
META_KEY = "__jface_weights__"


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


def flatten_tree(tree, prefix=()) -> dict:
    """Nested mappings -> ``{(key, ...): leaf}``."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(flatten_tree(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def unflatten_tree(flat) -> dict:
    """``{(key, ...): leaf}`` -> nested dicts."""
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
      state_dict: torch name -> numpy array (from :func:`jface.files.torch_save.load_torch_file`
        or a numpy pickle).
      template: Flax variables (arrays or ``jax.ShapeDtypeStruct``), e.g.
        ``init_variables(module, shapes_only=True)``; only shapes and structure are used.
      source: a name for error messages (file / group).
      ignore: predicate for keys to skip silently (e.g. a classifier head the module lacks).

    Returns:
      ``{'params': ..., 'batch_stats': ...}`` (collections as in the template), float32 numpy leaves.
    """
    expected = flatten_tree(dict(template))
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
                f"{key}: {tuple(np.shape(value))} -> {array.shape}, expected {want} at "
                f"{'/'.join(target)}"
            )
            continue
        if not np.issubdtype(array.dtype, np.floating):
            mismatched.append(f"{key}: dtype {array.dtype} is not floating point")
            continue
        # never alias the source
        filled[target] = np.array(array, dtype=np.float32, order="C", copy=True)
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
    return unflatten_tree(filled)


def as_state_dict(obj, path, what: str) -> dict:
    """``obj`` as a non-empty state dict (``module.`` prefixes dropped), or an error naming
    ``path`` and ``what``."""
    if not isinstance(obj, Mapping) or not obj:
        raise WeightConversionError(
            path, f"{what}: expected a non-empty state dict (name -> tensor), got "
            f"{type(obj).__name__}"
        )
    return strip_prefix(obj)


def save_variables(path, tree: Mapping, *, kind: str, source: str | None = None) -> Path:
    """Write a nested dict of arrays (numpy or jax) to ``path`` (.npz, uncompressed) in the
    project's weight format."""
    path = Path(path)
    flat = {"/".join(k): np.asarray(v) for k, v in flatten_tree(dict(tree)).items()}
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "source": None if source is None else Path(source).name,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, **flat, **{META_KEY: np.array(json.dumps(meta))})
    return path


def load_variables(path, *, kind: str | None = None, with_meta: bool = False):
    """Read a file written by :func:`save_variables` -> nested dict of numpy arrays.

    ``kind`` checks the recorded kind ('deca', 'vggface2', 'vgg19', 'vggface-matconvnet').
    ``with_meta=True`` returns ``(tree, metadata)``. Members are read with their declared sizes
    checked first (:func:`jface.files.npz.read_npz`).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(
            path, "weight file not found (create it with `python -m jface.weights convert ...`)"
        )
    if META_KEY not in npz_member_names(path):
        raise ModelFileError(path, f"not a jface weight file (no {META_KEY} entry)")
    arrays = read_npz(path, what="weight file")
    raw = arrays.pop(META_KEY)
    try:
        meta = json.loads(str(raw))
        if not isinstance(meta, dict):
            raise ValueError("metadata is not a JSON object")
    except ValueError as e:
        raise ModelFileError(path, f"unreadable weight file ({e})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            path, f"weight format version {meta.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    if kind is not None and meta.get("kind") != kind:
        raise ModelFileError(path, f"weights are of kind {meta.get('kind')!r}, expected {kind!r}")
    tree = unflatten_tree({tuple(k.split("/")): v for k, v in arrays.items()})
    return (tree, meta) if with_meta else tree
