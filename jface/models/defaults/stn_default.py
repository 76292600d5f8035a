"""The default 3DMM-STN model: a synthetic procedural face on the 112 x 112 UV grid.

This is a **synthetic stand-in** for the BFM-2009 + 3DDFA model that the 3DMM-STN prepares with
``prepareExpressionBFM.m`` and ``resampleModel.m``. It has the same structure, so it drops into the STN
exactly where a prepared BFM would:

* a face-like disc surface (forehead, brows, eye sockets, nose, cheeks, lips, chin, jaw line, ears,
  upper neck), about 150 mm wide across the cheeks, millimetres, BFM axes (x to the subject's
  left, y up, z towards the camera); at s = 1 and t = (112, 112) it fills the 224 image as the BFM
  does (1 mm = 1 px);
* UV by jface's own conformal Tutte embedding (boundary on the unit square, mirror-symmetric, as
  the original's ``BFM_UV.mat``), then resampled with ``resample_model`` onto the res x res grid
  (``resampleModel.m``):
  ``grid_hw = (112, 112)``, vertex k <-> texel (k // 112, k % 112), forehead in row 0;
* identity basis (30 components; 26 symmetric, 4 small asymmetric) scaled so coefficients are
  N(0, 1), expression basis (12 named components, see :data:`EXPRESSION_NAMES`), per-vertex albedo
  mean and basis in [0, 1] RGB;
* landmarks ``"aflw21"`` (:data:`jface.models.landmarks.AFLW21_NAMES` order) and ``"ibug68"``
  as grid vertex indices, and
  ``vertex_mirror`` (grid column i <-> 111 - i).

Generation is deterministic (fixed seeds, no clocks) and is cached by :mod:`jface.models.defaults`.
"""

from __future__ import annotations

import numpy as np

from jface.models.defaults import face_mesh as fm
from jface.models.landmarks import IBUG68_MIRROR
from jface.models.resample import resample_model
from jface.models.tutte import tutte_embedding

__all__ = ["STN_VERSION", "STN_GENERATOR_MODULES", "generate_stn_arrays", "source_mesh", "EXPRESSION_NAMES"]

STN_VERSION = 1
# the jface/models modules the generator calls (their sources are part of the cache fingerprint)
STN_GENERATOR_MODULES = ("tutte.py", "resample.py", "prepare.py", "landmarks.py")
EXPRESSION_NAMES = fm.EXPRESSION_NAMES

# source mesh resolution: columns (odd: one column on the symmetry line) x rows
_N_COLS = 121
_N_ROWS = 131
_PHI_MAX_DEG = 100.0
# profile-parameter range: from the upper neck to above the hairline (knot indices)
_S_LO, _S_HI = 1.3, 9.4


def source_mesh(params=None):
    """The procedural face before UV resampling.

    Returns ``vertices (N, 3)`` mm, ``faces (F, 3)`` int32 (counter-clockwise from outside),
    ``mirror (N,)`` and the grid parameters ``phis (C,)``, ``rows (R,)``.
    """
    params = fm.default_params() if params is None else params
    phis = np.deg2rad(np.linspace(-_PHI_MAX_DEG, _PHI_MAX_DEG, _N_COLS))
    rows = fm.meridian_rows(_S_LO, _S_HI, _N_ROWS)
    phi_g, s_g = np.meshgrid(phis, rows)
    vertices = fm.head_surface(phi_g, s_g, params).reshape(-1, 3)
    faces, mirror = fm.grid_mesh(phis, rows)
    return vertices, faces, mirror, phis, rows


def identity_basis(phis, rows, *, n_components=30):
    """PCA of the surface's linear response to the named parameters: ``(N, 3, K)`` mm.

    Column k times a N(0, 1) coefficient reproduces (to first order) the spread of the head
    parameters assumed in ``face_mesh.PARAM_SPECS``.
    """
    phi_g, s_g = np.meshgrid(phis, rows)
    base = fm.default_params()
    cols = []
    for name, _, sigma, _ in fm.PARAM_SPECS:
        hi, lo = dict(base), dict(base)
        hi[name] += 0.5 * sigma
        lo[name] -= 0.5 * sigma
        diff = fm.head_surface(phi_g, s_g, hi) - fm.head_surface(phi_g, s_g, lo)
        cols.append(diff.reshape(-1))  # one sigma of change
    jac = np.stack(cols, axis=1)  # (3N, P)
    u, sv, _ = np.linalg.svd(jac, full_matrices=False)
    comps = u[:, :n_components] * sv[:n_components]
    # deterministic sign: the largest-magnitude entry of each component is positive
    idx = np.argmax(np.abs(comps), axis=0)
    comps = comps * np.sign(comps[idx, np.arange(comps.shape[1])])
    return comps.reshape(-1, 3, comps.shape[1])


def expression_basis(vertices):
    """``(N, 3, 12)`` mm: the named expression displacements at coefficient 1."""
    return np.stack([fm.expression_displacement(vertices, n) for n in EXPRESSION_NAMES], axis=-1)


def albedo(vertices, mirror=None, *, n_components=12):
    """Per-vertex RGB albedo mean ``(N, 3)`` and basis ``(N, 3, K)`` (:func:`fm.skin_albedo`)."""
    return fm.skin_albedo(vertices, n_components=n_components)


# ---------------------------------------------------------------------------------------------
# landmarks on the grid


def _nearest_front(grid_mean, x, y, cols=None, res=112):
    """Grid vertex nearest (in x, y) to the frontal point (x, y) among front-facing vertices."""
    d = (grid_mean[:, 0] - x) ** 2 + (grid_mean[:, 1] - y) ** 2
    d = d + 1e9 * (grid_mean[:, 2] < 20.0)
    if cols is not None:
        d = d + 1e9 * ~np.isin(np.arange(len(d)) % res, cols)
    return int(np.argmin(d))


def _mirror_index(k, res):
    r, c = divmod(k, res)
    return r * res + (res - 1 - c)


def _landmark_targets():
    """Frontal (x, y) mm targets for the subject's RIGHT side (x < 0) and the centre line."""
    p = fm.default_params()
    ex, ey = p["eye_spacing"], p["eye_height"]
    my, mw = p["mouth_height"], p["mouth_width"]
    return p, ex, ey, my, mw


def contour_points(params=None, n=17):
    """The iBUG jaw contour (17 frontal (x, y) points, image left -> chin -> image right)."""
    p = fm.default_params() if params is None else params
    ys = np.linspace(p["chin_height"], 22.0, 400)
    xs = fm.face_outline(ys, p) - 3.0
    xs = np.where(ys < p["chin_height"] + 8.0, xs * np.sqrt(np.clip((ys - p["chin_height"]) / 8.0,
                                                                     0, 1)), xs)
    pts = np.stack([xs, ys], -1)[::-1]  # from the top down to the chin (x >= 0)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    half = (n - 1) // 2
    t = np.linspace(0.0, arc[-1], half + 1)
    px, py = np.interp(t, arc, pts[:, 0]), np.interp(t, arc, pts[:, 1])
    right = np.stack([-px, py], -1)  # subject's right = image left
    left = np.stack([px, py], -1)[::-1]
    out = np.concatenate([right, left[1:]], 0)
    out[half, 0] = 0.0
    return out


def grid_landmarks(grid_mean, res=112):
    """``{"aflw21": (21,), "ibug68": (68,)}`` int32 grid indices, exactly mirror-consistent."""
    p, ex, ey, my, mw = _landmark_targets()
    centre_col = [res // 2 - 1]  # 55 for 112, as the BFM's 112-grid index files use

    def right(x, y):
        return _nearest_front(grid_mean, -abs(x), y)

    def centre(y):
        return _nearest_front(grid_mean, 0.0, y, cols=centre_col, res=res)

    def pair(x, y):
        k = right(x, y)
        return k, _mirror_index(k, res)

    # ears: the most lateral grid vertex near the lobe height on the subject's right
    yy = grid_mean[:, 1]
    lat = -grid_mean[:, 0] - 1e9 * (np.abs(yy - (-8.0)) > 3.0)
    ear_r = int(np.argmax(lat))
    ear_l = _mirror_index(ear_r, res)
    tip_y = -1.5
    b = [pair(ex + 20.0, ey + 14.0), pair(ex, ey + 18.5), pair(ex - 17.0, ey + 16.0)]
    e = [pair(ex + 14.0, ey), pair(ex, ey), pair(ex - 14.0, ey)]
    nose = pair(16.0, -10.0)
    mouth = pair(mw, my)
    aflw = [b[0][0], b[1][0], b[2][0], b[2][1], b[1][1], b[0][1],
            e[0][0], e[1][0], e[2][0], e[2][1], e[1][1], e[0][1],
            ear_r, nose[0], centre(tip_y), nose[1], ear_l,
            mouth[0], centre(my), mouth[1], centre(p["chin_height"] + 4.0)]

    ib = [0] * 68
    contour = contour_points(p)
    for i in range(8):
        ib[i], ib[IBUG68_MIRROR[i]] = pair(-contour[i, 0], contour[i, 1])
    ib[8] = centre(contour[8, 1] + 1.0)
    brow_x = [ex + 20.0, ex + 11.0, ex + 1.0, ex - 9.0, ex - 17.0]
    brow_y = [ey + 13.0, ey + 17.5, ey + 19.0, ey + 18.0, ey + 16.0]
    for i in range(5):
        ib[17 + i], ib[IBUG68_MIRROR[17 + i]] = pair(brow_x[i], brow_y[i])
    for i, y in enumerate([ey - 2.0, ey * 0.62, ey * 0.28, tip_y]):
        ib[27 + i] = centre(y)
    ib[31], ib[IBUG68_MIRROR[31]] = pair(10.0, -13.0)
    ib[32], ib[IBUG68_MIRROR[32]] = pair(5.0, -15.0)
    ib[33] = centre(-16.0)
    eye = [(ex + 14.0, ey), (ex + 5.0, ey + 4.0), (ex - 5.0, ey + 4.0), (ex - 14.0, ey),
           (ex - 5.0, ey - 3.5), (ex + 5.0, ey - 3.5)]
    # right eye 36..41 (outer corner, upper outer, upper inner, inner corner, lower inner, lower
    # outer); left eye 42..47 is its mirror
    for i, (x, y) in enumerate(eye):
        ib[36 + i], ib[IBUG68_MIRROR[36 + i]] = pair(x, y)
    outer = {48: (mw, my), 49: (0.6 * mw, my + 5.0), 50: (0.25 * mw, my + 6.5),
             59: (0.6 * mw, my - 6.0), 58: (0.25 * mw, my - 8.0)}
    for k, (x, y) in outer.items():
        ib[k], ib[IBUG68_MIRROR[k]] = pair(x, y)
    ib[51] = centre(my + 7.0)
    ib[57] = centre(my - 8.5)
    inner = {60: (mw - 3.0, my), 61: (0.35 * mw, my + 1.2), 67: (0.35 * mw, my - 1.2)}
    for k, (x, y) in inner.items():
        ib[k], ib[IBUG68_MIRROR[k]] = pair(x, y)
    ib[62] = centre(my + 1.2)
    ib[66] = centre(my - 1.2)
    return {"aflw21": np.asarray(aflw, np.int32), "ibug68": np.asarray(ib, np.int32)}


def grid_uv(res):
    """``(res^2, 2)``: U = col/(res-1), V = 1 - row/(res-1) (``resampleModel.m``)."""
    k = np.arange(res * res)
    return np.stack([(k % res) / (res - 1), 1.0 - (k // res) / (res - 1)], -1)


def _resample(resample_model, mean, basis, faces, uv, res):
    out = resample_model(mean, basis, faces, uv, res)
    if isinstance(out, dict):
        if np.any(out.get("outside", False)):
            raise RuntimeError("default STN model: grid points outside the UV embedding")
        return out["mean"], out["basis"], out["faces"]
    return out[0], out[1], out[2]


def generate_stn_arrays(res=112):
    """Build every array of the default STN model (numpy, float64 except indices)."""
    vertices, faces, mirror, phis, rows = source_mesh()
    shape = identity_basis(phis, rows)
    expr = expression_basis(vertices)
    alb_mean, alb_basis = albedo(vertices, mirror)
    uv = np.asarray(tutte_embedding(vertices, faces, symmetric=True, mirror=mirror), np.float64)
    basis = np.concatenate([shape, expr], axis=-1)
    g_mean, g_basis, g_faces = _resample(resample_model, vertices, basis, faces, uv, res)
    a_mean, a_basis, _ = _resample(resample_model, alb_mean, alb_basis, faces, uv, res)
    g_mean, g_basis = np.asarray(g_mean, np.float64), np.asarray(g_basis, np.float64)
    n_shape = shape.shape[-1]
    cols = np.arange(res * res) % res
    vertex_mirror = (np.arange(res * res) - cols + (res - 1 - cols)).astype(np.int32)
    lms = grid_landmarks(g_mean, res)
    return {
        "version": np.int32(STN_VERSION),
        "what": np.asarray("jface synthetic default 3DMM-STN model: a procedural stand-in, "
                           "NOT the Basel Face Model"),
        "mean": g_mean,
        "shape_basis": g_basis[..., :n_shape],
        "expression_basis": g_basis[..., n_shape:],
        "faces": np.asarray(g_faces, np.int32),
        "uv": grid_uv(res),
        "albedo_mean": np.asarray(a_mean, np.float64),
        "albedo_basis": np.asarray(a_basis, np.float64),
        "vertex_mirror": vertex_mirror,
        "landmarks_aflw21": lms["aflw21"],
        "landmarks_ibug68": lms["ibug68"],
        "expression_names": np.asarray(EXPRESSION_NAMES),
        "grid_hw": np.asarray([res, res], np.int32),
        # the source mesh (for pictures and tests)
        "source_vertices": vertices,
        "source_faces": faces,
        "source_uv": uv,
        "source_mirror": mirror,
    }
