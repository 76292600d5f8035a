"""A small procedural UV-grid face model and a simple image renderer, for tests, demos and CPU runs.

:func:`toy_grid_model` builds a :class:`~jface.models.MorphableModel` with the 3DMM-STN layout
(``resampleModel.m``; BUILD_NOTES.md, Frames and conventions): res x res vertices on the UV grid
(vertex k <-> texel (k // res, k % res), U = col/(res-1) to the right, V = 1 - row/(res-1) up), its
face order, millimetres, BFM axes (x to the subject's left, y up, z to the camera), 21 AFLW-ordered
landmarks placed by hand, a smooth random identity basis and a mouth/brow expression basis. The geometry is
made up (an ellipsoidal face with a nose, brows and eye sockets); it is *not* derived from any
licensed model.

:func:`render_image` draws a model into a raw 0-255 RGB image in the 224-pixel y-up frame of the STN
(barycentric samples of every triangle through the z-buffered splat of :mod:`jface.models.paint`,
Lambert shading of the model's albedo): enough to produce honest synthetic inputs whose landmarks
are known exactly.
"""

from __future__ import annotations

import numpy as np

from jface.models import paint
from jface.models.morphable import MorphableModel
from jface.stn.layers import grid_faces, project

__all__ = ["toy_grid_model", "render_image", "AFLW21_UV"]

# (u, v) of the 21 AFLW points (jface.models.landmarks.AFLW21_NAMES order: brows image-left ->
# right, eye corners/centres, left ear, nose left/tip/right, right ear, mouth left/centre/right,
# chin). Mirror-symmetric under u -> 1 - u with the reorder of jface.models.landmarks.AFLW21_MIRROR.
AFLW21_UV = (
    (0.28, 0.68), (0.36, 0.70), (0.44, 0.68), (0.56, 0.68), (0.64, 0.70), (0.72, 0.68),
    (0.29, 0.60), (0.35, 0.60), (0.41, 0.60), (0.59, 0.60), (0.65, 0.60), (0.71, 0.60),
    (0.08, 0.50), (0.42, 0.44), (0.50, 0.46), (0.58, 0.44), (0.92, 0.50),
    (0.40, 0.32), (0.50, 0.32), (0.60, 0.32), (0.50, 0.16),
)


def _bump(u, v, cu, cv, width):
    return np.exp(-((u - cu) ** 2 + (v - cv) ** 2) / (2.0 * width**2))


def toy_grid_model(res: int = 16, num_shape: int = 5, num_expression: int = 5, *, seed: int = 0,
                   dtype=np.float32) -> MorphableModel:
    """A procedural res x res UV-grid face model (mm) with the 3DMM-STN vertex/face layout.

    Returns a :class:`MorphableModel` with ``grid_hw = (res, res)``, ``uv``, ``faces`` in
    ``resampleModel`` order, ``landmarks["aflw21"]`` (21,) (the grid vertices nearest to
    :data:`AFLW21_UV`; all distinct for res >= 16, coarser grids merge some), ``albedo_mean`` in
    [0, 1] and ``vertex_mirror``. The face is ~160 mm wide, so s = 1 maps it to ~160 of 224 pixels.
    """
    if res < 4:
        raise ValueError(f"res: expected a grid size >= 4, got {res}")
    rng = np.random.default_rng(seed)
    rows, cols = np.meshgrid(np.arange(res), np.arange(res), indexing="ij")
    u = (cols / (res - 1)).ravel()
    v = (1.0 - rows / (res - 1)).ravel()
    x = (u - 0.5) * 160.0
    y = (v - 0.5) * 200.0
    # A quartic dome whose sides curl back (slope ~ 75 deg at the edges), so that turned heads
    # self-occlude like real ones.
    rho_sq = np.minimum(((u - 0.5) / 0.5) ** 2 + ((v - 0.5) / 0.6) ** 2, 1.4)
    z = 85.0 * (1.0 - rho_sq**2) + 22.0 * _bump(u, v, 0.5, 0.47, 0.05) - 7.0 * (
        _bump(u, v, 0.35, 0.6, 0.05) + _bump(u, v, 0.65, 0.6, 0.05)
    ) + 4.0 * (_bump(u, v, 0.36, 0.69, 0.06) + _bump(u, v, 0.64, 0.69, 0.06))
    mean = np.stack([x, y, z], -1)

    shape_basis = np.zeros((res * res, 3, num_shape))
    for k in range(num_shape):
        field = np.zeros((res * res, 3))
        for _ in range(3):
            fu, fv = rng.integers(0, 3, size=2)
            phase = rng.uniform(0, 2 * np.pi, size=3)
            amp = rng.normal(size=3) * np.array([2.0, 2.0, 3.0])
            field += amp * np.cos(np.pi * (fu * u[:, None] + fv * v[:, None]) + phase)
        shape_basis[:, :, k] = field
    expression_basis = np.zeros((res * res, 3, num_expression))
    centres = [(0.5, 0.32), (0.4, 0.32), (0.6, 0.32), (0.36, 0.69), (0.64, 0.69)]
    for k in range(num_expression):
        cu, cv = centres[k % len(centres)]
        w = _bump(u, v, cu, cv, 0.08)
        direction = rng.normal(size=3)
        expression_basis[:, :, k] = 6.0 * w[:, None] * direction / np.linalg.norm(direction)

    landmarks = np.array(
        [round((1.0 - lv) * (res - 1)) * res + round(lu * (res - 1)) for lu, lv in AFLW21_UV], np.int32
    )
    albedo = np.tile(np.array([0.86, 0.66, 0.55]), (res * res, 1))
    brows = (np.abs(v - 0.69) < 0.025) & (np.abs(np.abs(u - 0.5) - 0.14) < 0.09)
    eyes = (_bump(u, v, 0.35, 0.6, 0.03) + _bump(u, v, 0.65, 0.6, 0.03)) > 0.5
    lips = ((u - 0.5) / 0.11) ** 2 + ((v - 0.32) / 0.035) ** 2 < 1.0
    albedo[brows] = (0.35, 0.25, 0.2)
    albedo[eyes] = (0.25, 0.2, 0.2)
    albedo[lips] = (0.75, 0.35, 0.35)
    albedo *= 0.85 + 0.15 * np.cos(6 * np.pi * u)[:, None] * np.cos(6 * np.pi * v)[:, None]
    mirror = (rows * res + (res - 1 - cols)).ravel().astype(np.int32)
    return MorphableModel(
        mean=np.asarray(mean, dtype),
        shape_basis=np.asarray(shape_basis, dtype),
        expression_basis=np.asarray(expression_basis, dtype),
        faces=grid_faces(res),
        uv=np.stack([u, v], -1).astype(dtype),
        landmarks={"aflw21": landmarks},
        albedo_mean=np.clip(albedo, 0, 1).astype(dtype),
        vertex_mirror=mirror,
        units="mm",
        grid_hw=(res, res),
    )


def render_image(model, theta, image_hw=(224, 224), *, background=(70.0, 80.0, 95.0),
                 light=(0.3, 0.4, 1.0)) -> np.ndarray:
    """Render ``model`` at ``theta (6 + D,)`` into a raw 0-255 RGB image ``(H, W, 3)`` float32.

    Vertices are placed by :func:`jface.stn.project` in the y-up pixel frame (1-based column x,
    row = H + 1 - y); every triangle is sampled densely in barycentric coordinates (spacing < 0.5
    px) and splatted with a z-buffer (largest z wins: +z points to the camera). Colour = albedo
    (``model.albedo_mean`` or flat skin) x Lambert(angle-weighted normal, ``light``) x 255.
    Pure numpy after the projection; meant for synthetic demo/test inputs, not speed.
    """
    out = project(model, np.asarray(theta, np.float64))
    points = np.asarray(out["points"], np.float64)
    rotated = np.asarray(out["rotated"], np.float64)
    faces = np.asarray(model.faces)
    height, width = image_hw
    albedo = (np.asarray(model.albedo_mean, np.float64) if model.albedo_mean is not None
              else np.tile([0.86, 0.66, 0.55], (points.shape[0], 1)))
    face_n = np.cross(rotated[faces[:, 1]] - rotated[faces[:, 0]], rotated[faces[:, 2]] - rotated[faces[:, 0]])
    normals = np.zeros_like(rotated)
    for c in range(3):
        np.add.at(normals, faces[:, c], face_n)
    normals /= np.maximum(np.linalg.norm(normals, axis=-1, keepdims=True), 1e-12)
    light = np.asarray(light, np.float64) / np.linalg.norm(light)
    shade = 0.25 + 0.75 * np.clip(np.abs(normals @ light), 0, 1)
    colour = albedo * shade[:, None] * 255.0

    tri = points[faces]
    edge = max(np.abs(tri[:, 1] - tri[:, 0]).max(), np.abs(tri[:, 2] - tri[:, 0]).max(),
               np.abs(tri[:, 2] - tri[:, 1]).max())
    bary = paint.barycentric_grid(int(np.ceil(2.0 * edge)) + 1)  # (S, 3), spacing < 0.5 px
    sx = np.einsum("sc,fc->fs", bary, tri[..., 0]).ravel()
    sy = np.einsum("sc,fc->fs", bary, tri[..., 1]).ravel()
    sz = np.einsum("sc,fc->fs", bary, rotated[faces][..., 2]).ravel()
    scol = np.einsum("sc,fcd->fsd", bary, colour[faces]).reshape(-1, 3)
    background = np.tile(np.asarray(background, np.float64), (height, width, 1))
    image = paint.splat(sx - 1.0, height - sy, sz, scol, background)  # y-up frame -> 0-based pixels
    return np.clip(image, 0, 255).astype(np.float32)
