"""Trained runs on the real photographs available offline: ``python -m jface.demos.real_photos
--stn RUN [--deca RUN] [--demodata PATH] [--photos FOLDER] [--workdir DIR] [--data_dir DIR] [--json OUT]
[--sheet OUT.png]``.

The photographs (:func:`jface.demos.fit_photos.load_photos`; nothing is downloaded): scikit-image's
``astronaut.png``, matplotlib's ``grace_hopper.jpg`` and the six photos of 3DMM-STN's
``demodata.mat`` (``--demodata``, default ``../shared/realdata/3dmmasstn/demodata.mat``; left out,
and said so, when absent). No other package installed here ships a photograph with a face the
detector finds (scikit-image's ``camera``, ``coffee`` and ``chelsea`` give none). ``--photos
FOLDER`` adds photographs of your own (for instance the sample images in insightface's source
distribution, ``pip download insightface --no-deps --no-binary :all:``): every face mediapipe finds
in each, the small faces of a group photo too (:func:`jface.data.detect.find_faces`), scored with
the detector's labels and reported beside the offline photos as a subset of its own.

They are written as a photo folder (``--workdir DIR/photos``, default a temporary folder removed at
the end), one identity per photo, in the layout ``python -m jface.data build photos`` reads
(:mod:`jface.data.photos`): ``<name>.png`` with its 68 iBUG points from the mediapipe detector
(:class:`jface.data.detect.MediapipeDetector`) as the side file ``<name>.txt`` (0-based pixels),
so both tasks' builds crop the same points; a photo without a detected face is left out (without
mediapipe only the astronaut, with its hand-placed points). The demodata photos also get their
human AFLW-21 labels as ``<name>.aflw21.txt`` (0-based pixel x, y and visibility of the photo; the
builder ignores this file). The folder is built into ``--data_dir`` (default ``DIR/tensorflow_datasets``)
for each task by :func:`jface.data.photos.build_photo_folder`.

Evaluated with the trainers' own evaluation: :func:`jface.training.stn.evaluate` for ``--stn RUN``
and :func:`jface.training.deca.evaluate` for ``--deca RUN`` (landmark NME normalised by the outer
eye corners, per image and mean, beside the mean-pose / mean-face baseline; labels from the
detector). For the STN, the demodata photos are also scored against their human AFLW-21 labels
(:func:`jface.training.stn.landmark_evaluation` on the same crops, the labels mapped through each
photo's crop); for DECA (68 points, which the human labels are not) the demodata rows of the
detector-labelled report are averaged. One line per run: mean NME, baseline NME, their ratio and
whether issue 22's target (ratio <= 0.5) is met, then the demodata subset; for the STN also the
model's own floor on the same labels (:func:`stn_fit_floor`: theta fitted to each photo's points).

``--json OUT``: both runs' reports, ratios and subsets. ``--sheet OUT.png``: one row per photo,
each panel captioned with its NME: the STN crop with the predicted AFLW-21 points (red), the
detector's (green) and the human labels (yellow); the photo's flattened UV texture through the
trained localiser (:func:`jface.flatten.flatten_batch`); the DECA crop with E_coarse's 68 points
(red) and the detector's (green).

Bad input (a missing run, a run of the other method, an output inside the repository) is one line
``python -m jface.demos.real_photos: ...`` and exit status 2 (:mod:`jface.cli`).
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

import numpy as np

from jface import cli, export
from jface.data import crops, photos
from jface.data.detect import DetectorMissingError, MediapipeDetector, find_faces, read_side_landmarks
from jface.data.errors import DataSourceError
from jface.data.real import IMAGE_SUFFIXES, ImageReadError, check_image, read_image
from jface.data.sources import STN, convert_landmarks
from jface.deca.model import decode_geometry_batch
from jface.demos.astronaut import ASTRONAUT_LANDMARKS68
from jface.demos.fit_photos import DEFAULT_DEMODATA, load_photos
from jface.errors import ModelFileError
from jface.fit import StnFitConfig, fit_stn
from jface.flatten import flatten_batch
from jface.reconstruct import draw
from jface.stn.demo import load_demodata
from jface.training import deca as deca_training
from jface.training import stn as stn_training
from jface.training.checkpoint import CheckpointError, RunFormatError
from jface.training.distributed import enable_compilation_cache
from jface.training.landmark_eval import nme_per_image

__all__ = ["PROG", "TARGET_RATIO", "TILE", "assemble_folder", "load_folder_photos", "evaluate_stn", "stn_fit_floor",
           "evaluate_deca", "subset_means", "contact_sheet", "run", "main"]

PROG = "python -m jface.demos.real_photos"
TARGET_RATIO = 0.5  # issue 22: mean NME at most half the mean-pose baseline's
TILE = 160  # sheet panel size in pixels
HUMAN_SUFFIX = ".aflw21.txt"
PHOTOS_PREFIX = "photos_"  # the names of --photos FOLDER's faces
MIN_FACE = 64  # px: a smaller face of --photos is left out (its crop would be a blur at 224 px)
REPO = Path(__file__).resolve().parents[2]
LOADERS = {"stn": stn_training.load_run, "deca": deca_training.load_run}
USER_ERRORS = (DataSourceError, DetectorMissingError, RunFormatError, CheckpointError, ModelFileError,
               FileNotFoundError, NotADirectoryError)


# --- the photo folder ------------------------------------------------------------------------------

def _detect(images: dict, log) -> tuple[dict, str]:
    """``({name: (68, 2) 0-based pixels}, where they come from)``: mediapipe's largest face, or
    without mediapipe the astronaut's hand-placed points."""
    try:
        detector = MediapipeDetector(max_faces=1)
    except DetectorMissingError as err:
        log(f"no detector ({err}): only the astronaut, with its hand-placed landmarks")
        return {"astronaut": np.asarray(ASTRONAUT_LANDMARKS68, np.float64)[:, :2]}, "hand-placed"
    found = {}
    try:
        for name, image in images.items():
            faces = detector(image)
            if faces:
                found[name] = np.asarray(faces[0].landmarks68, np.float64)[:, :2]
            else:
                log(f"{name}: no face found by mediapipe, left out")
    finally:
        detector.close()
    return found, "mediapipe"


def load_folder_photos(folder, *, log=print) -> dict:
    """``{name: path}`` of every image in ``folder`` (``--photos``; the layout of
    :func:`jface.data.photos.scan_photo_folder`), named ``photos_<file stem>``; only their headers
    are read here (the pixels one photo at a time by :func:`assemble_folder`), and a file that is
    not an image is left out and said so. Raises :class:`DataSourceError` for a missing folder or
    one without a readable image."""
    found = {}
    for _, paths in photos.scan_photo_folder(folder):
        for path in paths:
            try:
                check_image(path)
            except ImageReadError as err:
                log(f"{err}; left out")
                continue
            stem = re.sub(r"[^A-Za-z0-9]+", "_", path.stem).strip("_") or "photo"
            name, k = f"{PHOTOS_PREFIX}{stem}", 1
            while name in found:
                name, k = f"{PHOTOS_PREFIX}{stem}_{k}", k + 1
            found[name] = path
    if not found:
        raise DataSourceError(f"{folder}: no readable photograph (expected {', '.join(IMAGE_SUFFIXES)} files)")
    return found


def _every_face(detector, name: str, image, log) -> list:
    """``[(name or name_<k>, (68, 2) pixels)]``: every face mediapipe finds in ``image``, the small
    faces of a group photo too (:func:`jface.data.detect.find_faces`), at least :data:`MIN_FACE`
    pixels wide."""
    faces = find_faces(detector, image)
    small = [f for f in faces if f.box[2] - f.box[0] < MIN_FACE]
    faces = [f for f in faces if f.box[2] - f.box[0] >= MIN_FACE]
    if small:
        log(f"{name}: {len(small)} face(s) under {MIN_FACE} px wide left out")
    if not faces:
        log(f"{name}: no face found by mediapipe, left out")
    return [(name if len(faces) == 1 else f"{name}_{k}", np.asarray(face.landmarks68, np.float64)[:, :2])
            for k, face in enumerate(faces)]


def assemble_folder(folder, demodata=None, *, extra=None, log=print) -> dict:
    """Write the photo folder (module docstring) into ``folder``; returns ``{name: labels}`` with
    ``labels`` "mediapipe", "hand-placed" or "mediapipe + human AFLW-21" (demodata). ``extra``:
    ``{name: path}`` of more photos (:func:`load_folder_photos`), read one at a time, every face of
    each (a photo of several faces is written once per face, ``<name>_<k>``, each with its own side
    file; a photo that fails to decode is left out and said so)."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    images = load_photos(demodata)
    human = {}
    if demodata is not None and Path(demodata).is_file():
        _, labels = load_demodata(demodata)  # (B, 21, 2) y-up 224 frame
        human = {f"demodata_{k}": lab for k, lab in enumerate(labels)}
    points, source = _detect(images, log)
    written = {}
    for name, landmarks in points.items():
        Image.fromarray(images[name]).save(folder / f"{name}.png")
        np.savetxt(folder / f"{name}.txt", landmarks, fmt="%.4f")
        written[name] = source
        if name in human:
            size = images[name].shape[0]
            labels = human[name]
            visible = ~np.all(labels == 0, axis=-1)
            pixels = crops.from_stn_frame(labels, size)
            np.savetxt(folder / f"{name}{HUMAN_SUFFIX}", np.concatenate([pixels, visible[:, None]], 1), fmt="%.4f")
            written[name] = f"{source} + human AFLW-21"
    if extra:
        detector = MediapipeDetector(max_faces=8)
        try:
            for name, path in extra.items():
                try:
                    image = read_image(path)
                except ImageReadError as err:
                    log(f"{err}; left out")
                    continue
                for key, landmarks in _every_face(detector, name, image, log):
                    while key in points or key in written:  # a file already named like a face of this one
                        key += "_"
                    Image.fromarray(image).save(folder / f"{key}.png")
                    np.savetxt(folder / f"{key}.txt", landmarks, fmt="%.4f")
                    written[key] = "mediapipe"
        finally:
            detector.close()
    if not written:
        raise DataSourceError(f"{folder}: no photograph with a face to evaluate on")
    return written


def _stem(name) -> str:
    return Path(name.decode() if isinstance(name, bytes) else str(name)).stem


def _human_labels(folder: Path, stem: str, size: int) -> np.ndarray | None:
    """The human AFLW-21 labels of photo ``stem`` in its STN crop (y-up frame of ``size``), or None."""
    path = folder / f"{stem}{HUMAN_SUFFIX}"
    if not path.is_file():
        return None
    human = np.loadtxt(path, ndmin=2)
    # the crop the build made: photos.crop_for_task's stn_crop around the side file's 68 points
    transform = crops.deca_crop_transform(read_side_landmarks(folder / f"{stem}.txt"), photos.STN_CROP_SCALE,
                                          out_size=photos.CROP_SIZE)
    labels = crops.to_stn_frame(transform.apply(human[:, :2]), human[:, 2], photos.CROP_SIZE)
    return convert_landmarks(labels, STN, STN, photos.CROP_SIZE, size)


def subset_means(report: dict, prefix: str = "demodata_", *, exclude: bool = False) -> dict | None:
    """Mean ``nme`` / ``baseline_nme`` of a report's scored ``per_image`` rows whose photo name
    starts with ``prefix`` (with ``exclude``: does not); None when there is none."""
    rows = [r for r in report["per_image"]
            if _stem(r.get("name", "")).startswith(prefix) != exclude and r["nme"] is not None]
    if not rows:
        return None
    nme = float(np.mean([r["nme"] for r in rows]))
    base = float(np.mean([r["baseline_nme"] for r in rows]))
    return {"nme": nme, "baseline_nme": base, "ratio": nme / max(base, 1e-12), "images": len(rows)}


def _photo_subsets(report: dict) -> None:
    """With ``--photos`` faces in the report: the means of the offline photos and of those faces."""
    own = subset_means(report, PHOTOS_PREFIX)
    report["offline_photos"] = subset_means(report, PHOTOS_PREFIX, exclude=True) if own else None
    report["folder_photos"] = own


def _with_ratio(report: dict) -> dict:
    ratio = report["nme"] / max(report["baseline_nme"], 1e-12) if report.get("nme") is not None else None
    return {**report, "ratio": ratio, "target_met": ratio is not None and ratio <= TARGET_RATIO}


def _line(what: str, figures: dict | None, baseline: str) -> str:
    if figures is None or figures.get("nme") is None:
        return f"{what}: no scored photo"
    ratio = figures["nme"] / max(figures["baseline_nme"], 1e-12)
    count = figures.get("images_scored", figures.get("images"))
    verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
    return (f"{what}: mean NME {figures['nme']:.3f} vs {baseline} baseline {figures['baseline_nme']:.3f} "
            f"(ratio {ratio:.2f}) on {count} photos; target ratio <= {TARGET_RATIO}: {verdict}")


# --- the two methods -------------------------------------------------------------------------------

def _check_run(path, method: str) -> Path:
    """``path`` as a run folder of ``method`` ("stn" / "deca"); a :class:`jface.cli.UsageError` for a
    missing folder or one of the other method."""
    flag, path = f"--{method}", Path(path)
    if not path.exists():
        raise cli.UsageError(f"{flag} {path}: no such folder (expected a train.{method} run folder)")
    if not path.is_dir():
        raise cli.UsageError(f"{flag} {path}: not a folder (expected a train.{method} run folder)")
    deca_like = any((path / stage / "checkpoints").is_dir() for stage in deca_training.STAGES)
    stn_like = (path / "checkpoints").is_dir() or path.name == "checkpoints" or path.name.isdigit()
    if method == "stn" and deca_like and not stn_like:
        raise cli.UsageError(f"--stn {path}: a train.deca run (it has <stage>/checkpoints); pass it as --deca")
    if method == "deca" and stn_like and not deca_like:
        raise cli.UsageError(f"--deca {path}: a train.stn run (it has checkpoints/); pass it as --stn")
    return path


def evaluate_stn(loaded, run_dir, folder, version_dir, data_dir) -> tuple[dict, dict]:
    """``(report, sheet panels)`` of the ``train.stn`` run ``run_dir`` (``loaded`` by
    :func:`jface.training.stn.load_run`) on the built STN photo dataset."""
    report = _with_ratio(stn_training.evaluate(run_dir, eval_data=str(version_dir), data_dir=str(data_dir)))
    config = loaded.config.replace(data_dir=str(data_dir))
    model, size = loaded.ctx.model, int(config.image_size)
    data = stn_training.load_eval_data(config, model, spec=str(version_dir))
    stems = [_stem(n) for n in data["name"]]
    human = {s: _human_labels(Path(folder), s, size) for s in stems}
    rows = [i for i, s in enumerate(stems) if human[s] is not None]
    report["demodata_detector"] = subset_means(report)
    _photo_subsets(report)
    report["demodata_human"] = None
    if rows:
        subset = {"images": np.asarray(data["images"])[rows], "labels": np.stack([human[stems[i]] for i in rows]),
                  "name": [stems[i] for i in rows]}
        report["demodata_human"] = _with_ratio(
            stn_training.landmark_evaluation(loaded.ctx, loaded.params, subset, config.eval_batch))
    images = np.asarray(data["images"], np.float32)
    report["fit_floor"] = stn_fit_floor(model, images, data["labels"], config.landmark_set, report)
    flat = flatten_batch(model, loaded.predict(images), images)
    points = flat["points"][:, np.asarray(model.landmarks[config.landmark_set])]
    panels = {}
    per_image = {_stem(r["name"]): r for r in report["per_image"]}
    for i, stem in enumerate(stems):
        tile = _resize(data["images"][i], TILE)
        tile = draw.draw_points(tile, _tile_pixels(data["labels"][i], size), (0, 230, 0), 2.0)
        if human[stem] is not None:
            tile = draw.draw_points(tile, _tile_pixels(human[stem], size), (255, 220, 0), 2.5)
        tile = draw.draw_points(tile, _tile_pixels(points[i], size), (255, 40, 40), 1.5)
        row = per_image.get(stem, {})
        text = f"{stem} STN NME {_fmt(row.get('nme'))} (mean pose {_fmt(row.get('baseline_nme'))})"
        texture = _resize(export.to_uint8(flat["texture"][i], (0.0, 255.0)), TILE, nearest=True)
        panels[stem] = [draw.caption(tile, text), draw.caption(texture, f"{stem} flattened UV (STN)")]
    return report, panels


def stn_fit_floor(model, images, labels, landmark_set: str, report: dict | None = None) -> dict:
    """What the model itself reaches on these labels: theta fitted to each photo's visible points
    (:func:`jface.fit.fit_stn`, its default 300 steps and prior, from the similarity start), scored
    like the network (:func:`jface.training.landmark_eval.nme_per_image`). A localiser of this model
    predicts a theta, so it can hardly do better than a fit to the labels themselves: the ratio to
    the mean-pose baseline (``report``'s, when given) says how much of issue 22's target is within
    reach on these photos."""
    labels = np.asarray(labels, np.float64)
    indices = np.asarray(model.landmarks[landmark_set])
    config = StnFitConfig(landmark_set=landmark_set)
    predicted = []
    for image, label in zip(images, labels):  # one photo at a time: each has its own missing points
        points = np.where(label[:, 2:3] > 0, label[:, :2], np.nan)[None]
        _, fitted, _ = fit_stn(model, image[None], points, config=config)
        predicted.append(fitted["points"][0, indices])  # the fitted theta's projected vertices
    per = nme_per_image(np.stack(predicted), labels)
    scored = ~np.isnan(per)
    floor = {"nme": float(per[scored].mean()) if scored.any() else None, "per_image": [
        None if np.isnan(v) else float(v) for v in per], "steps": config.steps}
    if report is not None and floor["nme"] is not None and report.get("baseline_nme"):
        floor["ratio"] = floor["nme"] / report["baseline_nme"]
    return floor


def evaluate_deca(loaded, run_dir, version_dir, data_dir) -> tuple[dict, dict]:
    """``(report, sheet panels)`` of the ``train.deca`` run ``run_dir`` (``loaded`` by
    :func:`jface.training.deca.load_run`) on the built DECA photo dataset."""
    report = _with_ratio(deca_training.evaluate(run_dir, eval_data=str(version_dir), data_dir=str(data_dir)))
    report["demodata_detector"] = subset_means(report)
    _photo_subsets(report)
    config = loaded.config.replace(data_dir=str(data_dir))
    data = deca_training.load_eval_data(config, loaded.model, spec=str(version_dir))
    images = np.asarray(data["images"])
    predicted = np.asarray(decode_geometry_batch(loaded.model, loaded.encode(images / 255.0))["landmarks2d"])
    size = images.shape[1]
    per_image = {_stem(r["name"]): r for r in report["per_image"]}
    panels = {}
    for i, name in enumerate(data["name"]):
        stem = _stem(name)
        tile = _resize(images[i], TILE)
        for points, colour in ((np.asarray(data["landmarks68"][i])[:, :2], (0, 230, 0)),
                               (predicted[i][:, :2], (255, 40, 40))):
            tile = draw.draw_points(tile, (points + 1.0) * TILE / 2.0 - 0.5, colour, 1.5)
        row = per_image.get(stem, {})
        panels[stem] = [draw.caption(tile, f"{stem} DECA NME {_fmt(row.get('nme'))} "
                                           f"(mean face {_fmt(row.get('baseline_nme'))}), {size} px")]
    return report, panels


def _tile_pixels(labels, size: int) -> np.ndarray:
    """``(L, 2 or 3)`` points in the y-up frame of ``size`` -> 0-based pixels of a :data:`TILE`
    panel; points whose third column is 0 (missing) are NaN (not drawn)."""
    labels = np.asarray(labels, np.float64)
    xy = crops.from_stn_frame(labels, size)
    if labels.shape[-1] > 2:
        xy = np.where(labels[:, 2:3] > 0, xy, np.nan)
    return (xy + 0.5) * (TILE / size) - 0.5


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _resize(image, size: int, nearest: bool = False) -> np.ndarray:
    from PIL import Image

    pil = Image.fromarray(draw.as_uint8(image))
    return np.asarray(pil.resize((size, size), Image.NEAREST if nearest else Image.BILINEAR))


def contact_sheet(rows: list, gap: int = 4) -> np.ndarray:
    """Rows of panels (:func:`jface.reconstruct.draw.sheet` each) stacked, left-aligned on white."""
    strips = [draw.sheet(panels, gap) for panels in rows]
    width = max(s.shape[1] for s in strips)
    height = sum(s.shape[0] for s in strips) + gap * (len(strips) - 1)
    out = np.full((height, width, 3), 255, np.uint8)
    y = 0
    for strip in strips:
        out[y:y + strip.shape[0], :strip.shape[1]] = strip
        y += strip.shape[0] + gap
    return out


# --- the program -----------------------------------------------------------------------------------

def _outside_repo(path, flag: str):
    path = Path(path).expanduser().absolute()
    if (REPO / ".git").exists() and path.is_relative_to(REPO):
        raise cli.UsageError(f"{flag} {path}: inside the repository {REPO}; photographs and what is derived "
                             f"from them are never written there (choose a folder outside it)")
    return path


def run(*, stn=None, deca=None, demodata=DEFAULT_DEMODATA, workdir, data_dir=None, json_path=None, sheet_path=None,
        photos_dir=None, log=print) -> dict:
    """The program's work in ``workdir`` (module docstring); returns the JSON's dict. The runs are
    loaded first, so a run that cannot be used fails before anything is written; ``photos_dir``
    (``--photos``) is read before anything is written too."""
    runs = {method: (path, LOADERS[method](path)) for method, path in (("stn", stn), ("deca", deca)) if path}
    extra = load_folder_photos(photos_dir, log=log) if photos_dir else None
    workdir = Path(workdir)
    folder = workdir / "photos"
    data_dir = Path(data_dir) if data_dir else workdir / "tensorflow_datasets"
    if demodata is not None and not Path(demodata).is_file():
        log(f"demodata: {demodata} not found; its six human-labelled photos are left out")
        demodata = None
    labels = assemble_folder(folder, demodata, extra=extra, log=log)
    log(f"{len(labels)} photos in {folder}: {', '.join(labels)}")
    results = {"folder": str(folder), "data_dir": str(data_dir), "target_ratio": TARGET_RATIO,
               "photos": [{"name": n, "labels": v} for n, v in labels.items()],
               "demodata": None if demodata is None else str(demodata)}
    panels: dict = {name: [] for name in labels}
    lines = []
    for method, (run_dir, loaded) in runs.items():
        version_dir, build = photos.build_photo_folder(folder, task=method, data_dir=data_dir, detector="none",
                                                       progress=False, log=log)
        if method == "stn":
            report, method_panels = evaluate_stn(loaded, run_dir, folder, version_dir, data_dir)
            lines.append(_line(f"STN {run_dir}", report, "mean-pose"))
            lines.append(_line("  human-labelled demodata (AFLW-21 by hand)", report["demodata_human"], "mean-pose"))
            lines.append(_line("  demodata, detector labels", report["demodata_detector"], "mean-pose"))
            lines += _photo_lines(report, "mean-pose", photos_dir)
            floor = report["fit_floor"]
            if floor["nme"] is not None:
                lines.append(f"  the model fitted to the same labels (jface.fit.fit_stn, {floor['steps']} steps): "
                             f"NME {floor['nme']:.3f} (ratio {floor.get('ratio', float('nan')):.2f}): about the floor "
                             f"of a localiser of this model here")
        else:
            report, method_panels = evaluate_deca(loaded, run_dir, version_dir, data_dir)
            lines.append(_line(f"DECA {run_dir}", report, "mean-face"))
            lines.append(_line("  demodata, detector labels", report["demodata_detector"], "mean-face"))
            lines += _photo_lines(report, "mean-face", photos_dir)
        report["build"] = build.to_json()
        results[method] = report
        for name, items in method_panels.items():
            panels.setdefault(name, []).extend(items)
    for line in lines:
        log(line)
    if json_path:
        export.save_json(json_path, results)
        log(f"wrote {json_path}")
    if sheet_path:
        rows = [items for items in panels.values() if items]
        export.save_png(sheet_path, contact_sheet(rows))
        log(f"wrote {sheet_path}")
    return results


def _photo_lines(report: dict, baseline: str, photos_dir) -> list:
    if not report.get("folder_photos"):
        return []
    return [_line("  the offline photos", report["offline_photos"], baseline),
            _line(f"  --photos {photos_dir} (detector labels)", report["folder_photos"], baseline)]


def main(argv=None) -> int:
    parser = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--stn", metavar="RUN", help="a train.stn run folder")
    parser.add_argument("--deca", metavar="RUN", help="a train.deca run folder")
    parser.add_argument("--demodata", default=str(DEFAULT_DEMODATA), help="3DMM-STN's demodata.mat (optional)")
    parser.add_argument("--photos", metavar="FOLDER",
                        help="more photographs: every face mediapipe finds in them, scored with detector labels")
    parser.add_argument("--workdir", help="the photo folder and built data go here (default: a temporary folder)")
    parser.add_argument("--data_dir", help="TFDS data dir of the builds (default: WORKDIR/tensorflow_datasets)")
    parser.add_argument("--json", metavar="OUT", help="write both runs' reports here")
    parser.add_argument("--sheet", metavar="OUT.png", help="write the contact sheet here")
    args = parser.parse_args(argv)
    if args.stn is None and args.deca is None:
        parser.error("expected --stn RUN and/or --deca RUN")

    def body() -> int:
        stn = _check_run(args.stn, "stn") if args.stn else None
        deca = _check_run(args.deca, "deca") if args.deca else None
        for path, flag in ((args.workdir, "--workdir"), (args.data_dir, "--data_dir"), (args.sheet, "--sheet")):
            if path:
                _outside_repo(path, flag)
        if args.json:
            cli.check_output_file(args.json, "--json")
        if args.sheet:
            cli.check_output_file(args.sheet, "--sheet")
        enable_compilation_cache()
        if args.photos and not Path(args.photos).is_dir():
            raise cli.UsageError(f"--photos {args.photos}: no such folder (expected a folder of photographs)")
        options = dict(stn=stn, deca=deca, demodata=args.demodata, data_dir=args.data_dir, json_path=args.json,
                       sheet_path=args.sheet, photos_dir=args.photos)
        if args.workdir:
            run(workdir=cli.check_output_dir(args.workdir, "--workdir", create=False), **options)
        else:
            with tempfile.TemporaryDirectory(prefix="jface_real_photos_") as workdir:
                run(workdir=workdir, **options)
        return 0

    return cli.run(PROG, body, USER_ERRORS)


if __name__ == "__main__":
    sys.exit(main())
