"""3DMM-STN layers as pure per-item functions (``layer/vl_nn*.m``); batch them with ``jax.vmap``.

Frames (BUILD_NOTES.md, "Frames and conventions"):

* **model frame**: BFM axes, x to the subject's left (image right for a frontal face), y up, z
  towards the camera, millimetres.
* **224-pixel frame** (the original's ``x42``): u = s x' + t1 is the 1-based column, v = s y' + t2
  points **up**: v = H + 1 - (1-based row), H = 224. Landmark labels use this frame.
* **grid / texel layout**: vertex k (0-based) <-> texel (row k // W', col k % W'); a C-order reshape
  of any per-vertex array to (H', W') gives the texture (row 0 = V = 1 = forehead).
* **sampling grid**: channel 0 vertical = (cy - v)/hy, channel 1 horizontal = (u - cx)/hx, with
  (cy, cx) = (hy, hx) = image_hw / 2 = (112, 112) for the original's 224 input (``vl_nngrid.m``: those
  112 are the centre and half-size of the input, not the grid size).

theta is ``(6 + D,)`` = [r (3, axis-angle, rad), t (2, pixels), logs (1), alpha (D)] (``vl_nnsplit.m``).
Where the original hand-writes a backward pass, these functions rely on autodiff; BUILD_NOTES.md ("Departures from the
originals", 3DMM-STN) lists where the two differ (only the losses and the selection of duplicated
indices: ``vl_nnsymmetry.m``, ``vl_nnsiamese.m``, ``vl_nnselection.m``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jface import geometry
from jface.arrays import as_float
from jface.models.morphable import MorphableModel
from jface.sampling import bilinear_sample

__all__ = [
    "split_theta",
    "morphable_shape",
    "rotation_matrix",
    "project",
    "select_points",
    "sampling_grid",
    "visibility",
    "visibility_normals",
    "mask_texture",
    "flatten",
    "grid_faces",
    "grid_hw_of",
]


def split_theta(theta: ArrayLike) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Split the localiser output (``vl_nnsplit``), per item.

    ``theta (6 + D,)`` -> ``(r (3,), t (2,), logs (), alpha (D,))`` in the order [r, t, logs, alpha]:
    r is axis-angle (radians), t the translation in the 224-pixel y-up frame, logs the log-scale
    (s = 0.99**logs) and alpha the D model coefficients (identity then expression). The original
    fixes D = 10; any D >= 0 works here.
    """
    theta = as_float(theta)
    if theta.ndim != 1 or theta.shape[0] < 6:
        raise ValueError(
            f"theta: expected a vector (6 + D,) = [r(3), t(2), logs(1), alpha(D)], got shape "
            f"{theta.shape} (batch with jax.vmap)"
        )
    return theta[0:3], theta[3:5], theta[5], theta[6:]


def morphable_shape(model: MorphableModel, alpha: ArrayLike) -> jax.Array:
    """3DMM layer (``vl_nnmodel``): ``alpha (D,)`` -> vertices ``(N, 3)``, model frame.

    X = mean + basis . alpha with the model's identity columns first, then expression columns.
    """
    basis = model.basis
    alpha = as_float(alpha)
    if alpha.shape != (basis.shape[-1],):
        raise ValueError(
            f"alpha: expected shape ({basis.shape[-1]},) (the model's {model.num_shape} identity + "
            f"{model.num_expression} expression components), got {alpha.shape}"
        )
    dtype = jnp.result_type(alpha.dtype, model.mean.dtype)
    return model.mean.astype(dtype) + jnp.einsum("nck,k->nc", basis.astype(dtype), alpha.astype(dtype))


def rotation_matrix(r: ArrayLike) -> jax.Array:
    """``vl_nnr2R``: axis-angle ``(3,)`` -> ``(3, 3)``; exactly I with so(3) gradients at 0."""
    return geometry.axis_angle_to_matrix(r)


def project(model: MorphableModel, theta: ArrayLike) -> dict[str, jax.Array]:
    """The geometric chain split -> 3DMM -> r2R -> rotate -> project -> scale -> translate (§2.1-§2.8).

    Per item: ``model`` a :class:`~jface.models.MorphableModel`, ``theta (6 + D,)``. Returns a dict:

    * ``shape`` ``(N, 3)``: model-frame vertices (``x38``), mm;
    * ``rotated`` ``(N, 3)``: R x, still in mm (``x39``; the visibility test uses these);
    * ``points`` ``(N, 2)``: s (x', y') + t in the y-up 224-pixel frame (``x42``), s = 0.99**logs;
    * ``rotation`` ``(3, 3)`` and ``scale`` ``()``.
    """
    r, t, logs, alpha = split_theta(theta)
    shape = morphable_shape(model, alpha)
    rotation = rotation_matrix(r).astype(shape.dtype)
    rotated = geometry.rotate_points(shape, rotation)  # vl_nnrotate3D: x' = R x
    scale = geometry.stn_scale(logs).astype(shape.dtype)  # vl_nnlogScale2Scale: 0.99**logs
    projected = geometry.orthographic_projection(rotated)  # vl_nnprojection: drop z
    points = geometry.translate_points(geometry.scale_points(projected, scale), t)  # scale2D, translate2D
    return {"shape": shape, "rotated": rotated, "points": points, "rotation": rotation, "scale": scale}


def select_points(points: ArrayLike, indices: ArrayLike) -> jax.Array:
    """Selection layer (``vl_nnselection``): ``points (N, 2)``, ``indices (L,)`` 0-based -> ``(L, 2)``.

    Autodiff accumulates the gradients of a duplicated index; the original overwrites (last wins).
    The 21-point AFLW list has no duplicates, so the two agree there.
    """
    return jnp.asarray(points)[jnp.asarray(indices, jnp.int32)]


def grid_hw_of(model: MorphableModel) -> tuple[int, int]:
    """(H', W') of a grid model: ``model.grid_hw`` or, when unset, a square sqrt(N) grid."""
    if getattr(model, "grid_hw", None) is not None:
        return tuple(int(v) for v in model.grid_hw)
    n = model.mean.shape[0]
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(
            f"model: grid_hw is unset and N = {n} vertices is not a square; the STN needs a UV-grid "
            "model (vertex k <-> texel (k // W', k % W'))"
        )
    return (side, side)


def sampling_grid(points: ArrayLike, grid_hw: Sequence[int] = (112, 112),
                  image_hw: Sequence[float] = (224, 224)) -> jax.Array:
    """Grid generator (``vl_nngrid``): ``points (N, 2)`` -> ``(H', W', 2)``.

    ``points`` are in the y-up pixel frame of an image of size ``image_hw`` (the original's x42),
    N = H' W', vertex k <-> texel (k // W', k % W'). Channel 0 is vertical, (cy - y)/hy; channel 1
    horizontal, (x - cx)/hx, with centre and half-size (cy, cx) = (hy, hx) = image_hw / 2. The
    defaults give the original's hard-coded 112s. With :func:`jface.sampling.bilinear_sample`
    (align corners) a point lands at 0-based (row, col) = ((H - y)(H-1)/H, x (W-1)/W): the 223/224
    factor of ``vl_nngrid`` with MatConvNet's ``vl_nnbilinearsampler``, kept as in the original.
    """
    points = as_float(points)
    grid_h, grid_w = (int(v) for v in grid_hw)
    if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] != grid_h * grid_w:
        raise ValueError(
            f"points: expected (N, 2) with N = {grid_h}*{grid_w} = {grid_h * grid_w} (grid_hw), "
            f"got shape {points.shape}"
        )
    half_h = image_hw[0] / 2.0
    half_w = image_hw[1] / 2.0
    vertical = (half_h - points[:, 1]) / half_h
    horizontal = (points[:, 0] - half_w) / half_w
    return jnp.stack([vertical, horizontal], axis=-1).reshape(grid_h, grid_w, 2)


def visibility_normals(rotated: ArrayLike, faces: ArrayLike, *, mode: str = "last_write") -> jax.Array:
    """The per-vertex normals of ``util/visibilityNotSelf.m``, ``(N, 3)``.

    Per face (v1, v2, v3): e1 = p2 - p1, e2 = p3 - p1, e3 = p2 - p3; corner angles
    a1 = acos(e1^.e2^), a2 = acos(e3^.e1^), a3 = pi - a1 - a2 (acos arguments clipped to [-1, 1],
    which matches MATLAB's real part); face normal n_f = e1 x e3 (the reverse of the usual
    orientation; +z for a frontal grid face). ``mode="last_write"`` (default) reproduces the
    original's vectorised ``N(v_c) = N(v_c) + a_c n_f``, where MATLAB keeps only the last write of
    repeated indices: per corner slot c each vertex receives only its highest-index face's
    contribution. ``mode="angle_weighted"`` is the true angle-weighted sum. A degenerate edge gives
    NaN, as in the original.
    """
    if mode not in ("last_write", "angle_weighted"):
        raise ValueError(f"mode: expected 'last_write' or 'angle_weighted', got {mode!r}")
    rotated = as_float(rotated)
    faces = jnp.asarray(faces)
    if rotated.ndim != 2 or rotated.shape[1] != 3:
        raise ValueError(f"rotated: expected (N, 3) vertices, got shape {rotated.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces: expected (F, 3) 0-based vertex indices, got shape {faces.shape}")
    faces = faces.astype(jnp.int32)
    num_vertices = rotated.shape[0]
    num_faces = faces.shape[0]
    p1, p2, p3 = rotated[faces[:, 0]], rotated[faces[:, 1]], rotated[faces[:, 2]]
    e1, e2, e3 = p2 - p1, p3 - p1, p2 - p3

    def unit(e):
        return e / jnp.linalg.norm(e, axis=-1, keepdims=True)

    a1 = jnp.arccos(jnp.clip(jnp.sum(unit(e1) * unit(e2), -1), -1.0, 1.0))
    a2 = jnp.arccos(jnp.clip(jnp.sum(unit(e3) * unit(e1), -1), -1.0, 1.0))
    a3 = jnp.pi - a1 - a2
    face_normal = jnp.cross(e1, e3)
    normals = jnp.zeros_like(rotated)
    for slot, angle in enumerate((a1, a2, a3)):
        contribution = angle[:, None] * face_normal
        if mode == "angle_weighted":
            normals = normals.at[faces[:, slot]].add(contribution)
        else:
            # MATLAB's "last write wins" for repeated indices (``visibilityNotSelf.m``): the highest face index
            # per (vertex, slot), then a gather; .at[].set with duplicates is unordered in XLA.
            last = jnp.full((num_vertices,), -1, jnp.int32).at[faces[:, slot]].max(
                jnp.arange(num_faces, dtype=jnp.int32)
            )
            gathered = contribution[jnp.maximum(last, 0)]
            normals = normals + jnp.where((last >= 0)[:, None], gathered, 0.0)
    return normals


def visibility(rotated: ArrayLike, faces: ArrayLike, *, mode: str = "last_write") -> jax.Array:
    """Self-occlusion test (``vl_nnvisibilitymask`` + ``util/visibilityNotSelf.m``):
    ``rotated (N, 3)``, ``faces (F, 3)`` -> ``(N,)`` bool.

    A vertex is visible iff the z component of its :func:`visibility_normals` is >= 0 (NaN ->
    invisible). ``rotated`` are R x in the model frame (scale and translation do not change the
    sign). No gradient flows through the mask (the original's backward returns zeros).
    """
    normals = visibility_normals(jax.lax.stop_gradient(as_float(rotated)), faces, mode=mode)
    return normals[:, 2] >= 0


def mask_texture(texture: ArrayLike, mask: ArrayLike) -> jax.Array:
    """Masking layer (``vl_nnvisibility``): ``texture (H', W', C) * mask (H', W')`` (mask is a constant)."""
    texture = as_float(texture)
    mask = jax.lax.stop_gradient(jnp.asarray(mask).astype(texture.dtype))
    return texture * mask[..., None]


def flatten(model: MorphableModel, theta: ArrayLike, image: ArrayLike, *, image_hw: Sequence[float] | None = None,
            padding: str = "symmetric", mode: str = "last_write") -> dict[str, jax.Array]:
    """Grid generator + bilinear sampler + visibility + masking (``dagnn_3dmmasstn_init.m``: x42 -> predgrid), per item.

    ``model`` a UV-grid :class:`~jface.models.MorphableModel` (N = H' W'), ``theta (6 + D,)``,
    ``image (H, W, C)`` raw values (0-255 in the original). ``image_hw`` sets the centre/half-size
    of the grid generator; default ``image.shape[:2]`` (= the original's 112s for a 224 image).
    ``padding`` is passed to :func:`~jface.sampling.bilinear_sample` (``"symmetric"`` GPU/cuDNN,
    ``"matconvnet_cpu"``), ``mode`` to :func:`visibility`.

    Returns a dict: ``texture`` (H', W', C) = sampled image * mask; ``sampled`` (H', W', C) before
    masking; ``mask`` (H', W') float 0/1; ``points`` (N, 2) (x42); ``rotated`` (N, 3); ``shape``
    (N, 3) in the model frame; ``grid`` (H', W', 2).
    """
    image = as_float(image)
    if image.ndim != 3:
        raise ValueError(f"image: expected (H, W, C), got shape {image.shape} (batch with jax.vmap)")
    if image_hw is None:
        image_hw = image.shape[:2]
    grid_hw = grid_hw_of(model)
    projected = project(model, theta)
    grid = sampling_grid(projected["points"], grid_hw, image_hw)
    sampled = bilinear_sample(image, grid.astype(image.dtype), padding=padding)
    mask = visibility(projected["rotated"], model.faces, mode=mode).reshape(grid_hw).astype(sampled.dtype)
    return {
        "texture": mask_texture(sampled, mask),
        "sampled": sampled,
        "mask": mask,
        "points": projected["points"],
        "rotated": projected["rotated"],
        "shape": projected["shape"],
        "grid": grid,
    }


def grid_faces(grid_h: int, grid_w: int | None = None) -> np.ndarray:
    """Triangles of a UV-grid model in ``prepareModel/resampleModel.m``'s order, 0-based.

    Vertex (row j, col i) is k = j W' + i. For each cell, col i outer loop and row j inner loop,
    emit [k(i,j), k(i+1,j), k(i,j+1)] then [k(i+1,j+1), k(i,j+1), k(i+1,j)]: 2 (H'-1)(W'-1) faces,
    for 112 the first are [0 1 112], [113 112 1], [112 113 224]. The order matters for the
    last-write-wins normals of :func:`visibility`. Returns a numpy ``(F, 3)`` int32 array.
    """
    grid_w = grid_h if grid_w is None else grid_w
    cols, rows = np.meshgrid(np.arange(grid_w - 1), np.arange(grid_h - 1), indexing="ij")
    cols, rows = cols.ravel(), rows.ravel()  # col outer, row inner

    def k(c, r):
        return r * grid_w + c

    first = np.stack([k(cols, rows), k(cols + 1, rows), k(cols, rows + 1)], -1)
    second = np.stack([k(cols + 1, rows + 1), k(cols, rows + 1), k(cols + 1, rows)], -1)
    return np.stack([first, second], 1).reshape(-1, 3).astype(np.int32)
