"""A folder of photographs as a TFDS dataset: labelled, cropped for a task, built once, reused.

Layout: identity sub-folders (``root/<identity>/**/<image>``: every image of a sub-folder is one
identity, as VGGFace2 / UMDFaces are laid out) and/or images directly in ``root`` (one identity
each: a flat folder is one image per identity). Hidden files and folders are ignored.

Every photo is labelled (:mod:`jface.data.detect`: a landmark side file wins, else the detector;
a photo without a face is skipped and counted; with several faces the largest is kept, or every
face with ``all_faces`` (faces other than the largest become identities of their own; the detector
then also looks in overlapping windows, :func:`jface.data.detect.find_faces`, so the small faces of
a group photo are found)), then cropped
by the task's crop rule (:func:`crop_for_task`), which is the crop the programs use at inference:

* ``deca``: :func:`jface.data.crops.deca_crop` with ``test=True`` (DECA's ``TestData`` crop, the
  one ``jface.reconstruct`` uses), 224 px; ``landmarks68`` in DECA's label NDC (p / 224 * 2 - 1,
  third column 1);
* ``stn``: :func:`jface.data.crops.stn_crop` with scale 1.6 (the one ``jface.flatten`` uses), 224
  px; ``landmarks68`` in the 3DMM-STN y-up pixel frame (x, y, vis; outside the crop = missing).

Records (features of the ``jface_photos`` TFDS dataset, ArrayRecord, no TensorFlow): ``image``
(224, 224, 3) uint8, ``landmarks68`` (68, 3), ``landmarks21`` (21, 3) (AFLW-21 from the 68,
:func:`jface.data.detect.aflw21_from_ibug68`), ``face_mask`` (224, 224) uint8 0/1 (the mesh's
face oval, or :func:`jface.data.detect.landmark_mask` for side-file labels), ``identity`` int64,
``identity_name``, ``path``, ``labels_from``, ``frame`` (text).

The build goes to ``DATA_DIR/jface_photos/<task>-<folder name>-<fingerprint>/1.0.0``; the
fingerprint covers the file list (names, sizes, modification times, side files included), the
task, the detector and ``all_faces``, so an unchanged folder is reused and a changed one is built
again. A progress bar runs while building; the build report (images found, labelled from side
files / by the detector, faces written, every skipped file with the reason) is printed and
saved as ``jface_build_report.json`` beside the dataset.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from jface.arrays import floats_to_float32
from jface.data import crops
from jface.data.detect import (
    DETECTORS,
    aflw21_from_ibug68,
    face_oval_mask,
    find_faces,
    landmark_mask,
    make_detector,
    read_side_landmarks,
    side_file,
)
from jface.data.errors import DataSourceError
from jface.data.real import IMAGE_SUFFIXES, ImageReadError, read_image
from jface.fit import FitConfig, fit_flame
from jface.fit.flame import code_sizes
from jface.models import default_flame_model, load_flame

__all__ = [
    "DATASET_NAME",
    "VERSION",
    "TASKS",
    "FRAMES",
    "BuildReport",
    "PhotoFit",
    "FIT_FIELDS",
    "resolve_data_dir",
    "scan_photo_folder",
    "photo_config_name",
    "find_built_photos",
    "crop_for_task",
    "fit_examples",
    "build_photo_folder",
    "detector_name",
]

DATASET_NAME = "jface_photos"
VERSION = "1.0.0"
TASKS = ("stn", "deca")
CROP_SIZE = 224
STN_CROP_SCALE = 1.6
# The frames as the other jface builders name them (jface.data.aflw2000.crop_item).
FRAMES = {
    "stn": "3dmm-stn y-up pixels: x = 1-based column, y = 225 - 1-based row",
    "deca": "deca ndc: p / 224 * 2 - 1 (training-label convention), third column 1",
}
REPORT_FILE = "jface_build_report.json"
# Fitted FLAME codes stored with each face (``--fit``), named as the DECA generator names its labels
# (jface.data.synthetic_deca), so a trainer reads them as it reads generated labels; from fit_flame's
# code dict: shape, tex, exp, pose, cam, light. Plus the fit's final loss and photometric error.
FIT_FIELDS = {"shape": "shape", "albedo": "tex", "expression": "exp", "pose": "pose", "cam": "cam", "light": "light"}


def resolve_data_dir(data_dir=None) -> Path:
    """The TFDS data dir: ``data_dir``, else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``."""
    return Path(data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets").expanduser()


@dataclasses.dataclass
class BuildReport:
    """What a build of a photo folder found, labelled, wrote and skipped (with the reasons)."""

    folder: str
    task: str
    images: int = 0
    identities: int = 0
    side_files: int = 0
    detected: int = 0
    examples: int = 0
    extra_faces: int = 0
    skipped: list = dataclasses.field(default_factory=list)  # [path, reason]
    fitted: int = 0
    fit: dict | None = None  # the PhotoFit settings, when codes were fitted

    def summary(self, limit: int = 10) -> str:
        text = (f"{self.folder}: {self.images} photos of {self.identities} identities; labelled "
                f"{self.side_files} from side files, {self.detected} by the detector; {self.examples} faces "
                f"written ({self.extra_faces} extra faces); {len(self.skipped)} skipped")
        if self.fit is not None:
            text += f"; FLAME codes fitted to {self.fitted} faces ({self.fit.get('landmark_steps')} + " \
                    f"{self.fit.get('photometric_steps')} steps, model {self.fit.get('model')!r})"
        for path, reason in self.skipped[:limit]:
            text += f"\n  skipped {path}: {reason}"
        if len(self.skipped) > limit:
            text += f"\n  ... and {len(self.skipped) - limit} more (see {REPORT_FILE})"
        return text

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class PhotoFit:
    """``--fit``: DECA's codes fitted to every face by :func:`jface.fit.fit_flame` (landmark stage
    then photometric stage, on the stored 224 crop, its 68 landmarks and its face mask) and stored
    with it as pseudo-labels (:data:`FIT_FIELDS`), the way 300W-LP's labels were made by fitting.

    ``model``: ``"default"`` (:func:`jface.models.default_flame_model`) or a FLAME file (with
    ``landmark_embedding``), as ``train.deca --model`` takes it: fit with the model the trainer uses.
    ``batch``: faces fitted together (the last batch is padded; each face is fitted on its own).
    """

    model: str = "default"
    landmark_embedding: str = ""
    landmark_steps: int = 200
    photometric_steps: int = 100
    render_size: int = 224
    batch: int = 16

    def __post_init__(self):
        for name in ("landmark_steps", "photometric_steps", "render_size", "batch"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < (0 if name.endswith("steps") else 1):
                raise ValueError(f"fit.{name}: expected a {'non-negative' if name.endswith('steps') else 'positive'} "
                                 f"int, got {value!r}")

    def config(self) -> FitConfig:
        return FitConfig(landmark_steps=int(self.landmark_steps), photometric_steps=int(self.photometric_steps),
                         render_size=int(self.render_size))

    def load_model(self):
        """The FLAME model to fit (float32)."""
        if self.model == "default":
            return floats_to_float32(default_flame_model())
        return floats_to_float32(load_flame(self.model, landmark_embedding=self.landmark_embedding or None))

    def fingerprint(self) -> str:
        """8 hex digits of the settings and the model file (path, size, modification time)."""
        digest = hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode())
        for path in (self.model, self.landmark_embedding):
            if path and path != "default" and Path(path).is_file():
                stat = Path(path).stat()
                digest.update(f"|{Path(path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        return digest.hexdigest()[:8]


def scan_photo_folder(root) -> list[tuple[str, list[Path]]]:
    """``[(identity name, [image paths])]`` of ``root``, sorted: identity sub-folders first, then
    every image directly in ``root`` as an identity of its own. Raises :class:`DataSourceError`
    for a missing folder, a file, or a folder without images."""
    root = Path(root)
    if not root.exists():
        raise DataSourceError(f"{root}: no such folder (expected a folder of photographs or a built dataset)")
    if not root.is_dir():
        raise DataSourceError(f"{root}: not a folder (expected a folder of photographs or a built dataset)")

    def images_in(paths):
        return sorted(p for p in paths if p.is_file() and not p.name.startswith(".")
                      and p.suffix.lower() in IMAGE_SUFFIXES)

    groups = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = [p for p in images_in(folder.rglob("*"))
                  if not any(part.startswith(".") for part in p.relative_to(folder).parts)]
        if images:
            groups.append((folder.name, images))
    groups += [(path.name, [path]) for path in images_in(root.iterdir())]
    if not groups:
        raise DataSourceError(
            f"{root}: no photographs found (expected {', '.join(IMAGE_SUFFIXES)} files directly in it, one "
            f"identity each, or in identity sub-folders)")
    return groups


def photo_config_name(root, groups, *, task: str, detector: str, all_faces: bool, fit: PhotoFit | None = None) -> str:
    """``<task>-<folder name>-<12 hex>``: the fingerprint of the listing, side files and options;
    with ``fit``, ``-fit<8 hex>`` (:meth:`PhotoFit.fingerprint`) appended."""
    root = Path(root)
    faces = "windows" if all_faces else False  # every face, also in overlapping windows (find_faces)
    digest = hashlib.sha256(f"{task}|{detector}|{faces}|{CROP_SIZE}|{STN_CROP_SCALE}".encode())
    for identity, paths in groups:
        digest.update(f"\n{identity}".encode())
        for path in paths:
            for item in (path, side_file(path)):
                if item is not None:
                    stat = item.stat()
                    digest.update(f"|{item.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    slug = re.sub(r"[^a-z0-9]+", "_", root.name.lower()).strip("_")[:40] or "photos"
    name = f"{task}-{slug}-{digest.hexdigest()[:12]}"
    return name if fit is None else f"{name}-fit{fit.fingerprint()}"


def find_built_photos(root, groups, *, task: str, detector: str, all_faces: bool, data_dir=None) -> Path | None:
    """The version directory of a build of the folder ``root`` (listing ``groups``) for ``task``
    with these labelling options, or None: a build with fitted codes (any fit settings; the most
    recently built) is preferred over the plain one."""
    plain = photo_config_name(root, groups, task=task, detector=detector, all_faces=all_faces)
    base = resolve_data_dir(data_dir) / DATASET_NAME
    fitted = sorted((p / VERSION for p in base.glob(f"{plain}-fit*") if (p / VERSION / "dataset_info.json").is_file()),
                    key=lambda p: (p / "dataset_info.json").stat().st_mtime_ns)
    if fitted:
        return fitted[-1]
    version_dir = base / plain / VERSION
    return version_dir if (version_dir / "dataset_info.json").is_file() else None


def crop_for_task(image, landmarks68, mask, task: str) -> dict:
    """Crop one labelled photo as ``task`` trains on it (see the module docstring).

    ``image (H, W, 3)`` uint8, ``landmarks68 (68, 2)`` 0-based pixels, ``mask (H, W)`` 0/1.
    Returns ``image (224, 224, 3)`` uint8, ``landmarks68 (68, 3)`` / ``landmarks21 (21, 3)``
    float32 in the task's frame, ``face_mask (224, 224)`` uint8 and ``frame``.
    """
    image = np.asarray(image, np.float64)
    landmarks68 = np.asarray(landmarks68, np.float64)[:, :2]
    if task == "deca":
        crop, labels, transform = crops.deca_crop(image, landmarks68, test=True, out_size=CROP_SIZE)
    elif task == "stn":
        crop, labels, transform = crops.stn_crop(image, landmarks68, scale=STN_CROP_SCALE, out_size=CROP_SIZE)
    else:
        raise ValueError(f"task: expected one of {TASKS}, got {task!r}")
    face_mask = crops.warp_image(np.asarray(mask, np.float64), transform, CROP_SIZE) > 0.5
    return {
        "image": np.clip(np.round(crop), 0, 255).astype(np.uint8),
        "landmarks68": labels.astype(np.float32),
        "landmarks21": aflw21_from_ibug68(labels).astype(np.float32),
        "face_mask": face_mask.astype(np.uint8),
        "frame": FRAMES[task],
    }


@functools.cache
def _builder_class():
    import tensorflow_datasets as tfds

    class JfacePhotos(tfds.core.GeneratorBasedBuilder):
        """Labelled, cropped faces of a folder of photographs (see :mod:`jface.data.photos`)."""

        VERSION = tfds.core.Version(VERSION)

        def __init__(self, *, config, data_dir, examples: Callable, fit_shapes: dict | None = None, **kwargs):
            self._examples = examples
            self._fit_shapes = fit_shapes or {}
            super().__init__(config=config, data_dir=data_dir, file_format="array_record", **kwargs)

        def _info(self):
            zlib = tfds.features.Encoding.ZLIB
            size = CROP_SIZE
            features = {
                "image": tfds.features.Tensor(shape=(size, size, 3), dtype=np.uint8, encoding=zlib),
                "face_mask": tfds.features.Tensor(shape=(size, size), dtype=np.uint8, encoding=zlib),
                "landmarks68": tfds.features.Tensor(shape=(68, 3), dtype=np.float32),
                "landmarks21": tfds.features.Tensor(shape=(21, 3), dtype=np.float32),
                "identity": tfds.features.Scalar(dtype=np.int64),
                "identity_name": tfds.features.Text(),
                "path": tfds.features.Text(),
                "labels_from": tfds.features.Text(),
                "frame": tfds.features.Text(),
            }
            features.update({name: tfds.features.Tensor(shape=tuple(shape), dtype=np.float32)
                             for name, shape in self._fit_shapes.items()})
            return tfds.core.DatasetInfo(
                builder=self,
                description="Faces of a folder of photographs, labelled by side files or a detector"
                            + (", with fitted FLAME codes." if self._fit_shapes else "."),
                disable_shuffling=True,
                features=tfds.features.FeaturesDict(features),
            )

        def _split_generators(self, dl_manager):
            del dl_manager
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            yield from self._examples()

    return JfacePhotos


def _face_mask(face, image_hw) -> np.ndarray:
    if getattr(face, "mesh", None) is not None:
        return face_oval_mask(face, image_hw)
    return landmark_mask(face.landmarks68, image_hw)


def detector_name(detector) -> str:
    """The name of ``detector`` (None, a name of :data:`jface.data.detect.DETECTORS` or a callable)
    that a build's fingerprint and report use."""
    if detector is None or detector == "none":
        return "side-files-only"
    if isinstance(detector, str):
        if detector not in DETECTORS:
            raise ValueError(f"detector: expected one of {sorted(DETECTORS)}, none or a callable, got {detector!r}")
        return DETECTORS[detector].name
    return str(getattr(detector, "name", type(detector).__name__))


def fit_shapes(model) -> dict:
    """The stored shape of every fitted field (:data:`FIT_FIELDS`, ``fit_loss``, ``fit_photometric_error``)."""
    sizes = code_sizes(model)
    shapes = {"shape": (sizes["shape"],), "albedo": (sizes["tex"],), "expression": (sizes["exp"],),
              "pose": (sizes["pose"],), "cam": (sizes["cam"],), "light": (9, 3)}
    return {**shapes, "fit_loss": (), "fit_photometric_error": ()}


def _fit_landmarks(example: dict) -> np.ndarray:
    """The stored ``landmarks68`` in the fit's frame: DECA's NDC of the crop, p / 224 * 2 - 1
    (:func:`jface.fit.crop_pixels_to_ndc`), third column the weight (0 = missing)."""
    labels = np.asarray(example["landmarks68"], np.float64)
    if example["frame"] == FRAMES["deca"]:
        return labels
    pixels = crops.from_stn_frame(labels, CROP_SIZE)
    return np.concatenate([pixels * (2.0 / CROP_SIZE) - 1.0, labels[:, 2:3]], 1)


def fit_examples(examples: list[dict], model, fit: PhotoFit) -> list[dict]:
    """``examples`` (of :func:`crop_for_task`, at most ``fit.batch``) with DECA's codes fitted to
    each (:class:`PhotoFit`; the batch is padded to ``fit.batch`` with copies of the last face, so
    every call has one shape) added under :data:`FIT_FIELDS`'s names, float32, and the fit's final
    ``fit_loss`` and ``fit_photometric_error`` (mean |render - photo| inside the mask, RGB in [0, 1])."""
    count = len(examples)
    if not 1 <= count <= fit.batch:
        raise ValueError(f"examples: expected 1 to fit.batch = {fit.batch} examples, got {count}")
    rows = list(examples) + [examples[-1]] * (fit.batch - count)
    images = np.stack([row["image"] for row in rows]).astype(np.float32) / 255.0
    landmarks = np.stack([_fit_landmarks(row) for row in rows]).astype(np.float32)
    masks = np.stack([row["face_mask"] for row in rows]).astype(np.float32)
    codes, history = fit_flame(model, images, landmarks, config=fit.config(), masks=masks)
    final = {name: np.asarray(values)[-1] for name, values in history["photometric"].items()}
    out = []
    for i, example in enumerate(examples):
        example = dict(example)
        example.update({name: np.asarray(codes[key][i], np.float32) for name, key in FIT_FIELDS.items()})
        example["fit_loss"] = np.float32(final["loss"][i])
        example["fit_photometric_error"] = np.float32(final["photometric_error"][i])
        out.append(example)
    return out


def build_photo_folder(root, *, task: str, data_dir=None, detector="mediapipe", all_faces: bool = False,
                       fit: PhotoFit | None = None, progress: bool = True,
                       log: Callable = print) -> tuple[Path, BuildReport]:
    """Build (or reuse) the ``jface_photos`` dataset of the folder ``root`` for ``task``.

    ``detector``: a name of :data:`jface.data.detect.DETECTORS` (``"mediapipe"``, ``"dlib"``;
    created only if a photo has no side file), None or ``"none"`` (side files only: other photos are
    skipped), or a callable ``image -> [face]`` (largest first; a face has ``landmarks68 (68, 2)`` and
    optionally ``mesh``). ``fit``: also fit DECA's codes to every face and store them
    (:class:`PhotoFit`, :func:`fit_examples`; a build of its own, ``...-fit<hex>``). Returns ``(the
    dataset's version directory, the build report)``. Raises :class:`DataSourceError` for a missing
    or empty folder and when no photo gave a face, and
    :class:`jface.data.detect.DetectorMissingError` when a photo needs the detector and it is not
    installed.
    """
    if task not in TASKS:
        raise ValueError(f"task: expected one of {TASKS}, got {task!r}")
    if detector == "none":
        detector = None
    root = Path(root).expanduser().absolute()
    groups = scan_photo_folder(root)
    config_name = photo_config_name(root, groups, task=task, detector=detector_name(detector), all_faces=all_faces,
                                    fit=fit)
    data_dir = resolve_data_dir(data_dir)
    version_dir = data_dir / DATASET_NAME / config_name / VERSION
    report_path = version_dir / REPORT_FILE
    if (version_dir / "dataset_info.json").is_file():
        report = BuildReport(**json.loads(report_path.read_text())) if report_path.is_file() else BuildReport(
            folder=str(root), task=task)
        log(f"{root}: using the dataset built before, {version_dir}")
        return version_dir, report

    import tensorflow_datasets as tfds
    from tqdm import tqdm

    report = BuildReport(folder=str(root), task=task, identities=len(groups),
                         images=sum(len(paths) for _, paths in groups),
                         fit=None if fit is None else dataclasses.asdict(fit))
    state = {"detector": detector if callable(detector) else None, "created": None}
    fit_model = fit.load_model() if fit is not None else None

    def faces_of(image, path):
        if state["detector"] is None:
            if detector is None:
                raise ImageReadError(f"{path}: no landmark side file and detection is off")
            state["detector"] = state["created"] = make_detector(detector)
        faces = find_faces(state["detector"], image) if all_faces else list(state["detector"](image))
        if not faces:
            raise ImageReadError(f"{path}: no face found ({detector_name(detector)})")
        return faces if all_faces else faces[:1]

    def labelled_faces(bar):
        next_identity = len(groups)
        for identity, (identity_name, paths) in enumerate(groups):
            for path in paths:
                bar.update(1)
                try:
                    image = read_image(path)
                    side = side_file(path)
                    if side is not None:
                        landmarks68 = read_side_landmarks(side)
                        labelled = [(landmarks68, landmark_mask(landmarks68, image.shape[:2]))]
                        labels_from = f"side file {side.name}"
                    else:
                        labelled = [(face.landmarks68, _face_mask(face, image.shape[:2]))
                                    for face in faces_of(image, path)]
                        labels_from = detector_name(detector)
                except ImageReadError as exc:
                    report.skipped.append([str(path), str(exc).removeprefix(f"{path}: ")])
                    continue
                if side is not None:
                    report.side_files += 1
                else:
                    report.detected += 1
                for k, (landmarks68, mask) in enumerate(labelled):
                    try:
                        example = crop_for_task(image, landmarks68, mask, task)
                    except ValueError as exc:  # a degenerate landmark box
                        report.skipped.append([f"{path} (face {k})", str(exc)])
                        continue
                    if k == 0:
                        face_identity, name = identity, identity_name
                    else:
                        face_identity, name = next_identity, f"{identity_name}#{k}"
                        next_identity += 1
                        report.extra_faces += 1
                    example.update(identity=face_identity, identity_name=name, path=str(path),
                                   labels_from=labels_from)
                    report.examples += 1
                    yield example

    def fitted(pending, bar):
        bar.set_postfix_str(f"fitting {len(pending)} faces")
        done = fit_examples(pending, fit_model, fit)
        report.fitted += len(done)
        bar.set_postfix_str(f"{report.fitted} fitted")
        return done

    def examples():
        count = 0
        with tqdm(total=report.images, unit="photo", desc=f"{DATASET_NAME}/{config_name}", disable=not progress) as bar:
            pending = []
            for example in labelled_faces(bar):
                if fit is None:
                    yield f"{count:09d}", example
                    count += 1
                    continue
                pending.append(example)
                if len(pending) == fit.batch:
                    for done in fitted(pending, bar):
                        yield f"{count:09d}", done
                        count += 1
                    pending = []
            if pending:
                for done in fitted(pending, bar):
                    yield f"{count:09d}", done
                    count += 1
        if report.examples == 0:
            raise DataSourceError(f"{root}: no face found in any of its {report.images} photos\n"
                                  + report.summary().split("\n", 1)[-1])

    builder = _builder_class()(config=tfds.core.BuilderConfig(name=config_name, version=VERSION,
                                                               description=f"photos of {root}"),
                               data_dir=str(data_dir), examples=examples,
                               fit_shapes=None if fit is None else fit_shapes(fit_model))
    tfds.disable_progress_bar()
    try:
        builder.download_and_prepare()
    finally:
        if state["created"] is not None:
            state["created"].close()
    report_path.write_text(json.dumps(report.to_json(), indent=1))
    log(f"built {version_dir}\n{report.summary()}")
    return version_dir, report
