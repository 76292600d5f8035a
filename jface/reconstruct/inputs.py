"""Input collection shared by the command-line tools (``jface.reconstruct``, ``jface.flatten``).

Inputs are image files and folders. A folder is read with
:func:`jface.data.real.scan_identity_folders`: images directly inside form one identity named after
the folder, sub-folders are identities. Landmarks (68 iBUG/300-W points, 0-based pixels,
x = column, y = row) come from a side file next to the image (``.txt``, ``.npy``, ``.pts``) or from
an optional detector.

Policy for bad inputs: an unreadable image, or an image with no landmark side file (and no
detector, or no face found), is **skipped and reported**; a landmark side file that exists but is
malformed (NaN/Inf, wrong count, unparsable) raises :class:`LandmarkFileError`, because it means the
annotation is broken rather than absent; a folder with no images raises :class:`InputError`.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

from jface.data.real import (
    IMAGE_SUFFIXES,
    ImageReadError,
    dlib_detector,
    read_image,
    read_landmarks,
    scan_identity_folders,
)

__all__ = [
    "InputError",
    "LandmarkFileError",
    "InputItem",
    "SkipReport",
    "collect_inputs",
    "side_file",
    "load_face",
    "make_detector",
    "progress",
]


class InputError(ValueError):
    """A command-line input (file or folder) is unusable; the message names it."""


class LandmarkFileError(ValueError):
    """A landmark side file exists but is malformed (NaN/Inf, wrong count, unparsable)."""


@dataclasses.dataclass
class InputItem:
    path: Path
    identity: str
    from_folder: bool  # part of an identity folder (gets a per-identity mean where that applies)


@dataclasses.dataclass
class SkipReport:
    """Images skipped, with the reason; printed at the end of a run and written to JSON."""

    skipped: list = dataclasses.field(default_factory=list)

    def add(self, path, reason):
        self.skipped.append((str(path), str(reason)))
        print(f"skipping {path}: {reason}", file=sys.stderr)

    def summary(self, done: int) -> str:
        text = f"{done} image(s) processed, {len(self.skipped)} skipped"
        for path, reason in self.skipped:
            text += f"\n  skipped {path}: {reason}"
        return text


def collect_inputs(inputs) -> list:
    """Image files and folders -> list of :class:`InputItem` (folder contents sorted).

    Raises :class:`InputError` for a path that does not exist, a file that is not an image by its
    suffix, or a folder without images.
    """
    if not inputs:
        raise InputError("inputs: expected at least one image file or folder")
    items = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            try:
                groups = scan_identity_folders(path)
            except ImageReadError as err:
                raise InputError(str(err)) from None
            for identity, paths in groups.items():
                items += [InputItem(p, identity, True) for p in paths]
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise InputError(f"{path}: not an image file (expected one of {', '.join(IMAGE_SUFFIXES)})")
            items.append(InputItem(path, path.parent.name or "images", False))
        else:
            raise InputError(f"{path}: no such file or folder")
    return items


def side_file(image_path) -> Path | None:
    """The landmark side file of an image (same stem; .txt, .npy or .pts), or None."""
    image_path = Path(image_path)
    for suffix in (".txt", ".npy", ".pts"):
        candidate = image_path.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def load_face(item: InputItem, detector=None):
    """Read one image and its 68 landmarks.

    Returns ``(image (H, W, 3) uint8, landmarks (68, 2) float64 pixels)``, or ``None`` together with
    a reason string when the image must be skipped. Raises :class:`LandmarkFileError` for a
    malformed side file.
    """
    try:
        image = read_image(item.path)
    except ImageReadError as err:
        return None, f"unreadable image ({err})"
    side = side_file(item.path)
    if side is not None:
        try:
            landmarks = read_landmarks(side, 68)
        except ImageReadError as err:
            raise LandmarkFileError(
                f"{side}: malformed landmark file ({err}); expected 68 finite 'x y' pixel rows"
            ) from None
        return (image, landmarks), None
    if detector is None:
        return None, "no landmark side file (.txt/.npy/.pts) and no detector (--detector)"
    landmarks = detector(image)
    if landmarks is None:
        return None, "the detector found no face"
    return (image, np.asarray(landmarks, np.float64)), None


def make_detector(enabled: bool):
    """The optional dlib 68-point detector (``[detector]`` extra) when ``enabled``, else None."""
    if not enabled:
        return None
    return dlib_detector()


def progress(iterable, total=None, desc=""):
    """A tqdm progress bar on stderr (plain iteration when tqdm is unavailable)."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return iterable
    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, leave=False)
