"""Wavefront OBJ meshes with texture coordinates (e.g. DECA's ``head_template.obj``)."""

from __future__ import annotations

import math

import numpy as np

from jface.errors import ModelFileError
from jface.files.checks import ModelArrays
from jface.files.paths import read_file_bytes

__all__ = ["load_obj"]


def _finite(parts, what):
    values = [float(p) for p in parts]
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{what} has a NaN or infinite value")
    return values


def load_obj(path) -> ModelArrays:
    """A Wavefront OBJ with texture coordinates (DECA's ``head_template.obj``, read by
    ``decalib/utils/util.py`` ``load_obj``).

    Returns :class:`~jface.files.checks.ModelArrays`: ``vertices (V, 3)`` float64,
    ``uv_coords (T, 2)`` float64 (``vt``; v up), ``faces (F, 3)`` int32 and ``uv_faces (F, 3)``
    int32 (``ft``), both **0-based** (the file is 1-based; negative, relative indices are
    resolved). Polygons are fan-triangulated. ``uv_coords``/``uv_faces`` are None when the file has
    no ``vt``. A NaN or infinite ``v`` / ``vt`` / ``vn`` value is an error naming its line.

    The text is parsed here rather than with ``trimesh``: trimesh keeps one UV per vertex (with
    ``process=False``) or splits vertices at UV seams, so the separate ``ft`` indices of the 95 seam
    vertices, which DECA's UV rasterisation needs, cannot be recovered from it.
    """
    data = read_file_bytes(path)
    if b"\x00" in data:
        raise ModelFileError(path, "not a text OBJ file (contains NUL bytes)")
    text = data.decode("utf-8", errors="replace")
    verts, uvs, faces, uv_faces = [], [], [], []
    any_face_without_uv = False
    for lineno, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        tag = parts[0]
        try:
            if tag == "v":
                if len(parts) < 4:
                    raise ValueError("a vertex needs x y z")
                verts.append(_finite(parts[1:4], "the vertex"))
            elif tag == "vt":
                if len(parts) < 3:
                    raise ValueError("a texture coordinate needs u v")
                uvs.append(_finite(parts[1:3], "the texture coordinate"))
            elif tag == "vn":
                if len(parts) < 4:
                    raise ValueError("a normal needs x y z")
                _finite(parts[1:4], "the normal")  # checked, not kept
            elif tag == "f":
                corners = parts[1:]
                if len(corners) < 3:
                    raise ValueError("a face needs at least 3 corners")
                vi, ti = [], []
                for corner in corners:
                    fields = corner.split("/")
                    vi.append(_obj_index(fields[0], len(verts)))
                    if len(fields) > 1 and fields[1]:
                        ti.append(_obj_index(fields[1], len(uvs)))
                if ti and len(ti) != len(vi):
                    raise ValueError("some corners have a texture index and some do not")
                if not ti:
                    any_face_without_uv = True
                for k in range(1, len(vi) - 1):
                    faces.append([vi[0], vi[k], vi[k + 1]])
                    if ti:
                        uv_faces.append([ti[0], ti[k], ti[k + 1]])
        except ValueError as exc:
            raise ModelFileError(path, f"line {lineno}: {exc}: {line.strip()[:60]!r}") from None
    if not verts:
        raise ModelFileError(path, "no vertices ('v' lines): not an OBJ mesh")
    if not faces:
        raise ModelFileError(path, "no faces ('f' lines)")
    vertices = np.asarray(verts, dtype=np.float64)
    out = ModelArrays(vertices=vertices, faces=np.asarray(faces, dtype=np.int32),
                      uv_coords=None, uv_faces=None, source=str(path))
    if uv_faces:
        if any_face_without_uv:
            raise ModelFileError(path, "some faces have texture indices and others do not", "f")
        out["uv_coords"] = np.asarray(uvs, dtype=np.float64)
        out["uv_faces"] = np.asarray(uv_faces, dtype=np.int32)
    return out


def _obj_index(token: str, count: int) -> int:
    """1-based (or negative, relative) OBJ index -> 0-based, checked against ``count`` so far."""
    value = int(token)
    if value > 0:
        index = value - 1
    elif value < 0:
        index = count + value
    else:
        raise ValueError("index 0 (OBJ indices are 1-based)")
    if not 0 <= index < count:
        raise ValueError(f"index {value} refers to an element not defined yet ({count} so far)")
    return index
