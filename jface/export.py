"""Exports that open in common tools: meshes (OBJ + MTL + PNG, PLY), images, cameras, FLAME params.

Host-side numpy helpers used by ``python -m jface.reconstruct`` and ``python -m jface.flatten``.

Frames (BUILD_NOTES.md, Frames and conventions; DECA's ``batch_orth_proj``, ``SRenderY``):

* **FLAME world** (metres): x to the subject's left, y up, +z towards the camera. Meshes are
  written in this frame.
* **DECA NDC** (``trans_verts``): x_ndc = s (X + t_x), y_ndc = -s (Y + t_y), z_ndc = -s Z
  (translate, then scale; y and z flipped: y down, smaller z = closer).
* **pixels** of a W x H render: col = (x_ndc + 1) W / 2 - 0.5, row = (y_ndc + 1) H / 2 - 0.5.
* **UV images**: row 0 is v = 1 (as stored on disk; OBJ ``vt`` keeps v up); UV NDC is
  (2u - 1, 1 - 2v).

Mesh files: the coarse OBJ keeps FLAME's vertex order (``v`` one per FLAME vertex, ``vt`` one per
UV vertex, faces ``v/vt``), as DECA's ``save_obj``. trimesh loads it with its texture; pass
``maintain_order=True`` (and ``process=False``) to keep FLAME's vertex order, otherwise trimesh
splits vertices on UV seams. PLY files are written by trimesh (binary) with optional vertex colours.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from jface.deca.detail import generate_dense_triangles
from jface.render import layout_fragments

__all__ = [
    "FLAME_SHAPE_DIM",
    "FLAME_EXPRESSION_DIM",
    "pad_flame_parameters",
    "deca_camera_matrix",
    "opengl_projection",
    "ndc_to_pixel_matrix",
    "apply_matrix",
    "camera_record",
    "to_uint8",
    "save_png",
    "write_obj",
    "write_ply",
    "UVPixelTable",
    "uv_pixel_table",
    "upsample_mesh",
    "save_json",
]

FLAME_SHAPE_DIM = 300  # FLAME 2020's full shape space (DECA uses the leading 100)
FLAME_EXPRESSION_DIM = 100  # and the leading 50 of 100 expression components


# ------------------------------------------------------------------------------------------------
# FLAME parameters and cameras


def _vector(value, name, size=None):
    arr = np.asarray(value, np.float64)
    if arr.ndim != 1 or (size is not None and arr.shape[0] != size):
        want = f"({size},)" if size is not None else "a vector"
        raise ValueError(f"{name}: expected {want}, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains NaN or Inf")
    return arr


def _pad(arr, size, name):
    if arr.shape[0] > size:
        raise ValueError(f"{name}: has {arr.shape[0]} components, more than FLAME's {size}")
    return np.concatenate([arr, np.zeros(size - arr.shape[0])])


def pad_flame_parameters(shape, expression, pose, *, shape_dim=FLAME_SHAPE_DIM,
                         expression_dim=FLAME_EXPRESSION_DIM):
    """DECA's codes -> the full FLAME 2020 parameter layout (``decalib/models/FLAME.py``), per item.

    ``shape (<=300,)`` and ``expression (<=100,)`` are the leading components of FLAME's spaces and
    are zero-padded; ``pose (6,)`` = [global axis-angle, jaw axis-angle] is split. Neck and eye
    poses, which DECA always keeps at zero, are returned as zeros. ``full_pose (15,)`` is FLAME's
    [global, neck, jaw, left eye, right eye] axis-angle order. Returns a dict of float64 arrays.
    """
    shape = _pad(_vector(shape, "shape"), shape_dim, "shape")
    expression = _pad(_vector(expression, "expression"), expression_dim, "expression")
    pose = _vector(pose, "pose", 6)
    global_pose, jaw_pose = pose[:3], pose[3:]
    neck_pose = np.zeros(3)
    eye_pose = np.zeros(6)
    return {
        "shape": shape,
        "expression": expression,
        "global_pose": global_pose,
        "jaw_pose": jaw_pose,
        "neck_pose": neck_pose,
        "eye_pose": eye_pose,
        "full_pose": np.concatenate([global_pose, neck_pose, jaw_pose, eye_pose]),
    }


def deca_camera_matrix(cam):
    """4 x 4 matrix P of DECA's camera with the y/z flip (``batch_orth_proj`` and ``DECA.decode``).

    ``cam (3,)`` = (s, t_x, t_y). For FLAME world points X, ``P @ [X; 1]`` is exactly DECA's
    ``trans_verts`` = (s (X + t_x), -s (Y + t_y), -s Z, 1)::

        [[ s,  0,  0,  s t_x],
         [ 0, -s,  0, -s t_y],
         [ 0,  0, -s,  0    ],
         [ 0,  0,  0,  1    ]]

    The camera is orthographic (w stays 1; no perspective divide), the view matrix is the identity
    (the global head rotation is inside FLAME's pose), and NDC y points down.
    """
    s, tx, ty = _vector(cam, "cam", 3)
    return np.array(
        [[s, 0.0, 0.0, s * tx], [0.0, -s, 0.0, -s * ty], [0.0, 0.0, -s, 0.0], [0.0, 0.0, 0.0, 1.0]]
    )


def opengl_projection(cam):
    """The same camera as an OpenGL projection matrix (NDC y **up**), with an identity view matrix.

    OpenGL's eye space looks down -z with +z towards the viewer, which is FLAME's world frame, and
    OpenGL NDC has x right, y up and smaller z closer. So P_gl = diag(1, -1, 1, 1) @
    :func:`deca_camera_matrix`, i.e. ``glOrtho`` with scale s and translation s t: x_gl = s (X + t_x),
    y_gl = s (Y + t_y), z_gl = -s Z. Points with |s Z| > 1 fall outside OpenGL's clip volume.
    """
    return np.diag([1.0, -1.0, 1.0, 1.0]) @ deca_camera_matrix(cam)


def ndc_to_pixel_matrix(image_hw):
    """3 x 3 map from DECA NDC (x, y, 1) to 0-based pixel centres (col, row, 1) (``StandardRasterizer``):
    col = (x + 1) W / 2 - 0.5, row = (y + 1) H / 2 - 0.5."""
    height, width = (int(v) for v in image_hw)
    return np.array(
        [[width / 2.0, 0.0, width / 2.0 - 0.5], [0.0, height / 2.0, height / 2.0 - 0.5], [0.0, 0.0, 1.0]]
    )


def apply_matrix(matrix, points):
    """Homogeneous ``matrix (D+1, D+1)`` applied to row-major ``points (N, D)`` -> ``(N, D)``."""
    matrix = np.asarray(matrix, np.float64)
    points = np.asarray(points, np.float64)
    homogeneous = np.concatenate([points, np.ones(points.shape[:-1] + (1,))], axis=-1)
    out = homogeneous @ matrix.T
    return out[..., :-1] / out[..., -1:]


def camera_record(cam, image_hw=(224, 224)):
    """JSON-ready description of DECA's orthographic camera (:func:`deca_camera_matrix`)."""
    s, tx, ty = (float(v) for v in _vector(cam, "cam", 3))
    return {
        "type": "orthographic",
        "cam": [s, tx, ty],
        "convention": (
            "trans_verts = P @ [X, Y, Z, 1] with P = deca_ndc_matrix: x = s(X + tx), y = -s(Y + ty) "
            "(y down), z = -s Z (smaller = closer); X in FLAME world metres (x subject's left, y up, "
            "+z to camera); view matrix = identity (head rotation is FLAME's global pose); "
            "opengl_projection = diag(1, -1, 1, 1) @ P (y up); pixel = ndc_to_pixel @ [x, y, 1]"
        ),
        "deca_ndc_matrix": deca_camera_matrix(cam).tolist(),
        "opengl_projection": opengl_projection(cam).tolist(),
        "view_matrix": np.eye(4).tolist(),
        "image_hw": [int(image_hw[0]), int(image_hw[1])],
        "ndc_to_pixel": ndc_to_pixel_matrix(image_hw).tolist(),
    }


def save_json(path, record):
    """Write a dict (numpy arrays become lists) as indented JSON."""

    def default(obj):
        if isinstance(obj, np.ndarray):
            return obj.tolist()
        if isinstance(obj, np.generic):
            return obj.item()
        raise TypeError(f"not JSON serialisable: {type(obj).__name__}")

    Path(path).write_text(json.dumps(record, indent=1, default=default))
    return Path(path)


# ------------------------------------------------------------------------------------------------
# Images


def to_uint8(image, value_range=(0.0, 1.0)):
    """Float image in ``value_range`` -> uint8 (clipped, rounded); NaN -> 0."""
    lo, hi = value_range
    arr = (np.nan_to_num(np.asarray(image, np.float64)) - lo) / (hi - lo)
    return np.clip(np.round(arr * 255.0), 0, 255).astype(np.uint8)


def save_png(path, image, value_range=(0.0, 1.0)):
    """``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` float image in ``value_range`` (or uint8) -> PNG."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ValueError(f"image: expected (H, W), (H, W, 1) or (H, W, 3), got shape {np.shape(image)}")
    if arr.dtype != np.uint8:
        arr = to_uint8(arr, value_range)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


# ------------------------------------------------------------------------------------------------
# Meshes


def _check_mesh(vertices, faces):
    vertices = np.asarray(vertices, np.float64)
    faces = np.asarray(faces)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices: expected (V, 3), got shape {vertices.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3 or not np.issubdtype(faces.dtype, np.integer):
        raise ValueError(f"faces: expected (F, 3) integer indices, got {faces.dtype} {faces.shape}")
    if faces.size and (faces.min() < 0 or faces.max() >= vertices.shape[0]):
        raise ValueError(f"faces: indices must lie in [0, {vertices.shape[0]}), got [{faces.min()}, {faces.max()}]")
    return vertices, faces.astype(np.int64)


def write_obj(path, vertices, faces, *, uv_coords=None, uv_faces=None, texture=None, normal_map=None,
              vertex_colors=None, material_name="material_0"):
    """Wavefront OBJ (+ MTL + PNG textures when ``texture`` is given), DECA's ``save_obj`` layout.

    ``vertices (V, 3)`` world, ``faces (F, 3)`` 0-based; ``uv_coords (T, 2)`` in [0, 1] (v up) with
    ``uv_faces (F, 3)``; ``texture (Hu, Wu, 3)`` float in [0, 1] (row 0 = v = 1) is written as
    ``<stem>.png`` and referenced by ``map_Kd`` in ``<stem>.mtl``; ``normal_map`` (unit vectors,
    written as n/2 + 1/2 to ``<stem>_normals.png``) is referenced as ``disp`` as DECA does;
    ``vertex_colors (V, 3)`` in [0, 1] are appended to the ``v`` lines (a common OBJ extension that
    trimesh reads). Returns the list of written paths.
    """
    vertices, faces = _check_mesh(vertices, faces)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stem = path.stem
    written = [path]
    lines = []
    has_uv = uv_coords is not None
    if has_uv:
        uv_coords = np.asarray(uv_coords, np.float64)
        uv_faces = np.asarray(uv_faces, np.int64)
        if uv_coords.ndim != 2 or uv_coords.shape[1] != 2:
            raise ValueError(f"uv_coords: expected (T, 2), got shape {uv_coords.shape}")
        if uv_faces.shape != faces.shape:
            raise ValueError(f"uv_faces: expected shape {faces.shape}, got {uv_faces.shape}")
    if texture is not None:
        if not has_uv:
            raise ValueError("texture: needs uv_coords and uv_faces")
        mtl = path.with_suffix(".mtl")
        save_png(path.with_name(stem + ".png"), texture)
        written.append(path.with_name(stem + ".png"))
        mtl_lines = [f"newmtl {material_name}", "Ka 1.0 1.0 1.0", "Kd 1.0 1.0 1.0", "Ks 0.0 0.0 0.0",
                     "d 1.0", "illum 1", f"map_Kd {stem}.png"]
        if normal_map is not None:
            save_png(path.with_name(stem + "_normals.png"), np.asarray(normal_map) * 0.5 + 0.5)
            written.append(path.with_name(stem + "_normals.png"))
            mtl_lines.append(f"disp {stem}_normals.png")
        mtl.write_text("\n".join(mtl_lines) + "\n")
        written.append(mtl)
        lines += [f"mtllib {mtl.name}"]
    if vertex_colors is not None:
        colors = np.asarray(vertex_colors, np.float64)
        if colors.shape != vertices.shape:
            raise ValueError(f"vertex_colors: expected {vertices.shape}, got {colors.shape}")
        lines += [f"v {a:.8g} {b:.8g} {c:.8g} {r:.6g} {g:.6g} {bl:.6g}"
                  for (a, b, c), (r, g, bl) in zip(vertices, np.clip(colors, 0, 1))]
    else:
        lines += [f"v {a:.8g} {b:.8g} {c:.8g}" for a, b, c in vertices]
    if has_uv:
        lines += [f"vt {u:.8g} {v:.8g}" for u, v in uv_coords]
    if texture is not None:
        lines.append(f"usemtl {material_name}")
    if has_uv:
        f1, t1 = faces + 1, uv_faces + 1
        lines += [f"f {a}/{ta} {b}/{tb} {c}/{tc}" for (a, b, c), (ta, tb, tc) in zip(f1, t1)]
    else:
        lines += [f"f {a} {b} {c}" for a, b, c in faces + 1]
    path.write_text("\n".join(lines) + "\n")
    return written


def write_ply(path, vertices, faces, *, vertex_colors=None):
    """Binary PLY via trimesh (``process=False``: vertex order kept); ``vertex_colors (V, 3)`` in [0, 1]."""
    import trimesh

    vertices, faces = _check_mesh(vertices, faces)
    colors = None
    if vertex_colors is not None:
        colors = to_uint8(vertex_colors)
        if colors.shape != vertices.shape:
            raise ValueError(f"vertex_colors: expected {vertices.shape}, got {colors.shape}")
        colors = np.concatenate([colors, np.full((len(colors), 1), 255, np.uint8)], axis=1)
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, vertex_colors=colors, process=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(trimesh.exchange.ply.export_ply(mesh, encoding="binary"))
    return [path]


# ------------------------------------------------------------------------------------------------
# Dense (detailed) mesh from UV pixels (DECA's ``util.upsample_mesh``)


class UVPixelTable:
    """Every valid UV pixel -> (coarse face, barycentrics): DECA's ``texture_data_256.npy``.

    ``rows, cols (P,)`` int: the valid pixels of the ``uv_hw`` UV image (row 0 = v = 1);
    ``face (P,)``: the coarse mesh face covering it; ``bary (P, 3)``: the barycentrics of its
    corners; ``dense_faces (T, 3)``: triangles over the P pixel-vertices (DECA's grid triangles,
    ``util.generate_triangles``, kept where all three corners are valid, reindexed to 0..P-1).
    """

    def __init__(self, rows, cols, face, bary, dense_faces, uv_hw):
        self.rows, self.cols, self.face, self.bary = rows, cols, face, bary
        self.dense_faces = dense_faces
        self.uv_hw = tuple(uv_hw)

    @property
    def num_pixels(self):
        return int(self.rows.shape[0])


def uv_pixel_table(uv_coords, uv_faces, uv_hw=(256, 256), mask=None):
    """Rasterise the UV layout (the :func:`jface.render.world2uv` machinery) into a :class:`UVPixelTable`.

    ``uv_coords (T, 2)`` in [0, 1] (v up), ``uv_faces (F, 3)``; pixel centres follow the renderer
    (``SRenderY.world2uv``): the UV layout is rasterised as the mesh (2u - 1, 1 - 2v, 1). ``mask``
    ``(Hu, Wu)`` (e.g. the face/eye mask) restricts the valid pixels to mask > 0.5.
    """
    height, width = (int(v) for v in uv_hw)
    # the same (cached) rasterization of the layout that jface.reconstruct's programs take
    fragments = layout_fragments(np.asarray(uv_coords, np.float32), np.asarray(uv_faces, np.int32), (height, width))
    face_index = np.asarray(fragments.face_index)
    bary = np.asarray(fragments.bary, np.float64)
    valid = face_index >= 0
    if mask is not None:
        mask = np.asarray(mask, np.float64)
        if mask.ndim == 3:
            mask = mask[..., 0]
        if mask.shape != (height, width):
            raise ValueError(f"mask: expected ({height}, {width}), got shape {mask.shape}")
        valid &= mask > 0.5
    rows, cols = np.nonzero(valid)
    index_of = np.full(height * width, -1, np.int64)
    index_of[rows * width + cols] = np.arange(rows.shape[0])
    grid = np.asarray(generate_dense_triangles(height, width), np.int64)
    dense = index_of[grid]
    dense = dense[np.all(dense >= 0, axis=1)]
    return UVPixelTable(rows, cols, face_index[rows, cols].astype(np.int64), bary[rows, cols], dense, (height, width))


def upsample_mesh(vertices, faces, table: UVPixelTable, displacement_map, texture=None):
    """DECA's ``util.upsample_mesh``: the detailed mesh of a coarse mesh and a displacement map.

    Every valid UV pixel p becomes a vertex: the barycentric point of its face on the coarse mesh
    plus ``displacement_map[p]`` times the renormalised, barycentrically interpolated coarse vertex
    normal (area-weighted normals, as ``util.vertex_normals``). ``vertices (V, 3)`` world, ``faces (F, 3)``,
    ``displacement_map (Hu, Wu)`` or ``(Hu, Wu, 1)`` in world units, ``texture (Hu, Wu, 3)``
    optional vertex colours. Returns ``(dense_vertices (P, 3), dense_faces (T, 3), colors (P, 3) or None)``.
    """
    vertices, faces = _check_mesh(vertices, faces)
    disp = np.asarray(displacement_map, np.float64)
    if disp.ndim == 3:
        disp = disp[..., 0]
    if disp.shape != table.uv_hw:
        raise ValueError(f"displacement_map: expected {table.uv_hw}, got shape {disp.shape}")
    v0, v1, v2 = (vertices[faces[:, k]] for k in range(3))
    face_normals = np.cross(v1 - v0, v2 - v0)  # area-weighted, as util.vertex_normals
    normals = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(normals, faces[:, k], face_normals)
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-6)
    corners = faces[table.face]  # (P, 3)
    points = np.einsum("pk,pkc->pc", table.bary, vertices[corners])
    pixel_normals = np.einsum("pk,pkc->pc", table.bary, normals[corners])
    pixel_normals /= np.maximum(np.linalg.norm(pixel_normals, axis=1, keepdims=True), 1e-6)
    dense_vertices = points + disp[table.rows, table.cols][:, None] * pixel_normals
    colors = None
    if texture is not None:
        colors = np.asarray(texture, np.float64)[table.rows, table.cols, :3]
    return dense_vertices, table.dense_faces, colors
