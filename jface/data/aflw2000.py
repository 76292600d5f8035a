"""AFLW2000-3D (Zhu et al., 3DDFA) from a manual download folder, without TensorFlow.

TFDS 4.9.10 has builders ``aflw2k3d`` and ``the300w_lp``, but they cannot be used here: their
``_split_generators`` always call ``dl_manager.download_and_extract(URL)`` (the manual directory is
ignored; the URLs are a dead university server / a Google Drive link), they read files with
``tf.io.gfile`` (TensorFlow, lazily imported) and store ``tfds.features.Image`` (JPEG encoding
needs TensorFlow). Checked on 2026-11-21: ``tfds.builder("aflw2k3d", data_dir=...)`` constructs
without TensorFlow, ``download_and_prepare(download_config=DownloadConfig(manual_dir=...))``
tries to download from www.cbsr.ia.ac.cn. Hence this reader and :class:`JfaceAflw2000`.

Layout (the unzipped ``AFLW2000-3D.zip``)::

    AFLW2000/
      image00002.jpg  image00002.mat
      image00004.jpg  image00004.mat   ...

Each ``.mat`` (MATLAB v5, read with ``scipy.io.loadmat``) holds ``pt3d_68`` (3, 68): the 68
landmarks (x, y, z) of the fitted 3DMM in the image's pixel frame (x = column, y = row, as stored;
3DDFA's MATLAB code may count from 1: treat a one-pixel offset as unknown), ``Pose_Para`` (1, 7) =
(pitch, yaw, roll radians, tx, ty, tz, scale) and, when present, ``pt2d`` (2, 21) = the original
AFLW 21 points (-1 = missing). Pose angles are reported as stored; 3DDFA's sign conventions apply.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from jface.data import crops
from jface.data.real import ImageReadError, ScanReport, read_image
from jface.errors import ModelFileError
from jface.files.mat import load_mat

log = logging.getLogger(__name__)

__all__ = ["list_aflw2000", "read_aflw2000_item", "iter_aflw2000", "JfaceAflw2000", "Aflw2000Config"]

_NAME = re.compile(r"^image\d+$")


def list_aflw2000(root) -> list:
    """``[(image_path, mat_path)]`` of ``root`` (or ``root/AFLW2000``), sorted by name.

    Raises ``FileNotFoundError`` for a missing folder and ``ValueError`` when it holds no
    ``imageNNNNN.jpg`` + ``.mat`` pair.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"manual_dir: {root} is not a directory (expected the unzipped AFLW2000-3D folder)")
    if (root / "AFLW2000").is_dir():
        root = root / "AFLW2000"
    pairs = []
    for image in sorted(root.glob("image*.jpg")):
        mat = image.with_suffix(".mat")
        if _NAME.match(image.stem) and mat.is_file():
            pairs.append((image, mat))
    if not pairs:
        raise ValueError(
            f"manual_dir: no AFLW2000-3D files in {root} (expected imageNNNNN.jpg with imageNNNNN.mat "
            f"beside it, as in AFLW2000-3D.zip)")
    return pairs


def read_mat(mat_path) -> dict:
    """A 3DDFA-style ``.mat`` through :func:`jface.files.mat.load_mat` (parsed in a child process,
    so a corrupt file cannot crash the build); any problem -> :class:`ImageReadError` naming it."""
    mat_path = Path(mat_path)
    if not mat_path.is_file():
        raise ImageReadError(f"{mat_path}: no such file")
    try:
        return load_mat(mat_path)
    except ModelFileError as exc:
        raise ImageReadError(str(exc)) from exc


def read_aflw2000_item(image_path, mat_path=None) -> dict:
    """One AFLW2000-3D sample: ``image (H, W, 3)`` uint8, ``landmarks68 (68, 3)`` float32 (pt3d_68
    transposed: x, y, z), ``pose_para (7,)``, ``pose_deg (3,)`` (pitch, yaw, roll in degrees, as
    stored), ``landmarks21 (21, 2)`` (pt2d transposed, -1 = missing; all -1 when absent), ``name``.
    Raises :class:`jface.data.real.ImageReadError` naming the file on any problem.
    """
    image_path = Path(image_path)
    mat_path = Path(mat_path) if mat_path is not None else image_path.with_suffix(".mat")
    image = read_image(image_path)
    mat = read_mat(mat_path)
    if "pt3d_68" not in mat:
        raise ImageReadError(f"{mat_path}: no 'pt3d_68' field (has {sorted(k for k in mat if not k.startswith('__'))})")
    pt3d = np.asarray(mat["pt3d_68"], np.float64)
    if pt3d.shape != (3, 68):
        raise ImageReadError(f"{mat_path}: 'pt3d_68' expected shape (3, 68), got {pt3d.shape}")
    pose = np.asarray(mat.get("Pose_Para", np.zeros((1, 7))), np.float64).reshape(-1)
    if pose.shape != (7,):
        raise ImageReadError(f"{mat_path}: 'Pose_Para' expected 7 numbers, got shape {pose.shape}")
    pt2d = np.asarray(mat["pt2d"], np.float64).T if "pt2d" in mat else np.full((21, 2), -1.0)
    if pt2d.shape != (21, 2):
        raise ImageReadError(f"{mat_path}: 'pt2d' expected shape (2, 21), got {pt2d.T.shape}")
    if not (np.all(np.isfinite(pt3d)) and np.all(np.isfinite(pose))):
        raise ImageReadError(f"{mat_path}: NaN or Inf in pt3d_68 / Pose_Para")
    return {
        "image": image,
        "landmarks68": pt3d.T.astype(np.float32),
        "landmarks21": pt2d.astype(np.float32),
        "pose_para": pose.astype(np.float32),
        "pose_deg": np.degrees(pose[:3]).astype(np.float32),
        "name": image_path.stem,
    }


def iter_aflw2000(root, *, report: ScanReport | None = None) -> Iterator[dict]:
    """Yield :func:`read_aflw2000_item` dicts; unreadable samples are skipped and counted."""
    report = report if report is not None else ScanReport()
    pairs = list_aflw2000(root)
    report.identities = len(pairs)
    for image_path, mat_path in pairs:
        try:
            item = read_aflw2000_item(image_path, mat_path)
        except ImageReadError as exc:
            report.skipped.append((str(image_path), str(exc)))
            log.warning("skipping %s", exc)
            continue
        report.images += 1
        yield item


class Aflw2000Config(tfds.core.BuilderConfig):
    """``crop``: "raw" (450 px, stored frame), "deca" (DECA's AFLW2000 validation crop, scale 1.6,
    NDC labels, ``decalib/datasets/aflw2000.py``) or "stn" (224 crop, 3DMM-STN y-up labels)."""

    def __init__(self, *, crop: str, **kwargs):
        super().__init__(version=tfds.core.Version("1.0.0"), **kwargs)
        self.crop = crop


def crop_item(item: dict, crop: str) -> dict:
    """Apply an :class:`Aflw2000Config` crop to a :func:`read_aflw2000_item` dict (numpy)."""
    lm = item["landmarks68"].astype(np.float64)
    if crop == "raw":
        image, labels, frame = item["image"], lm, "aflw2000 stored pixels: x = column, y = row, z"
    elif crop == "deca":
        image, labels, _ = crops.deca_crop(item["image"].astype(np.float64), lm[:, :2], scale=1.6)
        frame = "deca ndc: p / 224 * 2 - 1 (training-label convention), third column 1"
    elif crop == "stn":
        image, labels, _ = crops.stn_crop(item["image"].astype(np.float64), lm[:, :2], scale=1.6)
        frame = "3dmm-stn y-up pixels: x = 1-based column, y = 225 - 1-based row"
    else:
        raise ValueError(f"crop: expected 'raw', 'deca' or 'stn', got {crop!r}")
    return {
        "image": np.clip(np.round(image), 0, 255).astype(np.uint8),
        "landmarks68": np.asarray(labels, np.float32),
        "pose_para": item["pose_para"],
        "pose_deg": item["pose_deg"],
        "name": item["name"],
        "frame": frame,
    }


class JfaceAflw2000(tfds.core.GeneratorBasedBuilder):
    """AFLW2000-3D from the manual directory (TF-free; ArrayRecord, Tensor features).

    Subclasses for other 3DDFA-layout sets (300W-LP) override the class attributes and the three
    hooks ``_list``, ``_iter`` and ``_example``.
    """

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [
        Aflw2000Config(name="raw", crop="raw", description="450 px images, stored landmark frame"),
        Aflw2000Config(name="deca", crop="deca", description="DECA AFLW2000 crops (scale 1.6), NDC"),
        Aflw2000Config(name="stn", crop="stn", description="224 crops, 3DMM-STN y-up frame"),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Unzip AFLW2000-3D.zip (3DDFA project page) into the manual directory: imageNNNNN.jpg and "
        "imageNNNNN.mat files, directly or in an AFLW2000/ subfolder."
    )
    SPLIT = "test"
    DESCRIPTION = "AFLW2000-3D (evaluation), read without TensorFlow."
    EXTRA_TEXT_FEATURES: tuple = ()

    def __init__(self, *, file_format="array_record", **kwargs):
        super().__init__(file_format=file_format, **kwargs)

    def _list(self, root):
        return list_aflw2000(root)

    def _iter(self, root, report):
        return iter_aflw2000(root, report=report)

    def _example(self, item, crop):
        return crop_item(item, crop)

    def _info(self):
        size = 450 if self.builder_config.crop == "raw" else 224
        zlib = tfds.features.Encoding.ZLIB
        features = {
            "image": tfds.features.Tensor(shape=(size, size, 3), dtype=np.uint8, encoding=zlib),
            "landmarks68": tfds.features.Tensor(shape=(68, 3), dtype=np.float32),
            "pose_para": tfds.features.Tensor(shape=(7,), dtype=np.float32),
            "pose_deg": tfds.features.Tensor(shape=(3,), dtype=np.float32),
            "name": tfds.features.Text(),
            "frame": tfds.features.Text(),
        }
        features.update({name: tfds.features.Text() for name in self.EXTRA_TEXT_FEATURES})
        return self.dataset_info_from_configs(
            description=self.DESCRIPTION, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        root = dl_manager.manual_dir
        self._list(root)  # fail early, naming the folder
        return {self.SPLIT: self._generate_examples(root)}

    def _generate_examples(self, root):
        report = ScanReport()
        crop = self.builder_config.crop
        for item in self._iter(root, report):
            if crop == "raw" and item["image"].shape != (450, 450, 3):
                report.skipped.append((item["name"], f"raw config needs 450x450 images, got {item['image'].shape}"))
                continue
            yield item["name"], self._example(item, crop)
        print(f"{self.name}: {report.summary()}")
        self.scan_report = report
