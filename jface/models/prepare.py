"""3DMM-STN model preparation: the original ``prepareExpressionBFM.m`` + ``resampleModel.m``.

``prepareExpressionBFM.m``: the expression extension by a Laplace-Beltrami least-squares fit
(``LaplaceBeltrami.m``) and µm -> mm; ``resampleModel.m``: the resampling onto the res x res UV grid
(:mod:`jface.models.resample`).

Everything here is numpy/scipy in float64 (model preparation is an offline step; nothing here
needs to be differentiable).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from jface.errors import ModelFileError
from jface.models.morphable import MorphableModel
from jface.models.resample import _check_res, resample_model

__all__ = ["laplace_beltrami", "prepare_stn_model", "extend_expression", "corner_cotangents", "LANDMARK_FILES",
           "landmark_file_name", "require_landmark_set"]

#: The original 3DMMasSTN repository's landmark files per set (``{res}``: the UV grid size, 112 or
#: 224; 1-based indices of the res x res grid vertices).
LANDMARK_FILES = {"aflw21": "Landmarks21_{res}.anl", "ibug68": "Landmarks68_{res}.anl"}


def landmark_file_name(name: str, model: MorphableModel) -> str:
    """The original's ``.anl`` file of landmark set ``name`` for ``model``'s UV grid (a placeholder
    name for sets the original does not ship)."""
    res = model.grid_hw[0] if model.grid_hw is not None else 112
    return LANDMARK_FILES.get(name, f"{name}.anl").format(res=res)


def require_landmark_set(model: MorphableModel, name: str, source, *, needed_by: str) -> np.ndarray:
    """``model.landmarks[name]`` as int indices; a model without that set (one prepared without
    ``--landmarks``) raises :class:`~jface.errors.ModelFileError` naming ``source`` with the one
    command that adds it."""
    landmarks = dict(model.landmarks or {})
    if name in landmarks:
        return np.asarray(landmarks[name])
    has = ", ".join(sorted(landmarks)) or "none"
    raise ModelFileError(
        source, f"has no landmark set {name!r} (it has: {has}), which {needed_by} needs; add it with: "
        f"python -m jface.models add-landmarks {source} --landmarks {name}={landmark_file_name(name, model)} "
        f"(the .anl file of the original 3DMMasSTN repository for this grid)")


def _as_mesh(vertices, faces, *, name_v="vertices", name_f="faces"):
    """Validate and convert a triangle mesh to ``(float64 (N,3), int64 (F,3))``."""
    vertices = np.asarray(vertices)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or not np.issubdtype(vertices.dtype, np.number):
        raise ValueError(f"{name_v}: expected a numeric (N, 3) array, got shape {vertices.shape}")
    vertices = vertices.astype(np.float64)
    if not np.all(np.isfinite(vertices)):
        raise ValueError(f"{name_v}: contains non-finite values")
    faces = np.asarray(faces)
    if faces.ndim != 2 or faces.shape[1] != 3 or not np.issubdtype(faces.dtype, np.integer):
        if faces.ndim == 2 and faces.shape[1] == 3 and np.issubdtype(faces.dtype, np.floating) \
                and np.all(faces == np.round(faces)):
            faces = faces.astype(np.int64)
        else:
            raise ValueError(
                f"{name_f}: expected an integer (F, 3) array of 0-based vertex indices, got "
                f"shape {faces.shape} dtype {faces.dtype}"
            )
    faces = faces.astype(np.int64)
    if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise ValueError(
            f"{name_f}: indices must be 0-based in [0, {len(vertices)}); got range "
            f"[{faces.min()}, {faces.max()}] (1-based MATLAB faces need '- 1')"
        )
    return vertices, faces


def corner_cotangents(vertices, faces):
    """Cotangent of the interior angle at each corner of each triangle.

    ``vertices (N, 3)``, ``faces (F, 3)`` -> ``(F, 3)`` float64; entry ``[f, c]`` is the cotangent
    of the angle of face ``f`` at its corner ``c`` (opposite the edge between the other two).
    Raises ``ValueError`` for zero-area faces (the cotangent is undefined there).
    """
    vertices, faces = _as_mesh(vertices, faces)
    p = vertices[faces]  # (F, 3, 3)
    cots = np.empty(faces.shape, dtype=np.float64)
    double_area = np.linalg.norm(np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]), axis=-1)
    bad = ~(double_area > 0)
    if np.any(bad):
        raise ValueError(
            f"faces: {int(bad.sum())} degenerate (zero-area) triangles, e.g. face "
            f"{int(np.flatnonzero(bad)[0])}; the cotangent Laplacian is undefined there"
        )
    for c in range(3):
        a = p[:, (c + 1) % 3] - p[:, c]
        b = p[:, (c + 2) % 3] - p[:, c]
        cots[:, c] = np.einsum("fi,fi->f", a, b) / double_area
    return cots


def laplace_beltrami(vertices, faces) -> sp.csr_matrix:
    """Cotangent stiffness matrix of a triangle mesh (the original ``util/LaplaceBeltrami.m``).

    ``vertices (N, 3)``, ``faces (F, 3)`` (0-based) -> ``(N, N)`` ``scipy.sparse.csr_matrix``,
    float64. ``LaplaceBeltrami.m``: ``L = sum_f 2 A_f G_f^T G_f`` with ``G_f`` the hat-function gradients of
    face ``f``. Equivalently ``L_ij = -(cot a_ij + cot b_ij)`` for an edge ``ij`` (a, b the angles
    opposite the edge; one term on a boundary edge) and ``L_ii = -sum_j L_ij``: symmetric, positive
    semi-definite, zero row sums, scale-free. This is twice the common ``(cot a + cot b) / 2``
    convention, as in the original.
    """
    vertices, faces = _as_mesh(vertices, faces)
    n = len(vertices)
    cots = corner_cotangents(vertices, faces)
    rows, cols, vals = [], [], []
    for c in range(3):
        i = faces[:, (c + 1) % 3]
        j = faces[:, (c + 2) % 3]
        rows += [i, j]
        cols += [j, i]
        vals += [-cots[:, c], -cots[:, c]]
    rows = np.concatenate(rows)
    cols = np.concatenate(cols)
    vals = np.concatenate(vals)
    off = sp.coo_matrix((vals, (rows, cols)), shape=(n, n)).tocsr()
    diag = -np.asarray(off.sum(axis=1)).ravel()
    lap = (off + sp.diags(diag)).tocsr()
    lap.sum_duplicates()
    return lap


# ----------------------------------------------------------------------------------------------
# prepareExpressionBFM.m
# ----------------------------------------------------------------------------------------------


def _get(mapping, key, what):
    try:
        return mapping[key]
    except (KeyError, TypeError, IndexError):
        raise ValueError(f"{what}: expected a mapping with key {key!r} (as returned by "
                         f"jface.models.loaders)") from None


def extend_expression(mean_um, faces, w_exp, map_tddfa_to_basel, *, progress=None):
    """Extend 3DDFA expression displacements to all BFM vertices (``prepareExpressionBFM.m``, step 2).

    ``mean_um (N, 3)`` BFM mean (µm), ``faces (F, 3)``, ``w_exp (M, 3, K)`` displacements of the
    3DDFA vertices (row-major, µm), ``map_tddfa_to_basel (M,)`` 0-based BFM index per 3DDFA
    vertex -> ``(N, 3, K)`` displacements ``d`` minimising ``||L d||^2 + ||S d - E||^2`` per
    coordinate and column, L = :func:`laplace_beltrami` of the mean mesh, S the 0/1 selection.

    The original solves the stacked system ``[L; S] X = [L V0; S V0 + E]`` with MATLAB's sparse QR;
    here the same minimiser is found from the normal equations ``(L^T L + S^T S) d = S^T E``
    (``L V0`` cancels), factorised once with SuperLU for all 3K right-hand sides.
    """
    mean_um = np.asarray(mean_um, dtype=np.float64)
    n = len(mean_um)
    w_exp = np.asarray(w_exp, dtype=np.float64)
    idx = np.asarray(map_tddfa_to_basel).astype(np.int64).ravel()
    if w_exp.ndim != 3 or w_exp.shape[1] != 3:
        raise ValueError(f"expression['w_exp']: expected (M, 3, K), got {w_exp.shape}")
    if len(idx) != w_exp.shape[0]:
        raise ValueError(
            f"map_tddfa_to_basel: expected {w_exp.shape[0]} indices (one per 3DDFA vertex of "
            f"w_exp), got {len(idx)}"
        )
    if idx.min() < 0 or idx.max() >= n:
        raise ValueError(f"map_tddfa_to_basel: 0-based indices must lie in [0, {n})")
    if len(np.unique(idx)) != len(idx):
        raise ValueError("map_tddfa_to_basel: indices must be unique")
    lap = laplace_beltrami(mean_um, faces)
    m = len(idx)
    sel = sp.csr_matrix((np.ones(m), (np.arange(m), idx)), shape=(m, n))
    normal = (lap.T @ lap + sel.T @ sel).tocsc()
    if progress:
        progress(f"factorising the {n}x{n} normal-equation matrix ({normal.nnz} non-zeros)")
    # symmetric positive definite (L's null space, the constants, is not in S's): no pivoting, a
    # symmetric fill-reducing ordering (~15M factor non-zeros for the BFM, seconds)
    solve = spla.splu(normal, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                      options=dict(SymmetricMode=True)).solve
    k = w_exp.shape[2]
    rhs = np.zeros((n, 3 * k))
    rhs[idx] = w_exp.reshape(m, 3 * k)
    if progress:
        progress(f"solving for {k} expression columns x 3 coordinates")
    d = solve(rhs)
    return d.reshape(n, 3, k)


def prepare_stn_model(
    bfm: Mapping,
    expression: Mapping,
    uv,
    map_tddfa_to_basel,
    res: int = 112,
    n_shape: int = 5,
    n_expression: int = 5,
    progress: Callable[[str], None] | None = None,
    *,
    dtype=np.float32,
):
    """Build the 3DMM-STN model: the original ``prepareExpressionBFM`` + ``resampleModel``.

    Args:
      bfm: mapping as returned by ``jface.models.load_bfm2009``: ``mean (N, 3)`` µm,
        ``shape_basis (N, 3, K)`` µm (unit-variance PCs), ``shape_ev (K,)`` standard deviations,
        ``faces (F, 3)`` int 0-based.
      expression: mapping as returned by ``load_tddfa_expression``: ``w_exp (M, 3, Ke)`` µm, rows
        in 3DDFA vertex order.
      uv: ``(N, 2)`` per-BFM-vertex UV in [0, 1]^2 (``BFM_UV.mat``'s ``UV``; u right, v up).
      map_tddfa_to_basel: ``(M,)`` 0-based BFM vertex index of each 3DDFA vertex.
      res: grid size; the model has ``res**2`` vertices and ``2 (res-1)**2`` faces.
      n_shape, n_expression: identity / expression columns kept (the original: 5 + 5).
      progress: optional ``callable(str)`` receiving progress messages.
      dtype: dtype of the returned (jax) arrays; computation is float64 throughout. float64
        output needs ``jax_enable_x64`` (JAX otherwise stores float32).

    Returns:
      ``jface.models.MorphableModel`` in **mm**: ``mean (res², 3)``, ``shape_basis (res², 3,
      n_shape)`` = BFM PCs x EV (``prepareExpressionBFM.m`` step 1), ``expression_basis (res², 3, n_expression)``
      = the first ``n_expression`` ``w_exp`` columns as is, Laplacian-extended to the 275 mouth
      vertices 3DDFA lacks (step 2), all resampled by :func:`jface.models.resample_model`
      and divided by 1000; ``faces`` in the original's order, ``uv`` the grid UV,
      ``grid_hw = (res, res)`` (vertex k <-> texel (k // res, k % res)).
    """
    res = _check_res(res)

    say = progress or (lambda msg: None)
    mean = np.asarray(_get(bfm, "mean", "bfm"), dtype=np.float64)
    basis = np.asarray(_get(bfm, "shape_basis", "bfm"), dtype=np.float64)
    ev = np.asarray(_get(bfm, "shape_ev", "bfm"), dtype=np.float64).ravel()
    faces = np.asarray(_get(bfm, "faces", "bfm"))
    w_exp = np.asarray(_get(expression, "w_exp", "expression"), dtype=np.float64)
    if mean.ndim != 2 or mean.shape[1] != 3:
        raise ValueError(f"bfm['mean']: expected (N, 3), got {mean.shape}")
    n = len(mean)
    if basis.ndim != 3 or basis.shape[:2] != (n, 3):
        raise ValueError(f"bfm['shape_basis']: expected ({n}, 3, K), got {basis.shape}")
    if not 1 <= n_shape <= min(basis.shape[2], len(ev)):
        raise ValueError(
            f"n_shape: expected 1..{min(basis.shape[2], len(ev))} (columns of bfm['shape_basis'] "
            f"and bfm['shape_ev']), got {n_shape}"
        )
    if w_exp.ndim != 3 or w_exp.shape[1] != 3:
        raise ValueError(f"expression['w_exp']: expected (M, 3, K), got {w_exp.shape}")
    if not 0 <= n_expression <= w_exp.shape[2]:
        raise ValueError(
            f"n_expression: expected 0..{w_exp.shape[2]} (columns of expression['w_exp']), got "
            f"{n_expression}"
        )
    uv = np.asarray(uv, dtype=np.float64)
    if uv.shape != (n, 2):
        raise ValueError(f"uv: expected ({n}, 2) (one UV per BFM vertex), got {uv.shape}")

    say(f"identity basis: {n_shape} PCs x shape_ev")
    identity = basis[:, :, :n_shape] * ev[:n_shape]
    if n_expression:
        say(f"expression basis: extending {n_expression} w_exp columns from {w_exp.shape[0]} to "
            f"{n} vertices (Laplace-Beltrami least squares)")
        expr = extend_expression(mean, faces, w_exp[:, :, :n_expression], map_tddfa_to_basel,
                                 progress=progress)
    else:
        expr = np.zeros((n, 3, 0))
    say(f"resampling onto the {res}x{res} UV grid")
    out = resample_model(mean, np.concatenate([identity, expr], axis=-1), faces, uv, res)
    mean_mm = out["mean"] / 1000.0
    basis_mm = out["basis"] / 1000.0
    return MorphableModel(
        mean=jnp.asarray(mean_mm.astype(dtype)),
        shape_basis=jnp.asarray(basis_mm[:, :, :n_shape].astype(dtype)),
        expression_basis=jnp.asarray(basis_mm[:, :, n_shape:].astype(dtype)),
        faces=jnp.asarray(out["faces"].astype(np.int32)),
        uv=jnp.asarray(out["uv"].astype(dtype)),
        units="mm",
        grid_hw=(res, res),
    )
