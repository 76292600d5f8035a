"""``python -m jface.data build photos FOLDER``: a folder of photographs built into the data dir as
``--data FOLDER`` builds it on first use (the same records), with a progress bar and a build report
(found / skipped / why), reused afterwards by the trainers' sources; bad folders exit 2 naming them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_data_sources import _photo

from jface.data import detect
from jface.data.__main__ import main as data_main
from jface.data.photos import DATASET_NAME, REPORT_FILE
from jface.data.sources import open_source


class _NoFace:
    """Stands in for mediapipe: finds no face in any photo."""

    name = "no-face-detector"

    def __call__(self, image):
        return []

    def close(self):
        pass


@pytest.fixture()
def folder(tmp_path):
    """Two identities of two photos with landmark side files (.npy / .pts / .txt), an image that
    cannot be decoded and a photo without a side file in which no face is found."""
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    _photo(root / "ann" / "a0.png", rng, side=".npy")
    _photo(root / "ann" / "a1.png", rng, side=".pts")
    _photo(root / "bob" / "b0.png", rng, side=".txt")
    _photo(root / "bob" / "b1.png", rng, side=".npy")
    (root / "ann" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    _photo(root / "bob" / "noface.png", rng, side=None)
    return root


def test_build_photos_reports_and_is_what_data_folder_reads(folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(detect.DETECTORS, "mediapipe", _NoFace)
    data_dir = tmp_path / "tfds"
    assert data_main(["build", "photos", str(folder), "--data_dir", str(data_dir)]) == 0
    out, err = capsys.readouterr()
    built = sorted((data_dir / DATASET_NAME).glob("*/1.0.0"))
    assert [p.parent.name.split("-")[0] for p in built] == ["deca", "stn"]  # --task all: both trainers' crops
    assert "6/6" in err and DATASET_NAME in err  # the progress bar, one tick per photo
    assert out.count("6 photos of 2 identities; labelled 4 from side files, 0 by the detector; 4 faces written") == 2
    assert "skipped" in out and "broken.jpg" in out and "noface.png: no face found (no-face-detector)" in out
    for version_dir in built:
        report = json.loads((version_dir / REPORT_FILE).read_text())
        assert (report["images"], report["identities"], report["side_files"], report["examples"]) == (6, 2, 4, 4)
        reasons = dict(report["skipped"])
        assert set(reasons) == {str(folder / "ann" / "broken.jpg"), str(folder / "bob" / "noface.png")}
        assert "no face found" in reasons[str(folder / "bob" / "noface.png")]

    # the trainers' source finds the build (build=False: it would raise rather than build) ...
    for task in ("stn", "deca"):
        source = open_source(str(folder), task=task, data_dir=data_dir, build=False, progress=False,
                             log=lambda *_: None)
        assert len(source) == 4 and source.identities().tolist() == [0, 0, 1, 1]
    # ... and its records are those --data FOLDER builds on first use
    fresh = open_source(str(folder), task="stn", data_dir=tmp_path / "other", progress=False, log=lambda *_: None)
    built_stn = open_source(str(folder), task="stn", data_dir=data_dir, build=False, log=lambda *_: None)
    assert fresh.directory.parent.name == built_stn.directory.parent.name
    for i in range(4):
        a, b = fresh[i], built_stn[i]
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)

    # a second build reuses the first and prints its report again
    assert data_main(["build", "photos", str(folder), "--task", "stn", "--data_dir", str(data_dir)]) == 0
    out, _ = capsys.readouterr()
    assert "using the dataset built before" in out and "4 faces written" in out
    assert sorted((data_dir / DATASET_NAME).glob("*/1.0.0")) == built


def test_build_photos_bad_folders_exit_2(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert data_main(["build", "photos", str(empty), "--data_dir", str(tmp_path / "tfds")]) == 2
    assert str(empty) in capsys.readouterr().err
    missing = tmp_path / "missing"
    assert data_main(["build", "photos", str(missing), "--data_dir", str(tmp_path / "tfds")]) == 2
    assert f"{missing}: no such folder" in capsys.readouterr().err
    # only an undecodable image and a photo without side file while detection is off
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.jpg").write_bytes(b"not an image")
    _photo(bad / "plain.png", np.random.default_rng(1), side=None)
    assert data_main(["build", "photos", str(bad), "--task", "deca", "--detector", "none",
                      "--data_dir", str(tmp_path / "tfds")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: no face found in any of its 2 photos" in err
    assert "broken.jpg" in err and "plain.png: no landmark side file and detection is off" in err
    with pytest.raises(SystemExit):
        data_main(["build", "photos", str(bad), "--fit_steps", "many"])


def test_dlib_detector_largest_face_first_and_missing_extra(monkeypatch):
    """--detector dlib: dlib's rectangles and 68-point shapes as Faces, largest first (dlib and its
    model stand in here: the [detector] extra is not installed in CI)."""
    import sys
    import types

    class Rect:
        def __init__(self, left, top, size):
            self.box = (left, top, size)

    class Shape:
        def __init__(self, rect):
            left, top, size = rect.box
            self.points = [types.SimpleNamespace(x=left + (k % 17) * size / 16, y=top + (k // 17) * size / 3)
                           for k in range(68)]

        def part(self, i):
            return self.points[i]

    fake = types.ModuleType("dlib")
    fake.get_frontal_face_detector = lambda: (lambda image, upsample: [Rect(5, 5, 10), Rect(20, 8, 30)])
    fake.shape_predictor = lambda path: (lambda image, rect: Shape(rect))
    models = types.ModuleType("face_recognition_models")
    models.pose_predictor_model_location = lambda: "shape_predictor_68_face_landmarks.dat"
    monkeypatch.setitem(sys.modules, "dlib", fake)
    monkeypatch.setitem(sys.modules, "face_recognition_models", models)
    faces = detect.make_detector("dlib")(np.zeros((64, 64, 3), np.uint8))
    assert [face.box for face in faces] == [(20.0, 8.0, 50.0, 38.0), (5.0, 5.0, 15.0, 15.0)]
    assert faces[0].mesh is None and faces[0].landmarks68.shape == (68, 2)

    monkeypatch.setitem(sys.modules, "dlib", None)  # not installed
    with pytest.raises(detect.DetectorMissingError, match=r"jface\[detector\]"):
        detect.make_detector("dlib")
    with pytest.raises(ValueError, match="detector: expected one of"):
        detect.make_detector("opencv")
