"""``python -m jface.data``: build and inspect jface's TFDS datasets (no TensorFlow).

::

    python -m jface.data build synthetic --config stn|deca|stn_small|deca_small [--split train]
        [--num N] [--images_per_identity K] [--image_size S] [--seed SEED] [--data_dir DIR]
    python -m jface.data build real --config deca_train|deca_test|stn --manual_dir DIR [--data_dir DIR]
    python -m jface.data build aflw2000 --config raw|deca|stn --manual_dir DIR [--data_dir DIR]
    python -m jface.data build 300w_lp --config raw|deca|stn --manual_dir DIR [--data_dir DIR]
    python -m jface.data build photos FOLDER [--task stn|deca|all] [--data_dir DIR] [--all_faces]
        [--detector mediapipe|dlib|none] [--fit [--fit_model default|FLAME_FILE] [--fit_steps L,P]
        [--fit_render_size S] [--fit_batch B]]
    python -m jface.data inspect [--dataset synthetic|real|aflw2000] --config NAME [--split train]
        [--data_dir DIR] [--num 16] -o sheet.png

``build photos`` builds a folder of photographs (identity sub-folders, or flat: one photo per
identity) into the data dir exactly as ``train.stn`` / ``train.deca --data FOLDER`` do on first use
(:func:`jface.data.photos.build_photo_folder`: landmark side files win, else the detector; the
task's crop), with a progress bar and the build report (found / labelled / skipped and why), for
each task of ``--task`` (default all: both trainers then reuse it). ``--fit`` also fits DECA's
FLAME codes to every face (:func:`jface.fit.fit_flame`, ``--fit_steps`` landmark and photometric
steps) and stores them as pseudo-labels (``shape``, ``albedo``, ``expression``, ``pose``, ``cam``,
``light``), which ``train.deca --data FOLDER`` then reads (code whitening, held-out vertex error).
Exit status 2 with one line for a folder that cannot be built.

``build synthetic`` with ``--num`` / ``--split`` / ``--images_per_identity`` builds only that split
under a derived config name (printed; e.g. ``stn-train1000-k10``), which ``inspect --config`` and
:func:`jface.data.tfds_synthetic.load_source` accept. ``inspect`` writes a PNG contact sheet with
the landmarks drawn: 68 points as dots (green visible, red hidden), AFLW-21 as yellow squares.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from jface.data.aflw2000 import JfaceAflw2000, list_aflw2000
from jface.data.detect import DETECTORS, DetectorMissingError
from jface.data.errors import DataSourceError
from jface.data.photos import TASKS, PhotoFit, build_photo_folder, resolve_data_dir
from jface.data.tfds_real import JfaceRealFaces
from jface.data.tfds_synthetic import PRESETS, JfaceSyntheticFaces, custom_config, load_source
from jface.data.the300w_lp import JfaceThe300wLp, list_300w_lp
from jface.training.distributed import enable_compilation_cache

__all__ = ["main", "contact_sheet", "landmarks_to_pixels"]


def _prepare(builder, manual_dir=None):
    config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    builder.download_and_prepare(download_config=config)


def _manual_dir(path):
    path = Path(path)
    if not path.is_dir():
        raise SystemExit(f"error: --manual_dir {path} is not a directory")
    if not any(path.iterdir()):
        raise SystemExit(f"error: --manual_dir {path} is empty")
    return str(path)


def build_synthetic(args) -> str:
    from tqdm import tqdm

    if args.config not in PRESETS:
        raise SystemExit(f"error: --config expected one of {sorted(PRESETS)}, got {args.config!r}")
    custom = any(v is not None for v in (args.num, args.split, args.images_per_identity, args.image_size, args.seed))
    config = custom_config(args.config, split=args.split, num=args.num, images_per_identity=args.images_per_identity,
                           image_size=args.image_size, seed=args.seed) if custom else args.config
    builder = JfaceSyntheticFaces(config=config, data_dir=args.data_dir)
    cfg = builder.builder_config
    total = sum(cfg.splits.values()) * cfg.images_per_identity
    tfds.disable_progress_bar()
    start = time.perf_counter()
    with tqdm(total=total, unit="img", desc=f"jface_synthetic_faces/{cfg.name}") as bar:
        builder.progress = bar.update
        _prepare(builder)
    elapsed = time.perf_counter() - start
    print(f"built jface_synthetic_faces/{cfg.name} ({total} images; {elapsed:.1f} s) in {builder.data_dir}")
    return cfg.name


def build_real(args):
    builder = JfaceRealFaces(config=args.config, data_dir=args.data_dir, file_format="array_record")
    _prepare(builder, _manual_dir(args.manual_dir))
    print(f"built jface_real_faces/{args.config} in {builder.data_dir}")


def build_aflw2000(args):
    """AFLW2000-3D or 300W-LP (``args.dataset``) from the unzipped manual folder."""
    if args.dataset == "300w_lp":
        Builder, check = JfaceThe300wLp, list_300w_lp
    else:
        Builder, check = JfaceAflw2000, list_aflw2000

    manual = _manual_dir(args.manual_dir)
    try:
        check(manual)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    builder = Builder(config=args.config, data_dir=args.data_dir)
    _prepare(builder, manual)
    print(f"built {builder.name}/{args.config} in {builder.data_dir}")


def _fit_steps(text: str) -> tuple[int, int]:
    parts = str(text).split(",")
    try:
        steps = tuple(int(part) for part in parts)
    except ValueError:
        steps = ()
    if len(steps) != 2 or min(steps) < 0:
        raise argparse.ArgumentTypeError(f"expected LANDMARK,PHOTOMETRIC steps (e.g. 200,100), got {text!r}")
    return steps


def build_photos(args) -> list:
    """``build photos``: every task of ``args.task`` built (or reused); ``[(version dir, report)]``."""
    tasks = TASKS if args.task == "all" else (args.task,)
    fit = None
    if args.fit:
        fit = PhotoFit(model=args.fit_model, landmark_embedding=args.fit_landmark_embedding or "",
                       landmark_steps=args.fit_steps[0], photometric_steps=args.fit_steps[1],
                       render_size=args.fit_render_size, batch=args.fit_batch)
    built = []
    for task in tasks:
        messages = []
        version_dir, report = build_photo_folder(args.folder, task=task, data_dir=args.data_dir,
                                                 detector=args.detector, all_faces=args.all_faces, fit=fit,
                                                 log=messages.append)
        print("\n".join(messages), flush=True)
        if not any(m.startswith("built ") for m in messages):  # reused: the report of the build
            print(report.summary(), flush=True)
        built.append((version_dir, report))
    for task in tasks:
        print(f"train on it: python -m train.{task} --data {args.folder} --data_dir {args.data_dir}")
    return built


def landmarks_to_pixels(landmarks, frame: str, size: int):
    """``(L, 3)`` labels -> 0-based pixel (col, row) ``(L, 2)`` and a visibility ``(L,)`` bool.

    ``frame`` starts with "deca ndc" (x right, y down; col = (x + 1) S/2 - 0.5), "3dmm-stn" (y-up:
    col = x - 1, row = S - y; x = y = 0 is missing) or "aflw2000" (stored pixels).
    """
    lm = np.asarray(landmarks, np.float64)
    if frame.startswith("deca"):
        xy = (lm[:, :2] + 1.0) * size / 2.0 - 0.5
        vis = lm[:, 2] > 0
    elif frame.startswith("3dmm-stn"):
        xy = np.stack([lm[:, 0] - 1.0, size - lm[:, 1]], -1)
        vis = lm[:, 2] > 0
    else:
        xy = lm[:, :2]
        vis = np.ones(len(lm), bool)
    return xy, vis


def _frame_of(dataset: str, config: str, example: dict) -> str:
    if "frame" in example:
        frame = example["frame"]
        return frame.decode() if isinstance(frame, bytes) else str(frame)
    if dataset == "real":
        return "3dmm-stn" if config == "stn" else "deca ndc"
    return "pixels"


def contact_sheet(examples, frames, *, tile: int = 224, columns: int = 4):
    """PIL image: the examples' ``image`` tiles (resized to ``tile``) with landmarks drawn."""
    from PIL import Image, ImageDraw

    rows = max(1, -(-len(examples) // columns))
    sheet = Image.new("RGB", (columns * tile, rows * tile), (32, 32, 32))
    for n, (ex, frame) in enumerate(zip(examples, frames)):
        image = np.asarray(ex["image"], np.uint8)
        size = image.shape[0]
        zoom = tile / size
        im = Image.fromarray(image).resize((tile, tile), Image.BILINEAR)
        draw = ImageDraw.Draw(im)
        for key, square in (("landmarks68", False), ("landmarks", False), ("landmarks21", True)):
            if key not in ex:
                continue
            if key == "landmarks21" and ex[key].shape[-1] == 2:  # aflw2000 raw pt2d
                continue
            xy, vis = landmarks_to_pixels(ex[key], frame, size)
            for (x, y), v in zip((xy + 0.5) * zoom, vis):
                if square:
                    if v:
                        draw.rectangle([x - 2, y - 2, x + 2, y + 2], outline=(255, 220, 0))
                else:
                    draw.ellipse([x - 1.5, y - 1.5, x + 1.5, y + 1.5], fill=(0, 230, 0) if v else (230, 0, 0))
        sheet.paste(im, ((n % columns) * tile, (n // columns) * tile))
    return sheet


def _source(dataset, config, split, data_dir):
    if dataset == "synthetic":
        return load_source(config, split, data_dir=data_dir)
    if dataset == "real":
        builder = JfaceRealFaces(config=config, data_dir=data_dir, file_format="array_record")
    elif dataset == "300w_lp":
        builder = JfaceThe300wLp(config=config, data_dir=data_dir)
    else:
        builder = JfaceAflw2000(config=config, data_dir=data_dir)
    if not builder.is_prepared():
        raise SystemExit(f"error: {builder.name}/{config} is not built in {builder.data_dir}; run `build` first")
    if split not in builder.info.splits:
        raise SystemExit(f"error: --split {split!r} not built; built: {list(builder.info.splits)}")
    return builder.as_data_source(split=split)


def inspect(args):
    split = args.split or ("test" if args.dataset == "aflw2000" else "train")
    try:
        source = _source(args.dataset, args.config, split, args.data_dir)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    count = min(args.num, len(source))
    if count == 0:
        raise SystemExit(f"error: split {split!r} of {args.config!r} is empty")
    examples = [source[i] for i in range(count)]
    frames = [_frame_of(args.dataset, args.config, ex) for ex in examples]
    sheet = contact_sheet(examples, frames)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    print(f"wrote {out} ({count} of {len(source)} examples of {args.config}/{split})")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m jface.data", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build a TFDS dataset (ArrayRecord)")
    bsub = build.add_subparsers(dest="dataset", required=True)

    syn = bsub.add_parser("synthetic", help="rendered faces (jface_synthetic_faces)")
    syn.add_argument("--config", required=True, help="stn | deca | stn_small | deca_small")
    syn.add_argument("--split", choices=["train", "validation", "test"], default=None)
    syn.add_argument("--num", type=int, default=None, help="images of --split (rounded up to identities)")
    syn.add_argument("--images_per_identity", type=int, default=None, help="K images per identity")
    syn.add_argument("--image_size", type=int, default=None)
    syn.add_argument("--seed", type=int, default=None)
    syn.add_argument("--data_dir", default=None)

    real = bsub.add_parser("real", help="real photographs in identity folders (jface_real_faces)")
    real.add_argument("--config", required=True, choices=["deca_train", "deca_test", "stn"])
    real.add_argument("--manual_dir", required=True)
    real.add_argument("--data_dir", default=None)

    aflw = bsub.add_parser("aflw2000", help="AFLW2000-3D from its unzipped folder (jface_aflw2000)")
    aflw.add_argument("--config", required=True, choices=["raw", "deca", "stn"])
    aflw.add_argument("--manual_dir", required=True)
    aflw.add_argument("--data_dir", default=None)

    lp = bsub.add_parser("300w_lp", help="300W-LP from its unzipped folder (jface_the300w_lp)")
    lp.add_argument("--config", required=True, choices=["raw", "deca", "stn"])
    lp.add_argument("--manual_dir", required=True)
    lp.add_argument("--data_dir", default=None)

    photos = bsub.add_parser("photos", help="a folder of photographs (jface_photos), as --data FOLDER builds it")
    photos.add_argument("folder", help="identity sub-folders of photos, or photos directly in it (one identity each)")
    photos.add_argument("--task", choices=[*TASKS, "all"], default="all",
                        help="whose crop and label frame: stn, deca or all (both; default)")
    photos.add_argument("--data_dir", default=None)
    photos.add_argument("--all_faces", action="store_true", help="every detected face, not only the largest")
    photos.add_argument("--detector", choices=[*DETECTORS, "none"], default="mediapipe",
                        help="labels for photos without a landmark side file (none: skip them)")
    photos.add_argument("--fit", action="store_true", help="also store FLAME codes fitted to every face")
    photos.add_argument("--fit_model", default="default", help="FLAME model of the fit: default or a FLAME file")
    photos.add_argument("--fit_landmark_embedding", default="", help="DECA's landmark_embedding.npy for a FLAME file")
    photos.add_argument("--fit_steps", type=_fit_steps, default=(200, 100), metavar="L,P",
                        help="landmark and photometric steps (default 200,100)")
    photos.add_argument("--fit_render_size", type=int, default=224)
    photos.add_argument("--fit_batch", type=int, default=16, help="faces fitted together")

    ins = sub.add_parser("inspect", help="write a PNG contact sheet with landmarks drawn")
    ins.add_argument("--dataset", choices=["synthetic", "real", "aflw2000", "300w_lp"], default="synthetic")
    ins.add_argument("--config", required=True)
    ins.add_argument("--split", default=None)
    ins.add_argument("--data_dir", default=None)
    ins.add_argument("--num", type=int, default=16)
    ins.add_argument("-o", "--output", required=True)

    args = parser.parse_args(argv)
    enable_compilation_cache()  # JFACE_COMPILATION_CACHE=0 turns it off
    # $TFDS_DATA_DIR as set now (tfds reads it once, at import), as jface.data.sources resolves it
    args.data_dir = str(resolve_data_dir(args.data_dir))
    if args.command == "inspect":
        inspect(args)
    elif args.dataset == "synthetic":
        build_synthetic(args)
    elif args.dataset == "real":
        build_real(args)
    elif args.dataset == "photos":
        try:
            build_photos(args)
        except (DataSourceError, DetectorMissingError, ValueError) as exc:
            print(f"python -m jface.data: {exc}", file=sys.stderr, flush=True)
            return 2
    else:
        build_aflw2000(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
