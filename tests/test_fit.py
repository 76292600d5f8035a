"""jface.fit: the batched analysis-by-synthesis fits recover known codes from jface's own renders.

FLAME: three 32 x 32 photos rendered from known codes over a grey background (by the same
compiled program as :func:`jface.fit.evaluate`), their exact 68 landmarks; the fit starts from the
mean face. Every FLAME fit here has batch 3 and one config, so the suite compiles the fit program
once (the per-item check fits a batch of three copies of one photo). 3DMM-STN: the procedural toy
model's renders (:func:`jface.stn.demo.generate_demo_data`).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jface.deca import decode_geometry_batch
from jface.fit import (
    FitConfig,
    StnFitConfig,
    crop_pixels_to_ndc,
    evaluate,
    fit_flame,
    fit_stn,
    landmark_hull_mask,
    landmarks_2d,
    mean_codes,
    ndc_to_crop_pixels,
)
from jface.models import default_flame_model
from jface.stn.demo import generate_demo_data
from jface.stn.fit import landmark_objective
from jface.stn.toy import toy_grid_model

SIZE = 32
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
    landmarks = np.asarray(landmarks_2d(model, codes), np.float32)
    blank = np.zeros((3, SIZE, SIZE, 3), np.float32)
    out = evaluate(model, codes, blank, landmarks, config=CONFIG)
    alpha = out["alpha_images"]
    images = out["rendered_images"] * alpha + 0.3 * (1.0 - alpha)
    return images.astype(np.float32), landmarks


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


def test_landmarks_2d_are_decodes(model, photos):
    codes = {k: jnp.asarray(v) for k, v in _known_codes(3).items()}
    np.testing.assert_allclose(photos[1], decode_geometry_batch(model, codes)["landmarks2d"], rtol=0, atol=1e-5)


def test_photometric_stage_halves_the_error_of_mean_albedo_and_light(model, photos, batch_fit):
    images, landmarks = photos
    codes, history = batch_fit
    error = history["photometric"]["photometric_error"]
    assert error.shape == (CONFIG.photometric_steps + 1, 3)
    # step 0: the landmark stage's geometry with the mean albedo and the white ambient light
    assert np.all(error[-1] < 0.5 * error[0]), error[[0, -1]]
    # coarse to fine: the photometric stage keeps the landmark stage's fit
    lmk_end = history["landmark"]["landmark_l2"][-1]
    np.testing.assert_allclose(history["photometric"]["landmark_l2"][0], lmk_end, rtol=1e-4)
    assert np.all(history["photometric"]["landmark_l2"][-1] <= 1.2 * lmk_end + 1e-4), (
        lmk_end, history["photometric"]["landmark_l2"][-1])
    after = evaluate(model, codes, images, landmarks, config=CONFIG)
    np.testing.assert_allclose(after["photometric_error"], error[-1], rtol=1e-4, atol=1e-5)
    assert np.all(after["mask_pixels"] > 100)
    assert codes["light"].shape == (3, 9, 3) and codes["tex"].shape == (3, 50)


def test_batch_equals_per_item_fits(model, photos, batch_fit, start):
    """Item 1 fitted beside two copies of itself (instead of items 0 and 2) gives the batch's item
    1: no item sees another. Same batch size, so the same compiled program; not asserted
    bit-equal (Adam's normalised steps can carry last-bit differences into weakly determined
    shape components)."""
    images, landmarks = photos
    codes, history = batch_fit
    ones = [1, 1, 1]
    copies, copies_history = fit_flame(model, images[ones], landmarks[ones], {k: v[ones] for k, v in start.items()},
                                       config=CONFIG)
    for name in ("shape", "exp", "pose", "cam", "tex", "light"):
        for item in range(3):
            np.testing.assert_allclose(copies[name][item], codes[name][1], rtol=0, atol=2e-2, err_msg=name)
    for stage in ("landmark", "photometric"):
        np.testing.assert_allclose(copies_history[stage]["loss"][:, 0], history[stage]["loss"][:, 1],
                                   rtol=2e-2, atol=1e-5, err_msg=stage)


def test_a_stage_of_no_steps_is_skipped(model, photos, batch_fit):
    images, landmarks = photos
    landmark_only = FitConfig(landmark_steps=CONFIG.landmark_steps, photometric_steps=0, render_size=SIZE)
    codes, history = fit_flame(model, images, landmarks, config=landmark_only)
    assert history["photometric"] == {}
    assert history["landmark"]["loss"].shape == (CONFIG.landmark_steps + 1, 3)
    np.testing.assert_allclose(history["landmark"]["loss"], batch_fit[1]["landmark"]["loss"], rtol=1e-3, atol=1e-6)
    np.testing.assert_array_equal(codes["tex"], np.zeros((3, 50)))


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
    twos = [2, 2, 2]  # item 2 beside copies of itself: the same compiled program, the same fit
    copies, _, _ = fit_stn(stn_model, images[twos], labels[twos], config=config)
    np.testing.assert_allclose(copies, theta[twos], rtol=1e-3, atol=1e-3)
    # a point missing from every photo (the ears of iBUG-68) is left out; missing in one only is an error
    holes = labels.copy()
    holes[:, 12] = np.nan
    _, _, hole_history = fit_stn(stn_model, images, holes, config=config)
    assert np.all(hole_history["loss"][-1] < 0.1 * hole_history["loss"][0])
    holes[0, 3] = np.nan
    with pytest.raises(ValueError, match="labels"):
        fit_stn(stn_model, images, holes, config=config)
    with pytest.raises(ValueError, match="init"):
        fit_stn(stn_model, images, labels, init=np.zeros((3, 4)), config=config)
