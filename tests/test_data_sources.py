"""jface.data.sources / jface.data.photos: one spec for every data source, photo folders built once
with a report, built TFDS datasets read from ArrayRecord in the task's terms, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jface.data import crops
from jface.data.detect import Face
from jface.data.errors import DataSourceError
from jface.data.photos import build_photo_folder, scan_photo_folder
from jface.data.pipeline import StreamLoader
from jface.data.sources import (
    ArraySource,
    DatasetSource,
    convert_landmarks,
    example_feature,
    find_dataset,
    load_all,
    open_source,
)

tfds = pytest.importorskip("tensorflow_datasets")
QUIET = dict(progress=False, log=lambda *_: None)


def _points(rng, width, height):
    return np.stack([rng.uniform(0.25 * width, 0.75 * width, 68), rng.uniform(0.2 * height, 0.8 * height, 68)], 1)


def _photo(path: Path, rng, size=(40, 36), side: str | None = ".npy"):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, size + (3,), dtype=np.uint8)).save(path)
    points = _points(rng, size[1], size[0])
    if side == ".npy":
        np.save(path.with_suffix(".npy"), points)
    elif side == ".txt":
        path.with_suffix(".txt").write_text("\n".join(f"{x} {y}" for x, y in points))
    elif side == ".pts":
        body = "\n".join(f"{x} {y}" for x, y in points)
        path.with_suffix(".pts").write_text(f"version: 1\nn_points: 68\n{{\n{body}\n}}\n")
    return points


# --- a small TFDS dataset with chosen fields (stands in for the jface builders' layouts) ----------

class ToyFaces(tfds.core.GeneratorBasedBuilder):
    """Random faces with the fields named by ``layout`` (a dict; see :func:`_toy`)."""

    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, layout: dict, **kwargs):
        self.layout = layout
        super().__init__(file_format="array_record", **kwargs)

    def _info(self):
        size, lay = self.layout["size"], self.layout
        zlib = tfds.features.Encoding.ZLIB
        features = {"image": tfds.features.Tensor(shape=(size, size, 3), dtype=np.uint8, encoding=zlib),
                    lay["lm68_key"]: tfds.features.Tensor(shape=(68, 3), dtype=np.float32)}
        if lay["mask"]:
            features["face_mask"] = tfds.features.Tensor(shape=(size, size), dtype=np.uint8, encoding=zlib)
        if lay["identity"] == "int":
            features["identity"] = tfds.features.Scalar(dtype=np.int64)
        elif lay["identity"] == "text":
            features["subject"] = tfds.features.Text()
        if lay["frame"] is not None:
            features["frame"] = tfds.features.Text()
        if lay["theta"]:
            features["theta"] = tfds.features.Tensor(shape=(16,), dtype=np.float32)
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        lay, rng = self.layout, np.random.default_rng(0)
        size = lay["size"]
        for i in range(lay["count"]):
            if lay["frame"] is not None and lay["frame"].startswith("3dmm-stn"):
                lm = np.concatenate([rng.uniform(1, size, (68, 2)), np.ones((68, 1))], 1)
            else:
                lm = np.concatenate([rng.uniform(-0.9, 0.9, (68, 2)), np.ones((68, 1))], 1)
            example = {"image": rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
                       lay["lm68_key"]: lm.astype(np.float32)}
            if lay["mask"]:
                example["face_mask"] = (rng.uniform(size=(size, size)) > 0.5).astype(np.uint8)
            if lay["identity"] == "int":
                example["identity"] = 1000 + i // 3
            elif lay["identity"] == "text":
                example["subject"] = f"subject-{(i // 2) % 5}"
            if lay["frame"] is not None:
                example["frame"] = lay["frame"]
            if lay["theta"]:
                example["theta"] = rng.normal(size=16).astype(np.float32)
            yield f"{i:06d}", example


def _toy(data_dir, name, *, count=12, size=16, identity="int", mask=True, lm68_key="landmarks68",
         frame="deca ndc: x right, y down, pixel centre col = (x + 1) S/2 - 0.5", theta=False) -> Path:
    layout = dict(count=count, size=size, identity=identity, mask=mask, lm68_key=lm68_key, frame=frame,
                  theta=theta)
    builder = ToyFaces(layout=layout, data_dir=str(data_dir), config=tfds.core.BuilderConfig(name=name))
    tfds.disable_progress_bar()
    builder.download_and_prepare()
    return Path(builder.data_dir)


# --- photo folders -------------------------------------------------------------------------------

def test_photo_folder_built_once_with_a_report_and_reused(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    truth = {}
    for person in ("ann", "bob"):
        for k in range(3):
            truth[f"{person}/p{k}.png"] = _photo(folder / person / f"p{k}.png", rng, side=(".npy", ".txt", ".pts")[k])
    truth["solo.png"] = _photo(folder / "solo.png", rng)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    _photo(folder / "ann" / "nolabel.png", rng, side=None)
    data_dir = tmp_path / "tfds"
    logs = []
    source = open_source(str(folder), task="stn", data_dir=data_dir, detector=None, progress=False, log=logs.append)
    assert isinstance(source, DatasetSource) and len(source) == 7
    report = json.loads(next(Path(source.directory).glob("jface_build_report.json")).read_text())
    assert report["images"] == 9 and report["identities"] == 4 and report["examples"] == 7
    assert report["side_files"] == 7 and report["detected"] == 0
    reasons = dict(report["skipped"])
    assert "not a readable image" in reasons[str(folder / "broken.jpg")]
    assert "no landmark side file" in reasons[str(folder / "ann" / "nolabel.png")]
    assert "skipped" in logs[-1] and "broken.jpg" in logs[-1]
    # identity folders group their photos; a loose photo is an identity of its own (broken.jpg was 2)
    assert list(source.identities()) == [0, 0, 0, 1, 1, 1, 3]
    # labels: the side file's points through the STN crop rule
    raw = tfds.builder_from_directory(str(source.directory)).as_data_source("train")
    for i in range(len(source)):
        rel = str(Path(raw[i]["path"].decode()).relative_to(folder))
        _, want, _ = crops.stn_crop(np.zeros((40, 36, 3)), truth[rel], scale=1.6)
        np.testing.assert_allclose(source[i]["landmarks68"], want, atol=1e-4)
        assert raw[i]["labels_from"].decode().startswith("side file")
    # reused: nothing rebuilt
    stamp = (Path(source.directory) / "dataset_info.json").stat().st_mtime_ns
    again = open_source(str(folder), task="stn", data_dir=data_dir, detector=None, progress=False, log=logs.append)
    assert again.directory == source.directory and "built before" in logs[-1]
    assert (Path(again.directory) / "dataset_info.json").stat().st_mtime_ns == stamp
    # a changed folder is a new build
    _photo(folder / "bob" / "p9.png", rng)
    changed = open_source(str(folder), task="stn", data_dir=data_dir, detector=None, **QUIET)
    assert changed.directory != source.directory and len(changed) == 8


def test_flat_folder_is_one_identity_per_photo_and_deca_records(tmp_path):
    rng = np.random.default_rng(1)
    for k in range(4):
        _photo(tmp_path / "flat" / f"img{k}.jpg", rng)
    source = open_source(str(tmp_path / "flat"), task="deca", data_dir=tmp_path / "tfds", detector=None,
                         image_size=64, **QUIET)
    assert list(source.identities()) == [0, 1, 2, 3]
    record = source[0]
    assert record["images"].shape == (64, 64, 3) and record["images"].dtype == np.uint8
    assert record["face_mask"].shape == (64, 64) and set(np.unique(record["face_mask"])) <= {0, 1}
    assert record["face_mask"].sum() > 100  # the landmark polygon covers the face
    assert record["landmarks68"].shape == (68, 3) and np.all(record["landmarks68"][:, 2] == 1)
    assert np.all(np.abs(record["landmarks68"][:, :2]) < 1)  # the test crop holds the face


class _FakeDetector:
    """Stands in for the detector: two faces per photo (or none), largest first."""

    name = "fake"

    def __init__(self, faces: bool = True):
        self.faces, self.calls = faces, 0

    def __call__(self, image):
        self.calls += 1
        if not self.faces:
            return []
        height, width = image.shape[:2]
        big = np.stack(np.meshgrid(np.linspace(8, width - 8, 17), np.linspace(8, height - 8, 29)), -1).reshape(-1, 2)
        small = big * 0.3
        return [Face(mesh=np.c_[big[:478], np.zeros(478)], landmarks68=big[:68]),
                Face(mesh=np.c_[small[:478], np.zeros(478)], landmarks68=small[:68])]


def test_side_files_win_and_all_faces(tmp_path):
    rng = np.random.default_rng(2)
    folder = tmp_path / "photos"
    _photo(folder / "ann" / "a.png", rng, size=(60, 60))
    _photo(folder / "ann" / "b.png", rng, size=(60, 60), side=None)
    detector = _FakeDetector()
    one = open_source(str(folder), task="stn", data_dir=tmp_path / "tfds", detector=detector, **QUIET)
    assert detector.calls == 1 and len(one) == 2  # only the photo without a side file was detected
    raw = tfds.builder_from_directory(str(one.directory)).as_data_source("train")
    assert raw[0]["labels_from"].decode() == "side file a.npy" and raw[1]["labels_from"].decode() == "fake"
    every = open_source(str(folder), task="stn", data_dir=tmp_path / "tfds", detector=_FakeDetector(),
                        all_faces=True, **QUIET)
    assert len(every) == 3 and list(every.identities()) == [0, 0, 1]  # the second face: its own identity
    # a broken side file skips the photo; it is not replaced by a detection
    (folder / "ann" / "a.npy").write_bytes(b"garbage")
    with pytest.raises(DataSourceError, match=r"a.npy: unreadable landmark file"):  # and b.png has no face now
        open_source(str(folder), task="stn", data_dir=tmp_path / "tfds", detector=_FakeDetector(faces=False),
                    **QUIET)


# --- built datasets ---------------------------------------------------------------------------------

def test_identities_read_without_decoding_match_the_records(tmp_path):
    ints = _toy(tmp_path, "ints", count=10)
    texts = _toy(tmp_path, "texts", count=10, identity="text")
    none = _toy(tmp_path, "none", count=5, identity=None)
    src = DatasetSource(ints, task="deca")  # TFDS stores records in a shuffled order
    assert list(src.identities()) == [src[i]["identity"] for i in range(10)]
    assert sorted(src.identities()) == [1000 + i // 3 for i in range(10)]
    assert (ints / "jface-identities-train.npy").is_file()
    src_text = DatasetSource(texts, task="deca")
    raw = tfds.builder_from_directory(str(texts)).as_data_source("train")
    names = [raw[i]["subject"] for i in range(10)]
    assert list(src_text.identities()) == list(np.unique(names, return_inverse=True)[1])
    assert [src_text[i]["identity"] for i in range(10)] == list(src_text.identities())
    assert list(DatasetSource(none, task="deca").identities()) == [0, 1, 2, 3, 4]
    raw = tfds.builder_from_directory(str(ints)).as_data_source("train").data_source[3]
    assert example_feature(raw, "identity") == [src[3]["identity"]] and example_feature(raw, "nothing") is None
    frame = example_feature(raw, "frame")[0].decode()
    assert frame.startswith("deca ndc")
    decoded = tfds.builder_from_directory(str(ints)).as_data_source("train")[3]["landmarks68"]
    np.testing.assert_array_equal(example_feature(raw, "landmarks68").reshape(68, 3), decoded)


def test_named_datasets_and_frames(tmp_path):
    deca_dir = _toy(tmp_path, "deca", count=6, size=32)
    _toy(tmp_path, "stn", count=6, size=32, frame="3dmm-stn y-up pixels: x = 1-based column, y = 33 - row")
    # by name: the task's configuration is chosen among several
    deca = open_source("toy_faces", task="deca", data_dir=tmp_path)
    stn = open_source("toy_faces", task="stn", data_dir=tmp_path, image_size=64)
    assert deca.directory == deca_dir and stn.directory.parent.name == "stn"
    assert open_source("toy_faces/deca:1.0.0", task="deca", data_dir=tmp_path).directory == deca_dir
    assert find_dataset("toy_faces/stn", task="deca", data_dir=tmp_path) == stn.directory
    assert find_dataset("absent", task="deca", data_dir=tmp_path) is None
    assert open_source(str(deca_dir), task="deca").directory == deca_dir  # a directory
    assert open_source(str(tmp_path / "toy_faces" / "deca"), task="deca").directory == deca_dir
    with pytest.raises(DataSourceError, match="several built datasets"):
        open_source(str(tmp_path / "toy_faces"), task="deca")
    with pytest.raises(DataSourceError, match=r"toy_faces/nope: not built .*\['deca', 'stn'\]"):
        open_source("toy_faces/nope", task="deca", data_dir=tmp_path)
    with pytest.raises(DataSourceError, match="no split 'test'"):
        open_source("toy_faces/deca", task="deca", split="test", data_dir=tmp_path)
    # an STN-frame dataset read for DECA (NDC) and resized for the STN keeps every point in place
    raw = tfds.builder_from_directory(str(stn.directory)).as_data_source("train")[2]["landmarks68"]
    pixels = np.stack([raw[:, 0] - 1, 32 - raw[:, 1]], 1)
    as_deca = DatasetSource(stn.directory, task="deca", purpose="eval")[2]["landmarks68"]
    np.testing.assert_allclose((as_deca[:, :2] + 1) * 32 / 2 - 0.5, pixels, atol=1e-4)
    big = stn[2]["landmarks68"]  # 64 px
    np.testing.assert_allclose(np.stack([big[:, 0] - 1, 64 - big[:, 1]], 1), (pixels + 0.5) * 2 - 0.5, atol=1e-4)
    assert stn[2]["labels"].shape == (21, 3) and stn[2]["images"].shape == (64, 64, 3)
    assert np.all(stn[2]["labels"][[12, 16]] == 0)  # AFLW ears: no iBUG counterpart, missing


def test_other_numeric_fields_pass_through_and_read_as_columns(tmp_path):
    directory = _toy(tmp_path, "theta", count=9, theta=True)
    source = DatasetSource(directory, task="stn", image_size=32)
    raw = tfds.builder_from_directory(str(directory)).as_data_source("train")
    thetas = np.stack([raw[i]["theta"] for i in range(9)])
    np.testing.assert_array_equal(source[4]["theta"], thetas[4])
    np.testing.assert_array_equal(source.column("theta"), thetas)
    assert source.column("identity").shape == (9,)
    np.testing.assert_array_equal(source.column("image"), np.stack([raw[i]["image"] for i in range(9)]))
    with pytest.raises(DataSourceError, match="no numeric field 'frame'"):
        source.column("frame")


def test_convert_landmarks_round_trips():
    rng = np.random.default_rng(3)
    pts = np.concatenate([rng.uniform(2, 60, (68, 2)), np.ones((68, 1))], 1)
    for kind in ("ndc", "ndc_label"):
        there = convert_landmarks(pts, "stn", kind, 64, 64)
        back = convert_landmarks(there, kind, "stn", 64, 64)
        np.testing.assert_allclose(back, pts, atol=1e-4)
    ndc = convert_landmarks(pts, "stn", "ndc", 64, 64)
    np.testing.assert_array_equal(convert_landmarks(ndc, "ndc", "ndc", 64, 224), ndc.astype(np.float32))
    missing = pts.copy()
    missing[5] = 0
    assert np.all(convert_landmarks(missing, "stn", "stn", 64, 128)[5] == 0)


def test_generated_and_load_all():
    arrays = {"images": np.zeros((4, 8, 8, 3), np.uint8), "identity": np.array([0, 0, 1, 1])}
    source = open_source("generated", task="stn", generate=lambda: arrays)
    assert isinstance(source, ArraySource) and len(source) == 4 and list(source.identities()) == [0, 0, 1, 1]
    stacked = load_all(source, keys=("identity",), limit=3)
    assert list(stacked) == ["identity"] and list(stacked["identity"]) == [0, 0, 1]
    with pytest.raises(ValueError, match="needs the generator"):
        open_source("generated", task="stn")


def test_a_built_dataset_streams_with_resume(tmp_path):
    directory = _toy(tmp_path, "stream", count=24, size=16)
    source = open_source(str(directory), task="deca")
    options = dict(batch_size=6, images_per_group=3, seed=2, keys=("images", "landmarks68", "face_mask", "identity"))
    loader = StreamLoader(source, **options)
    batches = [next(loader) for _ in range(5)]
    for batch in batches:  # 2 identities x 3 records
        assert np.all(batch["identity"].reshape(2, 3) == batch["identity"].reshape(2, 3)[:, :1])
    interrupted = StreamLoader(source, **options)
    for _ in range(3):
        next(interrupted)
    state = json.loads(json.dumps(interrupted.get_state()))
    resumed = StreamLoader(open_source(str(directory), task="deca"), **options)  # a fresh process's view
    resumed.set_state(state)
    for want in batches[3:]:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


# --- bad input ---------------------------------------------------------------------------------------

def test_missing_path_or_name(tmp_path):
    with pytest.raises(DataSourceError, match=r"/no/such/photos: no such folder, and no dataset of that name"):
        open_source("/no/such/photos", task="stn", data_dir=tmp_path)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataSourceError, match="a file, not a folder"):
        open_source(str(tmp_path / "file.txt"), task="stn", data_dir=tmp_path)


def test_empty_folder(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no photos here")
    with pytest.raises(DataSourceError, match="empty: no photographs found"):
        open_source(str(tmp_path / "empty"), task="deca", data_dir=tmp_path / "tfds")
    with pytest.raises(DataSourceError, match="no such folder"):
        scan_photo_folder(tmp_path / "absent")


def test_folder_where_no_face_is_found(tmp_path):
    rng = np.random.default_rng(4)
    for k in range(3):
        _photo(tmp_path / "noface" / f"x{k}.png", rng, side=None)
    with pytest.raises(DataSourceError, match=r"no face found in any of its 3 photos(.|\n)*x0.png: no face found"):
        build_photo_folder(tmp_path / "noface", task="stn", data_dir=tmp_path / "tfds",
                           detector=_FakeDetector(faces=False), **QUIET)
    assert not list((tmp_path / "tfds").rglob("dataset_info.json"))  # nothing half-built is reused


def test_dataset_missing_fields(tmp_path):
    no_mask = _toy(tmp_path, "nomask", mask=False)
    with pytest.raises(DataSourceError, match=r"toy_faces/nomask/1.0.0: the deca train data needs the field "
                                              r"'face_mask'"):
        DatasetSource(no_mask, task="deca")
    assert len(DatasetSource(no_mask, task="deca", purpose="eval")) == 12  # evaluation needs no mask
    raw_frame = _toy(tmp_path, "raw", frame="aflw2000 stored pixels: x = column, y = row, z")
    with pytest.raises(DataSourceError, match="not a face crop's"):
        DatasetSource(raw_frame, task="stn")
    no_frame = _toy(tmp_path, "noframe", frame=None)
    with pytest.raises(DataSourceError, match="cannot tell the landmarks' frame"):
        DatasetSource(no_frame, task="stn")
    other = _toy(tmp_path, "other", lm68_key="points")
    with pytest.raises(DataSourceError, match=r"needs the field 'labels' \(aflw21 landmark labels"):
        DatasetSource(other, task="stn")


def test_corrupt_records_are_named(tmp_path):
    directory = _toy(tmp_path, "corrupt", count=200, size=32)
    (record_file,) = directory.glob("*.array_record-*")
    data = bytearray(record_file.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    record_file.write_bytes(bytes(data))
    source = DatasetSource(directory, task="deca")
    with pytest.raises(DataSourceError, match=rf"record \d+ of split 'train' cannot be read from "
                                              rf".*{record_file.name}.*build it again"):
        for i in range(len(source)):
            source[i]
    with pytest.raises(DataSourceError, match=record_file.name):
        source.identities()
    loader = StreamLoader(source, batch_size=8, keys=("images", "identity"))  # reader threads re-raise it
    with pytest.raises(DataSourceError, match=record_file.name):
        for _ in range(loader.steps_per_epoch):
            next(loader)
    record_file.write_bytes(bytes(data[:1000]))  # truncated
    with pytest.raises(DataSourceError, match=record_file.name):
        DatasetSource(directory, task="deca")[0]


def test_not_a_dataset_directory(tmp_path):
    bad = tmp_path / "bad" / "1.0.0"
    bad.mkdir(parents=True)
    (bad / "dataset_info.json").write_text("{not json")
    with pytest.raises(DataSourceError, match="not a readable TFDS dataset"):
        open_source(str(bad), task="stn")
