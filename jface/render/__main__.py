"""``python -m jface.render demo -o DIR``: render a head to PNGs.

Writes shaded (SH), albedo, normals, depth, DECA's grey shape render and soft silhouettes at
several sigma. Uses ``jface.models.default_flame_model()`` when it can be built, else the procedural
head (:func:`jface.flame.heads.demo_head`).
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jface.deca.render import render, render_shape
from jface.flame.heads import deca_camera, demo_head
from jface.geometry import axis_angle_to_matrix
from jface.render import soft_rasterize
from jface.training.distributed import enable_compilation_cache


def _save(path, image):
    from PIL import Image

    image = np.asarray(image, np.float64)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    Image.fromarray(np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)).save(path)


def demo(out_dir: str, size: int = 224, yaw_deg: float = 25.0) -> None:
    os.makedirs(out_dir, exist_ok=True)
    head = demo_head()
    rot = np.asarray(axis_angle_to_matrix(jnp.asarray([0.0, np.deg2rad(yaw_deg), 0.0])))
    world = (head["vertices"] @ rot.T).astype(np.float32)
    ndc = deca_camera(world, head["scale"])
    sh = np.zeros((9, 3), np.float32)
    sh[0] = 2.2
    sh[2] = 0.25  # from above
    sh[3] = 0.55  # from the camera
    sh[1] = -0.15
    hw = (size, size)
    out = jax.jit(lambda w, n, a, l: render(w, n, head["faces"], head["uv_coords"], head["uv_faces"], a, l,
                                            image_hw=hw, background=jnp.ones(3) * 0.15))(
        world, ndc, head["albedo"], sh)
    _save(f"{out_dir}/shaded.png", out["images"])
    _save(f"{out_dir}/albedo.png", out["albedo_images"] * out["alpha_images"])
    _save(f"{out_dir}/normals.png", (out["normal_images"] * 0.5 + 0.5) * out["alpha_images"])
    depth = np.asarray(out["fragments"].depth)
    mask = np.asarray(out["fragments"].mask) > 0
    if mask.any():
        lo, hi = depth[mask].min(), depth[mask].max()
        vis = np.where(mask, 1.0 - (depth - lo) / max(hi - lo, 1e-9), 0.0)  # near = bright
    else:
        vis = np.zeros_like(depth)
    _save(f"{out_dir}/depth.png", vis)
    shape = render_shape(world, ndc, head["faces"], image_hw=hw)
    _save(f"{out_dir}/shape.png", shape["images"])
    names = ["shaded.png", "albedo.png", "normals.png", "depth.png", "shape.png"]
    for sigma in (1e-5, 1e-4, 1e-3):
        sil = soft_rasterize(ndc, head["faces"], hw, sigma=sigma)
        name = f"soft_silhouette_sigma{sigma:.0e}.png"
        _save(f"{out_dir}/{name}", sil)
        names.append(name)
    print(f"mesh: {head['name']} ({head['vertices'].shape[0]} vertices, {head['faces'].shape[0]} faces)")
    for name in names:
        print(os.path.join(out_dir, name))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jface.render")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="render a head to PNGs")
    p.add_argument("-o", "--out", required=True, help="output directory")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--yaw", type=float, default=25.0, help="head yaw in degrees")
    args = parser.parse_args(argv)
    enable_compilation_cache()  # JFACE_COMPILATION_CACHE=0 turns it off
    if args.command == "demo":
        demo(args.out, args.size, args.yaw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
