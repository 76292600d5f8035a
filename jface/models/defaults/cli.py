"""``python -m jface.models show|regenerate``: pictures and cache rebuilds of the default models.

``show default-stn|default-flame -o DIR`` writes PNGs drawn with the tiny numpy painter
(:mod:`jface.models.paint`): the mean shape from three views, +-3 sigma of the first
identity components, each expression, the UV layout (and albedo / mask) and the landmarks.
``regenerate [--only stn|flame] [--dir DIR]`` rebuilds the cached files.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from jface.models import paint
from jface.models.defaults import default_flame_model, default_stn_model, load_stn_arrays, regenerate
from jface.models.defaults.flame_default import FLAME_EXPRESSION_NAMES, lmk_points

__all__ = ["show_command", "regenerate_command", "show_stn", "show_flame", "lbs_numpy"]


def _label(img, text):
    """Write ``text`` in the top-left corner (PIL's default bitmap font)."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(img)
    ImageDraw.Draw(im).text((4, 2), text, fill=(0, 0, 0))
    return np.asarray(im)


# ------------------------------------------------------------------------------------------------
# numpy LBS (for pictures; jface.flame.forward is the real implementation)


def _rodrigues(r):
    r = np.asarray(r, np.float64)
    theta = np.linalg.norm(r)
    if theta < 1e-12:
        return np.eye(3)
    k = r / theta
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(theta) * kx + (1 - np.cos(theta)) * kx @ kx


def lbs_numpy(model, shape=None, expression=None, pose15=None):
    """FLAME linear blend skinning in numpy (DECA's ``lbs`` in ``decalib/models/lbs.py``) for a
    FlameModel-like object.

    ``shape (n_shape,)``/``expression (n_expr,)`` may be shorter (zero-padded); ``pose15`` is
    [global, neck, jaw, eye3, eye4] axis-angles. Returns ``(vertices (V, 3), joints (J, 3))``.
    """
    v_t = np.asarray(model.v_template, np.float64)
    sd = np.asarray(model.shapedirs, np.float64)
    coeffs = np.zeros(sd.shape[-1])
    if shape is not None:
        coeffs[: len(shape)] = shape
    if expression is not None:
        coeffs[model.n_shape: model.n_shape + len(expression)] = expression
    v = v_t + sd @ coeffs
    jr = np.asarray(model.j_regressor, np.float64)
    joints = jr @ v
    n_j = len(joints)
    pose = np.zeros((n_j, 3)) if pose15 is None else np.asarray(pose15, np.float64).reshape(n_j, 3)
    rots = np.stack([_rodrigues(r) for r in pose])
    feat = (rots[1:] - np.eye(3)).reshape(-1)
    v = v + np.asarray(model.posedirs, np.float64) @ feat
    parents = model.parents
    g = np.zeros((n_j, 4, 4))
    for j in range(n_j):
        t = np.eye(4)
        t[:3, :3] = rots[j]
        t[:3, 3] = joints[j] - (joints[parents[j]] if parents[j] >= 0 else 0)
        g[j] = t if parents[j] < 0 else g[parents[j]] @ t
    rel = g.copy()
    rel[:, :3, 3] -= np.einsum("jab,jb->ja", g[:, :3, :3], joints)
    w = np.asarray(model.lbs_weights, np.float64)
    m = np.einsum("vj,jab->vab", w, rel)
    out = np.einsum("vab,vb->va", m[:, :3, :3], v) + m[:, :3, 3]
    return out, g[:, :3, 3]


# ------------------------------------------------------------------------------------------------


def _views(vertices, faces, colors=None, extent=None, size=320, angles=(0, 45, 90)):
    out = []
    for ang in angles:
        im, ext = paint.paint_mesh(vertices, faces, colors=colors, rotation=paint.rotation_y(ang),
                                   extent=extent, size=size)
        out.append(_label(im, f"yaw {ang}"))
    return out


def show_stn(out_dir):
    """PNGs of :func:`jface.models.default_stn_model` into ``out_dir``; returns the paths."""
    model = default_stn_model()
    arrays = load_stn_arrays()
    mean = np.asarray(model.mean, np.float64)
    faces = np.asarray(model.faces)
    ext = (0.0, -10.0, 118.0)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []

    def save(name, img):
        paths.append(out_dir / name)
        paint.save_png(paths[-1], img)

    alb = np.clip(np.asarray(model.albedo_mean, np.float64), 0, 1)
    save("stn_mean.png", paint.tile(_views(mean, faces, extent=ext)
                                    + _views(mean, faces, colors=alb, extent=ext), 3))
    basis = np.asarray(model.shape_basis, np.float64)
    imgs = []
    for k in range(min(6, basis.shape[-1])):
        for sgn in (-3, 3):
            im, _ = paint.paint_mesh(mean + sgn * basis[..., k], faces,
                                     rotation=paint.rotation_y(30), extent=ext, size=240)
            imgs.append(_label(im, f"shape {k} {sgn:+d} sd"))
    save("stn_shape_components.png", paint.tile(imgs, 4))
    names = [str(n) for n in arrays["expression_names"]]
    expr = np.asarray(model.expression_basis, np.float64)
    imgs = []
    for k, name in enumerate(names):
        im, _ = paint.paint_mesh(mean + 2.0 * expr[..., k], faces, rotation=paint.rotation_y(20),
                                 extent=(0.0, -5.0, 100.0), size=240)
        imgs.append(_label(im, f"{name} x2"))
    save("stn_expressions.png", paint.tile(imgs, 4))
    from PIL import Image

    uv_img = _label(paint.paint_uv(arrays["source_uv"], arrays["source_faces"], size=448),
                    "source mesh UV (Tutte)")
    tex = (alb.reshape(112, 112, 3) * 255).astype(np.uint8)
    tex = np.asarray(Image.fromarray(tex).resize((448, 448), Image.NEAREST)).copy()
    for key, color in (("ibug68", (20, 150, 20)), ("aflw21", (220, 30, 30))):
        for k in np.asarray(model.landmarks[key]):
            r, c = divmod(int(k), 112)
            tex[r * 4:(r + 1) * 4, c * 4:(c + 1) * 4] = color
    save("stn_uv.png", paint.tile([uv_img, _label(tex, "112x112 grid albedo + landmarks")], 2))
    imgs = []
    for ang in (0, 35):
        rot = paint.rotation_y(ang)
        im, e = paint.paint_mesh(mean, faces, colors=alb, rotation=rot, extent=ext, size=448)
        im = im.copy()
        paint.paint_points(im, mean[np.asarray(model.landmarks["ibug68"])] @ rot.T, e,
                           color=(20, 150, 20), radius=2)
        paint.paint_points(im, mean[np.asarray(model.landmarks["aflw21"])] @ rot.T, e,
                           color=(220, 30, 30), radius=2)
        imgs.append(_label(im, "aflw21 red, ibug68 green"))
    save("stn_landmarks.png", paint.tile(imgs, 2))
    return paths


def _flame_vertex_colors(model):
    """Per-vertex colour: the albedo mean sampled at each vertex's (first) UV coordinate."""
    alb = np.asarray(model.albedo_mean, np.float64)
    size = alb.shape[0]
    faces, uv_faces = np.asarray(model.faces), np.asarray(model.uv_faces)
    uv = np.asarray(model.uv_coords, np.float64)
    vt = np.zeros(int(np.asarray(model.v_template).shape[0]), np.int64)
    vt[faces.ravel()] = uv_faces.ravel()
    col = np.clip((uv[vt, 0] * size).astype(int), 0, size - 1)
    row = np.clip(((1 - uv[vt, 1]) * size).astype(int), 0, size - 1)
    return np.clip(alb[row, col], 0, 1)


def show_flame(out_dir):
    """PNGs of :func:`jface.models.default_flame_model` into ``out_dir``; returns the paths."""
    model = default_flame_model()
    faces = np.asarray(model.faces)
    v0 = np.asarray(model.v_template, np.float64) * 1000.0  # pictures in mm
    colors = _flame_vertex_colors(model)
    ext = (0.0, 15.0, 140.0)  # the head sits where FLAME's template does (nose ~27 mm up)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []

    def save(name, img):
        paths.append(out_dir / name)
        paint.save_png(paths[-1], img)

    save("flame_mean.png", paint.tile(_views(v0, faces, extent=ext, angles=(0, 45, 90, 180))
                                      + _views(v0, faces, colors=colors, extent=ext,
                                               angles=(0, 45, 90, 180)), 4))
    imgs = []
    for k in range(6):
        for sgn in (-3, 3):
            shape = np.zeros(k + 1)
            shape[k] = sgn
            v, _ = lbs_numpy(model, shape=shape)
            im, _ = paint.paint_mesh(v * 1000, faces, rotation=paint.rotation_y(30), extent=ext,
                                     size=240)
            imgs.append(_label(im, f"shape {k} {sgn:+d} sd"))
    save("flame_shape_components.png", paint.tile(imgs, 4))
    imgs = []
    for k, name in enumerate(FLAME_EXPRESSION_NAMES):
        e = np.zeros(k + 1)
        e[k] = 2.0
        v, _ = lbs_numpy(model, expression=e)
        im, _ = paint.paint_mesh(v * 1000, faces, colors=colors, rotation=paint.rotation_y(20),
                                 extent=(0.0, 25.0, 100.0), size=240)
        imgs.append(_label(im, f"{name} x2"))
    save("flame_expressions.png", paint.tile(imgs, 4))
    imgs = []
    poses = {
        "jaw open 0.35 rad": [0, 0, 0, 0, 0, 0, 0.35, 0, 0, 0, 0, 0, 0, 0, 0],
        "eyes yaw +0.4": [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0.4, 0, 0, 0.4, 0],
        "neck pitch 0.3": [0, 0, 0, 0.3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        "global yaw 0.6": [0, 0.6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    }
    for name, pose in poses.items():
        v, _ = lbs_numpy(model, pose15=pose)
        im, _ = paint.paint_mesh(v * 1000, faces, colors=colors, rotation=paint.rotation_y(25),
                                 extent=ext, size=300)
        imgs.append(_label(im, name))
    save("flame_poses.png", paint.tile(imgs, 4))
    from PIL import Image

    uv_img = _label(paint.paint_uv(model.uv_coords, model.uv_faces, size=448,
                                   mask=np.asarray(model.uv_face_eye_mask)),
                    "UV layout (shaded: face/eye mask)")
    alb = (np.clip(np.asarray(model.albedo_mean), 0, 1) * 255).astype(np.uint8)
    alb = _label(np.asarray(Image.fromarray(alb).resize((448, 448), Image.NEAREST)), "albedo mean")
    save("flame_uv.png", paint.tile([uv_img, alb], 2))
    # landmarks at yaw 0 / +30 / -30 with the dynamic contour row DECA would pick
    imgs = []
    for yaw in (0, 30, -30):
        rot = paint.rotation_y(yaw)
        im, e = paint.paint_mesh(v0, faces, colors=colors, rotation=rot, extent=ext, size=400)
        im = im.copy()
        static, contour = lmk_points(model, v0, yaw)
        paint.paint_points(im, static @ rot.T, e, color=(20, 150, 20), radius=2)
        paint.paint_points(im, contour @ rot.T, e, color=(220, 30, 30), radius=3)
        imgs.append(_label(im, f"yaw {yaw}: static 51 green, contour row red"))
    save("flame_landmarks.png", paint.tile(imgs, 3))
    return paths


# ------------------------------------------------------------------------------------------------


def show_command(parser):
    parser.add_argument("model", choices=["default-stn", "default-flame"],
                        help="which synthetic default model to draw")
    parser.add_argument("-o", "--out", required=True, help="output folder for the PNGs")

    def run(args):
        fn = show_stn if args.model == "default-stn" else show_flame
        for p in fn(args.out):
            print(p)
        return 0

    return run


def regenerate_command(parser):
    parser.add_argument("--only", choices=["stn", "flame"], default=None,
                        help="rebuild only one of the default models")
    parser.add_argument("--dir", default=None,
                        help="cache folder (default: $JFACE_CACHE or ~/.cache/jface)")

    def run(args):
        which = ("stn", "flame") if args.only is None else (args.only,)
        t0 = time.perf_counter()
        for p in regenerate(args.dir, which=which):
            print(p)
        print(f"regenerated in {time.perf_counter() - t0:.1f} s")
        return 0

    return run
