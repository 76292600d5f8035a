"""Run outputs for people: scalars to TensorBoard event files (tensorboardX) and PNG image grids."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from jface.training.distributed import is_main_process

__all__ = ["MetricWriter", "save_image_grid"]


class MetricWriter:
    """Scalars to TensorBoard event files (process 0 only), through tensorboardX."""

    def __init__(self, logdir):
        self.enabled = is_main_process() and logdir is not None
        self._writer = None
        if self.enabled:
            # imported here: tensorboardX imports torch when it is installed (~7 s on 2 cores), which
            # programs that only load runs (reconstruct, flatten) should not pay for
            from tensorboardX import SummaryWriter

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
