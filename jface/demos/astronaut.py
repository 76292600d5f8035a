"""3DMM-STN on a real photograph, offline: ``python -m jface.demos.astronaut -o DIR``.

The photograph is scikit-image's bundled ``astronaut.png`` (``skimage.data.astronaut()``, NASA,
public domain; scikit-image is an optional dependency). Its 68 iBUG/300-W landmarks come from the
optional dlib detector (``pip install 'jface[detector]'``) or, when dlib is not importable (or finds
no face), from :data:`ASTRONAUT_LANDMARKS68`: points **placed by hand** by looking at the image
(0-based pixels, x = column, y = row, about +-3 px). The demo crops the face (3DMM-STN crop,
:func:`jface.data.crops.stn_crop`), reduces the 68 points to the STN's 21 AFLW points
(:func:`jface.flatten.ibug68_to_aflw21`; the ears have no iBUG counterpart and are not fitted),
fits theta of the embedded model (``jface.models.default_stn_model()``, a synthetic stand-in for the
BFM) by gradient descent (:func:`jface.flatten.fit_theta`, the gradient demo's optax variant), and
writes under DIR:

* ``astronaut_overlay.png``: the crop with the labels (green) and the fitted model landmarks (red)
  and the projected model vertices (blue dots);
* ``astronaut_texture.png``, ``astronaut_mask.png``: the flattened texture and visibility mask;
* ``astronaut_panels.png``: input crop, overlay, texture, mask side by side;
* ``astronaut.json``: landmark source, fitted theta, landmark RMSE in pixels of the 224 crop.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from jface import export
from jface.data.crops import stn_crop
from jface.data.real import dlib_detector
from jface.flatten import AFLW21_FROM_IBUG_VALID, fit_theta, flatten_batch, ibug68_to_aflw21
from jface.models import default_stn_model
from jface.training.distributed import enable_compilation_cache

__all__ = ["ASTRONAUT_LANDMARKS68", "load_astronaut", "astronaut_landmarks", "run", "main"]

# Hand-placed 68 iBUG/300-W landmarks of skimage.data.astronaut() (512 x 512), 0-based pixels
# (x = column, y = row). Placed by eye on a 3x enlargement of the face region; not detector output.
ASTRONAUT_LANDMARKS68 = np.array([
    (182.7, 105.0),
    (183.3, 118.3),
    (185.3, 130.7),
    (188.7, 143.3),
    (194.0, 155.0),
    (201.0, 165.0),
    (209.3, 172.7),
    (217.7, 177.3),
    (226.7, 179.0),
    (236.0, 177.0),
    (244.7, 172.7),
    (252.7, 165.3),
    (259.3, 155.3),
    (264.0, 144.0),
    (266.7, 131.3),
    (268.0, 118.7),
    (268.7, 105.3),
    (190.0, 95.0),
    (196.0, 90.7),
    (203.3, 89.0),
    (210.7, 90.0),
    (217.3, 92.7),
    (233.3, 92.7),
    (240.0, 90.0),
    (247.3, 89.0),
    (255.0, 90.0),
    (261.7, 94.0),
    (225.0, 101.7),
    (225.0, 110.0),
    (225.0, 118.3),
    (225.0, 126.7),
    (216.7, 131.7),
    (220.7, 133.3),
    (225.0, 134.3),
    (229.3, 133.3),
    (233.3, 131.7),
    (195.0, 102.0),
    (199.0, 99.0),
    (205.0, 98.7),
    (210.7, 102.0),
    (205.3, 103.7),
    (199.3, 103.7),
    (238.3, 103.3),
    (243.3, 100.0),
    (249.3, 99.7),
    (256.0, 102.7),
    (250.0, 104.7),
    (244.0, 104.7),
    (204.0, 142.0),
    (210.0, 140.0),
    (217.3, 138.7),
    (224.3, 139.7),
    (231.3, 138.7),
    (238.0, 139.7),
    (244.0, 141.3),
    (239.3, 147.3),
    (232.7, 151.3),
    (224.3, 152.7),
    (216.0, 151.3),
    (209.0, 147.3),
    (206.0, 142.0),
    (216.7, 141.7),
    (224.3, 142.3),
    (232.0, 141.7),
    (242.0, 141.7),
    (232.0, 146.0),
    (224.3, 147.3),
    (216.7, 146.0)

])


def load_astronaut():
    """``skimage.data.astronaut()`` as uint8 ``(512, 512, 3)``; needs scikit-image (bundled file)."""
    try:
        from skimage import data
    except ImportError as err:
        raise ImportError("the astronaut demo needs scikit-image: pip install scikit-image") from err
    return np.asarray(data.astronaut(), np.uint8)


def astronaut_landmarks(image, *, use_detector: bool = True):
    """``(landmarks (68, 2), source)``: dlib's detection when available, else the hand-placed set."""
    if use_detector:
        try:
            found = dlib_detector()(image)
            if found is not None:
                return np.asarray(found, np.float64), "dlib 68-point detector"
        except ImportError:
            pass
    return ASTRONAUT_LANDMARKS68.copy(), "hand-placed (jface.demos.astronaut.ASTRONAUT_LANDMARKS68)"


def run(out_dir, *, steps: int = 300, use_detector: bool = True, crop_scale: float = 1.6, log=print):
    """Fit and flatten; returns the summary dict (also written to ``astronaut.json``)."""
    from PIL import Image, ImageDraw

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    image = load_astronaut()
    landmarks, source = astronaut_landmarks(image, use_detector=use_detector)
    log(f"landmarks: {source}")
    crop, labels68, transform = stn_crop(image.astype(np.float64), landmarks, scale=crop_scale)
    labels21 = ibug68_to_aflw21(labels68[:, :2])
    model = default_stn_model()
    theta, losses = fit_theta(model, labels21[None], steps=steps)
    flat = flatten_batch(model, theta, crop[None].astype(np.float32))
    fitted21 = flat["points"][0][np.asarray(model.landmarks["aflw21"])]
    valid = AFLW21_FROM_IBUG_VALID
    rmse = float(np.sqrt(np.mean(np.sum((fitted21[valid] - labels21[valid]) ** 2, axis=-1))))
    log(f"fit: {steps} Adam steps, loss {losses[0]:.1f} -> {losses[-1]:.1f}, landmark RMSE {rmse:.2f} px (224 crop)")

    height = crop.shape[0]
    overlay = Image.fromarray(export.to_uint8(crop, (0, 255)))
    draw = ImageDraw.Draw(overlay)
    pts = flat["points"][0]
    for x, y in pts[:: max(1, len(pts) // 3000)]:
        draw.point((float(x) - 1.0, height - float(y)), fill=(60, 120, 255))  # y-up 1-based frame
    for group, colour in ((labels21[valid], (0, 255, 0)), (fitted21[valid], (255, 0, 0))):
        for x, y in group:
            c, r = float(x) - 1.0, height - float(y)
            draw.ellipse((c - 2.5, r - 2.5, c + 2.5, r + 2.5), outline=colour, width=2)
    overlay_path = out_dir / "astronaut_overlay.png"
    overlay.save(overlay_path)
    texture_path = export.save_png(out_dir / "astronaut_texture.png", flat["texture"][0], (0, 255))
    mask_path = export.save_png(out_dir / "astronaut_mask.png", flat["mask"][0])
    tiles = [Image.fromarray(export.to_uint8(crop, (0, 255))), overlay,
             Image.open(texture_path).resize((height, height), Image.NEAREST),
             Image.open(mask_path).convert("RGB").resize((height, height), Image.NEAREST)]
    sheet = Image.new("RGB", (4 * height + 12, height), (255, 255, 255))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, (i * (height + 4), 0))
    panels_path = out_dir / "astronaut_panels.png"
    sheet.save(panels_path)
    summary = {
        "landmark_source": source,
        "theta": theta[0],
        "landmark_rmse_px": rmse,
        "fit_loss": [float(losses[0]), float(losses[-1])],
        "visible_fraction": float(flat["mask"][0].mean()),
        "crop_from_image": transform.matrix(),
        "files": [str(overlay_path), str(texture_path), str(mask_path), str(panels_path)],
    }
    export.save_json(out_dir / "astronaut.json", summary)
    log(f"wrote {out_dir}/astronaut_overlay.png, _texture.png, _mask.png, _panels.png, astronaut.json")
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m jface.demos.astronaut", description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--out", required=True, help="output folder")
    parser.add_argument("--steps", type=int, default=300, help="Adam steps of the landmark fit")
    parser.add_argument("--no-detector", action="store_true",
                        help="use the hand-placed landmarks even if dlib is installed")
    args = parser.parse_args(argv)
    enable_compilation_cache()  # JFACE_COMPILATION_CACHE=0 turns it off
    run(args.out, steps=args.steps, use_detector=not args.no_detector)
    return 0


if __name__ == "__main__":
    sys.exit(main())
