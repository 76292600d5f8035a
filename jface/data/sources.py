"""Data sources for both trainers, named by one string (``--data`` / ``--eval_data``).

:func:`open_source` resolves ``spec`` to a random-access source of records in the task's terms:

* ``"generated"``: today's in-memory generator; ``generate()`` (the trainer's ``make_data``) is
  called and its arrays are wrapped in an :class:`ArraySource`;
* an existing directory that is a built TFDS dataset (a version directory holding
  ``dataset_info.json``, or a dataset / configuration directory with exactly one such version
  below it): read from ArrayRecord without TensorFlow (:class:`DatasetSource`);
* any other existing directory: a folder of photographs, built into the TFDS data dir on first use
  (:func:`jface.data.photos.build_photo_folder`: labelled by side files or the detector, cropped
  by the task's crop rule, with a progress bar and a build report) and reused afterwards; a
  folder is read whole (its one split), whatever ``split`` says;
* otherwise a dataset name in the TFDS data dir, ``name[/config][:version]``
  (``jface_synthetic_faces/stn``, ``jface_aflw2000/deca``, ``jface_the300w_lp/stn``,
  ``jface_real_faces/stn``, ``jface_photos/<config>``): without a configuration, the only one
  built or the one named after the task; without a version, the newest.

Records (``source[i]``, numpy), for ``task="deca"``: ``images (S, S, 3)`` uint8, ``landmarks68
(68, 3)`` in DECA's NDC (x right, y down; third column visibility), ``face_mask (S, S)`` uint8 when
the dataset has one, ``identity`` int64. For ``task="stn"``: ``images``, ``labels (L, 3)`` (x, y,
vis) in the 3DMM-STN y-up pixel frame (``landmark_set`` "aflw21": L = 21, the dataset's own
AFLW-21 points or :func:`jface.data.detect.aflw21_from_ibug68` of its 68; "ibug68": L = 68),
``landmarks68`` in the same frame when the dataset has 68 points, ``identity``; for
``purpose="eval"`` also ``name`` (str: the dataset's ``name`` or ``path`` field) when it has one. Frames are
converted as the dataset's ``frame`` field says (BUILD_NOTES.md, Frames and conventions); DECA
NDC labels stay in the convention they were stored in (exact pixel centres for generated faces,
p / 224 * 2 - 1 for crops of photographs, as ``decalib/datasets/vggface.py`` writes them).
``image_size`` resizes images (Pillow, bilinear), masks and landmarks to S on the fly. Other numeric
fields of the dataset (``theta``, ``shape``, ``expression``, ``pose``, ``cam``, ...) pass through as
stored (they describe the stored image), and :meth:`DatasetSource.column` reads one of them for all
records without decoding images.

The fields a task needs (:data:`TASK_FIELDS`) are checked when the source opens: a dataset that
lacks one is a :class:`DataSourceError` naming the dataset and the field. The identity of every
record (:meth:`DatasetSource.identities`) is read from the serialized records without decoding
images and cached beside the dataset when its directory is writable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from jface.data import crops
from jface.data.detect import aflw21_from_ibug68
from jface.data.errors import DataSourceError
from jface.data.photos import (
    DATASET_NAME,
    TASKS,
    VERSION,
    PhotoFit,
    build_photo_folder,
    detector_name,
    find_built_photos,
    photo_config_name,
    resolve_data_dir,
    scan_photo_folder,
)
from jface.data.pipeline import stack_records

__all__ = [
    "DataSourceError",
    "TASK_FIELDS",
    "ArraySource",
    "DatasetSource",
    "open_source",
    "find_dataset",
    "load_all",
    "frame_kind",
    "convert_landmarks",
    "example_feature",
]

# What each task reads for training and for evaluation (identity is always present: a dataset
# without identities gives every record its own).
TASK_FIELDS = {
    ("deca", "train"): ("images", "landmarks68", "face_mask", "identity"),
    ("deca", "eval"): ("images", "landmarks68", "identity"),
    ("stn", "train"): ("images", "labels", "identity"),
    ("stn", "eval"): ("images", "labels", "identity"),
}
LANDMARK_SETS = ("aflw21", "ibug68")
# Frame kinds: the 3DMM-STN y-up pixel frame; DECA's NDC with exact pixel centres
# (col = (x + 1) S / 2 - 0.5, jface's renderer); DECA's label NDC (p / S * 2 - 1).
STN, NDC, NDC_LABEL = "stn", "ndc", "ndc_label"
_VERSION_DIR = re.compile(r"^\d+\.\d+\.\d+$")
_SCAN_CHUNK = 64  # records read at once when scanning a field of every record
# Text fields of jface's builders: never passed through as arrays.
_TEXT_KEYS = frozenset({"frame", "path", "name", "identity_name", "labels_from", "subject"})


# --- frames ----------------------------------------------------------------------------------------

def frame_kind(frame: str) -> str | None:
    """The kind of a dataset's ``frame`` text: "stn", "ndc", "ndc_label", or None (not a crop frame)."""
    text = frame.strip().lower()
    if text.startswith("3dmm-stn"):
        return STN
    if text.startswith("deca ndc: p /"):
        return NDC_LABEL
    if text.startswith("deca ndc"):
        return NDC
    return None


def _to_pixels(landmarks: np.ndarray, kind: str, size: int):
    x, y = landmarks[:, 0], landmarks[:, 1]
    vis = landmarks[:, 2] > 0
    if kind == STN:
        vis = vis & ~((x == 0) & (y == 0))
        return np.stack([x - 1.0, size - y], -1), vis
    shift = 0.5 if kind == NDC else 0.0
    return (landmarks[:, :2] + 1.0) * size / 2.0 - shift, vis


def _from_pixels(points: np.ndarray, vis: np.ndarray, kind: str, size: int) -> np.ndarray:
    if kind == STN:
        return crops.to_stn_frame(points, vis, size)
    shift = 0.5 if kind == NDC else 0.0
    return np.concatenate([(points + shift) * 2.0 / size - 1.0, vis[:, None].astype(np.float64)], -1)


def convert_landmarks(landmarks, from_kind: str, to_kind: str, from_size: int, to_size: int) -> np.ndarray:
    """``(L, 3)`` landmarks from one frame kind and image size to another (float32).

    Returned unchanged when nothing changes (same kind and size, or NDC with pixel centres, which
    does not depend on the size). A resize by f maps 0-based pixel p to (p + 0.5) f - 0.5.
    """
    landmarks = np.asarray(landmarks)
    if from_kind == to_kind and (from_size == to_size or from_kind == NDC):
        return landmarks.astype(np.float32)
    points, vis = _to_pixels(np.asarray(landmarks, np.float64), from_kind, from_size)
    points = (points + 0.5) * (to_size / from_size) - 0.5
    return _from_pixels(points, vis, to_kind, to_size).astype(np.float32)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    if image.shape[0] == size and image.shape[1] == size:
        return image
    if image.ndim == 2:  # a 0/1 mask
        scaled = Image.fromarray(image.astype(np.uint8) * 255).resize((size, size), Image.BILINEAR)
        return (np.asarray(scaled) > 127).astype(image.dtype)
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR), image.dtype)


# --- serialized tf.train.Example, read without TensorFlow -----------------------------------------

def example_feature(record: bytes, key: str):
    """The values of feature ``key`` of a serialized ``tf.train.Example`` (TFDS's record format):
    a list of ints (int64_list), of bytes (bytes_list) or a float32 array (float_list); None when
    the record has no such feature. Parsed with TFDS's own ``Example`` proto (no TensorFlow) and
    not decoded, so an identity is read without decompressing the image beside it. Raises
    ValueError for bytes that are not an Example.
    """
    from google.protobuf.message import DecodeError
    from tensorflow_datasets.proto import tf_example_pb2

    try:
        features = tf_example_pb2.Example.FromString(record).features.feature
    except DecodeError as exc:
        raise ValueError(f"not a serialized tf.train.Example ({exc})") from exc
    if key not in features:
        return None
    feature = features[key]
    kind = feature.WhichOneof("kind")
    if kind == "int64_list":
        return list(feature.int64_list.value)
    if kind == "bytes_list":
        return list(feature.bytes_list.value)
    if kind == "float_list":
        return np.asarray(feature.float_list.value, np.float32)
    return []


# --- sources ---------------------------------------------------------------------------------------

class ArraySource:
    """Records of in-memory arrays (``name -> (N, ...)``): ``source[i] = {name: array[i]}``."""

    def __init__(self, arrays: Mapping[str, np.ndarray], *, name: str = "generated"):
        lengths = {key: len(value) for key, value in arrays.items()}
        if not lengths or len(set(lengths.values())) != 1:
            raise DataSourceError(f"{name}: expected a non-empty dict of equal-length arrays, got lengths {lengths}")
        self.arrays = dict(arrays)
        self.name = name
        self.fields = tuple(self.arrays)
        self._size = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, index: int) -> dict:
        if not -self._size <= index < self._size:
            raise IndexError(f"{self.name}: record {index} out of range ({self._size} records)")
        return {key: value[index] for key, value in self.arrays.items()}

    def identities(self) -> np.ndarray:
        """``(N,)`` identity of every record (``arrays["identity"]``; else each record its own)."""
        if "identity" in self.arrays:
            return np.asarray(self.arrays["identity"]).astype(np.int64)
        return np.arange(self._size, dtype=np.int64)


class DatasetSource:
    """One split of a built TFDS dataset (ArrayRecord), records in ``task``'s terms (module docstring).

    ``directory``: the version directory (``.../name/config/1.0.0``). ``purpose``: "train" or
    "eval" (which fields are required, :data:`TASK_FIELDS`). ``image_size``: resize to S (None:
    as stored). Raises :class:`DataSourceError` naming the dataset for a split that was not
    built, a missing field, a frame that is not a crop frame, or an unreadable dataset.
    """

    def __init__(self, directory, *, task: str, split: str = "train", purpose: str = "train",
                 image_size: int | None = None, landmark_set: str = "aflw21", name: str | None = None):
        import tensorflow_datasets as tfds

        _check_task(task, purpose, landmark_set)
        self.directory = Path(directory)
        try:
            builder = tfds.builder_from_directory(str(self.directory))
            info = builder.info
        except Exception as exc:  # tfds raises many kinds here; the message is what matters
            raise DataSourceError(
                f"{self.directory}: not a readable TFDS dataset ({type(exc).__name__}: {exc})") from exc
        self.name = name or "/".join(p for p in (info.name, info.config_name, str(info.version)) if p)
        self.task, self.split, self.purpose, self.landmark_set = task, split, purpose, landmark_set
        built = list(info.splits.keys())
        if split not in built:
            raise DataSourceError(f"{self.name}: no split {split!r} (built: {built})")
        if "array_record" not in str(info.file_format).lower():
            raise DataSourceError(f"{self.name}: stored as {info.file_format}, not ArrayRecord; rebuild it with "
                                  f"file_format='array_record' (random access needs it)")
        features = info.features
        self._features = features
        names = set(features.keys())
        if "image" not in names or len(features["image"].shape) != 3:
            raise DataSourceError(f"{self.name}: the {task} data needs the field 'image' (H, W, 3); "
                                  f"the dataset has {sorted(names)}")
        self.stored_size = int(features["image"].shape[0])
        self.image_size = int(image_size or self.stored_size)
        self._lm68 = next((k for k in ("landmarks68", "landmarks") if k in names
                           and tuple(features[k].shape) == (68, 3)), None)
        has21 = "landmarks21" in names and tuple(features["landmarks21"].shape) == (21, 3)
        self._lm21 = "landmarks21" if has21 else None
        self._identity = next((k for k in ("identity", "identity_id", "subject") if k in names), None)
        self._has_mask = "face_mask" in names
        needs = {"images": "image", "identity": None}
        if task == "deca":
            needs["landmarks68"] = self._lm68 and "landmarks68"
            if purpose == "train":
                needs["face_mask"] = "face_mask" if self._has_mask else None
        else:
            labels = self._lm68 if landmark_set == "ibug68" else (self._lm21 or self._lm68)
            needs["labels"] = labels and "labels"
        for field in TASK_FIELDS[(task, purpose)]:
            if field != "identity" and not needs.get(field):
                what = {"landmarks68": "68 iBUG landmarks (68, 3)", "face_mask": "a face/skin mask (H, W) for the "
                        "photometric loss", "labels": f"{landmark_set} landmark labels ((21, 3) or (68, 3))"}[field]
                raise DataSourceError(
                    f"{self.name}: the {task} {purpose} data needs the field {field!r} ({what}); the dataset has "
                    f"{sorted(names)}")
        try:
            self._source = builder.as_data_source(split=split)
        except Exception as exc:
            raise DataSourceError(
                f"{self.name}: split {split!r} cannot be opened ({type(exc).__name__}: {exc})") from exc
        self._size = len(self._source)
        self.fields = TASK_FIELDS[(task, purpose)] + (("face_mask",) if self._has_mask and task == "deca"
                                                     and purpose == "eval" else ())
        used = {"image", "face_mask", "frame", self._lm68, self._lm21, self._identity}
        self._extras = tuple(sorted(k for k in names if k not in used and k not in _TEXT_KEYS
                                    and np.dtype(features[k].np_dtype).kind in "biuf"))
        # evaluation names its images (``per_image`` rows): the dataset's image name or photo path
        self._name_key = next((k for k in ("name", "path") if k in names), None) if purpose == "eval" else None
        if self._name_key is not None:
            self.fields = self.fields + ("name",)
        self._frame = self._find_frame(info, names)
        self._out_kind = STN if task == "stn" else (NDC if self._frame == STN else self._frame)
        self._identities = None

    def _find_frame(self, info, names) -> str:
        if self._size == 0:
            return STN if self.task == "stn" else NDC
        if "frame" in names:
            frame = self._raw(0)["frame"]
            frame = frame.decode() if isinstance(frame, bytes) else str(frame)
        elif info.name == "jface_real_faces":
            frame = "3dmm-stn" if info.config_name == "stn" else "deca ndc: p / 224 * 2 - 1"
        else:
            raise DataSourceError(f"{self.name}: cannot tell the landmarks' frame (no 'frame' field)")
        kind = frame_kind(frame)
        if kind is None:
            raise DataSourceError(f"{self.name}: its landmarks are in the frame {frame!r}, not a face crop's; use "
                                  f"the dataset's 'stn' or 'deca' configuration")
        return kind

    def __len__(self) -> int:
        return self._size

    def _record_file(self, index: int) -> str:
        try:
            reader, _ = self._source.data_source._reader_idx_and_position(index)
            return str(self._source.data_source._read_instructions[reader].filename)
        except Exception:  # private array_record internals: only used to name the file
            return str(self.directory)

    def _damaged(self, index: int, exc: Exception) -> DataSourceError:
        return DataSourceError(f"{self.name}: record {index} of split {self.split!r} cannot be read from "
                               f"{self._record_file(index)} ({type(exc).__name__}: {exc}); the dataset is damaged, "
                               f"build it again")

    def _raw(self, index: int) -> dict:
        try:
            return self._source[index]
        except IndexError:
            raise
        except Exception as exc:
            raise self._damaged(index, exc) from exc

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < self._size:
            raise IndexError(f"{self.name}: record {index} out of range ({self._size} records)")
        raw = self._raw(index)
        size, stored = self.image_size, self.stored_size
        out = {"images": _resize(np.asarray(raw["image"], np.uint8), size)}
        lm68 = None
        if self._lm68 is not None:
            lm68 = convert_landmarks(raw[self._lm68], self._frame, self._out_kind, stored, size)
        if self.task == "deca":
            out["landmarks68"] = lm68
            if self._has_mask:
                out["face_mask"] = _resize(np.asarray(raw["face_mask"], np.uint8), size)
        else:
            if self.landmark_set == "ibug68":
                out["labels"] = lm68
            elif self._lm21 is not None:
                out["labels"] = convert_landmarks(raw[self._lm21], self._frame, STN, stored, size)
            else:
                out["labels"] = aflw21_from_ibug68(lm68).astype(np.float32)
            if lm68 is not None:
                out["landmarks68"] = lm68
        out["identity"] = self._identity_of(index, raw)
        if self._name_key is not None:
            name = raw[self._name_key]
            out["name"] = np.str_(name.decode() if isinstance(name, bytes) else name)
        for key in self._extras:  # e.g. theta, shape, expression, pose: as stored
            out[key] = np.asarray(raw[key])
        return out

    def _identity_of(self, index: int, raw: dict) -> np.int64:
        if self._identity is None:
            return np.int64(index)
        value = raw[self._identity]
        if isinstance(value, (bytes, str, np.bytes_, np.str_)):
            return np.int64(self.identities()[index])
        return np.int64(value)

    def identities(self) -> np.ndarray:
        """``(N,)`` int64 identity of every record, read without decoding images (text identities
        numbered in sorted order); cached beside the dataset when its directory is writable."""
        if self._identities is not None:
            return self._identities
        if self._identity is None:
            self._identities = np.arange(self._size, dtype=np.int64)
            return self._identities
        cache = self.directory / f"jface-identities-{self.split}.npy"
        if cache.is_file():
            try:
                cached = np.load(cache, allow_pickle=False)
                if cached.shape == (self._size,) and cached.dtype == np.int64:
                    self._identities = cached
                    return cached
            except (OSError, ValueError):
                pass
        values = self._scan_identities()
        if any(isinstance(v, bytes) for v in values):
            _, numbers = np.unique(np.array([v if isinstance(v, bytes) else str(v).encode() for v in values]),
                                   return_inverse=True)
            identities = numbers.astype(np.int64)
        else:
            identities = np.asarray(values, np.int64)
        try:
            tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                np.save(f, identities)
            os.replace(tmp, cache)
        except OSError:
            pass  # a read-only dataset directory: recomputed next time
        self._identities = identities
        return identities

    def _scan_identities(self) -> list:
        return [values[0] for values in self._scan(self._identity, "identities")]

    def _scan(self, key: str, what: str) -> list:
        """The raw values of feature ``key`` of every record, read without decoding the others."""
        from tqdm import tqdm

        data = self._source.data_source
        out = []
        with tqdm(total=self._size, unit="rec", desc=f"{self.name}: {what}", disable=self._size < 50_000) as bar:
            for start in range(0, self._size, _SCAN_CHUNK):
                keys = list(range(start, min(start + _SCAN_CHUNK, self._size)))
                try:
                    records = data.__getitems__(keys)
                except Exception as exc:
                    records = []
                    for key_index in keys:  # find the damaged record to name it
                        try:
                            records.append(data[key_index])
                        except Exception as inner:
                            raise self._damaged(key_index, inner) from exc
                for index, record in zip(keys, records):
                    try:
                        found = example_feature(record, key)
                    except ValueError as exc:
                        raise self._damaged(index, exc) from exc
                    if found is None or len(found) == 0:
                        raise self._damaged(index, ValueError(f"no {key!r} value"))
                    out.append(found)
                bar.update(len(keys))
        return out

    def column(self, key: str) -> np.ndarray:
        """Feature ``key`` of every record as one ``(N, ...)`` array, e.g. ``theta`` for the STN's
        whitening statistics or DECA's ``shape`` codes, without decoding images. Only stored
        (unconverted) numeric features: the frame of ``landmarks68`` etc. is the stored one."""
        features = self._features
        if key not in features or key in _TEXT_KEYS:
            raise DataSourceError(f"{self.name}: no numeric field {key!r} (has {sorted(features.keys())})")
        feature = features[key]
        shape, dtype = tuple(feature.shape), np.dtype(feature.np_dtype)
        values = self._scan(key, key)
        if values and isinstance(values[0][0], bytes):  # an encoded tensor: decode record by record
            return np.stack([np.asarray(self._raw(i)[key]) for i in range(self._size)])
        return np.stack([np.asarray(v).astype(dtype).reshape(shape) for v in values]) if values else np.zeros(
            (0,) + shape, dtype)


# --- resolving a spec ------------------------------------------------------------------------------

def _check_task(task: str, purpose: str, landmark_set: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task: expected one of {TASKS}, got {task!r}")
    if purpose not in ("train", "eval"):
        raise ValueError(f"purpose: expected 'train' or 'eval', got {purpose!r}")
    if landmark_set not in LANDMARK_SETS:
        raise ValueError(f"landmark_set: expected one of {LANDMARK_SETS}, got {landmark_set!r}")


def _version_key(path: Path):
    return tuple(int(part) for part in path.name.split("."))


def _versions(directory: Path) -> list[Path]:
    try:
        children = [p for p in directory.iterdir() if p.is_dir() and _VERSION_DIR.match(p.name)]
    except OSError:
        return []
    return sorted((p for p in children if (p / "dataset_info.json").is_file()), key=_version_key)


def _dataset_dirs(path: Path) -> list[Path]:
    """Version directories at ``path``: itself, its newest version, or one per configuration."""
    if (path / "dataset_info.json").is_file():
        return [path]
    versions = _versions(path)
    if versions:
        return [versions[-1]]
    found = []
    for child in sorted(p for p in path.iterdir() if p.is_dir()):
        versions = _versions(child)
        if versions:
            found.append(versions[-1])
    return found


def _default_configs(task: str, purpose: str) -> tuple[str, ...]:
    if task == "stn":
        return ("stn",)
    return ("deca", "deca_train") if purpose == "train" else ("deca", "deca_test")


def find_dataset(name: str, *, task: str, purpose: str = "train", data_dir=None) -> Path | None:
    """The version directory of ``name[/config][:version]`` in the TFDS data dir, or None when no
    dataset of that name is built there. Raises :class:`DataSourceError` when the name is built
    but the configuration or version is not, or the configuration is ambiguous."""
    root = resolve_data_dir(data_dir)
    name, _, version = name.partition(":")
    dataset, _, config = name.partition("/")
    if not dataset or not (root / dataset).is_dir():
        return None
    base = root / dataset
    if not config:
        if _versions(base):
            config_dir = base
        else:
            configs = sorted(p.name for p in base.iterdir() if p.is_dir() and _versions(p))
            preferred = [c for c in _default_configs(task, purpose) if c in configs]
            if len(configs) == 1:
                config = configs[0]
            elif preferred:
                config = preferred[0]
            else:
                raise DataSourceError(f"{dataset}: several configurations are built in {base}; name one of "
                                      f"{configs} ({dataset}/CONFIG)")
            config_dir = base / config
    else:
        config_dir = base / config
        if not _versions(config_dir):
            configs = sorted(p.name for p in base.iterdir() if p.is_dir() and _versions(p))
            raise DataSourceError(f"{dataset}/{config}: not built in {root} (built configurations: {configs})")
    versions = _versions(config_dir)
    if version:
        chosen = config_dir / version
        if chosen not in versions:
            raise DataSourceError(f"{name}:{version}: not built in {root} (built: {[v.name for v in versions]})")
        return chosen
    return versions[-1]


def open_source(spec: str, *, task: str, split: str = "train", purpose: str = "train", data_dir=None,
                image_size: int | None = None, landmark_set: str = "aflw21",
                generate: Callable[[], Mapping[str, np.ndarray]] | None = None, build: bool = True,
                detector="mediapipe", all_faces: bool = False, fit: PhotoFit | None = None, progress: bool = True,
                log: Callable = print):
    """The source named by ``spec`` for ``task`` ("stn" | "deca"), see the module docstring.

    ``purpose``: "train" or "eval" (the fields required). ``data_dir``: the TFDS data dir (default
    ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``). ``generate``: for ``"generated"``, a
    callable returning the arrays. ``build``: a photo folder not built yet is built (False: a
    :class:`DataSourceError`, for processes that wait for process 0 to build it). ``detector`` /
    ``all_faces`` / ``fit``: see :func:`jface.data.photos.build_photo_folder`; without ``fit``, a
    build of the folder with fitted codes (``python -m jface.data build photos FOLDER --fit``) is
    used when there is one (:func:`jface.data.photos.find_built_photos`). Returns an
    :class:`ArraySource` or a :class:`DatasetSource`.
    """
    _check_task(task, purpose, landmark_set)
    spec = str(spec)
    if spec == "generated":
        if generate is None:
            raise ValueError("generate: the 'generated' source needs the generator (a callable returning arrays)")
        return ArraySource(generate(), name="generated")
    options = dict(task=task, purpose=purpose, image_size=image_size, landmark_set=landmark_set)
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_file():
            raise DataSourceError(f"{spec}: a file, not a folder of photographs or a built dataset")
        found = _dataset_dirs(path)
        if len(found) > 1:
            raise DataSourceError(f"{spec}: holds several built datasets; name one of {[str(p) for p in found]}")
        if found:
            return DatasetSource(found[0], split=split, **options)
        root = path.expanduser().absolute()
        groups = scan_photo_folder(root)
        if fit is None:
            built = find_built_photos(root, groups, task=task, detector=detector_name(detector), all_faces=all_faces,
                                      data_dir=data_dir)
        else:
            config = photo_config_name(root, groups, task=task, detector=detector_name(detector),
                                       all_faces=all_faces, fit=fit)
            built = resolve_data_dir(data_dir) / DATASET_NAME / config / VERSION
            built = built if (built / "dataset_info.json").is_file() else None
        if built is not None:
            log(f"{root}: using the dataset built before, {built}")
            return DatasetSource(built, split="train", **options)
        if not build:
            expected = resolve_data_dir(data_dir) / DATASET_NAME / photo_config_name(
                root, groups, task=task, detector=detector_name(detector), all_faces=all_faces, fit=fit) / VERSION
            raise DataSourceError(f"{spec}: the photo folder is not built yet (expected {expected}); the first "
                                  f"process builds it")
        version_dir, _ = build_photo_folder(root, task=task, data_dir=data_dir, detector=detector,
                                            all_faces=all_faces, fit=fit, progress=progress, log=log)
        return DatasetSource(version_dir, split="train", **options)
    found = find_dataset(spec, task=task, purpose=purpose, data_dir=data_dir)
    if found is None:
        root = resolve_data_dir(data_dir)
        built = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise DataSourceError(
            f"{spec}: no such folder, and no dataset of that name in {root} (built there: {built or 'none'}); "
            f"expected 'generated', a folder of photographs, a built dataset's directory or its name")
    return DatasetSource(found, split=split, **options)


def load_all(source, keys: Sequence[str] | None = None, limit: int | None = None) -> dict:
    """The first ``limit`` records of ``source`` (all by default) stacked into arrays, e.g. a
    held-out set for evaluation. Keep it for small splits: it holds them in memory."""
    count = len(source) if limit is None else min(int(limit), len(source))
    if count == 0:
        raise DataSourceError(f"{getattr(source, 'name', source)}: no records to load")
    records = [source[i] for i in range(count)]
    if keys is not None:
        records = [{k: r[k] for k in keys} for r in records]
    return stack_records(records)
