"""TFDS builder ``jface_synthetic_faces``: rendered faces with exact labels (no TensorFlow).

ArrayRecord files and ``Tensor`` / ``Scalar`` / ``Text`` features only (images and masks are
zlib-compressed raw bytes), so building and reading need no TensorFlow. Build::

    python -m jface.data build synthetic --config stn --split train --num 1000

and read with random access (grain, :class:`jface.data.loader.BatchLoader`)::

    builder = JfaceSyntheticFaces(config="stn", data_dir=DIR)     # a preset
    source = builder.as_data_source("train")                       # source[i] -> dict of numpy
    # a build with custom counts (its config name, e.g. "stn-train1000-k10"):
    source = load_source("stn-train1000-k10", "train", data_dir=DIR)
    # everything in memory, for jface.data.loader.BatchLoader (identity-grouped batches):
    arrays = load_arrays("stn", "train", data_dir=DIR)
    BatchLoader(arrays, batch_size=32, group_key="identity", images_per_group=4)

Configurations (``kind`` selects the generator):

* ``stn``: :mod:`jface.data.synthetic_stn_render` on :func:`jface.models.default_stn_model`
  (224 px, the 3DMM-STN's y-up pixel frame, 5 + 5 components): ``image``, ``landmarks21``,
  ``landmarks68`` ((x, y, vis); missing = 0, 0, 0), ``face_mask``, ``theta (16,)``, ``albedo``,
  ``light (9, 3)``, ``pose_deg``, ``identity``.
* ``deca``: :mod:`jface.data.synthetic_deca` on :func:`jface.models.default_flame_model` (224 px,
  DECA NDC, the photographic look): ``image``, ``landmarks68``, ``landmarks21``, ``face_mask``, ``shape (100,)``,
  ``expression (50,)``, ``pose (6,)``, ``cam (3,)``, ``albedo``, ``light (9, 3)``, ``pose_deg``,
  ``identity``.
* ``stn_small`` / ``deca_small``: 64 px, 2 images per identity, 2 / 1 / 1 identities in
  train / validation / test (CI builds).

Split counts are numbers of identities (``K`` = ``images_per_identity`` images each). Identity ids
are unique across splits: train from 0, validation from 10**7, test from 2 * 10**7; every identity's
images are a function of (seed, identity id) only.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from jface.data.synthetic_deca import DecaSynthConfig, iter_deca
from jface.data.synthetic_stn_render import StnSynthConfig, iter_stn
from jface.models import defaults

__all__ = [
    "SyntheticFacesConfig",
    "JfaceSyntheticFaces",
    "SPLIT_IDENTITY_OFFSET",
    "custom_config",
    "load_source",
    "load_arrays",
    "N_ALBEDO",
]

SPLIT_IDENTITY_OFFSET = {"train": 0, "validation": 10_000_000, "test": 20_000_000}
# Albedo components of the default models (features need static shapes; checked at build time).
N_ALBEDO = {"stn": 12, "deca": 20}
# 1.1.0: the deca configs' faces photographic (synthetic_deca's look="photo"); the stn configs' hair
# on the mesh opaque and their camera noise independent of the chunk size (jface.data.appearance)
VERSION = "1.1.0"


class SyntheticFacesConfig(tfds.core.BuilderConfig):
    """``kind`` ("stn" | "deca"), ``image_size``, ``images_per_identity``, ``splits`` (split name ->
    number of identities), ``seed``, ``chunk`` (images per compiled render call)."""

    def __init__(self, *, kind: str, image_size: int = 224, images_per_identity: int = 10,
                 splits: dict | None = None, seed: int = 0, chunk: int = 8, **kwargs):
        if kind not in N_ALBEDO:
            raise ValueError(f"kind: expected 'stn' or 'deca', got {kind!r}")
        super().__init__(version=tfds.core.Version(VERSION), **kwargs)
        self.kind = kind
        self.image_size = int(image_size)
        self.images_per_identity = int(images_per_identity)
        self.splits = dict(splits or {"train": 2000, "validation": 50, "test": 50})
        for name, count in self.splits.items():
            if name not in SPLIT_IDENTITY_OFFSET:
                raise ValueError(f"splits: unknown split {name!r}; expected one of {list(SPLIT_IDENTITY_OFFSET)}")
            if int(count) < 1:
                raise ValueError(f"splits: split {name!r} needs >= 1 identity, got {count}")
        self.seed = int(seed)
        self.chunk = int(chunk)


_SMALL = {"train": 2, "validation": 1, "test": 1}

PRESETS = {
    "stn": dict(kind="stn", description="3DMM-STN faces, 224 px, y-up pixel frame labels"),
    "deca": dict(kind="deca", description="DECA faces, 224 px, NDC labels"),
    "stn_small": dict(kind="stn", image_size=64, images_per_identity=2, splits=_SMALL, chunk=4,
                      description="tiny stn build for CI (64 px)"),
    "deca_small": dict(kind="deca", image_size=64, images_per_identity=2, splits=_SMALL, chunk=4,
                       description="tiny deca build for CI (64 px)"),
}


def custom_config(base: str, *, split: str | None = None, num: int | None = None,
                  images_per_identity: int | None = None, image_size: int | None = None,
                  seed: int | None = None) -> SyntheticFacesConfig:
    """A preset with some settings replaced. ``num`` is a number of *images* of ``split`` (rounded
    up to whole identities); only that split is built. The config's name encodes what changed,
    e.g. ``stn-train1000-k10`` (the image count after rounding), so different builds live in different folders.
    """
    if base not in PRESETS:
        raise ValueError(f"config: expected one of {sorted(PRESETS)}, got {base!r}")
    kwargs = dict(PRESETS[base])
    name = base
    k = int(images_per_identity or kwargs.get("images_per_identity", 10))
    if images_per_identity is not None:
        kwargs["images_per_identity"] = k
    if num is not None or split is not None:
        split = split or "train"
        if split not in SPLIT_IDENTITY_OFFSET:
            raise ValueError(f"split: expected one of {list(SPLIT_IDENTITY_OFFSET)}, got {split!r}")
        if num is None:
            count = kwargs.get("splits", {"train": 2000, "validation": 50, "test": 50})[split]
            num = count * k
        if int(num) < 1:
            raise ValueError(f"num: expected >= 1 image, got {num}")
        identities = -(-int(num) // k)
        kwargs["splits"] = {split: identities}
        name += f"-{split}{identities * k}"
    if images_per_identity is not None or num is not None:
        name += f"-k{k}"
    if image_size is not None:
        kwargs["image_size"] = int(image_size)
        name += f"-s{int(image_size)}"
    if seed is not None:
        kwargs["seed"] = int(seed)
        name += f"-seed{int(seed)}"
    return SyntheticFacesConfig(name=name, **kwargs)


def _features(config: SyntheticFacesConfig):
    size = config.image_size
    zlib = tfds.features.Encoding.ZLIB
    f32 = np.float32
    common = {
        "image": tfds.features.Tensor(shape=(size, size, 3), dtype=np.uint8, encoding=zlib),
        "face_mask": tfds.features.Tensor(shape=(size, size), dtype=np.uint8, encoding=zlib),
        "landmarks68": tfds.features.Tensor(shape=(68, 3), dtype=f32),
        "landmarks21": tfds.features.Tensor(shape=(21, 3), dtype=f32),
        "albedo": tfds.features.Tensor(shape=(N_ALBEDO[config.kind],), dtype=f32),
        "light": tfds.features.Tensor(shape=(9, 3), dtype=f32),
        "pose_deg": tfds.features.Tensor(shape=(3,), dtype=f32),
        "identity": tfds.features.Scalar(dtype=np.int64),
        "frame": tfds.features.Text(),
    }
    if config.kind == "stn":
        common["theta"] = tfds.features.Tensor(shape=(16,), dtype=f32)
    else:
        common.update({
            "shape": tfds.features.Tensor(shape=(100,), dtype=f32),
            "expression": tfds.features.Tensor(shape=(50,), dtype=f32),
            "pose": tfds.features.Tensor(shape=(6,), dtype=f32),
            "cam": tfds.features.Tensor(shape=(3,), dtype=f32),
        })
    return tfds.features.FeaturesDict(common)


FRAMES = {
    "stn": "3dmm-stn y-up pixels: x = 1-based column, y = S + 1 - 1-based row",
    "deca": "deca ndc: x right, y down, pixel centre col = (x + 1) S/2 - 0.5",
}


class JfaceSyntheticFaces(tfds.core.GeneratorBasedBuilder):
    """Faces rendered from the embedded default models with ``jface.render``; exact labels."""

    VERSION = tfds.core.Version(VERSION)
    BUILDER_CONFIGS = [SyntheticFacesConfig(name=name, **kwargs) for name, kwargs in PRESETS.items()]

    def __init__(self, *, file_format="array_record", **kwargs):
        super().__init__(file_format=file_format, **kwargs)

    def _info(self):
        return self.dataset_info_from_configs(
            description="Synthetic faces rendered from jface's procedural default models.",
            features=_features(self.builder_config),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {name: self._generate_examples(name, count) for name, count in self.builder_config.splits.items()}

    def _model(self):
        config = self.builder_config
        model = defaults.default_stn_model() if config.kind == "stn" else defaults.default_flame_model()
        n_albedo = 0 if model.albedo_basis is None else int(model.albedo_basis.shape[-1])
        if n_albedo != N_ALBEDO[config.kind]:
            raise ValueError(
                f"model: the default {config.kind} model has {n_albedo} albedo components; the "
                f"builder's features expect {N_ALBEDO[config.kind]} (update N_ALBEDO and VERSION)")
        return model

    def iter_chunks(self, split: str, count: int):
        """The generator's chunks (dicts of numpy arrays) for ``count`` identities of ``split``."""
        config = self.builder_config
        model = self._model()
        offset = SPLIT_IDENTITY_OFFSET[split]
        if config.kind == "stn":
            return iter_stn(model, count, config.images_per_identity, config.seed, config.image_size,
                            config=StnSynthConfig(chunk=config.chunk), identity_offset=offset)
        return iter_deca(model, count, config.images_per_identity, config.seed, config.image_size,
                         config=DecaSynthConfig(chunk=config.chunk), identity_offset=offset)

    def _generate_examples(self, split: str, count: int):
        config = self.builder_config
        progress = getattr(self, "progress", None)
        per_id = {}
        for chunk in self.iter_chunks(split, count):
            n = chunk["identity"].shape[0]
            for i in range(n):
                ident = int(chunk["identity"][i])
                k = per_id.get(ident, 0)
                per_id[ident] = k + 1
                example = {key: chunk[key][i] for key in chunk if key not in ("images", "identity")}
                example["image"] = chunk["images"][i]
                example["identity"] = ident
                example["frame"] = FRAMES[config.kind]
                yield f"{ident:09d}_{k:04d}", example
            if progress is not None:
                progress(n)


def load_source(config: str, split: str, *, data_dir: str | None = None):
    """Random-access source (``source[i] -> dict``) of a built split; presets and custom names.

    Presets go through the builder class; a custom build (e.g. ``stn-train1000-k10``) is read from
    its folder with ``tfds.builder_from_directory``.
    """
    if config in PRESETS:
        builder = JfaceSyntheticFaces(config=config, data_dir=data_dir)
    else:
        root = data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
        path = os.path.join(root, "jface_synthetic_faces", config, VERSION)
        if not os.path.isdir(path):
            raise FileNotFoundError(
                f"config: no built dataset at {path}; build it with `python -m jface.data build synthetic ...`")
        builder = tfds.builder_from_directory(path)
    if split not in builder.info.splits:
        raise ValueError(f"split: {split!r} was not built for {config!r}; built: {list(builder.info.splits)}")
    return builder.as_data_source(split=split)


def load_arrays(config: str, split: str, *, data_dir: str | None = None) -> dict:
    """A built split as one dict of stacked numpy arrays, in the dataset's stored order.

    Keys as in the features, except ``image`` -> ``images`` (:class:`jface.data.loader.BatchLoader`'s
    name); for ``stn`` configurations ``labels`` = ``landmarks21`` (the 3DMM-STN's landmark labels,
    the key the loader's mirror augmentation reads). ``frame`` is dropped.
    """
    source = load_source(config, split, data_dir=data_dir)
    examples = [source[i] for i in range(len(source))]
    arrays = {key: np.stack([ex[key] for ex in examples]) for key in examples[0] if key != "frame"}
    arrays["images"] = arrays.pop("image")
    if "theta" in arrays:
        arrays["labels"] = arrays["landmarks21"]
    return arrays
