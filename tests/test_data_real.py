"""Real-image reading, crops as the originals, and the TFDS builder for identity folders."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from jface.data import crops
from jface.data.real import ImageReadError, ScanReport, iter_faces, read_image, read_landmarks, scan_identity_folders

RNG = np.random.default_rng(3)


def _landmarks(centre=(60.0, 70.0), size=40.0):
    ang = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    return np.stack([centre[0] + size / 2 * np.cos(ang), centre[1] + size / 2 * np.sin(ang)], 1)


def test_deca_crop_matches_skimage_similarity_warp():
    skimage = pytest.importorskip("skimage.transform")
    image = RNG.uniform(0, 1, size=(120, 140, 3))
    lmk = _landmarks()
    crop, ndc, tform = crops.deca_crop(image, lmk, scale=1.6)
    # DECA datasets/vggface.py: three point pairs, estimate_transform('similarity'), warp.
    left, right = lmk[:, 0].min(), lmk[:, 0].max()
    top, bottom = lmk[:, 1].min(), lmk[:, 1].max()
    old_size = (right - left + bottom - top) / 2
    centre = np.array([right - (right - left) / 2.0, bottom - (bottom - top) / 2.0])
    size = int(old_size * 1.6)
    src = np.array([[centre[0] - size / 2, centre[1] - size / 2], [centre[0] - size / 2, centre[1] + size / 2],
                    [centre[0] + size / 2, centre[1] - size / 2]])
    dst = np.array([[0, 0], [0, 223], [223, 0]])
    ref_t = skimage.estimate_transform("similarity", src, dst)
    np.testing.assert_allclose(tform.matrix(), ref_t.params, atol=1e-9)
    ref = skimage.warp(image, ref_t.inverse, output_shape=(224, 224))
    # Interior pixels agree exactly; skimage treats the last half pixel at the border differently.
    np.testing.assert_allclose(crop[2:-2, 2:-2], ref[2:-2, 2:-2], atol=1e-9)
    ref_lmk = ref_t(lmk) / 224 * 2 - 1
    np.testing.assert_allclose(ndc[:, :2], ref_lmk, atol=1e-9)
    np.testing.assert_array_equal(ndc[:, 2], 1)


def test_deca_test_crop_size_rule():
    lmk = _landmarks(size=50)
    t = crops.deca_crop_transform(lmk, scale=0.0, test=True)
    _, old = crops.landmark_box(lmk)
    assert t.scale == pytest.approx(223 / int(old * 1.1 * 1.25))


def test_stn_frame_round_trip_and_missing_points():
    pts = np.array([[0.0, 0.0], [223.0, 223.0], [100.5, 20.0], [300.0, 5.0]])
    labels = crops.to_stn_frame(pts, visible=[1, 1, 1, 1])
    np.testing.assert_allclose(labels[0], [1, 224, 1])
    np.testing.assert_allclose(labels[1], [224, 1, 1])
    np.testing.assert_allclose(labels[3], [0, 0, 0])  # outside the crop: missing
    np.testing.assert_allclose(crops.from_stn_frame(labels[:3]), pts[:3])


def test_stn_crop_labels_follow_the_image(tmp_path):
    image = np.zeros((200, 180, 3))
    lmk = _landmarks(centre=(90, 100), size=60)
    image[int(round(lmk[10, 1])), int(round(lmk[10, 0]))] = 255.0
    lmk[10] = np.round(lmk[10])
    crop, labels, _ = crops.stn_crop(image, lmk)
    col, row = crops.from_stn_frame(labels[10:11])[0]
    assert crop[int(round(row)), int(round(col))].max() > 50  # the marked pixel moved with its label


def _write_dataset(root):
    good = RNG.integers(0, 255, size=(80, 90, 3), dtype=np.uint8)
    (root / "alice").mkdir(parents=True)
    (root / "bob").mkdir()
    (root / "empty_identity").mkdir()
    Image.fromarray(good).save(root / "alice" / "a1.png")
    np.savetxt(root / "alice" / "a1.txt", _landmarks((45, 40), 30))
    Image.fromarray(good[..., 0]).save(root / "alice" / "gray.png")  # grayscale
    np.save(root / "alice" / "gray.npy", _landmarks((45, 40), 30))
    Image.fromarray(np.dstack([good, np.full(good.shape[:2], 128, np.uint8)])).save(root / "bob" / "rgba.png")
    pts = "version: 1\nn_points: 68\n{\n" + "\n".join(f"{x} {y}" for x, y in _landmarks((45, 40), 30)) + "\n}\n"
    (root / "bob" / "rgba.pts").write_text(pts)
    Image.fromarray(good[..., 1].astype(np.uint16) * 257).save(root / "bob" / "deep.png")  # 16-bit
    np.savetxt(root / "bob" / "deep.txt", _landmarks((45, 40), 30))
    (root / "bob" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    np.savetxt(root / "bob" / "corrupt.txt", _landmarks())
    (root / "bob" / "empty.png").write_bytes(b"")
    Image.fromarray(good).save(root / "bob" / "nolandmarks.png")
    Image.fromarray(good).save(root / "bob" / "badlmk.png")
    (root / "bob" / "badlmk.txt").write_text("1 2\n3 nan\n")


def test_reader_handles_every_image_kind_and_skips_bad_files(tmp_path):
    _write_dataset(tmp_path)
    assert read_image(tmp_path / "alice" / "gray.png").shape == (80, 90, 3)
    assert read_image(tmp_path / "bob" / "rgba.png").shape == (80, 90, 3)
    deep = read_image(tmp_path / "bob" / "deep.png")
    assert deep.dtype == np.uint8 and deep.max() > 100
    with pytest.raises(ImageReadError, match="corrupt.jpg"):
        read_image(tmp_path / "bob" / "corrupt.jpg")
    with pytest.raises(ImageReadError, match="empty.png"):
        read_image(tmp_path / "bob" / "empty.png")
    with pytest.raises(ImageReadError, match="expected 68 landmarks"):
        read_landmarks(tmp_path / "bob" / "badlmk.txt")
    report = ScanReport()
    items = list(iter_faces(tmp_path, report=report))
    assert report.images == len(items) == 4
    skipped = {p.split("/")[-1]: why for p, why in report.skipped}
    assert set(skipped) == {"corrupt.jpg", "empty.png", "nolandmarks.png", "badlmk.png"}
    assert "no landmark side file" in skipped["nolandmarks.png"]
    assert {it["identity"] for it in items} == {"alice", "bob"}
    assert "4 skipped" in report.summary()


def test_empty_and_missing_folders_raise_clear_errors(tmp_path):
    with pytest.raises(ImageReadError, match="not a directory"):
        scan_identity_folders(tmp_path / "nope")
    (tmp_path / "id").mkdir()
    with pytest.raises(ImageReadError, match="no images found"):
        scan_identity_folders(tmp_path)


def test_tfds_real_builder_builds_without_tensorflow(tmp_path, capsys):
    tfds = pytest.importorskip("tensorflow_datasets")
    from jface.data.tfds_real import JfaceRealFaces

    _write_dataset(tmp_path / "manual")
    builder = JfaceRealFaces(config="deca_test", data_dir=str(tmp_path / "tfds"), file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "manual")))
    assert "4 skipped" in capsys.readouterr().out
    source = builder.as_data_source(split="train")
    assert len(source) == 4
    ex = source[0]
    assert ex["image"].shape == (224, 224, 3) and ex["image"].dtype == np.uint8
    assert ex["landmarks"].shape == (68, 3)
    # DECA test crop: the landmark box sits in the middle, well inside [-1, 1].
    assert np.all(np.abs(ex["landmarks"][:, :2]) < 0.8)
    import sys

    assert "tensorflow" not in sys.modules
