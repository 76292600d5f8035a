"""``python -m jface.demos.real_photos``: the photo folder it assembles, the evaluation JSON and the
sheet of one tiny ``train.stn`` run, DECA's wiring, and one-line errors for bad input.

The demodata parts need ``../shared/realdata`` (``$JFACE_SHARED``) and are skipped without it; the
photographs and everything built from them are written under pytest's tmp folders only.
"""

from __future__ import annotations

import importlib.util
import json
import math

import jax
import numpy as np
import pytest
from conftest import REALDATA
from PIL import Image

from jface.data import crops
from jface.demos import real_photos
from jface.stn.demo import load_demodata
from train import stn as train_stn

DEMODATA = REALDATA / "3dmmasstn" / "demodata.mat"
needs_demodata = pytest.mark.skipif(not DEMODATA.is_file(), reason=f"needs {DEMODATA} (set JFACE_SHARED)")
needs_mediapipe = pytest.mark.skipif(importlib.util.find_spec("mediapipe") is None,
                                     reason="mediapipe (the [detect] extra) is not installed")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """One tiny STN run (2 steps) and the program run on it once, x64 off as users run both."""
    root = tmp_path_factory.mktemp("real_photos")
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", False)
    try:
        run_dir = root / "stn"
        assert train_stn.main(["--preset", "tiny", "--steps", "2", "--checkpoint_every", "2", "--eval_at_end",
                               "false", "--workdir", str(run_dir)]) == 0
        lines = []
        results = real_photos.run(stn=run_dir, demodata=DEMODATA if DEMODATA.is_file() else None,
                                  workdir=root / "work", json_path=root / "out.json", sheet_path=root / "sheet.png",
                                  log=lines.append)
    finally:
        jax.config.update("jax_enable_x64", previous)
    return {"root": root, "run": run_dir, "results": results, "lines": lines}


def _one_line(err: str, *names):
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{real_photos.PROG}: ") and "Traceback" not in err, err
    for name in names:
        assert name in lines[0], (name, err)


def _status(argv) -> int:
    try:
        return real_photos.main(argv)
    except SystemExit as exit:  # argparse's errors
        return exit.code


def _expected_photos():
    names = ["astronaut", "grace_hopper"]
    return names + [f"demodata_{k}" for k in range(6)] if DEMODATA.is_file() else names


@needs_mediapipe
def test_folder_has_photos_and_side_labels(evaluated):
    folder = evaluated["root"] / "work" / "photos"
    names = _expected_photos()
    assert sorted(p.stem for p in folder.glob("*.png")) == sorted(names)
    for name in names:
        side = np.loadtxt(folder / f"{name}.txt")
        image = np.asarray(Image.open(folder / f"{name}.png"))
        assert side.shape == (68, 2) and np.all(np.isfinite(side))
        # the detector's points lie on the photo
        assert np.all((side >= 0) & (side < np.asarray(image.shape[1::-1])))
    assert [p["name"] for p in evaluated["results"]["photos"]] == names


@needs_demodata
@needs_mediapipe
def test_demodata_human_labels_written_in_photo_pixels(evaluated):
    folder = evaluated["root"] / "work" / "photos"
    _, labels = load_demodata(DEMODATA)
    for k in range(6):
        human = np.loadtxt(folder / f"demodata_{k}{real_photos.HUMAN_SUFFIX}")
        assert human.shape == (21, 3) and np.all(human[:, 2] == 1)
        # back to the y-up 1-based frame of demodata.mat: the labels as stored there
        np.testing.assert_allclose(crops.to_stn_frame(human[:, :2], human[:, 2], 224)[:, :2], labels[k], atol=1e-3)
    labels_of = {p["name"]: p["labels"] for p in evaluated["results"]["photos"]}
    assert labels_of["demodata_0"] == "mediapipe + human AFLW-21" and labels_of["astronaut"] == "mediapipe"


@needs_mediapipe
def test_json_rows_for_every_photo_and_the_baseline(evaluated):
    saved = json.loads((evaluated["root"] / "out.json").read_text())
    stn = saved["stn"]
    names = _expected_photos()
    assert sorted(r["name"].rsplit("/", 1)[-1] for r in stn["per_image"]) == sorted(f"{n}.png" for n in names)
    for row in stn["per_image"]:
        assert math.isfinite(row["nme"]) and math.isfinite(row["baseline_nme"]) and row["baseline_nme"] > 0
    assert stn["nme"] == pytest.approx(np.mean([r["nme"] for r in stn["per_image"]]))
    assert stn["ratio"] == pytest.approx(stn["nme"] / stn["baseline_nme"])
    assert stn["target_met"] is (stn["ratio"] <= real_photos.TARGET_RATIO)
    assert stn["build"]["examples"] == len(names) and stn["build"]["side_files"] == len(names)
    assert "deca" not in saved
    assert any(line.startswith(f"STN {evaluated['run']}: mean NME ") and "target ratio <= 0.5" in line
               for line in evaluated["lines"])


@needs_mediapipe
def test_fit_floor_is_the_model_fitted_to_the_same_labels(evaluated):
    stn = json.loads((evaluated["root"] / "out.json").read_text())["stn"]
    floor = stn["fit_floor"]
    assert len(floor["per_image"]) == len(stn["per_image"]) and floor["steps"] > 0
    assert all(math.isfinite(v) for v in floor["per_image"])
    assert floor["nme"] == pytest.approx(np.mean(floor["per_image"]))
    # theta fitted to each photo's own points beats always predicting the mean pose on every photo
    assert all(f < r["baseline_nme"] for f, r in zip(floor["per_image"], stn["per_image"]))
    assert floor["ratio"] == pytest.approx(floor["nme"] / stn["baseline_nme"]) and floor["ratio"] < 1
    assert any("fitted to the same labels" in line for line in evaluated["lines"])


@needs_demodata
@needs_mediapipe
def test_json_human_labelled_subset(evaluated):
    stn = json.loads((evaluated["root"] / "out.json").read_text())["stn"]
    human = stn["demodata_human"]
    assert human["images"] == 6 and human["points"] == 21
    assert [r["name"] for r in human["per_image"]] == [f"demodata_{k}" for k in range(6)]
    assert all(math.isfinite(r["nme"]) and math.isfinite(r["baseline_nme"]) for r in human["per_image"])
    # the same crops as the detector-labelled rows, other labels: close, not equal
    detector = stn["demodata_detector"]
    assert detector["images"] == 6 and human["nme"] != detector["nme"]
    assert abs(human["baseline_nme"] - detector["baseline_nme"]) < 0.1
    assert any("human-labelled demodata" in line for line in evaluated["lines"])


@needs_mediapipe
def test_sheet_has_a_row_per_photo(evaluated):
    with Image.open(evaluated["root"] / "sheet.png") as sheet:
        width, height = sheet.size
    assert width == 2 * real_photos.TILE + 4  # the STN crop and its flattened texture
    rows = len(_expected_photos())
    assert rows * real_photos.TILE <= height <= rows * (real_photos.TILE + 40)


@needs_mediapipe
def test_missing_demodata_is_left_out_and_said(tmp_path):
    lines = []
    results = real_photos.run(demodata=tmp_path / "nope.mat", workdir=tmp_path / "work", log=lines.append)
    assert [p["name"] for p in results["photos"]] == ["astronaut", "grace_hopper"]
    assert results["demodata"] is None and any("nope.mat not found" in line for line in lines)
    assert not list((tmp_path / "work" / "photos").glob(f"*{real_photos.HUMAN_SUFFIX}"))


def test_subset_means():
    report = {"per_image": [{"name": "/x/demodata_0.png", "nme": 0.2, "baseline_nme": 0.4},
                            {"name": "/x/demodata_1.png", "nme": None, "baseline_nme": None},
                            {"name": "/x/astronaut.png", "nme": 0.9, "baseline_nme": 0.1}]}
    assert real_photos.subset_means(report) == {"nme": 0.2, "baseline_nme": 0.4, "ratio": 0.5, "images": 1}
    assert real_photos.subset_means(report, "grace") is None


@needs_mediapipe
def test_photos_folder_adds_every_face_of_each_photo(tmp_path):
    """``--photos``: a group photo gives one photo (and side file) per face, the small ones too; an
    unreadable file and a face under MIN_FACE px are left out and said."""
    astronaut = pytest.importorskip("skimage.data").astronaut()
    folder = tmp_path / "mine"
    folder.mkdir()
    copy = np.asarray(Image.fromarray(astronaut[0:350, 60:410]).resize((400, 400), Image.BILINEAR))
    group = np.full((880, 1280, 3), 90, np.uint8)
    corners = [(0, 0), (480, 420), (0, 880)]
    for top, left in corners:
        group[top:top + 400, left:left + 400] = copy
    Image.fromarray(group).save(folder / "group photo.png")
    Image.fromarray(np.asarray(Image.fromarray(astronaut).resize((160, 160)))).save(folder / "small.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    Image.fromarray(copy).save(folder / "cut.jpg")
    (folder / "cut.jpg").write_bytes((folder / "cut.jpg").read_bytes()[:3000])  # a header, half the pixels
    lines = []
    extra = real_photos.load_folder_photos(folder, log=lines.append)  # headers only
    assert sorted(extra) == ["photos_cut", "photos_group_photo", "photos_small"]
    assert any("broken.jpg" in line and "left out" in line for line in lines)
    labels = real_photos.assemble_folder(tmp_path / "work", None, extra=extra, log=lines.append)
    faces = sorted(name for name in labels if name.startswith("photos_"))
    assert faces == ["photos_group_photo_0", "photos_group_photo_1", "photos_group_photo_2"]
    assert any(line.startswith("photos_small: 1 face(s) under 64 px") for line in lines)
    assert any("cut.jpg" in line and "left out" in line for line in lines)  # failed to decode
    lefts = []
    for name in faces:
        points = np.loadtxt(tmp_path / "work" / f"{name}.txt")
        with Image.open(tmp_path / "work" / f"{name}.png") as image:
            assert image.size == (1280, 880)
        lefts.append(points[:, 0].min())
    # one face per copy: each copy's face starts ~135 px right of the copy's left edge
    assert sorted(round((x - 135) / 10) * 10 for x in lefts) == pytest.approx([0, 420, 880], abs=30)


def test_photo_subsets_and_lines():
    report = {"per_image": [{"name": "/x/photos_t1_0.png", "nme": 0.2, "baseline_nme": 0.4},
                            {"name": "/x/photos_t1_1.png", "nme": 0.1, "baseline_nme": 0.4},
                            {"name": "/x/astronaut.png", "nme": 0.9, "baseline_nme": 0.1}]}
    real_photos._photo_subsets(report)
    assert report["folder_photos"] == pytest.approx({"nme": 0.15, "baseline_nme": 0.4, "ratio": 0.375, "images": 2})
    assert report["offline_photos"]["nme"] == pytest.approx(0.9) and report["offline_photos"]["images"] == 1
    lines = real_photos._photo_lines(report, "mean-pose", "mine")
    assert lines[1].startswith("  --photos mine (detector labels): mean NME 0.150 vs mean-pose baseline 0.400 "
                               "(ratio 0.38) on 2 photos; target ratio <= 0.5: met")
    without = {"per_image": report["per_image"][2:]}
    real_photos._photo_subsets(without)
    assert without["folder_photos"] is None and real_photos._photo_lines(without, "mean-pose", None) == []


def test_deca_wiring(tmp_path, monkeypatch):
    """``--deca`` builds the DECA crop of the folder and hands its dataset to evaluate_deca; the
    report lands in the JSON with its ratio line (the tiny DECA run itself takes minutes)."""
    run_dir = tmp_path / "deca"
    (run_dir / "pretrain" / "checkpoints" / "3").mkdir(parents=True)
    calls = []

    def fake_evaluate(loaded, run, version_dir, data_dir):
        calls.append((loaded, run, version_dir, data_dir))
        report = {"nme": 0.1, "baseline_nme": 0.4, "images": 1, "demodata_detector": None,
                  "per_image": [{"name": "astronaut.png", "nme": 0.1, "baseline_nme": 0.4}]}
        return real_photos._with_ratio(report), {"astronaut": [np.zeros((8, 8, 3), np.uint8)]}

    monkeypatch.setattr(real_photos, "evaluate_deca", fake_evaluate)
    monkeypatch.setitem(real_photos.LOADERS, "deca", lambda path: f"loaded {path}")
    monkeypatch.setattr(real_photos, "load_photos", lambda demodata: {"astronaut": np.zeros((64, 64, 3), np.uint8)})
    monkeypatch.setattr(real_photos, "_detect", lambda images, log: (
        {"astronaut": np.stack(np.meshgrid(np.linspace(20, 44, 17), np.linspace(20, 44, 4)), -1).reshape(-1, 2)},
        "mediapipe"))
    out = tmp_path / "out.json"
    assert real_photos.main(["--deca", str(run_dir), "--workdir", str(tmp_path / "work"), "--json", str(out),
                             "--demodata", str(tmp_path / "none.mat"), "--sheet", str(tmp_path / "s.png")]) == 0
    assert len(calls) == 1 and calls[0][:2] == (f"loaded {run_dir}", run_dir)
    assert "jface_photos/deca-photos-" in str(calls[0][2])
    saved = json.loads(out.read_text())
    assert saved["deca"]["ratio"] == pytest.approx(0.25) and saved["deca"]["target_met"] is True
    assert saved["deca"]["build"]["examples"] == 1 and "stn" not in saved
    with Image.open(tmp_path / "s.png") as sheet:
        assert sheet.size == (8, 8)


def test_bad_input_is_one_line(tmp_path, capsys):
    stn_like, deca_like = tmp_path / "stn", tmp_path / "deca"
    (stn_like / "checkpoints" / "6").mkdir(parents=True)
    (deca_like / "coarse" / "checkpoints" / "2").mkdir(parents=True)
    cases = [
        (["--stn", str(tmp_path / "missing")], ["--stn", "missing", "no such folder"]),
        (["--stn", str(deca_like)], ["a train.deca run", "pass it as --deca"]),
        (["--deca", str(stn_like)], ["a train.stn run", "pass it as --stn"]),
        (["--stn", str(stn_like), "--sheet", str(real_photos.REPO / "sheet.png")],
         ["--sheet", "inside the repository"]),
        ([], ["expected --stn RUN and/or --deca RUN"]),
        # a run folder that cannot be loaded fails before the photo folder is written
        (["--deca", str(deca_like), "--workdir", str(tmp_path / "work")], ["coarse"]),
        (["--stn", str(stn_like), "--workdir", str(tmp_path / "work")], [str(stn_like)]),
        (["--stn", str(stn_like), "--shet", "x.png"], ["did you mean --sheet"]),
        (["--stn", str(stn_like), "--photos", str(tmp_path / "nope")], ["--photos", "nope", "no such folder"]),
    ]
    for argv, names in cases:
        assert _status(argv) == 2, argv
        _one_line(capsys.readouterr().err, *names)
    assert not (real_photos.REPO / "sheet.png").exists() and not (tmp_path / "work").exists()

