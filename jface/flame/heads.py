"""Head meshes for demos, benchmarks and tests: a procedural FLAME-sized head, and the demo head.

:func:`procedural_head` builds a latitude/longitude ellipsoid "head" (with a nose bump) in FLAME's
world frame (metres; x to the subject's left, y up, +z towards the camera) with 5023 vertices
and 9976 counter-clockwise (outward) faces by default, the sizes of FLAME 2020, plus a UV layout
(v up, a seam at u = 0/1) and a procedural 256x256 albedo.

:func:`demo_head` returns the embedded FLAME-structured head (``jface.models.default_flame_model``)
when it can be built, and the procedural head otherwise. :func:`deca_camera` frames either like
DECA's face crops. (They live in the models layer because the demo head reads the default FLAME
model; the render primitives know nothing of heads.)
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jface.models import default_flame_model

__all__ = ["procedural_head", "procedural_albedo", "demo_head", "deca_camera"]


def procedural_head(n_rings: int = 58, n_lon: int = 86, num_vertices: int = 5023) -> dict:
    """Ellipsoid head: dict of numpy arrays ``vertices (V, 3)`` float32 (metres),
    ``faces (F, 3)`` int32 (F = 2 n_rings n_lon), ``uv_coords (T, 2)``, ``uv_faces (F, 3)``.

    The defaults give V = 5023 (4990 surface vertices + 33 unused padding vertices at the centre,
    to match FLAME's count) and F = 9976.
    """
    n_rings, n_lon = int(n_rings), int(n_lon)
    if n_rings < 1 or n_lon < 3:
        raise ValueError(f"n_rings, n_lon: expected >= 1 and >= 3, got {n_rings}, {n_lon}")
    theta = np.pi * np.arange(1, n_rings + 1) / (n_rings + 1)  # polar angle from +y
    phi = 2 * np.pi * np.arange(n_lon) / n_lon - np.pi  # azimuth, 0 = +z (the face); seam at the back
    st, ct = np.sin(theta)[:, None], np.cos(theta)[:, None]
    dx = st * np.sin(phi)[None, :]
    dy = np.broadcast_to(ct, dx.shape)
    dz = st * np.cos(phi)[None, :]
    radii = np.array([0.078, 0.105, 0.095])
    ring = np.stack([dx, dy, dz], -1).reshape(-1, 3) * radii
    # Nose and brow bumps on the front so the shading and depth are not trivially symmetric.
    x, y, z = ring[:, 0], ring[:, 1], ring[:, 2]
    front = np.clip(z / radii[2], 0, 1)
    ring[:, 2] += front * (0.028 * np.exp(-(x**2 + (y + 0.005) ** 2 * 0.5) / 0.012**2)
                           + 0.008 * np.exp(-((y - 0.035) ** 2) / 0.012**2))
    top = np.array([[0.0, radii[1], 0.0]])
    bottom = np.array([[0.0, -radii[1], 0.0]])
    surface = np.concatenate([top, ring, bottom])
    pad = max(int(num_vertices) - surface.shape[0], 0)
    vertices = np.concatenate([surface, np.zeros((pad, 3))]).astype(np.float32)

    def vid(i, j):  # ring i in [0, n_rings), longitude j (wrapped)
        return 1 + i * n_lon + (j % n_lon)

    bottom_id = 1 + n_rings * n_lon
    faces, uv_faces = [], []

    def tid(i, j):  # uv grid: rows 0..n_rings+1 (0 = top pole), columns 0..n_lon (seam duplicated)
        return i * (n_lon + 1) + j

    for j in range(n_lon):
        # Counter-clockwise seen from outside (outward normals): top cap.
        faces.append((0, vid(0, j), vid(0, j + 1)))
        uv_faces.append((tid(0, j), tid(1, j), tid(1, j + 1)))
    for i in range(n_rings - 1):
        for j in range(n_lon):
            a, b, c, d = vid(i, j), vid(i, j + 1), vid(i + 1, j), vid(i + 1, j + 1)
            ta, tb, tc, td = tid(i + 1, j), tid(i + 1, j + 1), tid(i + 2, j), tid(i + 2, j + 1)
            faces += [(a, c, b), (b, c, d)]
            uv_faces += [(ta, tc, tb), (tb, tc, td)]
    for j in range(n_lon):
        faces.append((vid(n_rings - 1, j), bottom_id, vid(n_rings - 1, j + 1)))
        uv_faces.append((tid(n_rings, j), tid(n_rings + 1, j), tid(n_rings, j + 1)))
    faces = np.asarray(faces, np.int32)
    # Orient outward: flip the winding where the face normal points inward.
    v0, v1, v2 = (vertices[faces[:, k]].astype(np.float64) for k in range(3))
    inward = np.sum(np.cross(v1 - v0, v2 - v0) * (v0 + v1 + v2), axis=1) < 0
    uv_faces = np.asarray(uv_faces, np.int32)
    faces[inward] = faces[inward][:, [0, 2, 1]]
    uv_faces[inward] = uv_faces[inward][:, [0, 2, 1]]
    # u runs with the azimuth (face at u = 0.5, seam at the back), v up.
    uu, vv = np.meshgrid(np.arange(n_lon + 1) / n_lon, 1.0 - np.arange(n_rings + 2) / (n_rings + 1))
    uv_coords = np.stack([uu, vv], -1).reshape(-1, 2)
    return {
        "vertices": vertices,
        "faces": faces,
        "uv_coords": uv_coords.astype(np.float32),
        "uv_faces": uv_faces,
    }


def procedural_albedo(size: int = 256) -> np.ndarray:
    """``(size, size, 3)`` float32 skin-toned albedo with a faint grid (row 0 = v = 1)."""
    t = (np.arange(size) + 0.5) / size
    v, u = np.meshgrid(1.0 - t, t, indexing="ij")
    base = np.array([0.78, 0.58, 0.48])
    shade = 0.9 + 0.1 * np.cos(2 * np.pi * (u - 0.5))
    lines = ((np.abs(((u * 24) % 1.0) - 0.5) < 0.04) | (np.abs(((v * 24) % 1.0) - 0.5) < 0.04))
    img = base * shade[..., None] * np.where(lines[..., None], 0.8, 1.0)
    img[..., 1] += 0.1 * np.exp(-((u - 0.5) ** 2 + (v - 0.45) ** 2) / 0.01)  # a marker at the face
    return img.astype(np.float32)


def deca_camera(vertices, scale: float = 8.0, tx: float = 0.0, ty: float = 0.0):
    """DECA's camera and flip (``batch_orth_proj`` then the y/z flip of ``decalib/deca.py``) in
    numpy (numpy in) or jnp: ``(..., 3)`` world -> NDC s (X + t) then (x, -y, -z)."""
    xp = np if isinstance(vertices, np.ndarray) else jnp
    x = scale * (vertices[..., 0] + tx)
    y = scale * (vertices[..., 1] + ty)
    z = scale * vertices[..., 2]
    return xp.stack([x, -y, -z], axis=-1)


def demo_head() -> dict:
    """The default FLAME-structured head when available, else :func:`procedural_head`.

    Returns a dict of numpy arrays: ``vertices (V, 3)`` (world, metres), ``faces``, ``uv_coords``,
    ``uv_faces``, ``albedo (256, 256, 3)``, and ``name`` ("default_flame_model" or "procedural").
    """
    try:
        model = default_flame_model()
        head = {
            "vertices": np.asarray(model.v_template, np.float32),
            "faces": np.asarray(model.faces, np.int32),
            "uv_coords": None if model.uv_coords is None else np.asarray(model.uv_coords, np.float32),
            "uv_faces": None if model.uv_faces is None else np.asarray(model.uv_faces, np.int32),
            "albedo": None if model.albedo_mean is None else np.asarray(model.albedo_mean, np.float32),
            "name": "default_flame_model",
        }
        if head["uv_coords"] is None or head["uv_faces"] is None:
            raise ValueError("default_flame_model has no UV layout")
    except Exception:  # noqa: BLE001 - any failure to build the default model falls back
        head = dict(procedural_head(), albedo=None, name="procedural")
    if head["albedo"] is None:
        head["albedo"] = procedural_albedo(256)
    # Centre the head so that DECA's camera with tx = ty = 0 frames it like a face crop.
    v = head["vertices"]
    used = np.zeros(v.shape[0], bool)
    used[head["faces"].reshape(-1)] = True
    centre = 0.5 * (v[used].min(0) + v[used].max(0))
    centre[2] = 0.0
    head["vertices"] = (v - centre).astype(np.float32)
    extent = float(np.max(v[used].max(0) - v[used].min(0)))
    head["scale"] = 1.7 / max(extent, 1e-6)  # DECA's s: the head spans ~85% of the crop
    return head
