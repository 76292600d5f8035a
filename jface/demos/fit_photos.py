"""``jface.fit`` on real photographs: ``python -m jface.demos.fit_photos [--demodata PATH] [--json OUT]``.

The photographs that packages and the shared data ship: scikit-image's ``astronaut.png`` (NASA,
public domain), matplotlib's ``grace_hopper.jpg`` sample, and the six photos of 3DMM-STN's
``demodata.mat`` (``--demodata``, default ``../shared/realdata/3dmmasstn/demodata.mat``, read
through :func:`jface.files.mat.load_mat`; left out when absent). Their 68 landmarks and face-oval
skin masks come from the mediapipe detector (``jface[detect]``); without it only the astronaut is
fitted, with its hand-placed points (:data:`jface.demos.astronaut.ASTRONAUT_LANDMARKS68`) and the
landmark outline as its mask. Each photo is cropped as DECA's test crop (224 x 224).

Printed per photo and as a mean, in pixels of the 224 crop (mean distance of the 68 points) and
as the photometric error (mean |render - photo| inside the face mask, RGB in [0, 1]):

* ``mean``: the start (mean face, landmark-aligned camera, mean albedo, white ambient light);
* ``landmark-only``: :func:`jface.fit.fit_flame` with no photometric stage;
* ``fit_codes``: ``jface.reconstruct.fit_codes`` (the landmark-only fit of
  ``jface.reconstruct --fit-landmarks``, 400 steps);
* ``full``: :func:`jface.fit.fit_flame` (landmarks, then photometric).

With demodata, also :func:`jface.fit.fit_stn` on ``jface.models.default_stn_model()`` against the
six photos' human AFLW-21 labels (landmark RMSE in pixels before / after). Nothing is written
except ``--json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

from jface import export
from jface.data.crops import deca_crop, warp_image
from jface.data.detect import DetectorMissingError, MediapipeDetector, face_oval_mask, landmark_mask
from jface.demos.astronaut import ASTRONAUT_LANDMARKS68, load_astronaut
from jface.files.mat import load_mat
from jface.fit import FitConfig, StnFitConfig, evaluate, fit_flame, fit_stn, mean_codes
from jface.models import default_flame_model, default_stn_model
from jface.reconstruct import fit_codes
from jface.stn.fit import landmark_objective

__all__ = ["DEFAULT_DEMODATA", "load_photos", "crop_photos", "run", "main"]

DEFAULT_DEMODATA = Path(__file__).resolve().parents[3] / "shared" / "realdata" / "3dmmasstn" / "demodata.mat"


def _grace_hopper():
    try:
        from matplotlib import cbook
        from PIL import Image
    except ImportError:
        return None
    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as image:
        return np.asarray(image.convert("RGB"), np.uint8)


def load_photos(demodata=None) -> dict:
    """``{name: uint8 (H, W, 3)}``: astronaut, grace_hopper (when matplotlib has it), demodata_0..5."""
    photos = {"astronaut": load_astronaut()}
    hopper = _grace_hopper()
    if hopper is not None:
        photos["grace_hopper"] = hopper
    if demodata is not None and Path(demodata).is_file():
        images = np.asarray(load_mat(demodata)["Images"], np.float32).transpose(3, 0, 1, 2)
        for index, image in enumerate(images):
            photos[f"demodata_{index}"] = np.clip(image + 0.5, 0, 255).astype(np.uint8)
    return photos


def crop_photos(photos: dict, log=print):
    """Detect (or take the astronaut's hand-placed points), crop: ``(names, crops (B, 224, 224, 3),
    landmarks (B, 68, 3) NDC, masks (B, 224, 224), sources)``."""
    try:
        detector = MediapipeDetector(max_faces=1)
    except DetectorMissingError as err:
        log(f"no detector ({err}): only the astronaut, with its hand-placed landmarks")
        detector = None
    names, crops, landmarks, masks, sources = [], [], [], [], []
    for name, image in photos.items():
        faces = detector(image) if detector is not None else []
        if faces:
            points, mask, source = faces[0].landmarks68, face_oval_mask(faces[0], image.shape[:2]), "mediapipe"
        elif name == "astronaut":
            points = ASTRONAUT_LANDMARKS68
            mask, source = landmark_mask(points, image.shape[:2]), "hand-placed"
        else:
            log(f"{name}: no face found, left out")
            continue
        crop, ndc, transform = deca_crop(image.astype(np.float64) / 255.0, points, test=True)
        names.append(name)
        crops.append(np.clip(crop, 0.0, 1.0))
        landmarks.append(ndc)
        masks.append(warp_image(mask.astype(np.float64), transform) > 0.5)
        sources.append(source)
    if detector is not None:
        detector.close()
    return (names, np.stack(crops).astype(np.float32), np.stack(landmarks).astype(np.float32),
            np.stack(masks).astype(np.float32), sources)


def _stn_check(demodata, steps: int, log=print) -> dict:
    images = np.asarray(load_mat(demodata)["Images"], np.float32).transpose(3, 0, 1, 2)
    labels = np.asarray(load_mat(demodata)["Labels"], np.float32)[0].transpose(2, 1, 0)
    model = default_stn_model()
    theta, texture, history = fit_stn(model, images, labels, config=StnFitConfig(steps=steps))
    per_point = np.asarray([landmark_objective(model, theta[i:i + 1], labels[i:i + 1]) for i in range(len(theta))])
    rmse = np.sqrt(per_point / labels.shape[1])
    result = {"loss": [float(history["loss"][0].mean()), float(history["loss"][-1].mean())],
              "landmark_rmse_px": rmse.tolist(), "visible_fraction": float(texture["mask"].mean())}
    log(f"fit_stn on demodata (default_stn_model, {steps} steps): loss {result['loss'][0]:.1f} -> "
        f"{result['loss'][1]:.1f}, landmark RMSE per photo " + " ".join(f"{r:.2f}" for r in rmse) +
        f" px (mean {rmse.mean():.2f}), visible texture fraction {result['visible_fraction']:.2f}")
    return result


def run(demodata=DEFAULT_DEMODATA, config: FitConfig | None = None, *, fit_codes_steps: int = 400,
        stn_steps: int = 300, log=print) -> dict:
    """Fit every photo (the module docstring); returns the figures as a dict."""
    config = FitConfig() if config is None else config
    names, crops, landmarks, masks, sources = crop_photos(load_photos(demodata), log=log)
    model = default_flame_model()

    def measure(codes):
        out = evaluate(model, codes, crops, landmarks, masks=masks, config=config)
        return {k: out[k].astype(float) for k in ("landmark_error_px", "landmark_nme", "photometric_error")}

    results = {"config": dataclasses.asdict(config), "photos": names, "landmark_sources": sources, "seconds": {}}
    start = time.perf_counter()
    landmark_only, _ = fit_flame(model, crops, landmarks, config=dataclasses.replace(config, photometric_steps=0),
                                 masks=masks)
    results["seconds"]["landmark-only"] = time.perf_counter() - start
    start = time.perf_counter()
    baseline, _ = fit_codes(model, landmarks[..., :2], steps=fit_codes_steps)
    results["seconds"]["fit_codes"] = time.perf_counter() - start
    start = time.perf_counter()
    full, _ = fit_flame(model, crops, landmarks, config=config, masks=masks)
    results["seconds"]["full"] = time.perf_counter() - start
    rows = {"mean": measure(mean_codes(model, landmarks, light_dc=config.light_dc)),
            "landmark-only": measure(landmark_only), "fit_codes": measure(baseline), "full": measure(full)}
    results["fits"] = rows
    log(f"{len(names)} photos, 224 crop, {config.landmark_steps} + {config.photometric_steps} steps, "
        f"render {config.render_size}")
    log(f"{'photo':14s} {'landmark error (px at 224)':>40s} | {'photometric error in the mask':>30s}")
    log(f"{'':14s} {'mean':>9s} {'lmk-only':>9s} {'fit_codes':>10s} {'full':>8s} | {'mean':>9s} "
        f"{'lmk-only':>9s} {'full':>8s}")
    for index, name in enumerate(names + ["MEAN"]):
        def cell(row, key, index=index):
            values = rows[row][key]
            return float(values.mean()) if index == len(names) else float(values[index])
        log(f"{name:14s} {cell('mean', 'landmark_error_px'):9.2f} {cell('landmark-only', 'landmark_error_px'):9.2f} "
            f"{cell('fit_codes', 'landmark_error_px'):10.2f} {cell('full', 'landmark_error_px'):8.2f} | "
            f"{cell('mean', 'photometric_error'):9.3f} {cell('landmark-only', 'photometric_error'):9.3f} "
            f"{cell('full', 'photometric_error'):8.3f}")
    lmk = {k: float(v["landmark_error_px"].mean()) for k, v in rows.items()}
    ratio = float(rows["full"]["photometric_error"].mean() / rows["mean"]["photometric_error"].mean())
    worse = [n for i, n in enumerate(names)
             if rows["full"]["landmark_error_px"][i] > rows["landmark-only"]["landmark_error_px"][i] + 1e-3]
    verdict = "no worse than" if lmk["full"] <= min(lmk["landmark-only"], lmk["fit_codes"]) else "WORSE than"
    log(f"landmarks: full fit {lmk['full']:.2f} px, {verdict} the landmark-only fits ({lmk['landmark-only']:.2f}, "
        f"fit_codes {lmk['fit_codes']:.2f}); photos where the full fit is worse than its landmark stage: "
        f"{', '.join(worse) or 'none'}")
    log(f"photometric error: {rows['mean']['photometric_error'].mean():.3f} -> "
        f"{rows['full']['photometric_error'].mean():.3f} ({100 * (ratio - 1):+.0f} %; target -50 %: "
        f"{'met' if ratio <= 0.5 else 'NOT met'})")
    results["summary"] = {"landmark_error_px": lmk, "photometric_ratio": ratio, "worse_than_landmark_stage": worse}
    if demodata is not None and Path(demodata).is_file():
        results["fit_stn"] = _stn_check(demodata, stn_steps, log=log)
    results["fits"] = {k: {m: v.tolist() for m, v in row.items()} for k, row in rows.items()}
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jface.demos.fit_photos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--demodata", default=str(DEFAULT_DEMODATA), help="3DMM-STN's demodata.mat (optional)")
    parser.add_argument("--steps", type=int, nargs=2, default=None, metavar=("LANDMARK", "PHOTOMETRIC"))
    parser.add_argument("--render-size", type=int, default=224)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    config = FitConfig(render_size=args.render_size)
    if args.steps:
        config = dataclasses.replace(config, landmark_steps=args.steps[0], photometric_steps=args.steps[1])
    results = run(args.demodata if Path(args.demodata).is_file() else None, config)
    if args.json:
        export.save_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
