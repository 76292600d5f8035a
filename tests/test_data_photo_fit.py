"""``python -m jface.data build photos FOLDER --fit``: FLAME codes fitted by ``jface.fit.fit_flame``
stored with every face as pseudo-labels, exactly the fit's output, read back by the sources (which
prefer the fitted build) and by ``train.deca``'s data preparation (code whitening from them)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_data_sources import _photo

from jface.arrays import floats_to_float32
from jface.data.__main__ import main as data_main
from jface.data.photos import FIT_FIELDS, REPORT_FILE
from jface.data.sources import open_source
from jface.deca.stages import code_statistics
from jface.fit import FitConfig, fit_flame
from jface.models import default_flame_model
from jface.training import deca as deca_training
from train import deca as train_deca

STEPS, RENDER, BATCH = (2, 1), 32, 4


def test_fitted_codes_are_stored_and_read_as_labels(tmp_path, capsys):
    rng = np.random.default_rng(3)
    folder = tmp_path / "photos"
    for name in ("ann/a0.png", "ann/a1.png", "bob/b0.png", "bob/b1.png"):
        _photo(folder / name, rng, size=(48, 44), side=".npy")
    data_dir = tmp_path / "tfds"
    # a plain build first: the fitted one is built beside it and preferred from then on
    assert data_main(["build", "photos", str(folder), "--task", "deca", "--data_dir", str(data_dir)]) == 0
    assert data_main(["build", "photos", str(folder), "--task", "deca", "--data_dir", str(data_dir), "--fit",
                      "--fit_steps", f"{STEPS[0]},{STEPS[1]}", "--fit_render_size", str(RENDER),
                      "--fit_batch", str(BATCH)]) == 0
    out = capsys.readouterr().out
    assert "FLAME codes fitted to 4 faces (2 + 1 steps, model 'default')" in out

    source = open_source(str(folder), task="deca", data_dir=data_dir, build=False, log=lambda *_: None)
    assert "-fit" in source.directory.parent.name
    report = json.loads((source.directory / REPORT_FILE).read_text())
    assert report["fitted"] == 4 and report["fit"]["landmark_steps"] == STEPS[0]
    records = [source[i] for i in range(len(source))]
    shapes = {"shape": (100,), "albedo": (50,), "expression": (50,), "pose": (6,), "cam": (3,), "light": (9, 3)}
    for name, shape in shapes.items():
        assert records[0][name].shape == shape and records[0][name].dtype == np.float32

    # the stored codes are fit_flame's output on the stored crops, landmarks and masks
    images = np.stack([r["images"] for r in records]).astype(np.float32) / 255.0
    landmarks = np.stack([r["landmarks68"] for r in records])
    masks = np.stack([r["face_mask"] for r in records]).astype(np.float32)
    config = FitConfig(landmark_steps=STEPS[0], photometric_steps=STEPS[1], render_size=RENDER)
    model = floats_to_float32(default_flame_model())
    codes, history = fit_flame(model, images, landmarks, config=config, masks=masks)
    for name, key in FIT_FIELDS.items():
        np.testing.assert_allclose(np.stack([r[name] for r in records]), codes[key], rtol=1e-5, atol=1e-6,
                                   err_msg=name)
    np.testing.assert_allclose([r["fit_loss"] for r in records], history["photometric"]["loss"][-1], rtol=1e-5)
    assert not np.allclose(codes["cam"][:, 1:], 0.0)  # the fit moved the camera onto the landmarks

    # as label columns: train.deca's code whitening reads them instead of its generated prior
    columns = {name: source.column(name) for name in FIT_FIELDS}
    np.testing.assert_array_equal(columns["shape"], np.stack([r["shape"] for r in records]))
    logs = []
    deca_config = train_deca.preset("tiny").replace(data=str(folder), data_dir=str(data_dir), eval_at_end=False)
    import jface.training.deca as module

    original = module._log
    module._log = logs.append
    try:
        run_data = deca_training.prepare_data(deca_config)
    finally:
        module._log = original
    assert not any("no code labels" in line for line in logs), logs
    expected_mean, expected_std = code_statistics(columns)
    np.testing.assert_allclose(run_data.code_stats[0], expected_mean, rtol=1e-6)
    np.testing.assert_allclose(run_data.code_stats[1], expected_std, rtol=1e-6)


def test_fit_settings_are_checked():
    from jface.data.photos import PhotoFit

    with pytest.raises(ValueError, match="fit.batch"):
        PhotoFit(batch=0)
    with pytest.raises(ValueError, match="fit.landmark_steps"):
        PhotoFit(landmark_steps=-1)
    assert PhotoFit().fingerprint() != PhotoFit(landmark_steps=10).fingerprint()
