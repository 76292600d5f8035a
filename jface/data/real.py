"""Real face images on disk: identity-per-folder layouts, landmark side files, robust reading.

Layout (UMDFaces / VGGFace2 style)::

    root/
      identity_a/  img1.jpg  img1.txt   (or img1.npy / img1.pts)
      identity_b/  ...

Images are read with Pillow and converted to RGB uint8 (grayscale and palette expanded, alpha
dropped, 16-bit scaled down). Landmarks come from a side file with the image's stem: ``.txt``
(whitespace or comma separated, one "x y" per line), ``.npy`` ((L, 2+) array) or ``.pts`` (iBUG
300-W format). Coordinates are 0-based pixels (x = column, y = row). Without a side file the
optional dlib detector (``[detector]`` extra) is used when asked for. Unreadable images are
skipped and counted, never a crash.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageReadError",
    "ScanReport",
    "check_image",
    "read_image",
    "read_landmarks",
    "scan_identity_folders",
    "iter_faces",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class ImageReadError(ValueError):
    """An image or landmark file could not be read; the message names the file."""


@dataclasses.dataclass
class ScanReport:
    """What a pass over a folder found: counts, and the files skipped with the reason."""

    images: int = 0
    identities: int = 0
    skipped: list = dataclasses.field(default_factory=list)  # (path, reason)

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def summary(self) -> str:
        text = f"{self.images} images of {self.identities} identities; {self.num_skipped} skipped"
        for path, reason in self.skipped[:10]:
            text += f"\n  skipped {path}: {reason}"
        if self.num_skipped > 10:
            text += f"\n  ... and {self.num_skipped - 10} more"
        return text


def _pil_errors() -> tuple:
    # what Pillow raises for a file that is not an image, is truncated or too large to decode
    from PIL import Image, UnidentifiedImageError

    return UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError


def check_image(path) -> None:
    """Read only ``path``'s header (Pillow's ``verify``): raise :class:`ImageReadError` as
    :func:`read_image` would for a file that is missing or not an image; the pixels are not decoded."""
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as im:
            im.verify()
    except FileNotFoundError as exc:
        raise ImageReadError(f"{path}: no such file") from exc
    except _pil_errors() as exc:
        raise ImageReadError(f"{path}: not a readable image ({exc.__class__.__name__}: {exc})") from exc


def read_image(path) -> np.ndarray:
    """Read any Pillow-readable image as RGB uint8 ``(H, W, 3)``; raise :class:`ImageReadError`."""
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                peak = 65535.0 if arr.max(initial=0) > 255 else 255.0
                arr = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
                arr = np.repeat(arr[..., None], 3, axis=-1)
            else:
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError as exc:
        raise ImageReadError(f"{path}: no such file") from exc
    except _pil_errors() as exc:
        raise ImageReadError(f"{path}: not a readable image ({exc.__class__.__name__}: {exc})") from exc
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageReadError(f"{path}: empty image of shape {arr.shape}")
    return arr


def _read_pts(path: Path) -> np.ndarray:
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    try:
        start = lines.index("{") + 1
        end = lines.index("}")
    except ValueError as exc:
        raise ImageReadError(f"{path}: not an iBUG .pts file (expected '{{' ... '}}')") from exc
    return np.array([[float(v) for v in ln.split()[:2]] for ln in lines[start:end]])


def read_landmarks(path, num_points: int | None = 68) -> np.ndarray:
    """Read a landmark side file -> ``(L, 2)`` float64 pixels; checks count and finiteness."""
    path = Path(path)
    try:
        if path.suffix == ".npy":
            pts = np.load(path, allow_pickle=False)
        elif path.suffix == ".pts":
            pts = _read_pts(path)
        else:
            text = path.read_text().replace(",", " ")
            pts = np.array([[float(v) for v in ln.split()] for ln in text.splitlines() if ln.strip()])
        if pts.dtype.kind not in "fiu":
            raise ImageReadError(f"{path}: expected numeric landmarks, got dtype {pts.dtype}")
        pts = np.asarray(pts, np.float64)
    except ImageReadError:
        raise
    except (OSError, ValueError) as exc:
        raise ImageReadError(f"{path}: unreadable landmark file ({exc})") from exc
    if pts.ndim != 2 or pts.shape[1] < 2:
        raise ImageReadError(f"{path}: expected (L, 2) landmarks, got shape {pts.shape}")
    pts = pts[:, :2]
    if num_points is not None and pts.shape[0] != num_points:
        raise ImageReadError(f"{path}: expected {num_points} landmarks, got {pts.shape[0]}")
    if not np.all(np.isfinite(pts)):
        raise ImageReadError(f"{path}: landmarks contain NaN or Inf")
    return pts


def _side_file(image_path: Path) -> Path | None:
    for suffix in (".txt", ".npy", ".pts"):
        candidate = image_path.with_suffix(suffix)
        if candidate.exists():
            return candidate
    return None


def scan_identity_folders(root) -> dict:
    """``root/<identity>/<images>`` -> {identity: [image paths]} (sorted, deterministic).

    Images directly under ``root`` form one identity named after ``root``. Raises a clear error
    for a missing root or a root with no images.
    """
    root = Path(root)
    if not root.is_dir():
        raise ImageReadError(f"{root}: not a directory (expected identity folders of images)")
    groups: dict = {}
    loose = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if loose:
        groups[root.name] = loose
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        images = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if images:
            groups[folder.name] = images
    if not groups:
        raise ImageReadError(
            f"{root}: no images found (expected files ending in {', '.join(IMAGE_SUFFIXES)} in identity folders)"
        )
    return groups


def iter_faces(root, *, detector=None, num_points: int = 68, report: ScanReport | None = None) -> Iterator[dict]:
    """Yield ``{"image", "landmarks", "identity", "identity_id", "path"}`` for every readable image
    with landmarks (side file, else ``detector(image) -> (68, 2) or None``). Everything skipped is
    recorded in ``report`` with its reason.
    """
    report = report if report is not None else ScanReport()
    groups = scan_identity_folders(root)
    report.identities = len(groups)
    for identity_id, (identity, paths) in enumerate(groups.items()):
        for path in paths:
            try:
                image = read_image(path)
                side = _side_file(path)
                if side is not None:
                    landmarks = read_landmarks(side, num_points)
                elif detector is not None:
                    landmarks = detector(image)
                    if landmarks is None:
                        raise ImageReadError(f"{path}: the detector found no face")
                else:
                    raise ImageReadError(f"{path}: no landmark side file (.txt/.npy/.pts) and no detector")
            except ImageReadError as exc:
                report.skipped.append((str(path), str(exc)))
                log.warning("skipping %s", exc)
                continue
            report.images += 1
            yield {
                "image": image,
                "landmarks": landmarks,
                "identity": identity,
                "identity_id": identity_id,
                "path": str(path),
            }


def dlib_detector(predictor_path=None):
    """Optional 68-point detector from the ``[detector]`` extra (dlib-bin + face-recognition-models).

    The shape predictor in face-recognition-models is trained on iBUG 300-W and is for
    non-commercial use only. Returns ``detect(image) -> (68, 2) or None`` (largest face).
    """
    try:
        import dlib  # type: ignore
    except ImportError as exc:
        raise ImportError("the landmark detector needs the optional extra: pip install 'jface[detector]'") from exc
    if predictor_path is None:
        try:
            import face_recognition_models  # type: ignore
        except ImportError as exc:
            raise ImportError("face-recognition-models is missing: pip install 'jface[detector]'") from exc
        predictor_path = face_recognition_models.pose_predictor_model_location()
    face_detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(predictor_path))

    def detect(image):
        faces = face_detector(np.asarray(image, np.uint8), 1)
        if not faces:
            return None
        face = max(faces, key=lambda r: r.width() * r.height())
        shape = predictor(np.asarray(image, np.uint8), face)
        return np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], np.float64)

    return detect
