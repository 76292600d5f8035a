"""Field checks shared by the readers and loaders: presence, dtype kind, shape, finiteness and
triangle index ranges, each failing with a :class:`~jface.errors.ModelFileError` that names the
file, the field and what was expected."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jface.errors import ModelFileError

__all__ = ["ModelArrays", "require", "checked_array", "vector", "faces_from", "shape_error"]


class ModelArrays(dict):
    """A dict of arrays that also allows attribute access (``bfm.mean`` == ``bfm["mean"]``)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self):
        parts = []
        for k, v in self.items():
            if isinstance(v, np.ndarray):
                parts.append(f"{k}={v.dtype}{list(v.shape)}")
            else:
                parts.append(f"{k}={v!r}")
        return "ModelArrays(" + ", ".join(parts) + ")"


def require(fields: Mapping, name: str, path, what: str = "") -> Any:
    """``fields[name]``, or an error listing the fields the file does have."""
    if name not in fields:
        present = sorted(k for k in fields if not str(k).startswith("__"))
        raise ModelFileError(
            path,
            f"missing field {name!r}{' (' + what + ')' if what else ''}; the file has {present}",
            field=name,
        )
    return fields[name]


def checked_array(value, path, field, *, kinds="f", ndim=None) -> np.ndarray:
    """``value`` as an ndarray of dtype kind in ``kinds`` ('f' float, 'i'/'u' integer, 'b');
    floating arrays must be finite."""
    if not isinstance(value, np.ndarray):
        raise ModelFileError(path, f"expected an array, got {type(value).__name__}", field)
    if value.dtype.kind not in kinds:
        names = {"f": "floating", "i": "signed integer", "u": "unsigned integer", "b": "bool"}
        want = " or ".join(names[k] for k in kinds)
        raise ModelFileError(path, f"expected a {want} array, got dtype {value.dtype}", field)
    if ndim is not None and value.ndim != ndim:
        raise ModelFileError(
            path, f"expected a {ndim}-D array, got shape {value.shape}", field
        )
    if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
        raise ModelFileError(path, "contains NaN or infinite values", field)
    return value


def shape_error(path, field, expected, got):
    raise ModelFileError(path, f"expected shape {expected}, got {tuple(got)}", field)


def vector(value, path, field, *, kinds="f", length=None) -> np.ndarray:
    """A vector stored as (K,), (K, 1) or (1, K) (MATLAB keeps everything 2-D)."""
    value = checked_array(value, path, field, kinds=kinds)
    if value.ndim == 2 and 1 in value.shape:
        value = value.reshape(-1)
    if value.ndim != 1:
        shape_error(path, field, "(K,) or a (K, 1) / (1, K) column", value.shape)
    if length is not None and value.shape[0] != length:
        shape_error(path, field, f"({length},)", value.shape)
    return value


def faces_from(value, path, field, *, n_vertices, base) -> np.ndarray:
    """Integer-valued ``(F, 3)`` triangle list in ``base`` (0 or 1) -> int32 0-based."""
    value = checked_array(value, path, field, kinds="fiu", ndim=2)
    if value.shape[1] != 3 or value.shape[0] == 0:
        shape_error(path, field, "(F, 3) triangles", value.shape)
    if value.dtype.kind == "f" and np.any(value != np.round(value)):
        raise ModelFileError(path, "triangle indices are not integers", field)
    faces = value.astype(np.int64) - base
    lo, hi = faces.min(), faces.max()
    if lo < 0 or hi >= n_vertices:
        raise ModelFileError(
            path,
            f"{base}-based triangle indices must lie in [{base}, {n_vertices - 1 + base}] "
            f"({n_vertices} vertices), got [{lo + base}, {hi + base}]",
            field,
        )
    return faces.astype(np.int32)
