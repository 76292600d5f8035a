"""Input collection shared by the command-line tools (``jface.reconstruct``, ``jface.flatten``).

Inputs are image files and folders. A folder is read with
:func:`jface.data.real.scan_identity_folders`: images directly inside form one identity named after
the folder, sub-folders are identities. Landmarks (68 iBUG/300-W points, 0-based pixels,
x = column, y = row) come from a side file next to the image (``.txt``, ``.npy``, ``.pts``) or from
an optional detector.

Policy for bad inputs. Mistakes in what the user named (a path that does not exist, a file that
is not an image, a folder with no images, an output path that is a file or cannot be written, a
model / weight file that is missing or unreadable) raise :class:`InputError` naming the input: the
tools print one line and exit 2 before any work. A failure of one image (unreadable, no landmarks,
a malformed landmark side file (:class:`LandmarkFileError` from :func:`load_face`), a degenerate
landmark box, outputs that cannot be written) is **skipped and reported**
(:class:`SkipReport`, :func:`prepared_batches`): the other images are processed, and the summary
names every skipped file and why.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from jface.data import detect
from jface.data.real import (
    IMAGE_SUFFIXES,
    ImageReadError,
    read_image,
    read_landmarks,
    scan_identity_folders,
)

__all__ = [
    "InputError",
    "LandmarkFileError",
    "InputItem",
    "SkipImage",
    "SkipReport",
    "SKIPPED_ERRORS",
    "collect_inputs",
    "check_input_file",
    "load_input_file",
    "prepare_output_dir",
    "side_file",
    "load_face",
    "make_detector",
    "prepared_batches",
    "describe_error",
    "progress_bar",
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


class SkipImage(Exception):
    """One image cannot be processed; the message is the reason (the caller names the image)."""


# What a failure of one image raises: our own skip, a malformed landmark file or a degenerate crop
# (ValueError, incl. LandmarkFileError and ImageReadError), a file that cannot be read or written.
SKIPPED_ERRORS = (SkipImage, ValueError, OSError)


def _print_stderr(text):
    print(text, file=sys.stderr)


@dataclasses.dataclass
class SkipReport:
    """Images skipped, with the reason; printed at the end of a run and written to JSON.

    ``write``: where each skip is announced as it happens (stderr; a progress bar's ``write``
    so that the message does not print over the bar)."""

    skipped: list = dataclasses.field(default_factory=list)
    write: object = _print_stderr

    def add(self, path, reason):
        self.skipped.append((str(path), str(reason)))
        self.write(f"skipping {path}: {reason}")

    def summary(self, done: int) -> str:
        """``'N image(s) processed, M skipped'`` then one line per skipped file and its reason."""
        text = f"{done} image(s) processed, {len(self.skipped)} skipped"
        if self.skipped:
            text += ":"
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


def check_input_file(path, flag: str, *, folder: bool = False) -> Path:
    """``path`` given with ``flag`` (e.g. ``--flame``) exists and is readable, else
    :class:`InputError` naming both. ``folder``: a folder is accepted too (a run directory)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{flag} {path}: no such file{' or folder' if folder else ''}")
    if path.is_dir() and not folder:
        raise InputError(f"{flag} {path}: is a folder, expected a file")
    if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
        raise InputError(f"{flag} {path}: not readable (permission denied)")
    return path


def load_input_file(flag: str, path, loader):
    """``loader(path)`` for the file given with ``flag`` (``--flame``, ``--model``, ...), checked by
    :func:`check_input_file` first; a refused file (the loaders' ``ValueError`` /
    ``ModelFileError``, an ``OSError``) is an :class:`InputError` naming the flag and the file."""
    check_input_file(path, flag)
    try:
        return loader(path)
    except (ValueError, OSError) as err:
        message = str(err)
        raise InputError(f"{flag}: {message}" if str(path) in message else f"{flag} {path}: {message}") from None


def prepare_output_dir(path, flag: str = "-o") -> Path:
    """Create the output folder (and its parents) and check that files can be written in it.

    Raises :class:`InputError` naming ``flag`` and the path when it is an existing file, cannot
    be created or is not writable (read-only folder or file system, full disk): the tools stop
    before any work instead of failing on the first output.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{flag} {path}: exists and is not a folder (expected an output folder)")
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"{flag} {path}: {parent} is a file, not a folder")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"{flag} {path}: cannot create the output folder ({err.strerror or err})") from None
    try:
        with tempfile.TemporaryFile(dir=path) as probe:
            probe.write(b"jface")
    except OSError as err:
        raise InputError(f"{flag} {path}: the output folder is not writable ({err.strerror or err})") from None
    return path


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


def make_detector(name):
    """The landmark detector for images without a side file: ``detect(image (H, W, 3) uint8) ->
    (68, 2) pixels or None`` (the largest face), or None when ``name`` is None / False.

    ``name``: ``'mediapipe'`` (the default detector, ``True`` means it; the ``[detect]`` extra) or
    ``'dlib'`` (the ``[detector]`` extra, non-commercial model), :func:`jface.data.detect.make_detector`.
    A detector that is not installed raises an ``ImportError`` naming the extra to install.
    """
    if not name:
        return None
    detector = detect.make_detector("mediapipe" if name is True else name)

    def landmarks(image):
        faces = detector(image)
        return np.asarray(faces[0].landmarks68, np.float64) if faces else None

    return landmarks


def prepared_batches(items, prepare, report: SkipReport, batch_size: int, bar=None):
    """Yield batches (lists of at most ``batch_size``) of ``(item, prepare(item))``.

    An item whose ``prepare`` raises one of :data:`SKIPPED_ERRORS` is added to ``report`` with the
    error's message and left out (and counted on ``bar``); the others go on. ``bar``: a
    :func:`progress_bar` counting images (the caller counts the processed ones).
    """
    if batch_size < 1:
        raise InputError(f"--batch {batch_size}: expected a positive batch size")
    batch = []
    for item in items:
        try:
            prepared = prepare(item)
        except SKIPPED_ERRORS as err:
            report.add(item.path, describe_error(err))
            if bar is not None:
                bar.update(1)
            continue
        batch.append((item, prepared))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def describe_error(err: BaseException) -> str:
    """An exception as a skip reason: its message (OS errors: strerror and file name)."""
    if isinstance(err, OSError) and err.strerror:
        return f"{err.strerror}: {err.filename}" if err.filename else err.strerror
    return str(err) or type(err).__name__


class _NoBar:
    def update(self, n=1):
        pass

    def write(self, text):
        _print_stderr(text)

    def close(self):
        pass


class _TqdmBar:
    def __init__(self, total, desc):
        from tqdm import tqdm

        self._tqdm = tqdm
        self._bar = tqdm(total=total, desc=desc, unit="image", file=sys.stderr, leave=False)

    def update(self, n=1):
        self._bar.update(n)

    def write(self, text):
        self._tqdm.write(text, file=sys.stderr)  # clears the bar, prints, redraws it

    def close(self):
        self._bar.close()


def progress_bar(total: int, desc: str = ""):
    """A progress bar on stderr counting ``total`` images: ``update(n)``, ``write(text)`` (a
    message above the bar), ``close()`` (removes the bar; print summaries after it). Plain
    stderr messages and no bar when tqdm is unavailable."""
    try:
        return _TqdmBar(total, desc)
    except ImportError:  # pragma: no cover
        return _NoBar()
