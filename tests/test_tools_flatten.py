"""python -m jface.flatten (3DMM-STN flattening tool) and the astronaut demo."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from jface import flatten
from jface.reconstruct.inputs import InputError


def _one_line_error(text, *names):
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in text, text
    for name in names:
        assert name in lines[0], (name, text)


def _landmarks68(model, theta):
    """The model's 68 iBUG vertices projected with theta, as 0-based pixels of a 224 image."""
    from jface.data.crops import from_stn_frame
    from jface.stn import project

    points = np.asarray(project(model, theta)["points"])[np.asarray(model.landmarks["ibug68"])]
    return from_stn_frame(points)


@pytest.fixture(scope="module")
def stn_folder(tmp_path_factory):
    """root/alice (2 images), root/bob (1 image), plus images that must be skipped: an unreadable
    file, one without landmarks, a 1 x 1 image (a degenerate landmark box) and a malformed side file."""
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
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(root / "bob" / "tiny.png")
    np.savetxt(root / "bob" / "tiny.txt", np.zeros((68, 2)))
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(root / "bob" / "nan.png")
    marks = np.ones((68, 2))
    marks[5, 1] = np.nan
    np.savetxt(root / "bob" / "nan.txt", marks)
    return root


@pytest.fixture(scope="module")
def flattened(stn_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("flat_out")
    lines = []
    summary = flatten.run([stn_folder], out, fit_landmarks=True, batch_size=4, steps=60, log=lines.append)
    return out, summary, lines


def test_flatten_outputs_and_skips(flattened):
    out, summary, lines = flattened
    assert len(summary["images"]) == 3 and summary["processed"] == 3
    for record in summary["images"]:
        for key in ("texture", "sampled", "mask", "landmarks"):
            with Image.open(record[key]) as im:
                im.load()
                assert im.size in ((112, 112), (224, 224))
        with np.load(record["npz"]) as z:
            assert z["texture"].shape == (112, 112, 3) and z["theta"].shape[0] == 6 + 42
        assert record["landmark_rmse_px"] < 5.0  # 19 AFLW points fitted from exact projections
    skipped = {s["image"].rsplit("/", 1)[-1]: s["reason"] for s in summary["skipped"]}
    assert set(skipped) == {"broken.png", "nolandmarks.png", "tiny.png", "nan.png"}
    assert "unreadable" in skipped["broken.png"] and "no landmark" in skipped["nolandmarks.png"]
    assert "degenerate landmark box" in skipped["tiny.png"] and "nan.txt" in skipped["nan.png"]
    assert len(lines) == 1 and lines[0].startswith("3 image(s) processed, 4 skipped:")
    assert all(name in lines[0] for name in skipped)
    assert json.loads((out / "summary.json").read_text())["gallery"] == str(out / "gallery.png")
    with Image.open(out / "gallery.png") as im:
        assert im.width > 2 * 112


def test_mean_texture_is_masked_average(flattened):
    out, summary, _ = flattened
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


def test_bad_inputs(tmp_path, stn_folder, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no images found"):
        flatten.run([empty], tmp_path / "o", fit_landmarks=True)
    assert flatten.main([str(empty), "-o", str(tmp_path / "o"), "--fit-landmarks"]) == 2
    _one_line_error(capsys.readouterr().err, "no images found")
    with pytest.raises(InputError, match="no such file"):
        flatten.run([tmp_path / "missing.png"], tmp_path / "o", fit_landmarks=True)
    with pytest.raises(InputError, match="exactly one"):
        flatten.run([stn_folder], tmp_path / "o")
    a_file = tmp_path / "taken.txt"
    a_file.write_text("x")
    cases = [
        (["-o", str(a_file), "--fit-landmarks"], ["-o", "taken.txt", "not a folder"]),
        (["-o", str(a_file / "sub"), "--fit-landmarks"], ["-o", "taken.txt", "is a file, not a folder"]),
        (["-o", str(tmp_path / "o"), "--weights", str(tmp_path / "no_run")], ["--weights", "no_run", "no such"]),
        (["-o", str(tmp_path / "o"), "--fit-landmarks", "--model", str(tmp_path / "none.npz")],
         ["--model", "none.npz", "no such"]),
        (["-o", str(tmp_path / "o"), "--fit-landmarks", "--model", str(tmp_path)], ["--model", "is a folder"]),
    ]
    for argv, names in cases:
        assert flatten.main([str(stn_folder)] + argv) == 2, argv
        _one_line_error(capsys.readouterr().err, *names)


class _RecordingBar:
    def __init__(self, events):
        self.events = events

    def update(self, n=1):
        self.events.append(("update", n))

    def write(self, text):
        self.events.append(("write", text))

    def close(self):
        self.events.append(("close",))


def test_every_image_skipped_bar_closed_before_summary(tmp_path, monkeypatch, capsys):
    """A folder whose images all fail (a malformed side file, a 1 x 1 image): each is skipped and
    counted on the bar (which counts images), the bar is closed before the summary prints, and
    the command exits 1 (nothing was produced)."""
    folder = tmp_path / "faces"
    folder.mkdir()
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(folder / "x.png")
    marks = np.ones((68, 2))
    marks[5, 1] = np.nan
    np.savetxt(folder / "x.txt", marks)
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(folder / "y.png")
    np.savetxt(folder / "y.txt", np.zeros((68, 2)))
    events = []

    def bar(total, desc=""):
        events.append(("open", total))
        return _RecordingBar(events)

    monkeypatch.setattr(flatten, "progress_bar", bar)
    summary = flatten.run([folder], tmp_path / "o", fit_landmarks=True, log=lambda text: events.append(("log", text)))
    assert summary["processed"] == 0
    kinds = [e[0] for e in events]
    assert events[0] == ("open", 2) and kinds.count("update") == 2 and kinds.index("close") < kinds.index("log")
    assert [e for e in events if e[0] == "write"][0][1].startswith(f"skipping {folder / 'x.png'}: ")
    reasons = {s["image"].rsplit("/", 1)[-1]: s["reason"] for s in summary["skipped"]}
    assert "x.txt" in reasons["x.png"] and "NaN" in reasons["x.png"] and "degenerate" in reasons["y.png"]
    monkeypatch.undo()
    capsys.readouterr()
    assert flatten.main([str(folder), "-o", str(tmp_path / "o2"), "--fit-landmarks"]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith("0 image(s) processed, 2 skipped:") and "Traceback" not in captured.err
    assert captured.err.strip().splitlines()[-1].startswith("error: no image could be processed (2 skipped")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_unwritable_output_and_unreadable_model(tmp_path, stn_folder, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    secret = tmp_path / "secret.npz"
    secret.write_bytes(b"x")
    secret.chmod(0)
    try:
        assert flatten.main([str(stn_folder), "-o", str(locked), "--fit-landmarks"]) == 2
        _one_line_error(capsys.readouterr().err, "-o", "locked", "not writable")
        assert flatten.main([str(stn_folder), "-o", str(tmp_path / "o"), "--fit-landmarks", "--model",
                             str(secret)]) == 2
        _one_line_error(capsys.readouterr().err, "--model", "secret.npz", "not readable")
    finally:
        locked.chmod(0o700)
        secret.chmod(0o600)


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


def test_detector_missing_is_a_clear_error(tmp_path, stn_folder, capsys):
    try:
        import dlib  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="detector"):
            flatten.run([stn_folder], tmp_path, fit_landmarks=True, detector="dlib")
        assert flatten.main([str(stn_folder), "-o", str(tmp_path), "--fit-landmarks", "--detector", "dlib"]) == 2
        _one_line_error(capsys.readouterr().err, "dlib")
    else:
        pytest.skip("dlib is installed")
