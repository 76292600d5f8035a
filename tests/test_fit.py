"""jface.fit: the batched analysis-by-synthesis fits recover known codes from jface's own renders.

FLAME: three 48 x 48 photos rendered by :func:`jface.deca.decode` from known codes over a grey
background, their exact 68 landmarks; the fit starts from the mean face. 3DMM-STN: the procedural
toy model's renders (:func:`jface.stn.demo.generate_demo_data`).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jface.deca import decode
from jface.fit import (
    FitConfig,
    StnFitConfig,
    crop_pixels_to_ndc,
    evaluate,
    fit_flame,
    fit_stn,
    landmark_hull_mask,
    mean_codes,
    ndc_to_crop_pixels,
)
from jface.models import default_flame_model
from jface.stn.demo import generate_demo_data
from jface.stn.fit import landmark_objective
from jface.stn.toy import toy_grid_model

SIZE = 48
CONFIG = FitConfig(landmark_steps=60, photometric_steps=40, render_size=SIZE)


@pytest.fixture(scope="module")
def model():
    return default_flame_model()


def _known_codes(batch, seed=0):
    rng = np.random.default_rng(seed)
    pose = np.zeros((batch, 6))
    pose[:, :3] = rng.uniform(-0.3, 0.3, (batch, 3)) * [0.5, 1.0, 0.3]
    pose[:, 3] = rng.uniform(0.0, 0.15, batch)
    light = np.zeros((batch, 9, 3))
    light[:, 0] = rng.uniform(2.5, 4.0, (batch, 3))
    light[:, 1:4] = 0.5 * rng.normal(size=(batch, 3, 3))
    codes = {"shape": 0.8 * rng.normal(size=(batch, 100)), "exp": 0.5 * rng.normal(size=(batch, 50)), "pose": pose,
             "cam": np.stack([rng.uniform(8, 10, batch), rng.uniform(-0.02, 0.02, batch),
                              rng.uniform(-0.02, 0.02, batch)], 1),
             "tex": rng.normal(size=(batch, 50)), "light": light}
    return {k: np.asarray(v, np.float32) for k, v in codes.items()}


@pytest.fixture(scope="module")
def photos(model):
    codes = _known_codes(3)
    out = decode({}, model, {k: jnp.asarray(v) for k, v in codes.items()}, image_hw=(SIZE, SIZE), use_detail=False)
    alpha = np.asarray(out["alpha_images"])
    images = np.asarray(out["rendered_images"]) * alpha + 0.3 * (1.0 - alpha)
    return images.astype(np.float32), np.asarray(out["landmarks2d"], np.float32)


@pytest.fixture(scope="module")
def start(model, photos):
    """The mean start (as ``init=None`` has it) and a detail code that must pass through."""
    init = {k: np.asarray(v) for k, v in mean_codes(model, photos[1]).items()}
    init["detail"] = np.ones((3, 128), np.float32)
    return init


@pytest.fixture(scope="module")
def batch_fit(model, photos, start):
    images, landmarks = photos
    return fit_flame(model, images, landmarks, start, config=CONFIG)


def test_landmark_stage_beats_the_mean_face(model, photos, batch_fit):
    images, landmarks = photos
    codes, history = batch_fit
    before = evaluate(model, mean_codes(model, landmarks), images, landmarks, config=CONFIG)
    after = evaluate(model, codes, images, landmarks, config=CONFIG)
    assert np.all(before["landmark_error_px"] > 2.0)
    assert np.all(after["landmark_error_px"] < 0.25 * before["landmark_error_px"]), (before, after)
    assert np.all(after["landmark_nme"] < 0.25 * before["landmark_nme"])
    lmk = history["landmark"]["landmark"]
    assert lmk.shape == (CONFIG.landmark_steps + 1, 3)
    assert np.all(lmk[-1] < 0.25 * lmk[0])


def test_photometric_stage_halves_the_error_of_mean_albedo_and_light(model, photos, batch_fit):
    images, landmarks = photos
    codes, history = batch_fit
    error = history["photometric"]["photometric_error"]
    assert error.shape == (CONFIG.photometric_steps + 1, 3)
    # step 0: the landmark stage's geometry with the mean albedo and the white ambient light
    assert np.all(error[-1] < 0.5 * error[0]), error[[0, -1]]
    after = evaluate(model, codes, images, landmarks, config=CONFIG)
    np.testing.assert_allclose(after["photometric_error"], error[-1], rtol=1e-4, atol=1e-5)
    assert np.all(after["mask_pixels"] > 100)
    assert codes["light"].shape == (3, 9, 3) and codes["tex"].shape == (3, 50)


def test_batch_equals_per_item_fits(model, photos, batch_fit, start):
    """Item 1 fitted alone from the same start gives the batch's item 1. Not bit-equal: XLA orders
    the B = 1 and B = 3 programs' reductions differently, and Adam's normalised steps carry such
    last-bit differences into the weakly determined shape components (~1e-3 after 100 steps)."""
    images, landmarks = photos
    codes, history = batch_fit
    one = {k: v[1:2] for k, v in start.items()}
    single, single_history = fit_flame(model, images[1:2], landmarks[1:2], one, config=CONFIG)
    for name in ("shape", "exp", "pose", "cam", "tex", "light"):
        np.testing.assert_allclose(single[name][0], codes[name][1], rtol=0, atol=2e-2, err_msg=name)
    for stage in ("landmark", "photometric"):
        np.testing.assert_allclose(single_history[stage]["loss"][:, 0], history[stage]["loss"][:, 1],
                                   rtol=2e-2, atol=1e-5, err_msg=stage)


def test_init_codes_pass_through(batch_fit, start):
    codes, _ = batch_fit
    np.testing.assert_array_equal(codes["detail"], start["detail"])
    assert not np.allclose(codes["cam"], start["cam"])


def test_bad_inputs_name_the_argument(model, photos):
    images, landmarks = photos
    with pytest.raises(ValueError, match="images"):
        fit_flame(model, images[..., :2], landmarks, config=CONFIG)
    with pytest.raises(ValueError, match="landmarks"):
        fit_flame(model, images, landmarks[:, :60], config=CONFIG)
    with pytest.raises(ValueError, match="landmarks"):
        fit_flame(model, images, landmarks[:2], config=CONFIG)
    bad = landmarks.copy()
    bad[0, 5, 0] = np.nan
    with pytest.raises(ValueError, match="landmarks.*NaN"):
        fit_flame(model, images, bad, config=CONFIG)
    with pytest.raises(ValueError, match="masks"):
        fit_flame(model, images, landmarks, config=CONFIG, masks=np.ones((3, 10, 10)))
    with pytest.raises(ValueError, match=r"init\['shape'\]"):
        fit_flame(model, images, landmarks, {"shape": np.zeros((3, 7))}, CONFIG)
    with pytest.raises(ValueError, match="config"):
        fit_flame(model, images, landmarks, config={"landmark_steps": 3})
    with pytest.raises(ValueError, match="landmark_steps"):
        FitConfig(landmark_steps=-1)


def test_pixel_ndc_round_trip_and_hull_mask():
    pixels = np.random.default_rng(0).uniform(0, 224, (2, 68, 2))
    np.testing.assert_allclose(ndc_to_crop_pixels(crop_pixels_to_ndc(pixels)), pixels, atol=1e-12)
    np.testing.assert_allclose(crop_pixels_to_ndc(np.array([[0.0, 112.0]])), [[-1.0, 0.0]])
    # a face outline on a circle of radius 0.5 NDC: the mask is that disc
    angles = np.concatenate([np.linspace(np.pi, 2 * np.pi, 17), np.linspace(0.0, np.pi, 12)[1:-1]])
    points = np.zeros((68, 2))
    points[list(range(17)) + list(range(26, 16, -1))] = 0.5 * np.stack([np.cos(angles), -np.sin(angles)], 1)
    mask = np.asarray(landmark_hull_mask(jnp.asarray(points), 64))
    assert mask[32, 32] == 1 and mask[0, 0] == 0 and mask[32, 2] == 0
    assert abs(mask.mean() - np.pi * 0.25 / 4) < 0.02


def test_fit_stn_recovers_the_landmarks_and_flattens():
    stn_model = toy_grid_model(16)
    images, labels, _ = generate_demo_data(stn_model, 3, seed=1)
    config = StnFitConfig(steps=150)
    theta, texture, history = fit_stn(stn_model, images, labels, config=config)
    assert history["loss"].shape == (151, 3)
    assert np.all(history["loss"][-1] < 0.1 * history["loss"][0])
    per_point = np.asarray(landmark_objective(stn_model, jnp.asarray(theta), jnp.asarray(labels))) / (3 * 21)
    assert per_point < 2.0  # squared pixels per point (the landmark loss sums squared distances)
    assert texture["texture"].shape == (3, 16, 16, 3) and texture["mask"].mean() > 0.3
    single, _, _ = fit_stn(stn_model, images[2:], labels[2:], config=config)
    np.testing.assert_allclose(single[0], theta[2], rtol=1e-3, atol=1e-3)
    # a point missing from every photo (the ears of iBUG-68) is left out; missing in one only is an error
    holes = labels.copy()
    holes[:, 12] = np.nan
    fit_stn(stn_model, images, holes, config=StnFitConfig(steps=2))
    holes[0, 3] = np.nan
    with pytest.raises(ValueError, match="labels"):
        fit_stn(stn_model, images, holes, config=config)
    with pytest.raises(ValueError, match="init"):
        fit_stn(stn_model, images, labels, init=np.zeros((3, 4)), config=config)
