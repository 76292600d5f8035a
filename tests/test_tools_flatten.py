"""python -m jface.flatten (3DMM-STN flattening tool) and the astronaut demo."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from jface import flatten
from jface.reconstruct.inputs import InputError, LandmarkFileError


def _landmarks68(model, theta):
    """The model's 68 iBUG vertices projected with theta, as 0-based pixels of a 224 image."""
    from jface.data.crops import from_stn_frame
    from jface.stn import project

    points = np.asarray(project(model, theta)["points"])[np.asarray(model.landmarks["ibug68"])]
    return from_stn_frame(points)


@pytest.fixture(scope="module")
def stn_folder(tmp_path_factory):
    """root/alice (2 images), root/bob (1 image), plus an unreadable file and one without landmarks."""
    from jface.models import default_stn_model

    model = default_stn_model()
    root = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    for k, (identity, name) in enumerate([("alice", "a1"), ("alice", "a2"), ("bob", "b1")]):
        folder = root / identity
        folder.mkdir(exist_ok=True)
        theta = np.concatenate([[0, 0.2 * (k - 1), 0], [112 + 3 * k, 110], [25.0], np.zeros(model.basis.shape[-1])])
        image = rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)
        Image.fromarray(image).save(folder / f"{name}.png")
        np.savetxt(folder / f"{name}.txt", _landmarks68(model, theta))
    (root / "bob" / "broken.png").write_bytes(b"not an image")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(root / "bob" / "nolandmarks.png")
    return root


@pytest.fixture(scope="module")
def flattened(stn_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("flat_out")
    summary = flatten.run([stn_folder], out, fit_landmarks=True, batch_size=4, steps=60, log=lambda *_: None)
    return out, summary


def test_flatten_outputs_and_skips(flattened):
    out, summary = flattened
    assert len(summary["images"]) == 3
    for record in summary["images"]:
        for key in ("texture", "sampled", "mask", "landmarks"):
            with Image.open(record[key]) as im:
                im.load()
                assert im.size in ((112, 112), (224, 224))
        with np.load(record["npz"]) as z:
            assert z["texture"].shape == (112, 112, 3) and z["theta"].shape[0] == 6 + 42
        assert record["landmark_rmse_px"] < 5.0  # 19 AFLW points fitted from exact projections
    skipped = {s["image"].rsplit("/", 1)[-1]: s["reason"] for s in summary["skipped"]}
    assert set(skipped) == {"broken.png", "nolandmarks.png"}
    assert "unreadable" in skipped["broken.png"] and "no landmark" in skipped["nolandmarks.png"]
    assert json.loads((out / "summary.json").read_text())["gallery"] == str(out / "gallery.png")
    with Image.open(out / "gallery.png") as im:
        assert im.width > 2 * 112


def test_mean_texture_is_masked_average(flattened):
    out, summary = flattened
    textures, masks = [], []
    for record in summary["images"]:
        if record["identity"] == "alice":
            with np.load(record["npz"]) as z:
                textures.append(z["texture"].astype(np.float64))
                masks.append(z["mask"].astype(np.float64))
    assert len(textures) == 2
    count = masks[0] + masks[1]
    by_hand = np.zeros_like(textures[0])
    seen = count > 0
    by_hand[seen] = ((textures[0] * masks[0][..., None] + textures[1] * masks[1][..., None])[seen]
                     / count[seen][:, None])
    mean = np.load(out / "mean" / "alice.npy")
    np.testing.assert_allclose(mean, by_hand, rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(np.load(out / "mean" / "alice_count.npy"), count)
    assert seen.mean() > 0.2 and np.all(mean[~seen] == 0)


def test_ibug68_to_aflw21():
    points = np.arange(68 * 2, dtype=np.float64).reshape(68, 2)
    aflw = flatten.ibug68_to_aflw21(points)
    assert aflw.shape == (21, 2)
    assert np.isnan(aflw[12]).all() and np.isnan(aflw[16]).all()  # ears
    np.testing.assert_array_equal(aflw[14], points[30])  # nose tip
    np.testing.assert_array_equal(aflw[7], points[[37, 38, 40, 41]].mean(0))  # left eye centre
    assert flatten.AFLW21_FROM_IBUG_VALID.sum() == 19


def test_bad_inputs(tmp_path, stn_folder):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no images found"):
        flatten.run([empty], tmp_path / "o", fit_landmarks=True)
    assert flatten.main([str(empty), "-o", str(tmp_path / "o"), "--fit-landmarks"]) == 2
    with pytest.raises(InputError, match="no such file"):
        flatten.run([tmp_path / "missing.png"], tmp_path / "o", fit_landmarks=True)
    with pytest.raises(InputError, match="exactly one"):
        flatten.run([stn_folder], tmp_path / "o")
    bad = tmp_path / "nan"
    bad.mkdir()
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(bad / "x.png")
    lm = np.ones((68, 2))
    lm[5, 1] = np.nan
    np.savetxt(bad / "x.txt", lm)
    with pytest.raises(LandmarkFileError, match="x.txt.*NaN"):
        flatten.run([bad], tmp_path / "o", fit_landmarks=True)


def test_astronaut_demo(tmp_path):
    pytest.importorskip("skimage")
    from jface.demos import astronaut

    summary = astronaut.run(tmp_path, steps=300, use_detector=False, log=lambda *_: None)
    assert summary["landmark_source"].startswith("hand-placed")
    assert summary["landmark_rmse_px"] < 4.0  # px of the 224 crop, 19 AFLW points
    with Image.open(tmp_path / "astronaut_overlay.png") as im:
        assert im.size == (224, 224)
    with Image.open(tmp_path / "astronaut_texture.png") as im:
        assert im.size == (112, 112)
    assert 0.3 < summary["visible_fraction"] < 1.0


def test_detector_missing_is_a_clear_error(tmp_path, stn_folder):
    try:
        import dlib  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="detector"):
            flatten.run([stn_folder], tmp_path, fit_landmarks=True, detector=True)
        assert flatten.main([str(stn_folder), "-o", str(tmp_path), "--fit-landmarks", "--detector"]) == 2
    else:
        pytest.skip("dlib is installed")
