"""300W-LP reader and TF-free TFDS builder on a fake folder in the real layout."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import scipy.io
from PIL import Image

from jface.data.real import ImageReadError, ScanReport
from jface.data.the300w_lp import iter_300w_lp, list_300w_lp, read_300w_lp_item


def _fake(root):
    rng = np.random.default_rng(0)
    base = root / "300W_LP"
    ang = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    pts = np.stack([225 + 60 * np.cos(ang), 225 + 80 * np.sin(ang)])  # (2, 68)
    for subset, name in [("AFW", "AFW_134212_1_0"), ("AFW_Flip", "AFW_134212_1_0"), ("HELEN", "HELEN_100032540_1_2")]:
        (base / subset).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (450, 450, 3), dtype=np.uint8)).save(base / subset / f"{name}.jpg")
        pose = np.array([[0.1, -0.4, 0.05, 1, 2, 3, 0.001]])
        scipy.io.savemat(base / subset / f"{name}.mat", {"pt2d": pts, "Pose_Para": pose})
    (base / "landmarks" / "HELEN").mkdir(parents=True)
    scipy.io.savemat(base / "landmarks" / "HELEN" / "HELEN_100032540_1_2_pts.mat",
                     {"pts_3d": pts.T + 1.0, "pts_2d": pts.T})
    (base / "IBUG").mkdir()
    Image.fromarray(rng.integers(0, 255, (450, 450, 3), dtype=np.uint8)).save(base / "IBUG" / "x.jpg")
    (base / "IBUG" / "x.mat").write_bytes(b"MATLAB 5.0 MAT-file garbage" + bytes(200))
    return base


def test_reader_prefers_pts_3d_and_skips_bad_samples(tmp_path):
    base = _fake(tmp_path)
    items = list_300w_lp(tmp_path)
    assert [s for s, _, _ in items] == ["AFW", "AFW_Flip", "HELEN", "IBUG"]
    helen = read_300w_lp_item("HELEN", base / "HELEN" / "HELEN_100032540_1_2.jpg")
    afw = read_300w_lp_item("AFW", base / "AFW" / "AFW_134212_1_0.jpg")
    np.testing.assert_allclose(helen["landmarks68"][:, :2], afw["landmarks68"][:, :2] + 1.0, atol=1e-5)
    assert afw["subject"] == "AFW_134212_1" and afw["pose_deg"][1] == pytest.approx(np.degrees(-0.4), rel=1e-5)
    report = ScanReport()
    got = list(iter_300w_lp(tmp_path, report=report))
    assert len(got) == 3 and report.num_skipped == 1 and "x.mat" in report.skipped[0][1]
    with pytest.raises(ImageReadError, match="x.mat"):
        read_300w_lp_item("IBUG", base / "IBUG" / "x.jpg")


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        list_300w_lp(tmp_path / "nope")
    (tmp_path / "300W_LP").mkdir()
    with pytest.raises(ValueError, match="no 300W-LP images"):
        list_300w_lp(tmp_path)


def test_builder_without_tensorflow(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    from jface.data.the300w_lp import JfaceThe300wLp

    _fake(tmp_path / "manual")
    builder = JfaceThe300wLp(config="deca", data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "manual")))
    source = builder.as_data_source(split="train")
    assert len(source) == 3
    ex = source[0]
    assert ex["image"].shape == (224, 224, 3) and ex["landmarks68"].shape == (68, 3)
    assert np.all(np.abs(ex["landmarks68"][:, :2]) < 1.0)
    assert "tensorflow" not in sys.modules


def test_cli_build_and_inspect(tmp_path):
    from PIL import Image as PILImage

    from jface.data.__main__ import main

    _fake(tmp_path / "manual")
    assert main(["build", "300w_lp", "--config", "stn", "--manual_dir", str(tmp_path / "manual"),
                 "--data_dir", str(tmp_path / "tfds")]) == 0
    sheet = tmp_path / "sheet.png"
    assert main(["inspect", "--dataset", "300w_lp", "--config", "stn", "--data_dir", str(tmp_path / "tfds"),
                 "-o", str(sheet)]) == 0
    assert PILImage.open(sheet).size[0] > 0
