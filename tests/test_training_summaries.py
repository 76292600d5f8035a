"""Honest summaries and no silent minute: every held-out metric beside its baseline with a verdict
(better / worse / within noise, noise = 2 standard errors of the mean per-image difference), a stage
that made a metric worse says so, and a finished run is recognised from its folder before any data is
made (it prints its saved metrics, once, with no progress bar). The tiny runs of
tests/test_train_stn.py and tests/test_train_deca.py check the same lines on real runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from jface.data import synthetic_deca, synthetic_stn
from jface.training import deca as deca_training
from jface.training import runs
from jface.training import stn as stn_training
from jface.training.metrics import NOISE_STANDARD_ERRORS, compare, verdict_text
from train import deca as train_deca
from train import stn as train_stn


def test_compare_is_a_paired_test_of_per_image_errors():
    rng = np.random.default_rng(0)
    baseline = rng.uniform(1.0, 2.0, 100)
    assert compare(baseline - 0.1, baseline)["verdict"] == "better"
    assert compare(baseline + 0.1, baseline)["verdict"] == "worse"
    noisy = baseline + rng.normal(0.0, 0.5, 100)  # a mean shift well inside the image-to-image spread
    judged = compare(noisy, baseline)
    diff = noisy - baseline
    assert judged["noise"] == pytest.approx(NOISE_STANDARD_ERRORS * diff.std(ddof=1) / np.sqrt(100))
    assert judged["difference"] == pytest.approx(diff.mean()) and abs(judged["difference"]) < judged["noise"]
    assert judged["verdict"] == "within noise"
    # a paired test: a small shift on every image is significant although the images spread widely
    assert compare(baseline * 10 - 0.01, baseline * 10)["verdict"] == "better"
    # None / NaN pairs are left out; one image cannot be judged; no pair is n/a
    assert compare([1.0, None, 3.0], [2.0, 1.0, np.nan])["images"] == 1
    assert compare([1.0], [2.0])["verdict"] == "within noise" and compare([1.0], [2.0])["noise"] is None
    assert compare([None], [1.0])["verdict"] == "n/a"
    assert verdict_text(compare(baseline + 0.1, baseline)).startswith("worse (+0.1000 ± ")
    assert verdict_text(compare(baseline + rng.normal(0, 0.05, 100), baseline)).endswith(")")
    assert verdict_text(compare(baseline - 1e-3 + rng.normal(0, 1e-6, 100), baseline)).startswith(
        "better (-0.0010 ± 1.9e-07)")  # a noise below 0.0001 keeps 2 significant digits
    with pytest.raises(ValueError, match="same images"):
        compare([1.0, 2.0], [1.0])


def _stn_metrics(model_shape_mm):
    """A held_out_metrics result: the model better on NME, within noise on pose, as given on shape."""
    rng = np.random.default_rng(1)
    base = {"nme": rng.uniform(0.2, 0.3, 40), "pose_deg": rng.uniform(10, 20, 40), "shape_mm": np.full(40, 5.3)}
    model = {"nme": base["nme"] * 0.5, "pose_deg": base["pose_deg"] + rng.normal(0, 3, 40),
             "shape_mm": np.asarray(model_shape_mm)}
    return {"model": {k: float(np.mean(v)) for k, v in model.items()},
            "baseline": {k: float(np.mean(v)) for k, v in base.items()}, "images": 40,
            "per_image_errors": {"model": {k: v.tolist() for k, v in model.items()},
                                 "baseline": {k: v.tolist() for k, v in base.items()}}}


def test_stn_table_prints_each_metric_beside_its_baseline_with_a_verdict():
    rng = np.random.default_rng(2)
    text = stn_training.format_metrics(_stn_metrics(6.8 + rng.normal(0, 0.3, 40)))
    rows = {line.split()[0]: line for line in text.splitlines()[2:5]}
    assert "better" in rows["landmark"] and "within noise" in rows["pose"]
    assert "worse" in rows["shape"] and "6.8" in rows["shape"] and "5.30" in rows["shape"]
    assert "2 standard errors" in text
    # metrics saved before per-image errors existed still print, without a verdict
    old = {k: v for k, v in _stn_metrics(np.full(40, 5.0)).items() if k != "per_image_errors"}
    assert "n/a (no per-image errors saved)" in stn_training.format_metrics(old)


def _deca_metrics(nme, vertex_mm, base_nme):
    return {"images": len(nme), "model": {"nme": float(np.mean(nme)), "vertex_mm": float(np.mean(vertex_mm))},
            "baseline": {"nme": float(np.mean(base_nme)), "vertex_mm": 9.0},
            "per_image_errors": {"model": {"nme": list(nme), "vertex_mm": list(vertex_mm)},
                                 "baseline": {"nme": list(base_nme), "vertex_mm": [9.0] * len(nme)}}}


def test_deca_says_when_a_later_stage_made_a_metric_worse():
    rng = np.random.default_rng(3)
    base = rng.uniform(0.15, 0.25, 32)
    pretrain = _deca_metrics(base * 0.45, rng.uniform(2, 3, 32), base)
    final = _deca_metrics(base * 0.55, pretrain["per_image_errors"]["model"]["vertex_mm"], base)
    lines = deca_training.compare_stages(pretrain, final, "after pretraining", "after all stages")
    nme_line = next(line for line in lines if line.startswith("landmark NME"))
    assert "worse" in nme_line and "after pretraining" in nme_line
    assert nme_line.endswith("-- the later stages made the landmark NME WORSE")
    vertex_line = next(line for line in lines if line.startswith("vertex error"))
    assert "within noise" in vertex_line and "WORSE" not in vertex_line
    table = deca_training.format_metrics(final)
    assert "better" in table.splitlines()[2] and "mean face" in table
    saved = deca_training.format_saved_metrics({"pretrain": pretrain, "final": final})
    assert saved[0].startswith("after pretrain: ") and any("WORSE" in line for line in saved)


def test_landmark_report_line_has_a_verdict():
    rows = [{"index": i, "nme": 0.1 + 0.001 * i, "baseline_nme": 0.3} for i in range(10)]
    report = {"nme": 0.105, "baseline_nme": 0.3, "images": 10, "images_scored": 10, "per_image": rows}
    line = runs.format_landmark_report(report, "photos/", baseline="mean-pose")
    assert "\n" not in line and "better (-0.1955" in line and "mean-pose baseline 0.3000" in line


# --- a finished run is recognised before any data work ---------------------------------------------

def _no_data(*args, **kwargs):
    raise AssertionError("a finished run must not make data")


@pytest.fixture()
def no_data(monkeypatch):
    monkeypatch.setenv("JFACE_COMPILATION_CACHE", "0")
    for module, name in ((synthetic_stn, "generate"), (synthetic_deca, "generate_deca"),
                         (synthetic_deca, "iter_deca"), (stn_training, "load_model"),
                         (deca_training, "load_model")):
        monkeypatch.setattr(module, name, _no_data)


def _finished_steps(folder, step):
    (folder / str(step) / "state").mkdir(parents=True)  # what runs.newest_step reads: a step with its state


def test_finished_stn_run_prints_its_saved_metrics_without_data(tmp_path, capsys, no_data):
    workdir = tmp_path / "run"
    _finished_steps(workdir / "checkpoints", 6)
    (workdir / "checkpoints" / "9.orbax-checkpoint-tmp-1").mkdir()  # a half-written step does not count
    rng = np.random.default_rng(4)
    runs.write_metrics(workdir, {"step": 6, "final": _stn_metrics(6.8 + rng.normal(0, 0.3, 40))})
    argv = ["--preset", "tiny", "--workdir", str(workdir)]
    assert train_stn.main(argv) == 0
    out, err = capsys.readouterr()
    assert "is already finished (step 6 of 6)" in out and out.count("held-out metrics on 40") == 1
    assert "worse" in out and "stn:" not in err  # no progress bar


def test_unfinished_stn_run_is_not_reported_finished(tmp_path):
    workdir = tmp_path / "run"
    _finished_steps(workdir / "checkpoints", 4)
    config = train_stn.preset("tiny").replace(workdir=str(workdir))
    assert stn_training.finished_step(config) is None
    assert stn_training.finished_step(config.replace(steps=4)) == 4


def test_finished_deca_run_prints_metrics_and_the_stage_verdict_without_data(tmp_path, capsys, no_data):
    workdir = tmp_path / "deca"
    config = train_deca.preset("tiny")
    for stage in deca_training.STAGES:
        _finished_steps(workdir / stage / "checkpoints", config.steps(stage))
    rng = np.random.default_rng(5)
    base = rng.uniform(0.15, 0.25, 16)
    pretrain = _deca_metrics(base * 0.45, rng.uniform(2, 3, 16), base)
    final = _deca_metrics(base * 0.6, pretrain["per_image_errors"]["model"]["vertex_mm"], base)
    (workdir / "metrics.json").write_text(json.dumps({"pretrain": pretrain, "final": final}))
    assert train_deca.main(["--preset", "tiny", "--workdir", str(workdir)]) == 0
    out, err = capsys.readouterr()
    assert "is already finished (pretrain step 3 of 3, coarse step 2 of 2, detail step 2 of 2)" in out
    assert "after pretrain: held-out metrics" in out and "WORSE" in out and "pretrain:" not in err
    # one stage short: not finished
    assert deca_training.finished_steps(config.replace(workdir=str(workdir), detail_steps=5)) is None
