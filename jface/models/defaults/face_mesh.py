"""A procedural human head surface: the geometry behind jface's synthetic default models.

Nothing here comes from a scanned or licensed model. The surface is written down from rough
anthropometric proportions (millimetres) so that jface has a face-like mesh to run on when the
licence-gated BFM / FLAME files are absent. It is a *synthetic stand-in*, not a statistical model
of real faces.

Frame (both defaults): BFM / FLAME axes, x to the subject's left (image right for a frontal face),
y up, z towards the camera; right-handed; millimetres here (the FLAME default converts to metres).
The nose tip is near (0, 0, 100); the head centre near the origin.

The surface is a generalised cylinder ``P(phi, s)``:

* ``s`` runs along the head's vertical axis (neck bottom -> crown), through anchor profiles of the
  height ``y``, half-width ``A``, front depth ``Cf``, back depth ``Cb`` and depth offset ``z0``
  (monotone cubic interpolation);
* ``phi`` is the azimuth (0 = front, +pi/2 = subject's left): ``x = A sin(phi)``,
  ``z = z0 + C(phi) cos(phi)``;
* facial features (forehead, brow ridge, eye sockets, nose, cheeks, lips, chin, jaw line, ears)
  are smooth forward displacements written in frontal millimetre coordinates ``(x, y)``.

Identity variation is the first-order response of the surface to ~30 named parameters (scaled
by their assumed standard deviations, then orthogonalised by PCA); expressions are explicit
displacement fields (jaw rotation about the jaw axis, mouth-corner pull, ...).
"""

from __future__ import annotations

import numpy as np
from scipy.interpolate import PchipInterpolator

__all__ = [
    "PARAM_SPECS",
    "EXPRESSION_NAMES",
    "default_params",
    "profile_knots",
    "head_surface",
    "expression_displacement",
    "jaw_weight",
    "grid_mesh",
    "meridian_rows",
]

# (name, default, standard deviation, symmetric?)  -- mm or dimensionless scale factors.
PARAM_SPECS = [
    ("head_width", 1.0, 0.045, True),        # x scale of the whole head
    ("head_height", 1.0, 0.04, True),        # y scale of the whole head
    ("head_depth", 1.0, 0.04, True),         # z scale of the skull (back/front depth)
    ("face_forward", 0.0, 4.0, True),        # mm: whole face region forward/back
    ("forehead_slope", 0.0, 5.0, True),      # mm: forehead top forward/back
    ("brow_ridge", 6.0, 2.0, True),
    ("eye_depth", 10.0, 2.5, True),          # socket depth
    ("eye_spacing", 32.0, 2.0, True),        # half inter-pupillary distance
    ("eye_height", 30.0, 2.5, True),
    ("nose_length", 0.0, 3.0, True),         # tip up/down
    ("nose_projection", 27.0, 3.0, True),
    ("nose_width", 1.0, 0.12, True),
    ("nose_bridge", 9.0, 2.5, True),
    ("cheekbones", 6.0, 2.5, True),
    ("cheek_fullness", 0.0, 3.0, True),
    ("mouth_height", -35.0, 2.5, True),
    ("mouth_width", 25.0, 2.0, True),
    ("lip_thickness", 1.0, 0.2, True),
    ("chin_projection", 10.0, 3.0, True),
    ("chin_height", -78.0, 3.5, True),
    ("jaw_width", 60.0, 4.0, True),
    ("jaw_forward", 0.0, 3.0, True),
    ("temple_width", 0.0, 3.0, True),
    ("neck_width", 1.0, 0.07, True),
    ("ear_size", 1.0, 0.12, True),
    ("crown_height", 0.0, 5.0, True),
    # small asymmetries
    ("nose_deviation", 0.0, 1.2, False),
    ("jaw_shift", 0.0, 1.5, False),
    ("eye_tilt", 0.0, 1.0, False),
    ("cheek_asym", 0.0, 1.2, False),
]

EXPRESSION_NAMES = (
    "jaw_open",
    "smile",
    "lip_pucker",
    "brow_raise",
    "eye_close",
    "brow_frown",
    "mouth_stretch",
    "cheek_puff",
    "lip_press",
    "nose_wrinkle",
    "mouth_left",
    "wink_left",
)


_MEAN = {name: float(mean) for name, mean, _, _ in PARAM_SPECS}


def default_params() -> dict:
    """The mean head's parameters (name -> value)."""
    return {name: float(mean) for name, mean, _, _ in PARAM_SPECS}


def profile_knots(params: dict):
    """Anchor profiles along the vertical axis ``s`` (knot index): y, A, Cf, Cb, z0 (mm)."""
    hw = hh = hd = 1.0  # global scales are applied to the finished surface (head_surface)
    nw = params["neck_width"]
    y = np.array([-165.0, -125.0, -100.0, -82.0, -60.0, -35.0, -5.0, 25.0, 55.0, 85.0, 112.0, 133.0,
                  146.0, 150.0])
    a = np.array([54.0, 52.0, 53.0, 58.0, 65.0, 71.0, 75.0, 77.0, 76.0, 71.0, 60.0, 42.0, 22.0,
                  0.0])
    cf = np.array([50.0, 49.0, 51.0, 55.0, 62.0, 70.0, 76.0, 80.0, 82.0, 79.0, 68.0, 48.0, 25.0,
                   0.0])
    cb = np.array([56.0, 56.0, 62.0, 74.0, 88.0, 97.0, 102.0, 104.0, 104.0, 99.0, 84.0, 60.0, 30.0,
                   0.0])
    z0 = np.array([-28.0, -26.0, -20.0, -12.0, -7.0, -4.0, -3.0, -3.0, -4.0, -6.0, -9.0, -11.0,
                   -12.0, -12.0])
    neck = np.clip((-60.0 - y) / 40.0, 0.0, 1.0)  # 1 on the neck, 0 on the head
    a = a * (hw * (1 - neck) + nw * neck)
    cf = cf * (hd * (1 - neck) + nw * neck)
    cb = cb * (hd * (1 - neck) + nw * neck)
    y = y * hh
    y[-3:] += params["crown_height"] * np.array([0.6, 1.0, 1.0])
    a[7:10] += params["temple_width"] * np.array([0.5, 1.0, 0.6])
    return y, a, cf, cb, z0


def _pchip(xk, yk, x):
    """Monotone cubic through (xk, yk), constant outside (C1, so no shading bands at knots)."""
    xk = np.asarray(xk, np.float64)
    order = np.argsort(xk, kind="stable")
    f = PchipInterpolator(xk[order], np.asarray(yk, np.float64)[order], extrapolate=False)
    out = f(np.clip(x, xk.min(), xk.max()))
    return out


def _gauss(x, y, cx, cy, sx, sy, p=2.0):
    return np.exp(-(np.abs((x - cx) / sx) ** p) - (np.abs((y - cy) / sy) ** p))


def _sig(t):
    return 0.5 * (1.0 + np.tanh(t))


def _smoothstep(e0, e1, x):
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def face_outline(y, params):
    """Half-width (mm) of the face region (jaw line, cheeks, temples) at height ``y``."""
    chin_y = params["chin_height"]
    jaw_w = params["jaw_width"]
    # mandible: from the chin (narrow) to the gonion (jaw angle) near y = -45, then cheeks/temples
    t = np.clip((y - chin_y) / (-45.0 - chin_y), 0.0, 1.0)
    lower = 16.0 + (jaw_w - 16.0) * np.sqrt(np.clip(t, 0, 1) * (2 - t))
    upper = jaw_w + (68.0 - jaw_w) * _smoothstep(-45.0, 0.0, y)
    return np.where(y < -45.0, lower, upper)


def _features(x, y, params, side):
    """Forward (z) displacement of the facial features at frontal coordinates (x, y), mm."""
    p = params
    ex, ey = p["eye_spacing"], p["eye_height"]
    ax = np.abs(x)
    d = np.zeros_like(x)
    # face region pushed forward in front of the skull (makes jaw line and chin)
    chin_y = p["chin_height"]
    amp = _pchip([-120.0, -95.0, chin_y, -60.0, -35.0, -10.0, 20.0, 45.0, 70.0, 100.0],
                 [0.0, 0.0, 30.0, 33.0, 24.0, 7.0, 3.0, 1.0, 0.0, 0.0], y)
    amp = amp + p["face_forward"] * _smoothstep(-90.0, -60.0, y) * (1 - _smoothstep(60.0, 90.0, y))
    amp = amp + p["jaw_forward"] * _smoothstep(-30.0, -60.0, y)
    width = face_outline(y, p) + p["jaw_shift"] * side * _smoothstep(-20.0, -60.0, y)
    inside = _sig((width - ax) / 6.0) * _sig((y - (chin_y - 2.0)) / 2.5)
    d += amp * inside
    d += p["forehead_slope"] * _smoothstep(40.0, 100.0, y) * np.exp(-(x / 60.0) ** 2)
    # brow ridge and glabella
    d += p["brow_ridge"] * _gauss(ax, y, ex - 2.0, ey + 15.0, 22.0, 7.0)
    d += 0.6 * p["brow_ridge"] * _gauss(x, y, 0.0, ey + 12.0, 12.0, 8.0)
    # eye sockets and eyeballs/lids
    tilt = p["eye_tilt"] * side
    d -= p["eye_depth"] * _gauss(ax, y, ex, ey + tilt, 18.0, 12.0)
    d += 0.45 * p["eye_depth"] * _gauss(ax, y, ex, ey + tilt, 12.5, 5.5, 2.4)
    # cheekbones and cheeks
    d += (p["cheekbones"] + p["cheek_asym"] * side) * _gauss(ax, y, 46.0, ey - 22.0, 17.0, 13.0)
    d += p["cheek_fullness"] * _gauss(ax, y, 38.0, -20.0, 18.0, 18.0)
    # nose: ridge height profile along y, width growing towards the base
    nl = p["nose_length"]
    yn = y - nl * _smoothstep(ey + 5.0, -15.0, y)
    # scale: the tip value (index 3) is the projection, the others relative
    tip = p["nose_projection"]
    h = _pchip([-40.0, -19.0, -14.0, -6.0, -1.5, 8.0, 20.0, ey - 5.0, ey + 8.0, ey + 30.0],
               [0.0, 0.0, 0.28 * tip, 0.75 * tip, tip, 0.72 * tip,
                0.45 * tip + 0.1 * p["nose_bridge"], p["nose_bridge"], 0.0, 0.0], yn)
    nw = _pchip([-40.0, -20.0, -8.0, 5.0, 20.0, 40.0, 60.0],
                [13.0, 13.0, 14.0, 9.0, 7.0, 8.0, 8.0], yn) * p["nose_width"]
    xn = x - p["nose_deviation"] * _smoothstep(ey, -5.0, y)
    d += h * np.exp(-(np.abs(xn / nw) ** 2.2))
    d += 7.0 * p["nose_width"] * _gauss(np.abs(xn), y, 15.0 * p["nose_width"], -9.0, 6.0, 6.0)
    # mouth region, lips and the mouth line
    my, mw, lt = p["mouth_height"], p["mouth_width"], p["lip_thickness"]
    d += 9.0 * _gauss(x, y, 0.0, my, 30.0, 22.0)
    d += 5.5 * lt * _gauss(x, y, 0.0, my + 5.5, mw * 0.95, 3.5, 2.6)
    d += 5.5 * lt * _gauss(x, y, 0.0, my - 5.0, mw * 0.85, 4.5, 2.6)
    d -= 2.5 * _gauss(x, y, 0.0, my + 0.3, mw * 1.02, 1.3, 2.6)
    d -= 2.0 * _gauss(ax, y, mw + 4.0, my - 2.0, 5.0, 8.0)     # nasolabial hint
    # chin and mentolabial sulcus
    d += p["chin_projection"] * _gauss(x, y, 0.0, chin_y + 12.0, 16.0, 10.0)
    d -= 2.5 * _gauss(x, y, 0.0, my - 16.0, 14.0, 3.5)
    return d


def _ears(y, params, phi):
    """Outward (|x|) displacement forming simple ears at phi = +-90 degrees."""
    s = params["ear_size"]
    cy = 8.0
    ang = np.abs(phi) - np.pi / 2 + 0.05
    e = np.exp(-((y - cy) / (26.0 * s)) ** 4 - (ang / (0.22 * s)) ** 2)
    return 11.0 * s * e


def head_surface(phi, s, params=None, *, features=True):
    """Points ``(..., 3)`` (mm, BFM axes) of the head at azimuth ``phi``, profile parameter ``s``.

    ``phi`` and ``s`` broadcast. ``s`` is a (fractional) knot index of :func:`profile_knots`.
    """
    params = default_params() if params is None else params
    y_k, a_k, cf_k, cb_k, z0_k = profile_knots(params)
    knots = np.arange(len(y_k), dtype=np.float64)
    y = PchipInterpolator(knots, y_k)(s)
    a = PchipInterpolator(knots, a_k)(s)
    cf = PchipInterpolator(knots, cf_k)(s)
    cb = PchipInterpolator(knots, cb_k)(s)
    z0 = PchipInterpolator(knots, z0_k)(s)
    sp, cp = np.sin(phi), np.cos(phi)
    c = cb + (cf - cb) * _sig(4.0 * cp)
    x = a * sp
    z = z0 + c * cp
    if features:
        side = np.sign(sp)
        front = np.clip(cp, 0.0, 1.0) ** 0.5
        # features are drawn for the mean chin height and jaw width; these two vary as smooth
        # warps of the lower face (moving a feature edge would slide the surface sideways)
        fixed = dict(params, chin_height=_MEAN["chin_height"], jaw_width=_MEAN["jaw_width"])
        z = z + front * _features(x, y, fixed, side)
        x = x + np.sign(sp) * _ears(y, params, phi)
        lower = _smoothstep(-25.0, -80.0, y) * front
        y = y + (params["chin_height"] - _MEAN["chin_height"]) * lower
        x = x * (1.0 + (params["jaw_width"] / _MEAN["jaw_width"] - 1.0)
                 * _smoothstep(-15.0, -55.0, y) * front)
    x, y, z = np.broadcast_arrays(x, y, z)
    scale = np.array([params["head_width"], params["head_height"], params["head_depth"]])
    return np.stack([x, y, z], axis=-1) * scale


# --------------------------------------------------------------------------------------------
# expressions


def jaw_weight(points, params=None):
    """Soft weight (N,) of the lower face that follows the jaw: below the mouth line, in front."""
    params = default_params() if params is None else params
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    my = params["mouth_height"]
    # below the mouth line near the mouth, below the jaw-angle line further out; only in front of
    # the ears (z > about 0) and above the neck under the chin
    line = my + 0.3 + 0.55 * np.clip(np.abs(x) - params["mouth_width"], 0.0, None) ** 1.15 * 0.6
    below = _sig((line - y) / 1.2)
    front = _sig((z - 5.0) / 8.0)
    neck = _sig((y - (params["chin_height"] - 28.0)) / 6.0) + _sig((z - 55.0) / 6.0)
    ears = _sig((72.0 - np.abs(x)) / 2.5)  # the mandible ends in front of the ears
    return below * front * np.clip(neck, 0.0, 1.0) * ears


def expression_displacement(points, name, params=None):
    """Displacement ``(N, 3)`` (mm) of expression ``name`` at coefficient 1 on ``points``."""
    params = default_params() if params is None else params
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    ax = np.abs(x)
    side = np.sign(x)
    my, mw = params["mouth_height"], params["mouth_width"]
    ex, ey = params["eye_spacing"], params["eye_height"]
    front = np.clip((z - 0.0) / 30.0, 0.0, 1.0)
    d = np.zeros_like(points)
    mouth = _gauss(x, y, 0.0, my, mw * 1.3, 12.0) * front
    if name == "jaw_open":
        # rotate the lower face about the jaw axis (x axis through the condyles) by 8 degrees
        w = jaw_weight(points, params)
        pivot = np.array([0.0, 5.0, -5.0])
        ang = np.deg2rad(8.0)
        q = points - pivot
        yr = q[..., 1] * np.cos(ang) - q[..., 2] * np.sin(ang)
        zr = q[..., 1] * np.sin(ang) + q[..., 2] * np.cos(ang)
        d[..., 1] = w * (yr - q[..., 1])
        d[..., 2] = w * (zr - q[..., 2])
    elif name == "smile":
        g = _gauss(ax, y, mw, my, 12.0, 10.0) * front
        d[..., 0] = 4.0 * side * g
        d[..., 1] = 4.5 * g + 2.0 * _gauss(ax, y, 40.0, -5.0, 15.0, 12.0) * front
        d[..., 2] = -2.0 * g + 2.5 * _gauss(ax, y, 40.0, -5.0, 15.0, 12.0) * front
    elif name == "lip_pucker":
        g = _gauss(x, y, 0.0, my, mw * 1.1, 9.0) * front
        d[..., 0] = -0.35 * x * g
        d[..., 2] = 7.0 * g
    elif name == "brow_raise":
        g = _gauss(ax, y, ex, ey + 17.0, 30.0, 14.0) * front
        d[..., 1] = 5.0 * g
        d[..., 2] = 0.5 * g
    elif name in ("eye_close", "wink_left"):
        # upper lid slides down over the eye opening; lower lid up a little
        upper = _gauss(ax, y, ex, ey + 3.0, 13.0, 4.5) * front
        lower = _gauss(ax, y, ex, ey - 4.0, 12.0, 3.0) * front
        if name == "wink_left":
            mask = _sig(x / 4.0)
            upper, lower = upper * mask, lower * mask
        d[..., 1] = -5.0 * upper + 1.5 * lower
        d[..., 2] = 1.5 * upper
    elif name == "brow_frown":
        g = _gauss(ax, y, 18.0, ey + 14.0, 14.0, 9.0) * front
        d[..., 0] = -3.0 * side * g
        d[..., 1] = -3.5 * g
        d[..., 2] = 1.0 * g
    elif name == "mouth_stretch":
        g = _gauss(ax, y, mw, my, 14.0, 10.0) * front
        d[..., 0] = 5.0 * side * g
        d[..., 1] = -2.0 * g
    elif name == "cheek_puff":
        g = _gauss(ax, y, 32.0, my + 2.0, 14.0, 14.0) * front
        d[..., 0] = 4.0 * side * g
        d[..., 2] = 4.0 * g
    elif name == "lip_press":
        up = _gauss(x, y, 0.0, my + 5.0, mw, 5.0) * front
        lo = _gauss(x, y, 0.0, my - 5.0, mw, 5.0) * front
        d[..., 1] = -1.5 * up + 1.5 * lo
        d[..., 2] = -2.0 * (up + lo)
    elif name == "nose_wrinkle":
        g = _gauss(ax, y, 12.0, -2.0, 9.0, 12.0) * front
        d[..., 1] = 3.0 * g + 2.0 * _gauss(ax, y, 12.0, my + 8.0, 12.0, 6.0) * front
        d[..., 2] = 1.0 * g
    elif name == "mouth_left":
        d[..., 0] = 5.0 * mouth
    else:
        raise ValueError(f"name: unknown expression {name!r}; expected one of {EXPRESSION_NAMES}")
    return d


# --------------------------------------------------------------------------------------------
# albedo


def skin_albedo(points, params=None, *, n_components=12, seed=20171):
    """Linear RGB albedo model evaluated at surface points ``(N, 3)`` (mm, mean-head frame).

    Returns the mean ``(N, 3)`` in [0, 1] (a plain skin tone, redder lips and cheeks, darker brows
    and lid lines) and a basis ``(N, 3, K)`` for N(0, 1) coefficients: overall tone, redness,
    yellowness, lip / brow / cheek colour, then smooth random fields. Every field is bilaterally
    symmetric (evaluated at x and -x and averaged), so it is the same function on any mesh.
    """
    p = default_params() if params is None else params
    pts = np.asarray(points, np.float64)
    x, y, z = pts[:, 0], pts[:, 1], pts[:, 2]
    ax = np.abs(x)
    front = np.clip(z / 40.0, 0.0, 1.0)
    skin = np.array([0.80, 0.60, 0.49])
    my, ex, ey = p["mouth_height"], p["eye_spacing"], p["eye_height"]
    lips = (_gauss(x, y, 0.0, my + 5.0, 24.0, 3.2, 2.6)
            + _gauss(x, y, 0.0, my - 4.5, 21.0, 4.2, 2.6)) * front
    brows = _gauss(ax, y, ex - 2.0, ey + 16.0, 20.0, 3.2, 3.0) * front
    cheeks = _gauss(ax, y, 42.0, -5.0, 16.0, 14.0) * front
    lids = _gauss(ax, y, ex, ey, 15.0, 6.0, 2.4) * front
    mean = np.broadcast_to(skin, pts.shape).copy()
    mean += lips[:, None] * (np.array([0.66, 0.36, 0.37]) - skin)
    mean += brows[:, None] * (np.array([0.30, 0.22, 0.18]) - skin)
    mean += 0.35 * cheeks[:, None] * (np.array([0.82, 0.50, 0.45]) - skin)
    mean += 0.4 * lids[:, None] * (np.array([0.60, 0.44, 0.40]) - skin)
    ones = np.ones_like(x)
    fields = [
        np.stack([ones, ones, ones], -1) * 0.08,                     # overall tone
        np.stack([ones, -0.3 * ones, -0.5 * ones], -1) * 0.04,       # redness
        np.stack([0.5 * ones, 0.4 * ones, -0.6 * ones], -1) * 0.03,  # yellowness
        lips[:, None] * np.array([0.08, 0.02, 0.03]),
        brows[:, None] * np.array([0.12, 0.10, 0.08]),
        cheeks[:, None] * np.array([0.06, -0.01, -0.01]),
    ]
    rng = np.random.default_rng(seed)
    flip = pts * np.array([-1.0, 1.0, 1.0])
    while len(fields) < n_components:
        centres = rng.uniform([-80, -100, -30], [80, 110, 100], size=(6, 3))
        weights = rng.normal(size=(6, 3)) * 0.02
        f = np.zeros_like(pts)
        for c, w in zip(centres, weights):
            f += 0.5 * (np.exp(-np.sum((pts - c) ** 2, axis=1) / (2 * 35.0**2))
                        + np.exp(-np.sum((flip - c) ** 2, axis=1) / (2 * 35.0**2)))[:, None] * w
        fields.append(f)
    return mean, np.stack(fields[:n_components], axis=-1)


# --------------------------------------------------------------------------------------------
# meshing


def meridian_rows(s_lo, s_hi, n_rows, params=None):
    """Profile parameters ``(n_rows,)`` from ``s_lo`` to ``s_hi``, uniform in front arc length."""
    params = default_params() if params is None else params
    s = np.linspace(s_lo, s_hi, 4001)
    pts = head_surface(np.zeros_like(s), s, params, features=False)
    # blend front and side meridians so rows are even over the whole face
    side = head_surface(np.full_like(s, np.pi / 2), s, params, features=False)
    seg = 0.5 * (np.linalg.norm(np.diff(pts, axis=0), axis=1)
                 + np.linalg.norm(np.diff(side, axis=0), axis=1))
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    return np.interp(np.linspace(0.0, arc[-1], n_rows), arc, s)


def grid_mesh(phis, rows, *, periodic=False, pole=False):
    """A symmetric triangulated (row, column) grid.

    ``phis (C,)`` azimuths, mirror-symmetric (``phi[j] = -phi[C-1-j]``, or for ``periodic`` grids
    ``phi[j] = -phi[(C-j) % C]``); ``rows (R,)``: row parameters bottom -> top. Vertex index
    ``r * C + c``; with ``pole`` one more vertex (index R*C) closes the top row.

    Triangles are wound counter-clockwise seen from outside (phi increases towards +x on the front,
    rows increase upwards). The diagonal of each quad is mirrored across phi = 0 so the
    triangulation itself is bilaterally symmetric. Returns ``faces (F, 3)`` int32 and the vertex
    mirror ``(N,)``.
    """
    n_c, n_r = len(phis), len(rows)
    quads_c = n_c if periodic else n_c - 1
    faces = []
    for r in range(n_r - 1):
        for c in range(quads_c):
            c1 = (c + 1) % n_c
            v00, v01 = r * n_c + c, r * n_c + c1
            v10, v11 = (r + 1) * n_c + c, (r + 1) * n_c + c1
            mid = 0.5 * (phis[c] + (phis[c1] if c1 > c else phis[c] + (phis[1] - phis[0])))
            if mid < 0:
                faces += [(v00, v01, v11), (v00, v11, v10)]
            else:
                faces += [(v00, v01, v10), (v01, v11, v10)]
    if pole:
        top = (n_r - 1) * n_c
        apex = n_r * n_c
        for c in range(quads_c):
            c1 = (c + 1) % n_c
            faces.append((top + c, top + c1, apex))
    faces = np.asarray(faces, dtype=np.int32)
    cols = np.arange(n_c)
    mirror_c = (n_c - cols) % n_c if periodic else n_c - 1 - cols
    mirror = (np.arange(n_r)[:, None] * n_c + mirror_c[None, :]).reshape(-1)
    if pole:
        mirror = np.concatenate([mirror, [n_r * n_c]])
    return faces, mirror.astype(np.int32)
