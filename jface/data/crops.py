"""Face crops exactly as each original builds them (numpy, host side).

* DECA (training: ``decalib/datasets/vggface.py``; testing: ``TestData`` in
  ``decalib/datasets/datasets.py``): a square around the 68-landmark bounding box,
  ``old_size = (w + h) / 2`` about the box centre; training size = int(old_size * U(1.4, 1.8)),
  testing size = int(old_size * 1.1 * 1.25); a similarity transform maps the square
  [c - size/2, c + size/2] onto [0, 223] and the image is warped bilinearly with zero padding
  (skimage ``warp``). Landmarks go through the same transform and are normalised as p / 224 * 2 - 1.
* 3DMM-STN (``dagnn_3dmmasstn.m``; BUILD_NOTES.md, Frames and conventions): 224 x 224 crops;
  landmarks in its y-up frame, x = 1-based column, y = 225 - 1-based row; a missing landmark is
  (0, 0) with vis = 0.

Pixel coordinates here are 0-based (x = column, y = row) with pixel centres at integers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = [
    "CropTransform",
    "landmark_box",
    "deca_crop_transform",
    "warp_image",
    "deca_crop",
    "stn_crop",
    "to_stn_frame",
    "from_stn_frame",
]

OUT_SIZE = 224


@dataclass(frozen=True)
class CropTransform:
    """Similarity ``dst = scale * src + offset`` from image pixels to crop pixels (0-based x, y)."""

    scale: float
    offset: np.ndarray  # (2,)

    def apply(self, points):
        """``(..., 2)`` image pixel (x, y) -> crop pixel (x, y)."""
        return np.asarray(points, np.float64) * self.scale + self.offset

    def inverse(self, points):
        """``(..., 2)`` crop pixel (x, y) -> image pixel (x, y)."""
        return (np.asarray(points, np.float64) - self.offset) / self.scale

    def matrix(self) -> np.ndarray:
        """3x3 homogeneous matrix of the forward map (as skimage's ``tform.params``)."""
        return np.array(
            [[self.scale, 0.0, self.offset[0]], [0.0, self.scale, self.offset[1]], [0.0, 0.0, 1.0]]
        )


def landmark_box(landmarks):
    """``(L, 2+)`` pixel landmarks -> (centre (2,), old_size) as DECA computes them."""
    pts = np.asarray(landmarks, np.float64)[:, :2]
    if pts.ndim != 2 or pts.shape[0] < 2 or not np.all(np.isfinite(pts)):
        raise ValueError(f"landmarks: expected (L >= 2, 2) finite pixel coordinates, got shape {pts.shape}")
    left, top = pts.min(axis=0)
    right, bottom = pts.max(axis=0)
    old_size = (right - left + bottom - top) / 2.0
    centre = np.array([(right + left) / 2.0, (bottom + top) / 2.0])
    return centre, old_size


def deca_crop_transform(landmarks, scale: float, *, test: bool = False, out_size: int = OUT_SIZE):
    """DECA's square crop as a :class:`CropTransform` (``decalib/datasets/vggface.py`` / ``TestData``).

    ``test=True`` is ``TestData``: old_size * 1.1, then size = int(old_size * 1.25) (``scale`` is
    ignored). Otherwise size = int(old_size * scale) with scale ~ U(1.4, 1.8) in training.
    """
    centre, old_size = landmark_box(landmarks)
    if test:
        size = int(old_size * 1.1 * 1.25)
    else:
        size = int(old_size * scale)
    if size <= 0:
        raise ValueError(f"landmarks: degenerate landmark box (size {size}); cannot crop")
    # The three point pairs of DECA map the square corner-to-corner onto [0, out_size - 1].
    s = (out_size - 1) / size
    top_left = centre - size / 2.0
    return CropTransform(scale=s, offset=-top_left * s)


def warp_image(image, transform: CropTransform, out_size: int = OUT_SIZE):
    """Bilinear warp with zero padding (skimage ``warp(order=1, mode='constant')``).

    ``image (H, W)`` or ``(H, W, C)`` -> ``(out_size, out_size[, C])`` float64.
    """
    image = np.asarray(image, np.float64)
    ys, xs = np.mgrid[0:out_size, 0:out_size].astype(np.float64)
    src = transform.inverse(np.stack([xs, ys], axis=-1))
    coords = [src[..., 1], src[..., 0]]
    if image.ndim == 2:
        return ndimage.map_coordinates(image, coords, order=1, mode="constant", cval=0.0)
    return np.stack(
        [ndimage.map_coordinates(image[..., c], coords, order=1, mode="constant", cval=0.0)
         for c in range(image.shape[2])],
        axis=-1,
    )


def deca_crop(image, landmarks, *, scale: float = 1.6, test: bool = False, out_size: int = OUT_SIZE):
    """Crop for DECA: returns (crop (224, 224, C) in the image's value range, landmarks in NDC
    (L, 3) = (p / 224 * 2 - 1, 1), the :class:`CropTransform`).
    """
    transform = deca_crop_transform(landmarks, scale, test=test, out_size=out_size)
    crop = warp_image(image, transform, out_size)
    pts = transform.apply(np.asarray(landmarks, np.float64)[:, :2])
    ndc = pts / out_size * 2.0 - 1.0  # DECA normalises by 224, not 223 (decalib/datasets/vggface.py)
    ndc = np.concatenate([ndc, np.ones((ndc.shape[0], 1))], axis=1)
    return crop, ndc, transform


def to_stn_frame(points_xy, visible=None, out_size: int = OUT_SIZE):
    """0-based crop pixels (x = col, y = row) -> 3DMM-STN labels (x = col + 1, y = 225 - (row + 1)).

    Missing points (``visible`` False) become (0, 0), as in the original labels.
    Returns ``(L, 3)`` = (x, y, vis).
    """
    pts = np.asarray(points_xy, np.float64)[:, :2]
    x = pts[:, 0] + 1.0
    y = (out_size + 1.0) - (pts[:, 1] + 1.0)
    vis = np.ones(len(pts)) if visible is None else np.asarray(visible, np.float64)
    inside = (x >= 1) & (x <= out_size) & (y >= 1) & (y <= out_size)
    vis = vis * inside
    x = np.where(vis > 0, x, 0.0)
    y = np.where(vis > 0, y, 0.0)
    return np.stack([x, y, vis], axis=1)


def from_stn_frame(labels, out_size: int = OUT_SIZE):
    """Inverse of :func:`to_stn_frame` for visible points: (x, y) -> 0-based (col, row)."""
    labels = np.asarray(labels, np.float64)
    return np.stack([labels[:, 0] - 1.0, out_size - labels[:, 1]], axis=1)


def stn_crop(image, landmarks, *, scale: float = 1.6, out_size: int = OUT_SIZE, visible=None):
    """Square 224 crop around the landmark box (DECA's box rule, ``scale`` x old_size) with labels
    in the 3DMM-STN frame. Returns (crop (224, 224, C), labels (L, 3) = (x, y, vis), transform).
    """
    transform = deca_crop_transform(landmarks, scale, out_size=out_size)
    crop = warp_image(image, transform, out_size)
    pts = transform.apply(np.asarray(landmarks, np.float64)[:, :2])
    return crop, to_stn_frame(pts, visible, out_size), transform
