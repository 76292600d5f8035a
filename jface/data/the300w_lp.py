"""300W-LP (Zhu et al., 3DDFA) from a manual download folder, without TensorFlow.

TFDS's own ``the300w_lp`` builder cannot be used without TensorFlow and ignores the manual folder
(see :mod:`jface.data.aflw2000`), so this reader serves the same purpose. Layout (the unzipped
``300W-LP.zip``)::

    300W_LP/
      AFW/  AFW_134212_1_0.jpg  AFW_134212_1_0.mat  ...
      AFW_Flip/ HELEN/ HELEN_Flip/ IBUG/ IBUG_Flip/ LFPW/ LFPW_Flip/
      landmarks/<subset>/<name>_pts.mat     (pts_2d (68, 2), pts_3d (68, 2))

Each image's ``.mat`` holds ``pt2d`` (2, 68) (x = column, y = row, as stored), ``Pose_Para``
(1, 7) = (pitch, yaw, roll radians, tx, ty, tz, scale), ``Shape_Para``, ``Exp_Para``. Landmarks are
``pt2d``; when the ``landmarks/`` folder has the sample, its ``pts_3d`` (the 3D-projected
landmarks, the usual training target) is used instead. Samples are skipped, counted and reported
on any problem; the identity id is the subject prefix (``AFW_134212``), so a sample and its
``_Flip`` share it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from jface.data.aflw2000 import JfaceAflw2000, crop_item, read_mat
from jface.data.real import ImageReadError, ScanReport, read_image

log = logging.getLogger(__name__)

__all__ = ["SUBSETS", "list_300w_lp", "read_300w_lp_item", "iter_300w_lp", "JfaceThe300wLp"]

SUBSETS = ("AFW", "AFW_Flip", "HELEN", "HELEN_Flip", "IBUG", "IBUG_Flip", "LFPW", "LFPW_Flip")
_SUBJECT = re.compile(r"^(?P<subject>[A-Za-z]+_\d+(?:_\d+)?)_\d+$")


def list_300w_lp(root) -> list:
    """``[(subset, image_path, mat_path)]`` of ``root`` (or ``root/300W_LP``), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"manual_dir: {root} is not a directory (expected the unzipped 300W-LP folder)")
    if (root / "300W_LP").is_dir():
        root = root / "300W_LP"
    items = []
    for subset in SUBSETS:
        folder = root / subset
        if folder.is_dir():
            for image in sorted(folder.glob("*.jpg")):
                items.append((subset, image, image.with_suffix(".mat")))
    if not items:
        raise ValueError(f"manual_dir: no 300W-LP images in {root} (expected subset folders {', '.join(SUBSETS)})")
    return items


def read_300w_lp_item(subset, image_path, mat_path=None) -> dict:
    """One 300W-LP sample: ``image`` uint8, ``landmarks68 (68, 3)`` float32 (x, y, 0),
    ``pose_para (7,)``, ``pose_deg (3,)``, ``name``, ``subject``; :class:`ImageReadError` on problems."""
    image_path = Path(image_path)
    mat_path = Path(mat_path) if mat_path is not None else image_path.with_suffix(".mat")
    image = read_image(image_path)
    mat = read_mat(mat_path)
    pts = None
    side = image_path.parent.parent / "landmarks" / subset / f"{image_path.stem}_pts.mat"
    if side.is_file():
        lm = read_mat(side)
        if "pts_3d" in lm:
            pts = np.asarray(lm["pts_3d"], np.float64)
    if pts is None:
        if "pt2d" not in mat:
            raise ImageReadError(f"{mat_path}: no 'pt2d' field and no landmarks/{subset}/{image_path.stem}_pts.mat")
        pts = np.asarray(mat["pt2d"], np.float64).T
    if pts.shape != (68, 2):
        raise ImageReadError(f"{mat_path}: expected 68 landmarks of 2 coordinates, got shape {pts.shape}")
    pose = np.asarray(mat.get("Pose_Para", np.zeros((1, 7))), np.float64).reshape(-1)
    if pose.shape != (7,):
        raise ImageReadError(f"{mat_path}: 'Pose_Para' expected 7 numbers, got shape {pose.shape}")
    if not (np.all(np.isfinite(pts)) and np.all(np.isfinite(pose))):
        raise ImageReadError(f"{mat_path}: NaN or Inf in the landmarks / Pose_Para")
    match = _SUBJECT.match(image_path.stem)
    return {
        "image": image,
        "landmarks68": np.concatenate([pts, np.zeros((68, 1))], 1).astype(np.float32),
        "pose_para": pose.astype(np.float32),
        "pose_deg": np.degrees(pose[:3]).astype(np.float32),
        "name": f"{subset}/{image_path.stem}",
        "subject": match.group("subject") if match else image_path.stem,
    }


def iter_300w_lp(root, *, report: ScanReport | None = None) -> Iterator[dict]:
    """Yield :func:`read_300w_lp_item` dicts; unreadable samples are skipped and counted."""
    report = report if report is not None else ScanReport()
    items = list_300w_lp(root)
    report.identities = len({_SUBJECT.match(p.stem).group("subject") if _SUBJECT.match(p.stem) else p.stem
                             for _, p, _ in items})
    for subset, image_path, mat_path in items:
        try:
            item = read_300w_lp_item(subset, image_path, mat_path)
        except ImageReadError as exc:
            report.skipped.append((str(image_path), str(exc)))
            log.warning("skipping %s", exc)
            continue
        report.images += 1
        yield item


class JfaceThe300wLp(JfaceAflw2000):
    """300W-LP from the manual directory (TF-free; ArrayRecord, Tensor features); the AFLW2000
    builder's crops and features plus ``subject``."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = "Unzip 300W-LP.zip (3DDFA project page) into the manual directory."
    SPLIT = "train"
    DESCRIPTION = "300W-LP, read without TensorFlow."
    EXTRA_TEXT_FEATURES = ("subject",)

    def _list(self, root):
        return list_300w_lp(root)

    def _iter(self, root, report):
        return iter_300w_lp(root, report=report)

    def _example(self, item, crop):
        return dict(crop_item(item, crop), subject=item["subject"])
