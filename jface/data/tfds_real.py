"""TFDS builder ``jface_real_faces``: real photographs in identity folders, cropped as the originals.

ArrayRecord files and Tensor features only: building and reading need no TensorFlow. Put the
identity folders (see :mod:`jface.data.real`) in the manual directory and build::

    python -m jface.data build real --config deca_train --manual_dir /data/vggface2_subset

Configurations:

* ``deca_train``: DECA's training crop, size = int(old_size * U(1.4, 1.8)) (``decalib/datasets/vggface.py``);
  the scale is drawn from a seed derived from the image path, so builds are deterministic.
* ``deca_test``: DECA's ``TestData`` crop, old_size * 1.1, size * 1.25 (``decalib/datasets/datasets.py``).
* ``stn``: 224 crops with labels in the 3DMM-STN y-up frame (BUILD_NOTES.md, Frames and conventions).

Landmarks are stored for all 68 iBUG points: ``landmarks`` (68, 3) = DECA NDC (x, y, 1) for the
DECA configurations, (x, y, vis) in the STN frame for ``stn``. Unreadable images and images
without landmarks are skipped, counted and reported at the end of the build; they never stop it.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import tensorflow_datasets as tfds

from jface.data import crops
from jface.data.real import ScanReport, dlib_detector, iter_faces

log = logging.getLogger(__name__)

__all__ = ["RealFacesConfig", "JfaceRealFaces", "crop_example"]


class RealFacesConfig(tfds.core.BuilderConfig):
    def __init__(self, *, crop: str, test: bool = False, detector: bool = False, **kwargs):
        super().__init__(version=tfds.core.Version("1.0.0"), **kwargs)
        self.crop = crop
        self.test = test
        self.detector = detector


def _path_seed(path: str) -> int:
    return int.from_bytes(hashlib.sha256(path.encode()).digest()[:8], "little")


def crop_example(item: dict, config: RealFacesConfig) -> dict:
    """Crop one :func:`jface.data.real.iter_faces` item as ``config`` says (host side, numpy)."""
    image = item["image"].astype(np.float64)
    if config.crop == "stn":
        crop, labels, _ = crops.stn_crop(image, item["landmarks"])
    else:
        scale = np.random.default_rng(_path_seed(item["path"])).uniform(1.4, 1.8)
        crop, labels, _ = crops.deca_crop(image, item["landmarks"], scale=scale, test=config.test)
    return {
        "image": np.clip(np.round(crop), 0, 255).astype(np.uint8),
        "landmarks": labels.astype(np.float32),
        "identity_id": item["identity_id"],
        "identity": item["identity"],
        "path": item["path"],
    }


class JfaceRealFaces(tfds.core.GeneratorBasedBuilder):
    """Real face photographs in identity folders, cropped as DECA or 3DMM-STN crop them."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [
        RealFacesConfig(name="deca_train", crop="deca", description="DECA training crops, scale U(1.4, 1.8)"),
        RealFacesConfig(name="deca_test", crop="deca", test=True, description="DECA test crops (x1.1, x1.25)"),
        RealFacesConfig(name="stn", crop="stn", description="3DMM-STN 224 crops, y-up label frame"),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put identity folders of images (root/<identity>/<image>) with 68-point landmark side files "
        "(<image stem>.txt / .npy / .pts, 0-based pixel x y) in the manual directory."
    )

    def _info(self):
        return self.dataset_info_from_configs(
            description="Real face images cropped as the original DECA / 3DMM-STN pipelines do.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(224, 224, 3), dtype=np.uint8),
                    "landmarks": tfds.features.Tensor(shape=(68, 3), dtype=np.float32),
                    "identity_id": tfds.features.Scalar(dtype=np.int64),
                    "identity": tfds.features.Text(),
                    "path": tfds.features.Text(),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(dl_manager.manual_dir)}

    def _generate_examples(self, root):
        report = ScanReport()
        detector = dlib_detector() if self.builder_config.detector else None
        for item in iter_faces(root, detector=detector, report=report):
            yield item["path"], crop_example(item, self.builder_config)
        # Skipped files never stop a build; they are counted and reported here.
        print(f"jface_real_faces: {report.summary()}")
        self.scan_report = report
