"""Synthetic TFDS datasets (stn / deca), the data CLI and the TF-free AFLW2000-3D reader.

Compile cost is the budget: every render here uses one jit shape per config (64 px, chunk 4, the
``*_small`` presets), shared by the CLI build, the direct generator calls and the determinism checks.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets")

from jface.data import __main__ as cli  # noqa: E402
from jface.data import tfds_synthetic  # noqa: E402
from jface.data.synthetic_deca import (  # noqa: E402
    AFLW21_FROM_IBUG68,
    DecaSynthConfig,
    aflw21_from_ibug68,
    generate_deca,
)
from jface.data.synthetic_stn_render import StnSynthConfig, generate_stn, stn_to_ndc  # noqa: E402

SIZE, CHUNK = 64, 4  # the *_small presets' render shape


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Builds both small configs through the CLI once; yields the data dir and the models."""
    mp = pytest.MonkeyPatch()
    if "JFACE_CACHE" not in os.environ:  # same folder as conftest's per-test cache
        mp.setenv("JFACE_CACHE", str(tmp_path_factory.getbasetemp().parent / "jface-cache"))
    from jface.models import defaults

    data_dir = tmp_path_factory.mktemp("tfds")
    for config in ("deca_small", "stn_small"):
        assert cli.main(["build", "synthetic", "--config", config, "--data_dir", str(data_dir)]) == 0
    yield {"data_dir": str(data_dir), "flame": defaults.default_flame_model(), "stn": defaults.default_stn_model()}
    mp.undo()


def _examples(env, config, split="train"):
    source = tfds_synthetic.load_source(config, split, data_dir=env["data_dir"])
    return [source[i] for i in range(len(source))]


def _pixels(landmarks, frame, size=SIZE):
    xy, vis = cli.landmarks_to_pixels(landmarks, frame, size)
    return np.round(xy).astype(int), vis


def _on_face(mask, cols_rows, vis, radius=1):
    """Fraction of visible points whose (2 radius + 1)^2 neighbourhood touches the mask."""
    hits = []
    for (c, r), v in zip(cols_rows, vis):
        if v:
            patch = mask[max(r - radius, 0):r + radius + 1, max(c - radius, 0):c + radius + 1]
            hits.append(patch.any())
    return np.mean(hits) if hits else 1.0


def test_built_splits_counts_and_features(env):
    for config, extra in (("deca_small", {"shape", "expression", "pose", "cam"}), ("stn_small", {"theta"})):
        builder = tfds_synthetic.JfaceSyntheticFaces(config=config, data_dir=env["data_dir"])
        assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": 4, "validation": 2, "test": 2}
        ex = _examples(env, config)[0]
        assert ex["image"].shape == (SIZE, SIZE, 3) and ex["image"].dtype == np.uint8
        assert ex["face_mask"].shape == (SIZE, SIZE) and set(np.unique(ex["face_mask"])) <= {0, 1}
        assert ex["landmarks68"].shape == (68, 3) and ex["landmarks21"].shape == (21, 3)
        assert ex["light"].shape == (9, 3)
        assert extra <= set(ex)
        # identities are unique across splits
        ids = {s: {int(e["identity"]) for e in _examples(env, config, s)} for s in ("train", "validation", "test")}
        assert ids["train"] == {0, 1} and ids["validation"] == {10_000_000} and ids["test"] == {20_000_000}


def test_built_equals_generator_and_is_deterministic(env):
    """The dataset holds exactly what the pure generators return for (seed 0, identity ids)."""
    built = {int(e["identity"]) * 10 + i: e for i, e in enumerate(
        sorted(_examples(env, "deca_small"), key=lambda e: (int(e["identity"]), e["pose_deg"].tolist())))}
    a = generate_deca(env["flame"], 2, 2, 0, SIZE, config=DecaSynthConfig(chunk=CHUNK))
    b = generate_deca(env["flame"], 2, 2, 0, SIZE, config=DecaSynthConfig(chunk=CHUNK))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    for e in built.values():
        match = [i for i in range(4) if np.array_equal(a["pose_deg"][i], e["pose_deg"])]
        assert len(match) == 1
        i = match[0]
        np.testing.assert_array_equal(e["image"], a["images"][i])
        np.testing.assert_array_equal(e["landmarks68"], a["landmarks68"][i])
        np.testing.assert_array_equal(e["shape"], a["shape"][i])
    c = generate_deca(env["flame"], 2, 2, 1, SIZE, config=DecaSynthConfig(chunk=CHUNK))
    assert not np.array_equal(a["images"], c["images"])
    # identity parameters are shared by an identity's images, per-image ones are not
    assert np.array_equal(a["shape"][0], a["shape"][1]) and not np.array_equal(a["shape"][0], a["shape"][2])
    assert not np.array_equal(a["pose"][0], a["pose"][1])

    s1 = generate_stn(env["stn"], 1, 2, 3, SIZE, config=StnSynthConfig(chunk=CHUNK))
    s2 = generate_stn(env["stn"], 1, 2, 3, SIZE, config=StnSynthConfig(chunk=CHUNK))
    for key in s1:
        np.testing.assert_array_equal(s1[key], s2[key])


@pytest.fixture(scope="module")
def deca_batch(env):
    # the plain look: the label checks below compare landmarks with the face region, which the photo
    # look's occluders and hats take pixels from (tests/test_data_synthetic_deca_photo.py)
    return generate_deca(env["flame"], 3, 4, 11, SIZE, config=DecaSynthConfig(chunk=CHUNK, look="plain"))


@pytest.fixture(scope="module")
def stn_batch(env):
    return generate_stn(env["stn"], 3, 4, 11, SIZE, config=StnSynthConfig(chunk=CHUNK))


def test_deca_labels_land_on_the_face(deca_batch):
    d = deca_batch
    frame = "deca ndc"
    fractions = []
    for i in range(len(d["images"])):
        pts, vis = _pixels(d["landmarks68"][i], frame)
        inner = np.arange(68) >= 17  # the contour sits on the silhouette
        fractions.append(_on_face(d["face_mask"][i], pts[inner], vis[inner]))
        # the face mask is on the rendered face: its pixels differ from the background's statistics
        assert d["face_mask"][i].sum() > 0.1 * SIZE * SIZE
    assert np.mean(fractions) > 0.97, fractions
    assert d["landmarks68"][..., 2].mean() > 0.5  # most points visible
    assert set(np.unique(d["landmarks68"][..., 2])) <= {0.0, 1.0}


def test_deca_left_right_and_yaw_sign(deca_batch):
    d = deca_batch
    yaw = d["pose_deg"][:, 0]
    lm = d["landmarks68"]
    eye_mid = 0.5 * (lm[:, 36, 0] + lm[:, 45, 0])
    turned = np.abs(yaw) > 15
    assert turned.any()
    np.testing.assert_array_equal(np.sign(lm[turned, 30, 0] - eye_mid[turned]), np.sign(yaw[turned]))
    front = np.abs(yaw) < 60
    assert front.any()
    assert np.all(lm[front, 36, 0] < lm[front, 45, 0]) and np.all(lm[front, 17, 0] < lm[front, 26, 0])
    l21 = d["landmarks21"]
    assert np.all(l21[front, 0, 0] < l21[front, 5, 0]) and np.all(l21[front, 17, 0] < l21[front, 19, 0])
    # camera frames the landmark box as a DECA crop does: box ~ 2 / crop_scale NDC wide
    box = 0.5 * ((lm[..., :2].max(1) - lm[..., :2].min(1)).sum(-1))
    assert np.all((box > 2 / 1.55) & (box < 2 / 1.2))
    assert np.all(np.abs(yaw) <= 90) and np.all((d["pose"][:, 3] >= 0) & (d["pose"][:, 3] <= 0.35))


def test_aflw21_mapping():
    lm = np.zeros((68, 3), np.float32)
    lm[:, 0] = np.arange(68)
    lm[:, 2] = 1
    lm[41, 2] = 0
    out = aflw21_from_ibug68(lm)
    assert out.shape == (21, 3) and len(AFLW21_FROM_IBUG68) == 21
    assert out[0, 0] == 17 and out[14, 0] == 30 and out[20, 0] == 8
    assert out[7, 0] == np.mean([37, 38, 40, 41]) and out[7, 2] == 0  # hidden if any source point is
    with pytest.raises(ValueError, match="landmarks68"):
        aflw21_from_ibug68(np.zeros((21, 3)))


def test_stn_labels_frame_and_visibility(stn_batch, env):
    d = stn_batch
    frame = "3dmm-stn"
    fractions = [
        _on_face(d["face_mask"][i], *_pixels(d["landmarks68"][i], frame)) for i in range(len(d["images"]))
    ]
    # occluders and glasses cover some visible labels (the mask leaves them out: ~0.9 on such images);
    # a frame error puts most points off the face
    assert np.mean(fractions) > 0.93 and np.median(fractions) > 0.97, fractions
    for key in ("landmarks21", "landmarks68"):
        lab = d[key]
        missing = lab[..., 2] == 0
        assert np.all(lab[missing][:, :2] == 0)  # AFLW convention for missing points
        assert np.all((lab[~missing][:, :2] >= 0.5) & (lab[~missing][:, :2] <= SIZE + 0.5))
    # labels are the model's landmarks projected with theta (BUILD_NOTES.md, Frames and conventions)
    from jface.data.synthetic_stn import project
    from jface.data.synthetic_stn_render import _sub_model

    model = _sub_model(env["stn"], StnSynthConfig())
    idx = np.asarray(model.landmarks["aflw21"])
    for i in range(3):
        points = np.asarray(project(model, d["theta"][i])[0])[idx]
        vis = d["landmarks21"][i, :, 2] > 0
        np.testing.assert_allclose(d["landmarks21"][i, vis, :2], points[vis], atol=1e-3)
    yaw = d["pose_deg"][:, 0]
    lm = d["landmarks68"]
    # nose tip against the middle of the eyes' corners (projected; hidden points have no label)
    full = np.stack([np.asarray(project(model, th)[0])[np.asarray(model.landmarks["ibug68"])] for th in d["theta"]])
    ok = np.abs(yaw) > 25
    assert ok.any()
    eye_mid = 0.5 * (full[:, 36, 0] + full[:, 45, 0])
    np.testing.assert_array_equal(np.sign(full[ok, 30, 0] - eye_mid[ok]), np.sign(yaw[ok]))
    np.testing.assert_array_equal(lm[..., 2] > 0, (lm[..., 2] > 0) & (np.abs(full - lm[..., :2]).max(-1) < 1e-3))
    # theta = [r, t, logs, alpha(10)]
    assert d["theta"].shape == (12, 16)


def test_stn_to_ndc_pixel_centres():
    import jax.numpy as jnp

    # label (x, y) = (1, S) is the centre of the top-left pixel; (S, 1) the bottom-right one
    pts = jnp.asarray([[1.0, 224.0], [224.0, 1.0]])
    ndc = np.asarray(stn_to_ndc(pts, jnp.asarray([10.0, -10.0]), 1.0, 224))
    from jface.render import ndc_to_pixel

    col, row = ndc_to_pixel(ndc[:, :2], (224, 224))
    np.testing.assert_allclose(np.stack([col, row], -1), [[0, 0], [223, 223]], atol=1e-5)
    assert ndc[0, 2] < ndc[1, 2]  # +z (towards the camera) is nearer = smaller NDC z


def test_cli_inspect_writes_png(env, tmp_path):
    from PIL import Image

    for config in ("deca_small", "stn_small"):
        out = tmp_path / f"{config}.png"
        assert cli.main(["inspect", "--config", config, "--split", "train", "--data_dir", env["data_dir"],
                         "-o", str(out)]) == 0
        with Image.open(out) as im:
            im.load()
            assert im.size == (4 * 224, 224) and im.mode == "RGB"
            assert np.asarray(im).std() > 10


def test_load_arrays_feeds_the_batch_loader(env):
    from jface.data.loader import BatchLoader

    arrays = tfds_synthetic.load_arrays("stn_small", "train", data_dir=env["data_dir"])
    assert arrays["images"].shape == (4, SIZE, SIZE, 3) and arrays["labels"].shape == (4, 21, 3)
    loader = BatchLoader(arrays, batch_size=2, group_key="identity", images_per_group=2, use_grain=False,
                         process_index=0, process_count=1)
    batch = next(iter(loader))
    assert batch["images"].shape == (2, SIZE, SIZE, 3)
    assert batch["identity"][0] == batch["identity"][1]


def test_custom_config_names_and_errors(env):
    config = tfds_synthetic.custom_config("stn", split="validation", num=15, images_per_identity=4)
    assert config.name == "stn-validation16-k4" and config.splits == {"validation": 4}
    with pytest.raises(ValueError, match="config"):
        tfds_synthetic.custom_config("nope")
    with pytest.raises(ValueError, match="split"):
        tfds_synthetic.custom_config("stn", split="dev", num=3)
    with pytest.raises(ValueError, match="num"):
        tfds_synthetic.custom_config("stn", split="train", num=0)
    with pytest.raises(FileNotFoundError, match="no built dataset"):
        tfds_synthetic.load_source("stn-train5-k1", "train", data_dir=env["data_dir"])
    with pytest.raises(ValueError, match="split"):
        tfds_synthetic.load_source("deca_small", "nosuchsplit", data_dir=env["data_dir"])
    with pytest.raises(ValueError, match="images_per_identity"):
        generate_deca(env["flame"], 1, 0, 0, SIZE)
    with pytest.raises(ValueError, match="image_size"):
        generate_stn(env["stn"], 1, 1, 0, 4)


def test_cli_build_and_inspect_real(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    folder = tmp_path / "manual" / "person_a"
    folder.mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (120, 100, 3), dtype=np.uint8)).save(folder / "a.jpg")
    np.savetxt(folder / "a.txt", np.stack([rng.uniform(30, 70, 68), rng.uniform(40, 90, 68)], -1))
    data_dir = str(tmp_path / "tfds")
    assert cli.main(["build", "real", "--config", "stn", "--manual_dir", str(tmp_path / "manual"),
                     "--data_dir", data_dir]) == 0
    out = tmp_path / "real.png"
    assert cli.main(["inspect", "--dataset", "real", "--config", "stn", "--data_dir", data_dir, "-o", str(out)]) == 0
    with Image.open(out) as im:
        assert im.size == (4 * 224, 224)
    with pytest.raises(SystemExit, match="not built"):
        cli.main(["inspect", "--dataset", "real", "--config", "deca_test", "--data_dir", data_dir, "-o", str(out)])


# ------------------------------------------------------------------------------------------------
# AFLW2000-3D


def _fake_aflw(folder, n=3, size=450, corrupt=False):
    import scipy.io
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    truth = {}
    for k in range(n):
        stem = f"image{k * 2 + 2:05d}"
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{stem}.jpg")
        pts = np.stack([rng.uniform(150, 300, 68), rng.uniform(150, 300, 68), rng.normal(0, 20, 68)])
        pose = np.array([[0.1, -0.4 + 0.3 * k, 0.05, 200.0, 210.0, 0.0, 0.0015]])
        scipy.io.savemat(folder / f"{stem}.mat", {"pt3d_68": pts, "Pose_Para": pose,
                                                   "pt2d": rng.uniform(100, 300, (2, 21))})
        truth[stem] = (pts, pose)
    if corrupt:
        (folder / "image09999.jpg").write_bytes(b"not a jpeg")
        (folder / "image09999.mat").write_bytes(b"not a mat")
    return truth


def test_aflw2000_reader_and_builder(tmp_path):
    import tensorflow_datasets as tfds

    from jface.data.aflw2000 import JfaceAflw2000, iter_aflw2000, list_aflw2000
    from jface.data.real import ScanReport

    manual = tmp_path / "manual"
    truth = _fake_aflw(manual / "AFLW2000", corrupt=True)
    assert len(list_aflw2000(manual)) == 4  # finds the AFLW2000/ subfolder
    report = ScanReport()
    items = list(iter_aflw2000(manual, report=report))
    assert len(items) == 3 and report.num_skipped == 1 and "image09999" in report.skipped[0][0]
    for item in items:
        pts, pose = truth[item["name"]]
        np.testing.assert_allclose(item["landmarks68"], pts.T, rtol=1e-6)
        np.testing.assert_allclose(item["pose_deg"], np.degrees(pose[0, :3]), rtol=1e-5)
        assert item["image"].shape == (450, 450, 3) and item["landmarks21"].shape == (21, 2)

    config = tfds.download.DownloadConfig(manual_dir=str(manual))
    raw = JfaceAflw2000(config="raw", data_dir=str(tmp_path / "tfds"))
    raw.download_and_prepare(download_config=config)
    ex = {e["name"]: e for e in raw.as_data_source("test")}
    assert len(ex) == 3
    np.testing.assert_allclose(ex[b"image00002"]["landmarks68"], truth["image00002"][0].T, rtol=1e-6)

    deca = JfaceAflw2000(config="deca", data_dir=str(tmp_path / "tfds"))
    deca.download_and_prepare(download_config=config)
    from jface.data.crops import deca_crop

    ex = {e["name"]: e for e in deca.as_data_source("test")}
    pts = truth["image00004"][0].T
    _, expected, _ = deca_crop(np.zeros((450, 450, 3)), pts[:, :2], scale=1.6)
    np.testing.assert_allclose(ex[b"image00004"]["landmarks68"], expected, atol=1e-5)
    assert ex[b"image00004"]["image"].shape == (224, 224, 3)
    assert "tensorflow" not in sys.modules


def test_aflw2000_missing_or_empty_dir(tmp_path):
    from jface.data.aflw2000 import list_aflw2000

    with pytest.raises(FileNotFoundError, match="not a directory"):
        list_aflw2000(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="imageNNNNN.jpg"):
        list_aflw2000(tmp_path / "empty")
    with pytest.raises(SystemExit, match="empty"):
        cli.main(["build", "aflw2000", "--config", "raw", "--manual_dir", str(tmp_path / "empty")])
    with pytest.raises(SystemExit, match="not a directory"):
        cli.main(["build", "real", "--config", "stn", "--manual_dir", str(tmp_path / "nope")])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "readme.txt").write_text("x")
    with pytest.raises(SystemExit, match="no AFLW2000-3D files"):
        cli.main(["build", "aflw2000", "--config", "raw", "--manual_dir", str(tmp_path / "other")])


def test_tfds_aflw2k3d_needs_tensorflow_documented(tmp_path):
    """TFDS's own aflw2k3d builder downloads from a URL and reads via tf.io.gfile (module doc)."""
    import inspect

    import tensorflow_datasets as tfds

    builder_cls = type(tfds.builder("aflw2k3d", data_dir=str(tmp_path)))
    source = inspect.getsource(builder_cls)
    assert "download_and_extract" in source and "tf.io.gfile" in source


def test_no_tensorflow_imported(env):
    assert "tensorflow" not in sys.modules
