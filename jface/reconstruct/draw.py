"""Pictures of a reconstruction (host side, numpy + Pillow): blends, landmarks, wire, pose, captions.

Every function takes and returns ``(H, W, 3)`` uint8 RGB images (float images in [0, 1] are
converted by :func:`as_uint8`); points are 0-based pixels ``(N, 2)`` of that image (x = column,
y = row). Pillow is an optional dependency, imported when a function draws.

Used by ``python -m jface.reconstruct`` for its panels (``overlay.png``, ``shape.png``,
``depth.png``, ``pncc.png``, ``sheet.png``), and usable for video frames.
"""

from __future__ import annotations

import numpy as np

from jface import export

__all__ = [
    "IBUG68_CONTOURS",
    "as_uint8",
    "blend",
    "wire_mask",
    "paint_mask",
    "draw_points",
    "draw_contours",
    "draw_pose",
    "caption",
    "sheet",
]

# The 68 iBUG points as the polylines of the usual face drawing: (first, last, closed).
IBUG68_CONTOURS = (
    (0, 16, False),  # jaw
    (17, 21, False),  # right brow (image left)
    (22, 26, False),  # left brow
    (27, 30, False),  # nose bridge
    (31, 35, False),  # nostrils
    (36, 41, True),  # right eye
    (42, 47, True),  # left eye
    (48, 59, True),  # outer lips
    (60, 67, True),  # inner lips
)

# The pose gizmo's axis colours: the head's x (its left), y (up), z (forward, out of the face).
AXIS_COLOURS = ((230, 40, 40), (40, 200, 40), (60, 110, 255))


def as_uint8(image) -> np.ndarray:
    """``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` uint8, or float in [0, 1] -> ``(H, W, 3)`` uint8."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = export.to_uint8(arr)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
        raise ValueError(f"image: expected (H, W), (H, W, 1) or (H, W, 3), got shape {np.shape(image)}")
    return np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else arr


def blend(photo, render, coverage, opacity: float = 0.6) -> np.ndarray:
    """The render over the photo: ``opacity x coverage`` of the render, the rest photo.

    ``photo``, ``render`` ``(H, W, 3)``; ``coverage (H, W[, 1])`` in [0, 1] (the render's alpha:
    outside the rendered face the photo shows unchanged).
    """
    photo = as_uint8(photo).astype(np.float64)
    render = as_uint8(render).astype(np.float64)
    weight = opacity * np.clip(np.asarray(coverage, np.float64).reshape(photo.shape[:2] + (1,)), 0.0, 1.0)
    return np.clip(np.round(render * weight + photo * (1.0 - weight)), 0, 255).astype(np.uint8)


def wire_mask(uv_grid, coverage, lines: int = 12) -> np.ndarray:
    """A wire over the rendered surface: ``(H, W)`` bool, True where the surface's UV coordinates
    cross one of ``lines`` evenly spaced iso-lines in u or v between neighbouring pixels.

    ``uv_grid (H, W, 2)`` the render's UV coordinates per pixel (DECA's ``grid``, UV NDC in
    [-1, 1]), ``coverage (H, W[, 1])`` the render's alpha. The lines follow the surface as the
    mesh's own edges do, at a density that stays readable at 224 pixels (UV seams show as lines).
    """
    cell = np.floor((np.asarray(uv_grid, np.float64) + 1.0) * 0.5 * lines)
    inside = np.asarray(coverage, np.float64).reshape(cell.shape[:2]) > 0.5
    edge = np.zeros(cell.shape[:2], bool)
    for axis in (0, 1):
        differs = np.any(np.diff(cell, axis=axis) != 0, axis=-1)
        both = np.logical_and(np.take(inside, range(1, inside.shape[axis]), axis),
                              np.take(inside, range(inside.shape[axis] - 1), axis))
        change = differs & both
        pad = [(0, 0), (0, 0)]
        pad[axis] = (1, 0)
        edge |= np.pad(change, pad)
    return edge


def paint_mask(image, mask, colour=(255, 255, 255), opacity: float = 0.45) -> np.ndarray:
    """``image`` with ``colour`` blended at ``opacity`` where ``mask (H, W)`` is True."""
    out = as_uint8(image).astype(np.float64)
    mask = np.asarray(mask, bool)
    out[mask] = out[mask] * (1.0 - opacity) + np.asarray(colour, np.float64) * opacity
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _pil(image):
    from PIL import Image, ImageDraw

    pil = Image.fromarray(as_uint8(image))
    return pil, ImageDraw.Draw(pil)


def draw_points(image, points, colour=(0, 255, 0), radius: float = 1.5) -> np.ndarray:
    """Circles of ``radius`` pixels at ``points (N, 2)`` (non-finite points are left out)."""
    pil, draw = _pil(image)
    for x, y in np.asarray(points, np.float64)[:, :2]:
        if np.isfinite(x) and np.isfinite(y):
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), outline=tuple(colour))
    return np.asarray(pil)


def draw_contours(image, points68, colour=(255, 0, 0), width: int = 1) -> np.ndarray:
    """The 68 iBUG points drawn as the face's contours (:data:`IBUG68_CONTOURS`: jaw, brows,
    nose, eyes, lips)."""
    points68 = np.asarray(points68, np.float64)[:, :2]
    if points68.shape != (68, 2):
        raise ValueError(f"points68: expected (68, 2) pixel points, got shape {points68.shape}")
    pil, draw = _pil(image)
    for first, last, closed in IBUG68_CONTOURS:
        line = [tuple(p) for p in points68[first:last + 1]]
        if closed:
            line.append(line[0])
        draw.line(line, fill=tuple(colour), width=width)
    return np.asarray(pil)


def _text(draw, xy, text, fill=(255, 255, 255)):
    """Text with a one-pixel dark outline, readable on any photo."""
    x, y = xy
    for dx, dy in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        draw.text((x + dx, y + dy), text, fill=(0, 0, 0))
    draw.text((x, y), text, fill=fill)


def draw_pose(image, angles_deg, rotation, *, origin=None, length: float = 18.0) -> np.ndarray:
    """Head pose on the picture: ``'yaw Y  pitch P  roll R (deg)'`` at the top left and a 3-axis
    gizmo at the bottom left.

    ``angles_deg``: ``{'yaw', 'pitch', 'roll'}`` in degrees (:func:`jface.reconstruct.pose_angles`);
    ``rotation (3, 3)``: the head's rotation (FLAME's global pose as a matrix, world y up). The
    gizmo draws the rotated x (red), y (green) and z (blue, out of the face) axes projected
    orthographically as DECA's camera sees them (world x -> image right, world y -> image up).
    """
    rotation = np.asarray(rotation, np.float64).reshape(3, 3)
    pil, draw = _pil(image)
    width, height = pil.size
    _text(draw, (3, 2), f"yaw {angles_deg['yaw']:+.1f}  pitch {angles_deg['pitch']:+.1f}  "
                        f"roll {angles_deg['roll']:+.1f} (deg)")
    ox, oy = origin if origin is not None else (length + 6.0, height - length - 6.0)
    # draw the axis furthest from the viewer first (world z toward the camera is drawn last)
    order = np.argsort(rotation[2])
    ends = [(ox + length * rotation[0, k], oy - length * rotation[1, k]) for k in range(3)]
    for k in order:  # a dark outline first, so the axes read on light and dark photos
        draw.line([(ox, oy), ends[k]], fill=(0, 0, 0), width=4)
    for k in order:
        draw.line([(ox, oy), ends[k]], fill=AXIS_COLOURS[k], width=2)
    return np.asarray(pil)


def caption(image, text: str, *, band_colour=(24, 24, 24), text_colour=(255, 255, 255)) -> np.ndarray:
    """The image with ``text`` in a band below it (wrapped to the image's width); the picture
    itself is not covered. Returns ``(H + band, W, 3)`` uint8."""
    from PIL import Image, ImageDraw

    arr = as_uint8(image)
    height, width = arr.shape[:2]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines, current = [], ""
    for word in text.split():
        trial = f"{current} {word}".strip()
        if current and measure.textlength(trial) > width - 6:
            lines.append(current)
            current = word
        else:
            current = trial
    lines.append(current)
    line_height = max(measure.textbbox((0, 0), "Ag")[3], 10) + 2
    band = line_height * len(lines) + 4
    canvas = Image.new("RGB", (width, height + band), band_colour)
    canvas.paste(Image.fromarray(arr), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for k, line in enumerate(lines):
        draw.text((3, height + 2 + k * line_height), line, fill=text_colour)
    return np.asarray(canvas)


def sheet(panels, gap: int = 4) -> np.ndarray:
    """Panels side by side (top-aligned, white gaps and padding)."""
    panels = [as_uint8(p) for p in panels]
    height = max(p.shape[0] for p in panels)
    width = sum(p.shape[1] for p in panels) + gap * (len(panels) - 1)
    out = np.full((height, width, 3), 255, np.uint8)
    x = 0
    for p in panels:
        out[:p.shape[0], x:x + p.shape[1]] = p
        x += p.shape[1] + gap
    return out
