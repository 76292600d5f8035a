"""The photographic DECA generator (``jface.data.synthetic_deca``, ``look="photo"``, with
``jface.data.appearance``): labels identical to the plain look's, determinism and chunk-size
independence, the frame chain, the ablations, background folders, the face mask and train.deca's
plumbing.

Compile cost is the budget: the default FLAME head at 64 px, chunk 2, compiled once per module
for each set of static switches (all on; no body; no shadows; no detail) and once at chunk 3.
"""

from __future__ import annotations

import dataclasses
import re

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jface import geometry
from jface.data import appearance
from jface.data import synthetic_deca as sd
from jface.models import default_flame_model
from jface.training import deca as deca_training

SIZE, SEED = 64, 6  # seed 6: occluders on images 0 and 3, accessories on identity 1 only
CONFIG = sd.DecaSynthConfig(chunk=2)
LABELS = ("landmarks68", "landmarks21", "shape", "expression", "pose", "cam", "albedo", "light", "pose_deg",
          "identity")
ACCESSORIES = ("glasses", "hat", "beard", "freckles", "lipstick_amount", "eye_shadow_amount", "eyeliner", "blush")


def _photo(config=CONFIG, **changes):
    return dataclasses.replace(config, photo=dataclasses.replace(config.photo, **changes))


def _without(names, config=CONFIG):
    return dataclasses.replace(config, photo=appearance.without(config.photo, names))


@pytest.fixture(scope="module")
def flame():
    return default_flame_model()


@pytest.fixture(scope="module")
def photo(flame):
    return sd.generate_deca(flame, 2, 2, SEED, SIZE, config=CONFIG)


@pytest.fixture(scope="module")
def plain(flame):
    return sd.generate_deca(flame, 2, 2, SEED, SIZE, config=dataclasses.replace(CONFIG, look="plain"))


@pytest.fixture(scope="module")
def draws(flame):
    """Each image's photo draws (``_photo_draws``), as the generator made them."""
    model = sd._float32_model(flame)
    setup = sd._photo_setup(model, CONFIG)
    parts = [sd._identity_draws(model, CONFIG, SEED, i, 2, (SIZE, SIZE), setup) for i in range(2)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _same_labels(a, b):
    for key in LABELS:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_labels_are_the_plain_looks_and_the_images_are_not(photo, plain):
    assert set(photo) == set(plain)
    _same_labels(photo, plain)
    images, flat = photo["images"], plain["images"]
    assert images.shape == (4, SIZE, SIZE, 3) and images.dtype == np.uint8
    assert photo["face_mask"].shape == (4, SIZE, SIZE) and set(np.unique(photo["face_mask"])) <= {0, 1}
    diff = np.abs(images.astype(int) - flat.astype(int)).mean(-1)
    for i in range(4):
        face = plain["face_mask"][i] > 0
        assert face.sum() > 0.2 * SIZE * SIZE
        assert diff[i][face].mean() > 8, i  # the painted, lit face
        assert diff[i][~face].mean() > 8, i  # hair, body, background around it
        assert images[i].std() > 10
        assert np.mean((images[i] == 0) | (images[i] == 255)) < 0.5  # not blown out


def test_deterministic_and_independent_of_the_chunk_size(flame, photo):
    again = sd.generate_deca(flame, 2, 2, SEED, SIZE, config=CONFIG)
    chunk3 = sd.generate_deca(flame, 2, 2, SEED, SIZE, config=dataclasses.replace(CONFIG, chunk=3))
    for key in photo:
        np.testing.assert_array_equal(again[key], photo[key], err_msg=key)
        np.testing.assert_array_equal(chunk3[key], photo[key], err_msg=key)
    other = sd.generate_deca(flame, 2, 2, SEED + 1, SIZE, config=CONFIG)
    assert not np.array_equal(other["images"], photo["images"])


def test_face_mask_covers_the_face(flame, photo, plain, draws):
    """Without occluders and body the mask is the plain look's (the face region); with them it
    loses only what an occluder or a body layer covers."""
    bare = sd.generate_deca(flame, 2, 2, SEED, SIZE, config=_without("body,occluders"))
    np.testing.assert_array_equal(bare["face_mask"], plain["face_mask"])
    assert np.all(photo["face_mask"] <= plain["face_mask"])
    for i in range(4):
        kept = photo["face_mask"][i].sum() / plain["face_mask"][i].sum()
        assert kept > (0.5 if draws["image_occluder"][i] else 0.9), (i, kept)


def test_ablations_leave_their_ingredient_out(flame, photo, draws):
    """Each ``appearance.ABLATIONS`` entry changes the images where its ingredient was drawn and
    nothing else: the same draws otherwise, the same labels."""
    runs = {name: sd.generate_deca(flame, 2, 2, SEED, SIZE, config=_without(name)) for name in appearance.ABLATIONS}
    changed = {name: np.abs(run["images"].astype(int) - photo["images"]).max(axis=(1, 2, 3)) > 0
               for name, run in runs.items()}
    for run in runs.values():
        _same_labels(run, photo)
    occluded = draws["image_occluder"] > 0
    assert occluded.any() and not occluded.all()
    np.testing.assert_array_equal(changed["occluders"], occluded)
    assert np.all(runs["occluders"]["face_mask"] >= photo["face_mask"])
    # an occluder takes the face pixels it covers out of the mask (here one of the two covers the face)
    area = lambda mask: mask.sum(axis=(1, 2))  # noqa: E731
    grown = area(runs["occluders"]["face_mask"]) > area(photo["face_mask"])
    assert grown.any() and not grown[~occluded].any()
    dressed = np.any([draws[f"look_{k}"] > 0 for k in ACCESSORIES], axis=0)
    assert dressed.any() and not dressed.all()
    np.testing.assert_array_equal(changed["accessories"], dressed)
    for name in ("body", "shadows", "camera"):
        assert changed[name].all(), name
    assert np.all(runs["body"]["face_mask"] >= photo["face_mask"])
    np.testing.assert_array_equal(runs["shadows"]["face_mask"], photo["face_mask"])
    # without the camera: no sensor noise, blur or JPEG; the face mask is unchanged
    np.testing.assert_array_equal(runs["camera"]["face_mask"], photo["face_mask"])


def test_fine_detail_shades_the_photo_look_too(flame, photo):
    flat = sd.generate_deca(flame, 2, 2, SEED, SIZE, config=dataclasses.replace(CONFIG, detail_depth_mm=(0, 0, 0, 0)))
    _same_labels(flat, photo)
    assert not np.array_equal(flat["images"], photo["images"])


def test_frame_chain(flame):
    """The template's appearance frame, the posed frame (FLAME's rotation about its root joint) and
    the inverse of DECA's camera agree: a rigid head's posed points are R times its template
    points, and a vertex's NDC position maps back to its posed (x, y)."""
    frame = sd.photo_frame(flame)
    unit, points = frame["unit"], frame["points21"]
    assert 0.8 < unit < 1.2
    y, z = appearance.EYE_CORNERS_AT
    np.testing.assert_allclose(0.5 * (points[6] + points[11]), [0.0, y * unit, z * unit], atol=1e-6)
    assert points[12, 0] < points[6, 0] < points[11, 0] < points[16, 0]  # x to the subject's left: image right
    assert points[14, 2] > points[6, 2] > points[12, 2]  # z towards the camera: nose, eyes, ears
    model = sd._float32_model(flame)
    pose = np.array([0.3, -0.7, 0.2, 0.0, 0.0, 0.0], np.float32)
    vertices, root, cam, _ = sd._geometry_one(model, np.zeros(100, np.float32), np.zeros(50, np.float32), pose,
                                              np.float32(1.4), np.zeros(2, np.float32))
    rotation, origin = sd._posed_frame(jnp.asarray(frame["anchor"], jnp.float32), pose, root)
    posed = 1000.0 * (np.asarray(vertices, np.float64) - np.asarray(origin))
    np.testing.assert_allclose(posed, frame["vertices"] @ np.asarray(rotation, np.float64).T, atol=0.05)
    ndc = geometry.flip_yz(geometry.orthographic_camera(vertices, cam))[:, :2]
    np.testing.assert_allclose(np.asarray(sd._ndc_to_posed(ndc, cam, origin)), posed[:, :2], atol=0.05)


def _write(path, colour, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size + (3,), colour, np.uint8)).save(path)


def _dominant(images, channel):
    """Pixels ``(M, H, W)`` whose ``channel`` exceeds both others by more than 60 levels."""
    others = np.delete(images.astype(int), channel, axis=-1).max(-1)
    return images[..., channel].astype(int) - others > 60


def test_background_folder(flame, tmp_path):
    """Backgrounds from a folder (searched recursively): with a flat red photograph and then a flat
    blue one (in a sub-folder, JPEG), a large part of every image turns from red to blue (the head
    keeps its colours; the camera's global contrast leaves no flat colour to compare exactly).
    A folder that cannot be used is refused before any work, naming it."""
    _write(tmp_path / "red" / "red.png", (230, 10, 10))
    _write(tmp_path / "blue" / "sub" / "blue.jpg", (10, 10, 230))
    bare = _without("body,occluders,camera")
    runs = {name: sd.generate_deca(flame, 2, 2, SEED, SIZE, config=_photo(
        bare, backgrounds=str(tmp_path / name), background_photo_prob=1.0)) for name in ("red", "blue")}
    _same_labels(runs["red"], runs["blue"])
    swapped = _dominant(runs["red"]["images"], 0) & _dominant(runs["blue"]["images"], 2)
    assert np.all(swapped.mean(axis=(1, 2)) > 0.05), swapped.mean(axis=(1, 2))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=f"no image .* under {re.escape(str(tmp_path / 'empty'))}"):
        sd.generate_deca(flame, 1, 1, SEED, SIZE, config=_photo(backgrounds=str(tmp_path / "empty")))
    with pytest.raises(ValueError, match="not a folder"):
        sd.generate_deca(flame, 1, 1, SEED, SIZE, config=_photo(backgrounds=str(tmp_path / "missing")))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=f"cannot read {re.escape(str(tmp_path / 'bad' / 'broken.png'))}"):
        sd.generate_deca(flame, 1, 1, SEED, SIZE, config=_photo(backgrounds=str(tmp_path / "bad")))
    with pytest.raises(ValueError, match="look: expected 'photo' or 'plain'"):
        sd.generate_deca(flame, 1, 1, SEED, SIZE, config=dataclasses.replace(CONFIG, look="painted"))
    with pytest.raises(ValueError, match="the photo look places its features by the 68 full landmarks"):
        sd.generate_deca(flame.replace(full_lmk_faces_idx=None), 1, 1, SEED, SIZE, config=CONFIG)


def test_train_deca_look_flags(monkeypatch, tmp_path):
    """train.deca's look / backgrounds / ablate reach the generator (the training split without the
    ablated ingredients, the held-out split with all); bad values are refused naming the field; a
    run saved before the look existed keeps the plain look."""
    config = deca_training.Config(ablate="camera,body", backgrounds=str(tmp_path))
    train, held_out = deca_training.synth_config(config, "train"), deca_training.synth_config(config, "eval")
    assert train.look == held_out.look == "photo"
    assert train.photo == appearance.without(appearance.AppearanceConfig(backgrounds=str(tmp_path)), "camera,body")
    assert held_out.photo == appearance.AppearanceConfig(backgrounds=str(tmp_path))
    assert deca_training.synth_config(config.replace(look="plain", ablate=""), "train").look == "plain"
    seen = []

    def fake(model, ids, per_id, seed, size, *, config=None, on_chunk=None):
        seen.append(config)
        return {"images": np.zeros((ids * per_id, size, size, 3), np.uint8)}

    monkeypatch.setenv("JFACE_DATA_CACHE", "0")
    monkeypatch.setattr(sd, "generate_deca", fake)
    deca_training.make_data(config.replace(num_identities=1, images_per_identity=1, image_size=8), None, split="train")
    assert seen == [train]
    for field, value, message in (("look", "painted", "look: expected"), ("ablate", "hair", "unknown ingredient"),
                                  ("ablate", "camera", None)):
        bad = config.replace(**{field: value})
        if message is None:  # ablating the plain look
            bad, message = bad.replace(look="plain"), "only the photo look"
        with pytest.raises(ValueError, match=message):
            deca_training.validate_config(bad)
    deca_training.validate_config(config)
    assert deca_training.config_from_dict({}).look == "plain"
    assert deca_training.config_from_dict(dataclasses.asdict(deca_training.Config())).look == "photo"
