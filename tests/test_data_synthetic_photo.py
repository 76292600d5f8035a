"""The photographic 3DMM-STN generator (``jface.data.synthetic_stn_render`` with ``jface.data.appearance``):
exact labels under the photograph crop framing, determinism, the appearance draws, background folders and
``train.stn``'s ``make_data``.

Compile cost is the budget: one tiny shape (the toy head, 32 px, chunk 2) is compiled once per module and
shared by every test here.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from jface.data import appearance, crops
from jface.data.synthetic_stn import project, toy_model
from jface.data.synthetic_stn_render import StnSynthConfig, crop_framing, generate_stn
from jface.training import stn as stn_training

SIZE, CHUNK = 32, 2
CONFIG = StnSynthConfig(chunk=CHUNK, yaw_deg=60.0)


@pytest.fixture(scope="module")
def toy():
    return toy_model(16, dtype=np.float32)


@pytest.fixture(scope="module")
def photos(toy):
    return generate_stn(toy, 1, 2, 5, SIZE, config=CONFIG)


def test_photo_images_have_exact_labels_and_are_deterministic(toy, photos):
    data = photos
    assert data["images"].shape == (2, SIZE, SIZE, 3) and data["images"].dtype == np.uint8
    assert data["face_mask"].shape == (2, SIZE, SIZE) and set(np.unique(data["face_mask"])) <= {0, 1}
    assert data["face_mask"].sum() > 20  # the face is in view
    assert data["images"].std() > 5  # not a flat colour
    # every visible label is the model's landmark vertex projected with the stored theta
    idx = np.asarray(toy.landmarks["aflw21"])
    for image in range(2):
        points, _, _ = project(toy, data["theta"][image])
        labels = data["landmarks21"][image]
        visible = labels[:, 2] > 0
        assert visible.sum() >= 8
        np.testing.assert_allclose(labels[visible, :2], np.asarray(points)[idx][visible], atol=1e-3)
    again = generate_stn(toy, 1, 2, 5, SIZE, config=CONFIG)
    for key in data:
        np.testing.assert_array_equal(data[key], again[key])
    # the draws without rendering are the same numbers
    draws = generate_stn(toy, 1, 2, 5, SIZE, config=CONFIG, render_images=False)
    np.testing.assert_array_equal(draws["theta"], data["theta"])
    assert "images" not in draws


def test_crop_framing_is_the_crop_rule():
    """Without jitter the landmark box lands where stn_crop puts a photo's: centred, 1.6 x its size."""
    rng = np.random.default_rng(0)
    theta = np.zeros((3, 8), np.float32)
    theta[:, 3:5] = rng.uniform(80, 140, (3, 2))
    theta[:, 5] = rng.uniform(-30, 10, 3)
    shape = rng.normal(0, 30, (12, 2))
    points = lambda th: (0.99 ** th[:, 5])[:, None, None] * shape[None] + th[:, None, 3:5]  # noqa: E731
    framed = crop_framing(theta, points(theta), 100, rng, scale_jitter=0.0, shift_jitter=0.0)
    for after in points(framed):
        pixels = np.stack([after[:, 0] - 1.0, 100 - after[:, 1]], -1)
        centre, old_size = crops.landmark_box(pixels)
        np.testing.assert_allclose(centre, [49.5, 49.5], atol=1e-3)
        assert abs(old_size * 1.6 - 99.0) < 99.0 * 0.02  # int() of the crop size
    jittered = crop_framing(theta, points(theta), 100, rng)
    assert not np.allclose(jittered, framed)


def test_appearance_draws_are_complete_and_bounded():
    rng = np.random.default_rng(3)
    look = appearance.sample_identity(rng)
    images = appearance.sample_images(rng, 4)
    assert look["key"].shape == (4,) and look["key"].dtype == np.uint32
    assert images["key"].shape == (4, 4) and images["light_dir"].shape == (4, 3)
    np.testing.assert_allclose(np.linalg.norm(images["light_dir"], axis=-1), 1.0, rtol=1e-5)
    for name in ("skin", "hair", "iris", "lip_colour", "clothes"):
        assert look[name].shape == (3,) and np.all(look[name] >= 0) and np.all(look[name] <= 1.2)
    # the share of glasses follows the config over many identities
    half = appearance.AppearanceConfig(glasses_prob=0.5)
    many = [appearance.sample_identity(rng, half)["glasses"] for _ in range(200)]
    assert 0.35 < np.mean(many) < 0.65


def test_background_folder(tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        appearance.load_backgrounds(tmp_path / "missing")
    with pytest.raises(ValueError, match="no image"):
        appearance.load_backgrounds(tmp_path)
    (tmp_path / "sub").mkdir()
    Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((50, 30, 3), np.uint8)).save(tmp_path / "sub" / "b.jpg")
    files = appearance.load_backgrounds(tmp_path)
    assert [f.name for f in files] == ["a.png", "b.jpg"]
    crops_ = appearance.background_crops(files, np.random.default_rng(0), 6, 16)
    assert crops_.shape == (6, 16, 16, 3) and crops_.dtype == np.float32
    values = np.unique(crops_)
    assert np.all(np.isclose(values[:, None], [0.0, 200 / 255], atol=1e-6).any(1))  # crops of the two flat images


def test_make_data_photo_generator(tmp_path, monkeypatch):
    """train.stn's make_data: the photo generator's images, labels of the landmark set, theta."""
    config = stn_training.Config(model="toy:16", image_size=SIZE, num_identities=1, images_per_identity=2,
                                 data_seed=5, yaw_deg=60.0, backgrounds="")
    model = stn_training.load_model(config)
    data = stn_training.make_data(config, model, split="train")
    assert data["images"].shape == (2, SIZE, SIZE, 3) and data["labels"].shape == (2, 21, 3)
    assert data["theta"].shape == (2, 16) and data["identity"].tolist() == [0, 0]
    labels_only = stn_training.make_data(config, model, split="train", render_images=False)
    np.testing.assert_array_equal(labels_only["theta"], data["theta"])
    # the trainer's chunk loop (with its progress bar) gives generate_stn's arrays, and the on-disk
    # cache (jface.data.generated_cache) gives them back unchanged
    direct = generate_stn(
        model, 1, 2, 5, SIZE, config=StnSynthConfig(
            n_shape=model.num_shape, n_expression=model.num_expression, yaw_deg=60.0, framing=config.framing,
            look=appearance.AppearanceConfig(backgrounds=""), chunk=2))
    np.testing.assert_array_equal(data["images"], direct["images"])
    np.testing.assert_array_equal(data["labels"], direct["landmarks21"])
    monkeypatch.setenv("JFACE_DATA_CACHE", str(tmp_path / "cache"))
    cached = stn_training.make_data(config, model, split="train")
    np.testing.assert_array_equal(cached["images"], data["images"])
    assert any((tmp_path / "cache").iterdir())
    with pytest.raises(ValueError, match="generator"):
        stn_training.make_data(config.replace(generator="paint"), model, split="train")


def test_face_stage_paints_only_the_covered_pixels(toy, monkeypatch):
    """The face stage paints the covered pixels gathered into a list, block by block: the colours
    of painting every pixel, and 0 off the mask (eagerly, with a stand-in texture: no compile)."""
    import jax

    from jface.data import synthetic_stn_render as render

    rng = np.random.default_rng(2)
    layout = appearance.face_layout(toy)
    look = appearance.sample_identity(rng)
    image_look = {k: v[0] for k, v in appearance.sample_images(rng, 1).items()}
    size = 12
    attrs = rng.normal(0, 1, (size, size, 11)).astype(np.float32)
    attrs[..., 0:3] *= 60.0  # mean-face positions (mm) around the features
    attrs[..., 3:5] = rng.uniform(0, 1, (size, size, 2))
    mask = (rng.uniform(size=(size, size)) < 0.4).astype(np.float32)
    light = np.zeros((9, 3), np.float32)
    light[0] = 0.8
    # a cheap stand-in texture (the gather / scatter of the pixels is under test, not the painting)
    texture = lambda layout, look, image_look, xyz, uv, noise: (np.float32(0.01) * jax.numpy.abs(xyz), uv[..., 0])  # noqa: E731
    monkeypatch.setattr(appearance, "face_texture", texture)
    normal = attrs[..., 5:8] / np.linalg.norm(attrs[..., 5:8], axis=-1, keepdims=True)
    albedo, gloss = texture(None, None, None, attrs[..., 0:3], attrs[..., 3:5], None)
    expected = np.asarray(appearance.shade(albedo, normal, gloss, image_look, light, 0.0)) * mask[..., None]
    with jax.disable_jit():
        for blocks in (1, 7):  # one block of the whole image; blocks of 21 pixels, as many as needed
            monkeypatch.setattr(render, "FACE_BLOCKS", blocks)
            face = np.asarray(render._photo_face(layout, attrs, None, mask, light, look, image_look))
            np.testing.assert_allclose(face, expected, atol=1e-5)
    assert np.all(face[mask > 0].max(-1) > 0)


def test_ablations_leave_ingredients_out_and_keep_the_labels(toy, photos):
    """``appearance.without`` (train.stn's ``ablate``): the named ingredients are switched off, the
    same identities, poses and labels are drawn, only the pixels change; unknown names are refused."""
    look = appearance.without(appearance.AppearanceConfig(), "camera, occluders,body")
    assert look.occluder_prob == 0 and look.jpeg_prob == 0 and look.noise_max == 0 and not look.body
    assert look.shadows and look.glasses_prob > 0  # the others stay
    assert appearance.without(appearance.AppearanceConfig(), "") == appearance.AppearanceConfig()
    with pytest.raises(ValueError, match="unknown ingredient 'hair'.*accessories, body, shadows"):
        appearance.without(appearance.AppearanceConfig(), "hair")
    plain = generate_stn(toy, 1, 2, 5, SIZE, config=dataclasses.replace(
        CONFIG, look=appearance.without(appearance.AppearanceConfig(), list(appearance.ABLATIONS))))
    for key in ("theta", "landmarks21", "landmarks68"):
        np.testing.assert_array_equal(plain[key], photos[key], err_msg=key)
    # without occluders, hair and body the visible face can only grow
    assert np.all(plain["face_mask"] >= photos["face_mask"])
    assert np.abs(plain["images"].astype(int) - photos["images"]).mean() > 1.0


def test_train_stn_refuses_an_unknown_or_misplaced_ablation():
    with pytest.raises(stn_training.UsageError, match="unknown ingredient 'hair'"):
        stn_training.check_ablation(stn_training.Config(ablate="camera,hair"))
    with pytest.raises(stn_training.UsageError, match="only the photo generator"):
        stn_training.check_ablation(stn_training.Config(generator="splat", ablate="camera"))
    stn_training.check_ablation(stn_training.Config(ablate="camera,body"))


def test_default_model_faces_are_framed_like_a_detectors_crop():
    """Generated faces of the default model sit in their crops as a photograph's face sits in the
    crop the photo pipeline makes from the detector's 68 points: the face's own 68-point box is
    1 / (1.6 x DETECTOR_BOX) of the image, up to the detector-like jitter; and mediapipe (the photo
    pipeline's detector, where installed) finds that box on the generated faces, as DETECTOR_BOX says."""
    from jface.data.synthetic_stn_render import CROP_SCALE, DETECTOR_BOX, _projected, _sub_model
    from jface.models import default_stn_model

    model = default_stn_model()
    size, config = 224, StnSynthConfig(chunk=4, yaw_deg=30.0)
    data = generate_stn(model, 6, 2, 11, size, config=config)
    sub = _sub_model(model, config)  # the components the generator draws (theta's D)
    points68 = _projected(sub, np.asarray(data["theta"], np.float64), np.asarray(sub.landmarks["ibug68"]))
    ratios, found = [], []
    for image, points in zip(data["images"], points68):
        pixels = crops.from_stn_frame(points, size)
        _, box = crops.landmark_box(pixels)
        ratios.append(box * CROP_SCALE * DETECTOR_BOX / size)
        found.append((image, box))
    ratios = np.asarray(ratios)
    assert np.all((ratios > np.exp(-0.12) * 0.97) & (ratios < np.exp(0.12) * 1.03)), ratios
    assert abs(np.log(ratios).mean()) < 0.06  # the jitter is centred on the crop rule
    try:
        from jface.data.detect import DetectorMissingError, MediapipeDetector

        detector = MediapipeDetector(max_faces=1)
    except (ImportError, DetectorMissingError):
        pytest.skip("mediapipe (the [detect] extra) is not installed: the detector half is skipped")
    measured = []
    try:
        for image, box in found:
            faces = detector(np.asarray(image, np.uint8))
            if faces:
                _, detected = crops.landmark_box(np.asarray(faces[0].landmarks68, np.float64)[:, :2])
                measured.append(detected / box)
    finally:
        detector.close()
    assert len(measured) >= 6, f"mediapipe found {len(measured)} of {len(found)} generated faces"
    assert abs(np.mean(measured) - DETECTOR_BOX) < 0.06, measured
