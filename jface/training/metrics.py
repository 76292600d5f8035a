"""Run outputs for people: scalars to TensorBoard event files (tensorboardX), PNG image grids, and
the verdict printed beside every held-out metric.

A verdict compares two sets of per-image errors of the same images (the model against its baseline,
or one stage against the previous one) by their paired differences ``d_i = a_i - b_i``: the noise
is :data:`NOISE_STANDARD_ERRORS` standard errors of the mean difference (``std(d) / sqrt(n)``, the
spread from image to image); a mean difference inside it is "within noise", outside it "better"
(lower error) or "worse".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from jface.training.distributed import is_main_process

__all__ = ["MetricWriter", "save_image_grid", "NOISE_STANDARD_ERRORS", "compare", "verdict_text"]

#: A mean per-image difference within this many standard errors of zero is "within noise" (~95 %).
NOISE_STANDARD_ERRORS = 2.0


class MetricWriter:
    """Scalars to TensorBoard event files (process 0 only), through tensorboardX. Without
    tensorboardX (a bare accelerator image, say) it says so once and writes no event files; the
    run, its log and its metrics.json are unaffected."""

    def __init__(self, logdir):
        self.enabled = is_main_process() and logdir is not None
        self._writer = None
        if self.enabled:
            # imported here: tensorboardX imports torch when it is installed (~7 s on 2 cores), which
            # programs that only load runs (reconstruct, flatten) should not pay for
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                print(f"metrics: tensorboardX is not installed: no TensorBoard event files in {logdir} "
                      f"(pip install tensorboardX)", flush=True)
                self.enabled = False
                return
            self._writer = SummaryWriter(str(logdir))

    def scalars(self, step: int, values: Mapping[str, float], prefix: str = "train") -> None:
        if not self.enabled:
            return
        for name, value in values.items():
            self._writer.add_scalar(f"{prefix}/{name}", float(value), int(step))
        self._writer.flush()

    def close(self):
        if self._writer is not None:
            self._writer.close()


def save_image_grid(path, images, *, columns: int | None = None, pad: int = 2) -> None:
    """Write ``images (B, H, W, C)`` (0-255) as one PNG grid (process 0 only)."""
    if not is_main_process():
        return
    images = np.clip(np.asarray(images, np.float32), 0, 255).astype(np.uint8)
    count, height, width, channels = images.shape
    columns = columns or int(math.ceil(math.sqrt(count)))
    rows = int(math.ceil(count / columns))
    canvas = np.full((rows * (height + pad) + pad, columns * (width + pad) + pad, channels), 255, np.uint8)
    for k in range(count):
        r, c = divmod(k, columns)
        canvas[pad + r * (height + pad):pad + r * (height + pad) + height,
               pad + c * (width + pad):pad + c * (width + pad) + width] = images[k]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas.squeeze(-1) if channels == 1 else canvas).save(path)


def compare(errors, reference) -> dict:
    """Paired comparison of per-image errors (lower is better) ``errors`` against ``reference`` (same
    images, same order; pairs with a NaN / None on either side are left out).

    Returns ``{"mean", "reference_mean", "difference", "noise", "images", "verdict"}``: the means,
    their difference, the noise (:data:`NOISE_STANDARD_ERRORS` standard errors of the mean paired
    difference; ``None`` with fewer than 2 images) and ``"better"``, ``"worse"`` or ``"within noise"``
    (``"n/a"`` without a scored pair).
    """
    a = np.asarray([np.nan if v is None else v for v in np.ravel(errors)], np.float64)
    b = np.asarray([np.nan if v is None else v for v in np.ravel(reference)], np.float64)
    if a.shape != b.shape:
        raise ValueError(f"errors/reference: expected the same images, got {a.size} and {b.size} values")
    both = np.isfinite(a) & np.isfinite(b)
    count = int(both.sum())
    if count == 0:
        return {"mean": None, "reference_mean": None, "difference": None, "noise": None, "images": 0,
                "verdict": "n/a"}
    diff = a[both] - b[both]
    mean = float(diff.mean())
    noise = (NOISE_STANDARD_ERRORS * float(diff.std(ddof=1)) / math.sqrt(count)) if count > 1 else None
    if noise is None or abs(mean) <= noise:
        verdict = "within noise"
    else:
        verdict = "better" if mean < 0 else "worse"
    return {"mean": float(a[both].mean()), "reference_mean": float(b[both].mean()), "difference": mean,
            "noise": noise, "images": count, "verdict": verdict}


def verdict_text(comparison: Mapping, digits: int = 4) -> str:
    """``"better (-0.0123 ± 0.0040)"``: the verdict of :func:`compare` with the mean difference and
    the noise it was judged against (``digits`` decimals; a noise below that shown to 2 significant
    digits)."""
    if comparison["verdict"] == "n/a":
        return "n/a (no image scored on both)"
    noise = comparison["noise"]
    if noise is None:
        shown = "n/a: 1 image"
    else:  # two significant digits when the fixed format would print 0
        shown = f"{noise:.{digits}f}" if noise >= 10 ** -digits or noise == 0 else f"{noise:.2g}"
    return f"{comparison['verdict']} ({comparison['difference']:+.{digits}f} ± {shown})"
