"""The default FLAME-structured head: a **synthetic stand-in** for FLAME 2020 + DECA's data files.

Not FLAME. A procedural head (:mod:`face_mesh`) built in FLAME's structure, layouts and units so
that jface's FLAME/DECA code paths run without the licence-gated files:

* mesh: head (a periodic azimuth x height grid closed by a crown vertex, open at the neck, with
  two eye openings) followed by two separate eyeball spheres; ~5.4k vertices, counter-clockwise
  faces seen from outside; metres; x to the subject's left, y up, z towards the camera;
* ``shapedirs (V, 3, 400)``: 300 identity columns (the first 30 are the PCA of the procedural
  head's parameters, N(0, 1) coefficients; the rest are zero) then 100 expression columns (the
  first 11 are named expressions, :data:`FLAME_EXPRESSION_NAMES`; the rest are zero);
* ``posedirs (V, 3, 36)``: a jaw-opening corrective (cheeks lengthen), otherwise zero;
* 5 joints (root, neck, jaw, eye 3 = the subject's left eyeball at +x, eye 4 = the right eyeball),
  ``J_regressor`` averages of vertex rings / patches / eyeball vertices, parents (-1, 0, 1, 1, 1);
  skinning: the lower face follows the jaw, each eyeball is bound rigidly to its eye joint;
* DECA's landmark embedding: 51 static faces + barycentrics, the 79 x 17 dynamic contour table
  (row a for yaw a = 0..39 degrees, row 39 - a for a = -1..-39; the contour points on the side
  turning away are the silhouette points of that yaw, as ``FLAME._find_dynamic_lmk_idx_and_bcoords``
  in ``decalib/models/FLAME.py`` reads it) and the 68 full points;
* UV layout (``vt`` with seams at the back of the head and on the eyeballs), a 256 x 256 soft
  face/eye UV mask, and a UV albedo model (mean + 20 components).

Files are written in the real layouts (FLAME 2020 and DECA's ``data/``): ``generic_model.pkl`` (plain numpy
arrays, scipy.sparse CSC ``J_regressor``), ``landmark_embedding.npy`` (a pickled dict; plain numpy
arrays instead of torch tensors), ``head_template.obj`` (``v`` + ``vt``, ``f v/vt``),
``FLAME_albedo_from_BFM.npz`` (``MU (512*512*3,)``, ``PC (512*512*3, K)``, BGR, row 0 = v = 1;
float32 and compressed to keep the cache small) and ``uv_face_eye_mask.png`` (RGBA), and loaded
back through :func:`jface.models.loaders.load_flame`, :func:`~jface.models.loaders.load_landmark_embedding`
and :func:`~jface.files.obj.load_obj`.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
import zipfile
from pathlib import Path

import jax
import numpy as np
import scipy.sparse
from scipy import ndimage

from jface.files.obj import load_obj
from jface.models.defaults import face_mesh as fm
from jface.models.defaults.cache import generation_lock, generator_fingerprint
from jface.models.defaults.stn_default import contour_points
from jface.models.landmarks import IBUG68_MIRROR
from jface.models.loaders import load_flame, load_landmark_embedding

__all__ = [
    "FLAME_VERSION",
    "FLAME_EXPRESSION_NAMES",
    "build_flame_arrays",
    "write_flame_files",
    "ensure_flame_files",
    "load_flame_files",
    "load_flame_albedo",
    "rasterize_uv",
    "FLAME_GENERATOR_MODULES",
]

FLAME_VERSION = 1
# the jface/models modules the generator calls (their sources are part of the cache fingerprint)
FLAME_GENERATOR_MODULES = ("landmarks.py",)
FLAME_EXPRESSION_NAMES = tuple(n for n in fm.EXPRESSION_NAMES if n != "jaw_open")

_N_COLS = 72      # azimuth columns (even: columns 0 and 36 lie on the symmetry plane)
_N_ROWS = 70      # height rows, neck bottom -> just below the crown
_PHI_WARP = 0.62  # column density is 1 / (1 - 0.62) times higher at the front than on average
_S_TOP = 12.75    # last row (profile knot index); the crown vertex is at knot 13
_EYE_A, _EYE_B = 13.0, 4.8   # eye-opening half axes (mm)
_EYE_R = 12.0     # eyeball radius (mm)
_EYE_LAT, _EYE_LON = 9, 16
_N_SHAPE, _N_EXPR = 300, 100
_ALBEDO_RES = 512
_N_ALBEDO = 20
_MM = 1e-3        # mm -> m
# FLAME's template puts the nose tip near (0, 0.027, 0.09) m and the eyeball centres near
# z = 0.04 m; shifting the procedural head (nose tip near (0, -2, 106) mm) by this offset puts it
# in the same place, so DECA-style cameras see it where they would see FLAME.
FLAME_OFFSET_MM = np.array([0.0, 29.0, -17.0])

FILES = {
    "model": "generic_model.pkl",
    "embedding": "landmark_embedding.npy",
    "obj": "head_template.obj",
    "albedo": "FLAME_albedo_from_BFM.npz",
    "mask": "uv_face_eye_mask.png",
    "manifest": "manifest.json",
}


# ------------------------------------------------------------------------------------------------
# head mesh


def _columns(n=_N_COLS):
    u = -np.pi + 2.0 * np.pi * np.arange(n) / n
    return u - _PHI_WARP * np.sin(u)  # odd in u: column c <-> (n - c) % n is an exact mirror


def _rows(n=_N_ROWS):
    """Row parameters, uniform in front arc length weighted 2.5x on the face band."""
    s = np.linspace(0.0, _S_TOP, 6001)
    pts = fm.head_surface(np.zeros_like(s), s, features=False)
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    ymid = 0.5 * (pts[1:, 1] + pts[:-1, 1])
    w = 1.0 + 1.5 * np.exp(-(((ymid + 15.0) / 70.0) ** 4))
    arc = np.concatenate([[0.0], np.cumsum(seg * w)])
    return np.interp(np.linspace(0.0, arc[-1], n), arc, s)


def _grid_points(params, phis, rows):
    phi_g, s_g = np.meshgrid(phis, rows)
    grid = fm.head_surface(phi_g, s_g, params).reshape(-1, 3)
    crown = fm.head_surface(np.zeros(1), np.full(1, 13.0), params).reshape(1, 3)
    return np.concatenate([grid, crown], 0)


def _sphere(centre, radius, n_lat=_EYE_LAT, n_lon=_EYE_LON):
    """Lat-long sphere with poles on the z axis (front pole = cornea).

    Returns vertices, faces (outward CCW), per-vertex (theta, lambda) and the pole flags."""
    thetas = np.pi * np.arange(1, n_lat + 1) / (n_lat + 1)
    lams = 2.0 * np.pi * np.arange(n_lon) / n_lon
    th, la = np.meshgrid(thetas, lams, indexing="ij")
    ring = np.stack([np.sin(th) * np.cos(la), np.sin(th) * np.sin(la), np.cos(th)], -1)
    ring = ring.reshape(-1, 3)
    dirs = np.concatenate([[[0.0, 0.0, 1.0]], ring, [[0.0, 0.0, -1.0]]], 0)
    n_ring = n_lat * n_lon
    front, back = 0, n_ring + 1
    faces = []
    for k in range(n_lon):
        k1 = (k + 1) % n_lon
        faces.append((front, 1 + k, 1 + k1))
    for i in range(n_lat - 1):
        for k in range(n_lon):
            k1 = (k + 1) % n_lon
            a, b = 1 + i * n_lon + k, 1 + i * n_lon + k1
            c, d = 1 + (i + 1) * n_lon + k, 1 + (i + 1) * n_lon + k1
            faces += [(a, c, d), (a, d, b)]
    base = 1 + (n_lat - 1) * n_lon
    for k in range(n_lon):
        k1 = (k + 1) % n_lon
        faces.append((back, base + k1, base + k))
    faces = np.asarray(faces, np.int64)
    tri = dirs[faces]
    nrm = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    if np.mean(np.sum(nrm * tri.mean(1), axis=1)) < 0:
        faces = faces[:, ::-1]
    theta = np.concatenate([[0.0], th.ravel(), [np.pi]])
    lam = np.concatenate([[0.0], la.ravel(), [0.0]])
    return centre + radius * dirs, faces, theta, lam


class HeadTopology:
    """Vertex/face bookkeeping of the default head (built once from the mean head)."""

    def __init__(self):
        self.phis, self.rows = _columns(), _rows()
        n_c, n_r = len(self.phis), len(self.rows)
        faces, mirror = fm.grid_mesh(self.phis, self.rows, periodic=True, pole=True)
        mean = _grid_points(fm.default_params(), self.phis, self.rows)
        p = fm.default_params()
        cen = mean[faces].mean(1)
        ex, ey = p["eye_spacing"], p["eye_height"]
        hole = (((np.abs(cen[:, 0]) - ex) / _EYE_A) ** 2 + ((cen[:, 1] - ey) / _EYE_B) ** 2 < 1.0)
        hole &= cen[:, 2] > 0
        faces = faces[~hole]
        used = np.zeros(len(mean), bool)
        used[faces.ravel()] = True
        self.grid_index = np.flatnonzero(used)          # kept grid(+crown) vertex ids
        remap = -np.ones(len(mean), np.int64)
        remap[self.grid_index] = np.arange(len(self.grid_index))
        self.head_faces = remap[faces]
        self.head_mirror = remap[mirror[self.grid_index]]
        assert np.all(self.head_mirror >= 0)
        self.n_head = len(self.grid_index)
        self.n_cols, self.n_rows = n_c, n_r
        gi = self.grid_index
        self.row = np.where(gi < n_r * n_c, gi // n_c, n_r)
        self.col = np.where(gi < n_r * n_c, gi % n_c, -1)
        # eye-opening rims: head vertices on a removed face's corner
        hole_faces = remap[fm.grid_mesh(self.phis, self.rows, periodic=True, pole=True)[0][hole]]
        rim = np.unique(hole_faces[hole_faces >= 0])
        head0 = mean[gi]
        self.rim_left = rim[head0[rim, 0] > 0]
        self.rim_right = rim[head0[rim, 0] < 0]
        # eyeballs (left = +x first, as joint 3)
        rim_z = head0[self.rim_left, 2].mean()
        self.eye_centre = np.array([ex, ey, rim_z + 3.0 - _EYE_R])
        sv, sf, th, la = _sphere(np.zeros(3), _EYE_R)
        self.eye_dirs, self.eye_faces_local = sv / _EYE_R, sf
        self.eye_theta, self.eye_lambda = th, la
        self.n_eye = len(sv)
        n = self.n_head
        left_faces = sf + n
        right_faces = sf[:, ::-1] + n + self.n_eye  # mirrored copy: reversed winding
        self.faces = np.concatenate([self.head_faces, left_faces, right_faces]).astype(np.int32)
        self.n_vertices = n + 2 * self.n_eye
        eye_ids = np.arange(self.n_eye)
        self.mirror = np.concatenate([self.head_mirror, n + self.n_eye + eye_ids, n + eye_ids])
        self.n_head_faces = len(self.head_faces)
        self._base_head = head0
        self.n_eye_faces = len(sf)

    def vertices(self, params=None):
        """All vertices (mm) for head parameters ``params`` (eyeballs follow their rims)."""
        params = fm.default_params() if params is None else params
        head = _grid_points(params, self.phis, self.rows)[self.grid_index]
        base = self._base_head
        shift_l = (head[self.rim_left] - base[self.rim_left]).mean(0)
        shift_r = (head[self.rim_right] - base[self.rim_right]).mean(0)
        left = self.eye_centre + shift_l + _EYE_R * self.eye_dirs
        right = (self.eye_centre * np.array([-1.0, 1.0, 1.0]) + shift_r
                 + _EYE_R * self.eye_dirs * np.array([-1.0, 1.0, 1.0]))
        return np.concatenate([head, left, right], 0)


# ------------------------------------------------------------------------------------------------
# landmarks


def raycast_front(vertices, faces, xy):
    """Front-most surface point under each frontal point ``xy (L, 2)`` (ray along -z).

    Returns ``face_idx (L,)`` and ``bary (L, 3)``; falls back to the nearest face centroid (in x, y)
    among front-facing faces when a ray misses.
    """
    tri = vertices[faces]
    a, b, c = tri[:, 0, :2], tri[:, 1, :2], tri[:, 2, :2]
    v0, v1 = b - a, c - a
    den = v0[:, 0] * v1[:, 1] - v0[:, 1] * v1[:, 0]
    ok = np.abs(den) > 1e-12
    nz = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])[:, 2]
    # only the front of the head: a ray through an eye opening must not land on the back
    front = (nz > 0) & (tri[:, :, 2].mean(1) > 0)
    out_f, out_b = [], []
    for x, y in np.asarray(xy, np.float64):
        v2 = np.array([x, y]) - a
        with np.errstate(divide="ignore", invalid="ignore"):
            l1 = (v2[:, 0] * v1[:, 1] - v2[:, 1] * v1[:, 0]) / den
            l2 = (v0[:, 0] * v2[:, 1] - v0[:, 1] * v2[:, 0]) / den
        l0 = 1.0 - l1 - l2
        inside = ok & front & (l0 >= -1e-9) & (l1 >= -1e-9) & (l2 >= -1e-9)
        if np.any(inside):
            cand = np.flatnonzero(inside)
            z = l0[cand] * tri[cand, 0, 2] + l1[cand] * tri[cand, 1, 2] + l2[cand] * tri[cand, 2, 2]
            k = cand[np.argmax(z)]
            bary = np.clip(np.array([l0[k], l1[k], l2[k]]), 0.0, 1.0)
        else:
            d = np.sum((tri.mean(1)[:, :2] - [x, y]) ** 2, 1) + 1e9 * ~front
            k = int(np.argmin(d))
            bary = np.full(3, 1.0 / 3.0)
        out_f.append(int(k))
        out_b.append(bary / bary.sum())
    return np.asarray(out_f, np.int64), np.asarray(out_b, np.float64)


def ibug68_targets(params=None):
    """Frontal (x, y) mm positions of the 68 iBUG landmarks on the default head (mean shape)."""
    p = fm.default_params() if params is None else params
    ex, ey = p["eye_spacing"], p["eye_height"]
    my, mw = p["mouth_height"], p["mouth_width"]
    t = np.zeros((68, 2))
    t[0:17] = contour_points(p)
    brow_x = [ex + 20.0, ex + 11.0, ex + 1.0, ex - 9.0, ex - 17.0]
    brow_y = [ey + 13.0, ey + 17.5, ey + 19.0, ey + 18.0, ey + 16.0]
    for i in range(5):
        t[17 + i] = (-brow_x[i], brow_y[i])
        t[26 - i] = (brow_x[i], brow_y[i])
    for i, y in enumerate([ey - 2.0, ey * 0.62, ey * 0.28, -1.5]):
        t[27 + i] = (0.0, y)
    t[31], t[32], t[33], t[34], t[35] = (-10, -13), (-5, -15), (0, -16), (5, -15), (10, -13)
    # eyes on the rims of the eye openings
    lid = _EYE_B * np.sqrt(1 - (5.0 / _EYE_A) ** 2) + 1.0
    right_eye = [(-(ex + _EYE_A + 1.0), ey), (-(ex + 5.0), ey + lid), (-(ex - 5.0), ey + lid),
                 (-(ex - _EYE_A - 1.0), ey), (-(ex - 5.0), ey - lid), (-(ex + 5.0), ey - lid)]
    t[36:42] = right_eye
    t[IBUG68_MIRROR[36:42]] = t[36:42] * np.array([-1.0, 1.0])  # the left eye (42..47) mirrors it
    outer = [(-mw, my), (-0.6 * mw, my + 5.0), (-0.25 * mw, my + 6.5), (0, my + 7.0),
             (0.25 * mw, my + 6.5), (0.6 * mw, my + 5.0), (mw, my), (0.6 * mw, my - 6.0),
             (0.25 * mw, my - 8.0), (0, my - 8.5), (-0.25 * mw, my - 8.0), (-0.6 * mw, my - 6.0)]
    t[48:60] = outer
    inner = [(-(mw - 3.0), my), (-0.35 * mw, my + 1.2), (0, my + 1.2), (0.35 * mw, my + 1.2),
             (mw - 3.0, my), (0.35 * mw, my - 1.2), (0, my - 1.2), (-0.35 * mw, my - 1.2)]
    t[60:68] = inner
    return t


def _vertex_face(faces, n_vertices):
    """For each vertex, the lowest-index face using it, and the corner slot there."""
    first = np.full(n_vertices, -1, np.int64)
    slot = np.zeros(n_vertices, np.int64)
    order = np.argsort(faces.ravel(), kind="stable")
    v_sorted = faces.ravel()[order]
    uniq, idx = np.unique(v_sorted, return_index=True)
    pos = order[idx]
    first[uniq] = pos // 3
    slot[uniq] = pos % 3
    return first, slot


def landmark_embedding(topo: HeadTopology, vertices_mm):
    """DECA's six embedding arrays (the dtypes and shapes of DECA's ``data/landmark_embedding.npy``)."""
    head_faces = topo.head_faces
    targets = ibug68_targets()
    full_f, full_b = raycast_front(vertices_mm, head_faces, targets)
    # dynamic contour: silhouette points along grid rows, per integer yaw
    first, slot = _vertex_face(head_faces, topo.n_head)
    hit = np.einsum("lk,lkc->lc", full_b, vertices_mm[head_faces[full_f]])
    head = vertices_mm[: topo.n_head]
    centre_col = topo.n_cols // 2
    paths = []
    for i in range(17):
        if i == 8:
            paths.append(None)
            continue
        cand = np.flatnonzero((topo.col >= 0) & (head[:, 2] > 0))
        v0 = cand[np.argmin(np.sum((head[cand] - hit[i]) ** 2, 1))]
        r0, c0 = topo.row[v0], topo.col[v0]
        lo, hi = sorted((c0, centre_col))
        row_v = np.flatnonzero((topo.row == r0) & (topo.col >= lo) & (topo.col <= hi))
        paths.append(row_v)
    dyn_f = np.zeros((79, 17), np.int64)
    dyn_b = np.zeros((79, 17, 3), np.float32)
    for row in range(79):
        yaw = row if row <= 39 else 39 - row  # rows 40..78 hold yaw -1..-39
        a = np.deg2rad(yaw)
        xr = head[:, 0] * np.cos(a) + head[:, 2] * np.sin(a)  # x after R_y(yaw)
        for i in range(17):
            away = (yaw > 0 and i > 8) or (yaw < 0 and i < 8)
            if paths[i] is None or not away:
                dyn_f[row, i], dyn_b[row, i] = full_f[i], full_b[i]
                continue
            path = paths[i]
            v = path[np.argmax(xr[path])] if yaw > 0 else path[np.argmin(xr[path])]
            if v == path[np.argmax(np.abs(head[path, 0]))]:
                dyn_f[row, i], dyn_b[row, i] = full_f[i], full_b[i]  # still the jaw-line point
                continue
            dyn_f[row, i] = first[v]
            b = np.zeros(3, np.float32)
            b[slot[v]] = 1.0
            dyn_b[row, i] = b
    return {
        "static_lmk_faces_idx": full_f[17:].astype(np.int64),
        "static_lmk_bary_coords": full_b[17:].astype(np.float64),
        "dynamic_lmk_faces_idx": dyn_f,
        "dynamic_lmk_bary_coords": dyn_b,
        "full_lmk_faces_idx": full_f[None].astype(np.int64),
        "full_lmk_bary_coords": full_b[None].astype(np.float32),
    }


# ------------------------------------------------------------------------------------------------
# UV layout, mask and albedo


def uv_layout(topo: HeadTopology):
    """``uv_coords (T, 2)`` and ``uv_faces (F, 3)`` (v up; seams at the back and on the eyes)."""
    n_c, n_r = topo.n_cols, topo.n_rows
    # head chart: u from the column (front at 0.5), v from the row; a second vt for column 0 at
    # the seam (u = 0.98) and one crown vt per crown triangle
    u_col = lambda c: 0.02 + 0.96 * c / n_c  # noqa: E731
    v_row = lambda r: 0.24 + 0.72 * r / (n_r - 1)  # noqa: E731
    vt = []
    vt_of = -np.ones(topo.n_head, np.int64)
    seam_of = {}
    for k in range(topo.n_head):
        if topo.col[k] >= 0:
            vt_of[k] = len(vt)
            vt.append((u_col(topo.col[k]), v_row(topo.row[k])))
    uv_faces = []
    for f in topo.head_faces:
        cols = topo.col[f]
        if np.all(cols >= 0):
            wrap = cols.max() - cols.min() > n_c // 2
            out = []
            for v in f:
                if wrap and topo.col[v] == 0:
                    if v not in seam_of:
                        seam_of[v] = len(vt)
                        vt.append((u_col(n_c), v_row(topo.row[v])))
                    out.append(seam_of[v])
                else:
                    out.append(vt_of[v])
            uv_faces.append(out)
        else:  # crown fan: (top c, top c+1, crown)
            a, b = [v for v in f if topo.col[v] >= 0]
            ca, cb = topo.col[a], topo.col[b]
            cb_u = n_c if cb == 0 else cb
            ua, ub = u_col(ca), u_col(cb_u)
            tb = vt_of[b] if cb != 0 else seam_of.setdefault(b, len(vt))
            if cb == 0 and tb == len(vt):
                vt.append((u_col(n_c), v_row(topo.row[b])))
            apex = len(vt)
            vt.append((0.5 * (ua + ub), 0.985))
            order = [vt_of[a] if v == a else (tb if v == b else apex) for v in f]
            uv_faces.append(order)
    # eyeballs: lambda -> u, theta -> v (front pole at the top of each chart)
    for eye, (u0, u1) in enumerate(((0.52, 0.96), (0.04, 0.48))):
        base_v = topo.n_head + eye * topo.n_eye
        th, la = topo.eye_theta, topo.eye_lambda

        def uv_at(theta, lam, u0=u0, u1=u1):
            return (u0 + (u1 - u0) * lam / (2 * np.pi), 0.02 + 0.18 * (1.0 - theta / np.pi))

        local = topo.eye_faces_local if eye == 0 else topo.eye_faces_local[:, ::-1]
        start_vt, start_f = len(vt), len(uv_faces)
        for f in local:
            lam = la[f].copy()
            pole = (th[f] == 0.0) | (th[f] == np.pi)
            ring = lam[~pole]
            if np.ptp(ring) > np.pi:  # seam: lambda 0 -> 2 pi
                lam[~pole & (lam == 0.0)] = 2 * np.pi
                ring = lam[~pole]
            lam[pole] = ring.mean()
            out = []
            for v, lv in zip(f, lam):
                out.append(len(vt))
                vt.append(uv_at(th[v], lv))
            uv_faces.append(out)
        chart = np.asarray(vt[start_vt:])
        tri = chart[np.asarray(uv_faces[start_f:]) - start_vt]
        e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
        area = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
        if np.mean(area) < 0:  # mirror the chart so that it is counter-clockwise
            vt[start_vt:] = [(u0 + u1 - u, w) for u, w in vt[start_vt:]]
        del base_v
    uv = np.asarray(vt, np.float64)
    uv_faces = np.asarray(uv_faces, np.int64)
    # merge identical vt (eyeball corners were emitted per face)
    key = np.round(uv * 1e9).astype(np.int64)
    _, first, inverse = np.unique(key[:, 0] * 4_000_000_000 + key[:, 1], return_index=True,
                                  return_inverse=True)
    keep = np.sort(first)
    new_index = np.empty(len(first), np.int64)
    new_index[np.argsort(first)] = np.arange(len(first))
    uv_faces = new_index[inverse.reshape(-1)][uv_faces]
    uv = uv[keep]
    # every chart counter-clockwise
    a, b, c = uv[uv_faces[:, 0]], uv[uv_faces[:, 1]], uv[uv_faces[:, 2]]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    if np.any(area <= 0):
        raise RuntimeError(f"default FLAME UV layout: {np.sum(area <= 0)} folded UV triangles")
    return uv, uv_faces.astype(np.int32)


def rasterize_uv(uv, uv_faces, size):
    """Texel -> (face, barycentrics) of a UV layout; texel centres at (i + 0.5) / size, row 0 at
    v = 1. Returns ``face (size, size)`` (-1 outside every chart) and ``bary (size, size, 3)``."""
    face = -np.ones((size, size), np.int64)
    bary = np.zeros((size, size, 3))
    tri = np.asarray(uv, np.float64)[np.asarray(uv_faces)]
    px = tri[..., 0] * size - 0.5  # column coordinate of texel centres
    py = (1.0 - tri[..., 1]) * size - 0.5
    for f in range(len(tri)):
        xs, ys = px[f], py[f]
        c0, c1 = int(np.ceil(xs.min())), int(np.floor(xs.max()))
        r0, r1 = int(np.ceil(ys.min())), int(np.floor(ys.max()))
        if c1 < c0 or r1 < r0:
            continue
        cc, rr = np.meshgrid(np.arange(max(c0, 0), min(c1, size - 1) + 1),
                             np.arange(max(r0, 0), min(r1, size - 1) + 1))
        cc, rr = cc.ravel(), rr.ravel()
        d = (xs[1] - xs[0]) * (ys[2] - ys[0]) - (xs[2] - xs[0]) * (ys[1] - ys[0])
        if abs(d) < 1e-14:
            continue
        l1 = ((cc - xs[0]) * (ys[2] - ys[0]) - (xs[2] - xs[0]) * (rr - ys[0])) / d
        l2 = ((xs[1] - xs[0]) * (rr - ys[0]) - (cc - xs[0]) * (ys[1] - ys[0])) / d
        l0 = 1.0 - l1 - l2
        ok = (l0 >= -1e-9) & (l1 >= -1e-9) & (l2 >= -1e-9)
        face[rr[ok], cc[ok]] = f
        bary[rr[ok], cc[ok]] = np.stack([l0, l1, l2], -1)[ok]
    return face, bary


def _texel_attributes(topo, vertices_mm, uv, uv_faces, size):
    face, bary = rasterize_uv(uv, uv_faces, size)
    inside = face >= 0
    # gutter: every empty texel copies the nearest chart texel (no black seams when sampling)
    _, (ri, ci) = ndimage.distance_transform_edt(~inside, return_indices=True)
    face_f, bary_f = face[ri, ci], bary[ri, ci]
    corners = topo.faces[face_f]  # (S, S, 3)
    pos = np.einsum("ijk,ijkc->ijc", bary_f, vertices_mm[corners])
    is_eye = face_f >= topo.n_head_faces
    return pos, is_eye, inside, face_f, bary_f


def albedo_maps(topo, vertices_mm, uv, uv_faces, size=_ALBEDO_RES, n_components=_N_ALBEDO,
                texels=None):
    """UV albedo mean ``(S, S, 3)`` and basis ``(S, S, 3, K)`` RGB, row 0 = v = 1.

    Skin: :func:`face_mesh.skin_albedo` at the vertices, interpolated into the texels (a per-vertex
    bake); eyeballs: sclera, iris and pupil by the angle from the eyeball's front pole.
    """
    pos, is_eye, _, face_f, bary_f = texels or _texel_attributes(topo, vertices_mm, uv, uv_faces,
                                                                 size)
    v_mean, v_basis = fm.skin_albedo(vertices_mm, n_components=n_components - 1)
    corners = topo.faces[face_f]
    mean = np.einsum("ijk,ijkc->ijc", bary_f, v_mean[corners]).reshape(-1, 3)
    basis = np.einsum("ijk,ijkcq->ijcq", bary_f, v_basis[corners]).reshape(-1, 3,
                                                                          v_basis.shape[-1])
    flat = pos.reshape(-1, 3)
    eye = is_eye.reshape(-1)
    centre = np.where(flat[:, :1] > 0, topo.eye_centre,
                      topo.eye_centre * np.array([-1.0, 1.0, 1.0]))
    d = (flat - centre) / _EYE_R
    ang = np.degrees(np.arccos(np.clip(d[:, 2], -1.0, 1.0)))
    sclera, iris, pupil = np.array([0.92, 0.90, 0.87]), np.array([0.36, 0.24, 0.14]), 0.05
    col = np.where((ang < 14.0)[:, None], pupil, np.where((ang < 34.0)[:, None], iris, sclera))
    mean[eye] = col[eye]
    basis[eye] = 0.0
    iris_field = np.zeros_like(flat)
    iris_field[eye & (ang >= 14.0) & (ang < 34.0)] = [0.10, 0.08, 0.10]
    basis = np.concatenate([basis, iris_field[..., None]], -1)
    return mean.reshape(size, size, 3), basis.reshape(size, size, 3, -1)


def face_eye_mask(topo, vertices_mm, uv, uv_faces, size=256, texels=None):
    """Soft ``(size, size)`` mask in [0, 1]: the face skin region and the visible eyeballs.

    ``texels``: :func:`_texel_attributes` at a multiple of ``size`` (subsampled), to rasterize
    once for the albedo and the mask."""
    if texels is None:
        texels = _texel_attributes(topo, vertices_mm, uv, uv_faces, size)
    step = texels[0].shape[0] // size
    pos, is_eye, inside = (t[::step, ::step] for t in texels[:3])
    p = fm.default_params()
    x, y, z = pos[..., 0], pos[..., 1], pos[..., 2]
    width = fm.face_outline(y, p) - 4.0
    skin = (z > 15.0) & (np.abs(x) < width) & (y > p["chin_height"] + 2.0) & (y < 75.0)
    eye_d = np.where(is_eye, (pos[..., 2] - topo.eye_centre[2]) / _EYE_R, -1.0)
    eyes = is_eye & (eye_d > 0.3)
    hard = ((skin & ~is_eye) | eyes) & inside
    soft = ndimage.gaussian_filter(hard.astype(np.float64), sigma=size / 128.0)
    return np.clip(soft * inside, 0.0, 1.0)


# ------------------------------------------------------------------------------------------------
# skinning, joints, blendshapes


def _smooth(e0, e1, x):
    return fm._smoothstep(e0, e1, x)


def skinning(topo, vertices_mm):
    """``J_regressor (5, V)`` and ``weights (V, 5)``."""
    n, ne = topo.n_head, topo.n_eye
    v = vertices_mm
    head = v[:n]
    y = head[:, 1]
    j_reg = np.zeros((5, topo.n_vertices))
    rows = topo.row
    ring_y = lambda target: np.flatnonzero(  # noqa: E731
        rows == rows[np.argmin(np.abs(y - target) + 1e6 * (topo.col != topo.n_cols // 2))])
    root_ring = ring_y(-115.0)
    neck_ring = ring_y(-75.0)
    j_reg[0, root_ring] = 1.0 / len(root_ring)
    j_reg[1, neck_ring] = 1.0 / len(neck_ring)
    # jaw: two mirrored patches in front of the ears (temporomandibular joints)
    tmj = np.array([70.0, 2.0, 8.0])
    d_l = np.sum((head - tmj) ** 2, 1)
    patch = np.argsort(d_l, kind="stable")[:6]
    patch = np.concatenate([patch, topo.head_mirror[patch]])
    j_reg[2, patch] = 1.0 / len(patch)
    j_reg[3, n:n + ne] = 1.0 / ne
    j_reg[4, n + ne:n + 2 * ne] = 1.0 / ne
    w = np.zeros((topo.n_vertices, 5))
    w_root = _smooth(-105.0, -140.0, y)
    w_jaw = fm.jaw_weight(head) * (1.0 - w_root)
    w[:n, 0] = w_root
    w[:n, 2] = w_jaw
    w[:n, 1] = 1.0 - w_root - w_jaw
    w[n:n + ne, 3] = 1.0
    w[n + ne:, 4] = 1.0
    return j_reg, w


def shape_components(topo, n_components=30):
    """``(V, 3, K)`` mm: PCA of the head's response to the named parameters (N(0, 1) coeffs)."""
    base = fm.default_params()
    cols = []
    for name, _, sigma, _ in fm.PARAM_SPECS:
        hi, lo = dict(base), dict(base)
        hi[name] += 0.5 * sigma
        lo[name] -= 0.5 * sigma
        cols.append((topo.vertices(hi) - topo.vertices(lo)).reshape(-1))
    jac = np.stack(cols, 1)
    u, sv, _ = np.linalg.svd(jac, full_matrices=False)
    comps = u[:, :n_components] * sv[:n_components]
    idx = np.argmax(np.abs(comps), axis=0)
    comps = comps * np.sign(comps[idx, np.arange(comps.shape[1])])
    return comps.reshape(-1, 3, comps.shape[1])


def expression_components(topo, vertices_mm):
    """``(V, 3, 11)`` mm: named expressions on the head (eyeballs do not move)."""
    out = np.zeros((topo.n_vertices, 3, len(FLAME_EXPRESSION_NAMES)))
    head = vertices_mm[: topo.n_head]
    for k, name in enumerate(FLAME_EXPRESSION_NAMES):
        d = fm.expression_displacement(head, name)
        if name in ("eye_close", "wink_left"):
            d = d * 1.6  # close the eye openings at coefficient ~1
        out[: topo.n_head, :, k] = d
    return out


def pose_correctives(topo, vertices_mm):
    """``posedirs (V, 3, 36)`` mm per unit of the pose feature: a jaw-opening corrective."""
    posedirs = np.zeros((topo.n_vertices, 3, 36))
    head = vertices_mm[: topo.n_head]
    x, y, z = head[:, 0], head[:, 1], head[:, 2]
    cheek = (fm._gauss(np.abs(x), y, 45.0, -30.0, 16.0, 18.0) * np.clip(z / 30.0, 0.0, 1.0)
             * fm.jaw_weight(head))  # only where the jaw moves the skin
    field = np.stack([-0.15 * np.sign(x) * cheek, -0.6 * cheek, -0.3 * cheek], -1) * 10.0
    # pose feature of the jaw (joint 2) occupies entries 9..17 (row-major R - I); opening about x
    # gives (R - I)[2, 1] = sin(angle) (entry 16) and (R - I)[1, 2] = -sin(angle) (entry 14)
    posedirs[: topo.n_head, :, 16] = 0.5 * field
    posedirs[: topo.n_head, :, 14] = -0.5 * field
    return posedirs


# ------------------------------------------------------------------------------------------------
# build, write, load


def build_flame_arrays():
    """Every array of the default head (mm where geometric), plus the topology object."""
    topo = HeadTopology()
    v = topo.vertices()
    j_reg, weights = skinning(topo, v)
    shape = shape_components(topo)
    expr = expression_components(topo, v)
    posedirs = pose_correctives(topo, v)
    emb = landmark_embedding(topo, v)
    uv, uv_faces = uv_layout(topo)
    texels = _texel_attributes(topo, v, uv, uv_faces, _ALBEDO_RES)
    alb_mean, alb_basis = albedo_maps(topo, v, uv, uv_faces, texels=texels)
    mask = face_eye_mask(topo, v, uv, uv_faces, texels=texels)
    shapedirs = np.zeros((topo.n_vertices, 3, _N_SHAPE + _N_EXPR))
    shapedirs[:, :, : shape.shape[-1]] = shape
    shapedirs[:, :, _N_SHAPE:_N_SHAPE + expr.shape[-1]] = expr
    return {
        "topology": topo,
        "v_template": v,
        "faces": topo.faces,
        "shapedirs": shapedirs,
        "posedirs": posedirs,
        "J_regressor": j_reg,
        "weights": weights,
        "embedding": emb,
        "uv_coords": uv,
        "uv_faces": uv_faces,
        "albedo_mean": alb_mean,
        "albedo_basis": alb_basis,
        "mask": mask,
    }


def _savez_fast(path, **arrays):
    """``np.savez_compressed`` with zlib level 1 (np.load reads it; fixed zip timestamps)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.ascontiguousarray(arr), allow_pickle=False)


def _fingerprint():
    return generator_fingerprint(FLAME_GENERATOR_MODULES)


def write_flame_files(folder) -> Path:
    """Generate the default head and write it, in the real file layouts, to ``folder`` (atomic)."""
    from PIL import Image

    folder = Path(folder)
    a = build_flame_arrays()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", suffix=".tmp", dir=folder.parent))
    try:
        v_m = (a["v_template"] + FLAME_OFFSET_MM) * _MM
        j_reg = a["J_regressor"]
        pkl = {
            "f": a["faces"].astype(np.uint32),
            "v_template": v_m,
            "shapedirs": a["shapedirs"] * _MM,
            "posedirs": a["posedirs"] * _MM,
            "J_regressor": scipy.sparse.csc_matrix(j_reg),
            "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], np.int64),
            "weights": a["weights"],
            "J": j_reg @ v_m,
            "bs_style": "lbs",
            "bs_type": "lrotmin",
        }
        with open(tmp / FILES["model"], "wb") as fh:
            pickle.dump(pkl, fh, protocol=2)
        emb = np.empty((), dtype=object)
        emb[()] = a["embedding"]
        np.save(tmp / FILES["embedding"], emb, allow_pickle=True)
        lines = ["# jface synthetic default head (NOT FLAME); FLAME-structured stand-in"]
        lines += [f"v {x:.8f} {y:.8f} {z:.8f}" for x, y, z in v_m]
        lines += [f"vt {u:.8f} {w:.8f}" for u, w in a["uv_coords"]]
        lines += [f"f {f[0] + 1}/{t[0] + 1} {f[1] + 1}/{t[1] + 1} {f[2] + 1}/{t[2] + 1}"
                  for f, t in zip(a["faces"], a["uv_faces"])]
        (tmp / FILES["obj"]).write_text("\n".join(lines) + "\n")
        mean_bgr = a["albedo_mean"][..., ::-1].astype(np.float32)
        basis_bgr = a["albedo_basis"][..., ::-1, :].astype(np.float32)
        _savez_fast(tmp / FILES["albedo"], MU=mean_bgr.reshape(-1),
                    PC=basis_bgr.reshape(-1, basis_bgr.shape[-1]))
        m8 = np.round(a["mask"] * 255.0).astype(np.uint8)
        Image.fromarray(np.stack([m8, m8, m8, np.full_like(m8, 255)], -1), "RGBA").save(
            tmp / FILES["mask"])
        (tmp / FILES["manifest"]).write_text(json.dumps({
            "what": "jface synthetic default head: a FLAME-structured procedural stand-in, "
                    "NOT FLAME",
            "version": FLAME_VERSION,
            "fingerprint": _fingerprint(),
            "n_vertices": int(len(v_m)),
            "n_faces": int(len(a["faces"])),
            "expressions": list(FLAME_EXPRESSION_NAMES),
        }, indent=1))
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        os.chmod(tmp, 0o755)
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(tmp, folder)
        except OSError:
            # another process (e.g. a pytest-xdist worker) finished first: keep its files
            if not _files_ok(folder):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _files_ok(folder: Path) -> bool:
    try:
        man = json.loads((folder / FILES["manifest"]).read_text())
    except (OSError, ValueError):
        return False
    if man.get("version") != FLAME_VERSION or man.get("fingerprint") != _fingerprint():
        return False
    return all((folder / name).exists() for name in FILES.values())


def ensure_flame_files(folder) -> Path:
    """``folder`` with current default-head files, generating them when missing or stale."""
    folder = Path(folder)
    with generation_lock(folder):
        if not _files_ok(folder):
            write_flame_files(folder)
    return folder


def load_flame_albedo(path, size=256):
    """``FLAME_albedo_from_BFM.npz`` -> ``(mean (size, size, 3), basis (size, size, 3, K))`` RGB.

    DECA's ``FLAMETex`` (``decalib/models/FLAME.py``): MU/PC are a 512x512x3 BGR image, row 0 = v = 1;
    nearest resize to ``size`` (source index floor(i * 512 / size)), channels reversed to RGB.
    A minimal reader for the default head; a general one is ``jface.files.obj``.
    """
    with np.load(path, allow_pickle=False) as z:
        mu, pc = z["MU"], z["PC"]
    res = int(round(np.sqrt(mu.size / 3)))
    if mu.shape != (res * res * 3,) or pc.shape[0] != mu.size:
        raise ValueError(f"{path}: expected MU (R*R*3,) and PC (R*R*3, K), got {mu.shape}, "
                         f"{pc.shape}")
    idx = (np.arange(size) * res) // size
    mean = mu.reshape(res, res, 3)[idx][:, idx][..., ::-1]
    basis = pc.reshape(res, res, 3, -1)[idx][:, idx][:, :, ::-1, :]
    return np.ascontiguousarray(mean), np.ascontiguousarray(basis)


def load_flame_files(folder):
    """Load the default head from ``folder`` through the real-file loaders -> ``FlameModel``."""
    from PIL import Image

    folder = Path(folder)
    emb = load_landmark_embedding(folder / FILES["embedding"])
    model = load_flame(folder / FILES["model"], landmark_embedding=emb)
    obj = load_obj(folder / FILES["obj"])
    if obj["faces"].shape != tuple(model.faces.shape) or not np.array_equal(
            obj["faces"], np.asarray(model.faces)):
        raise ValueError(f"{folder / FILES['obj']}: faces differ from {FILES['model']}")
    mean, basis = load_flame_albedo(folder / FILES["albedo"])
    mask = np.asarray(Image.open(folder / FILES["mask"]), np.float32)[..., 0] / 255.0
    f32 = lambda x: jax.device_put(np.asarray(x, np.float32))  # noqa: E731 (no per-shape conversion program)
    return model.replace(
        uv_coords=f32(obj["uv_coords"]),
        uv_faces=jax.device_put(np.asarray(obj["uv_faces"], np.int32)),
        albedo_mean=f32(mean),
        albedo_basis=f32(basis),
        uv_face_eye_mask=f32(mask),
    )


def contour_row(yaw_degrees: int) -> int:
    """DECA's LUT row for an integer yaw in degrees (``FLAME._find_dynamic_lmk_idx_and_bcoords``)."""
    a = min(int(yaw_degrees), 39)
    return a if a >= 0 else (78 if a < -39 else 39 - a)


def lmk_points(model, vertices, yaw_degrees=0):
    """``(static (51, 3), contour (17, 3))`` landmark points of ``vertices`` for a given yaw."""
    faces = np.asarray(model.faces)
    v = np.asarray(vertices, np.float64)

    def pts(fidx, bary):
        return np.einsum("lk,lkc->lc", np.asarray(bary, np.float64), v[faces[np.asarray(fidx)]])

    row = contour_row(yaw_degrees)
    static = pts(model.static_lmk_faces_idx, model.static_lmk_bary_coords)
    contour = pts(np.asarray(model.dynamic_lmk_faces_idx)[row],
                  np.asarray(model.dynamic_lmk_bary_coords)[row])
    return static, contour
