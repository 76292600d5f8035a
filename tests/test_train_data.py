"""train.stn / train.deca with ``--data`` / ``--eval_data``: real photographs in identity folders
(built in a temporary directory, never in the repository), ``--eval ... --json``, and bad sources
(one-line error, exit status 2, an existing run directory left untouched)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from test_data_sources import _toy

from jface.training import stn as stn_training
from jface.training.distributed import enable_compilation_cache
from train import deca as train_deca
from train import stn as train_stn


@pytest.fixture()
def float32_session():
    """The trainers as a user runs them: x64 off (the suite turns it on in conftest.py; under x64 the
    generator's renders and the train steps compile as float64 programs, several times slower)."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", False)
    yield
    jax.config.update("jax_enable_x64", previous)


def _listing(root: Path) -> dict:
    """Every path under ``root`` (and ``root``) with its mtime."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in [root, *sorted(root.rglob("*"))]}


@pytest.fixture()
def existing_run(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "checkpoints" / "note.txt").write_text("an earlier run")
    return run


def _bad_start(main, argv, run, capsys, match):
    before = _listing(run)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err
    assert _listing(run) == before


TRAINERS = [(train_stn.main, ["--preset", "tiny"]), (train_deca.main, ["--preset", "tiny"])]


@pytest.mark.parametrize("main,preset", TRAINERS, ids=["stn", "deca"])
def test_missing_data_is_one_line_exit_2(tmp_path, existing_run, capsys, main, preset, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    missing = tmp_path / "no_such_folder"
    _bad_start(main, preset + ["--data", str(missing), "--workdir", str(existing_run)], existing_run, capsys,
               str(missing))


@pytest.mark.parametrize("main,preset", TRAINERS, ids=["stn", "deca"])
def test_empty_folder_is_one_line_exit_2(tmp_path, existing_run, capsys, main, preset, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    empty = tmp_path / "empty"
    empty.mkdir()
    _bad_start(main, preset + ["--data", str(empty), "--workdir", str(existing_run)], existing_run, capsys,
               str(empty))


def test_dataset_missing_fields_is_one_line_exit_2(tmp_path, existing_run, capsys):
    # DECA's training needs a face mask for the photometric loss; this dataset has none
    built = _toy(tmp_path / "tfds", "nomask", mask=False, size=32)
    _bad_start(train_deca.main, ["--preset", "tiny", "--data", str(built), "--workdir", str(existing_run),
                                 "--data_dir", str(tmp_path / "tfds")], existing_run, capsys, "face_mask")
    # the STN's labels with the landmark set ibug68 need 68 points under a known key
    odd = _toy(tmp_path / "tfds", "oddkey", lm68_key="points", size=32)
    _bad_start(train_stn.main, ["--preset", "tiny", "--data", str(odd), "--workdir", str(existing_run)],
               existing_run, capsys, "labels")


# --- real photographs ------------------------------------------------------------------------------

def _photo_folder(realdata: Path, root: Path) -> Path:
    """The 6 photos of demodata.mat (two identity folders of 3) and scikit-image's astronaut."""
    import scipy.io as sio
    import skimage.data
    from PIL import Image

    images = sio.loadmat(str(realdata / "3dmmasstn" / "demodata.mat"))["Images"]  # (224, 224, 3, 6) 0-255
    for i in range(images.shape[-1]):
        folder = root / f"demo{i // 3}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(images[..., i], 0, 255).astype(np.uint8)).save(folder / f"photo{i}.png")
    (root / "astronaut").mkdir(parents=True, exist_ok=True)
    Image.fromarray(skimage.data.astronaut()).save(root / "astronaut" / "astronaut.png")
    return root


def _check_report(path: Path, count: int, points: int) -> None:
    report = json.loads(path.read_text())
    assert report["images"] == count and report["points"] == points
    assert len(report["per_image"]) == count
    assert report["images_scored"] >= 1
    for key in ("nme", "baseline_nme"):
        assert math.isfinite(report[key]) and report[key] > 0
    for row in report["per_image"]:
        assert {"index", "nme", "baseline_nme"} <= set(row)
        if row["nme"] is not None:
            assert math.isfinite(row["nme"]) and math.isfinite(row["baseline_nme"])


@pytest.mark.slow
def test_stn_trains_and_evaluates_on_real_photos(realdata, tmp_path, monkeypatch, float32_session):
    pytest.importorskip("mediapipe")
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    photos = _photo_folder(realdata, tmp_path / "photos")
    run = tmp_path / "stn_run"
    # the evaluation is --eval's below (an evaluation at the end of training would compile it twice)
    assert train_stn.main(["--preset", "tiny", "--data", str(photos), "--eval_at_end", "false",
                           "--batch_size", "4", "--steps", "2", "--workdir", str(run)]) == 0
    assert (run / "checkpoints").is_dir()
    out = tmp_path / "stn_eval.json"
    assert train_stn.main(["--eval", str(run), "--eval_data", str(photos), "--json", str(out)]) == 0
    _check_report(out, 7, 21)
    assert json.loads(out.read_text())["step"] == 2


@pytest.mark.slow
def test_deca_trains_and_evaluates_on_real_photos(realdata, tmp_path, monkeypatch, float32_session):
    pytest.importorskip("mediapipe")
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    photos = _photo_folder(realdata, tmp_path / "photos")
    run = tmp_path / "deca_run"
    # the pretraining stage only: the coarse and detail steps take minutes to compile on a CPU
    assert train_deca.main(["--preset", "tiny", "--stage", "pretrain", "--data", str(photos),
                            "--eval_at_end", "false", "--pretrain_steps", "2", "--workdir", str(run)]) == 0
    out = tmp_path / "deca_eval.json"
    assert train_deca.main(["--eval", str(run), "--eval_data", str(photos), "--json", str(out)]) == 0
    _check_report(out, 7, 68)
    assert json.loads(out.read_text())["stage"] == "pretrain"


# --- generated data on disk gives the numbers of the in-memory path -------------------------------

class GeneratedOnDisk(tfds.core.GeneratorBasedBuilder):
    """``train.stn``'s generated training split (:func:`jface.training.stn.make_data`) as an
    ArrayRecord dataset, written in generation order (``disable_shuffling``)."""

    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, arrays: dict, **kwargs):
        self.arrays = arrays
        super().__init__(file_format="array_record", **kwargs)

    def _info(self):
        size = self.arrays["images"].shape[1]
        zlib = tfds.features.Encoding.ZLIB
        return tfds.core.DatasetInfo(builder=self, disable_shuffling=True, features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(size, size, 3), dtype=np.uint8, encoding=zlib),
            "landmarks21": tfds.features.Tensor(shape=(21, 3), dtype=np.float32),
            "theta": tfds.features.Tensor(shape=self.arrays["theta"].shape[1:], dtype=np.float32),
            "identity": tfds.features.Scalar(dtype=np.int64),
            "frame": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        a = self.arrays
        for i in range(len(a["images"])):
            yield i, {"image": a["images"][i], "landmarks21": a["labels"][i].astype(np.float32),
                      "theta": a["theta"][i].astype(np.float32), "identity": int(a["identity"][i]),
                      "frame": "3dmm-stn y-up pixel frame (x, y, vis)"}


@pytest.mark.slow
def test_generated_data_on_disk_trains_like_the_in_memory_path(tmp_path, monkeypatch, float32_session):
    config = train_stn.preset("tiny").replace(eval_at_end=True)
    model = stn_training.load_model(config)
    # each split is generated once (the generator is seeded, so a run would regenerate the same
    # arrays): the in-memory run trains on the very arrays written to disk
    generated, make_data = {}, stn_training.make_data

    def make_data_once(config, model, *, split, render_images=True):
        key = (split, render_images)
        if key not in generated:
            generated[key] = make_data(config, model, split=split, render_images=render_images)
        return generated[key]

    monkeypatch.setattr(stn_training, "make_data", make_data_once)
    # the two runs compile the same programs: the second reads them from the persistent cache
    # (as train.stn does by default) instead of compiling them again
    previous = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    enable_compilation_cache(tmp_path / "xla")
    arrays = stn_training.make_data(config, model, split="train")
    builder = GeneratedOnDisk(arrays=arrays, data_dir=str(tmp_path / "tfds"),
                              config=tfds.core.BuilderConfig(name="tiny"))
    tfds.disable_progress_bar()
    builder.download_and_prepare()
    try:
        memory = stn_training.train(config.replace(workdir=str(tmp_path / "memory")))
        disk = stn_training.train(config.replace(workdir=str(tmp_path / "disk"), data=str(builder.data_dir)))
    finally:
        jax.config.update("jax_compilation_cache_dir", previous[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", previous[1])
    assert disk["step"] == memory["step"] == config.steps
    for part in ("model", "baseline"):
        for key, value in memory["metrics"][part].items():
            assert disk["metrics"][part][key] == pytest.approx(value, rel=1e-5, abs=1e-7), (part, key)
