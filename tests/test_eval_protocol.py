"""The AFLW2000-3D protocol of 3DDFA in ``--eval`` (``jface.training.landmark_eval.protocol_3ddfa``):
68 points, NME over sqrt(w * h) of the ground-truth box, |yaw| bins [0, 30], (30, 60], (60, 90] and
their mean; checked on a hand-computed example, for frame invariance, and end to end from an
AFLW2000-3D-layout folder built by ``python -m jface.data build aflw2000`` through
``jface.training.stn.landmark_evaluation``."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jface.data import aflw2000, crops
from jface.data.__main__ import main as data_main
from jface.data.sources import load_all, open_source
from jface.stn import ThetaWhitening, project
from jface.training import stn as stn_training
from jface.training.landmark_eval import PROTOCOL_3DDFA_KEY, landmark_report, nme_box_per_image, protocol_3ddfa
from train import stn as train_stn


def _grid68(width: float, height: float) -> np.ndarray:
    """68 points on the border and inside of a ``width`` x ``height`` box at the origin (x, y, vis)."""
    xs = np.linspace(0.0, width, 17)
    ys = np.linspace(0.0, height, 4)
    points = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)
    return np.concatenate([points, np.ones((68, 1))], 1)


def test_hand_computed_example():
    # every image: a 4 x 9 box (sqrt(w h) = 6); the prediction is the labels shifted by (3, 4):
    # error 5 at every point, NME 5 / 6; image k is shifted by (k + 1) times that, NME (k + 1) 5/6
    labels = np.stack([_grid68(4.0, 9.0) + [10.0 * k, -3.0, 0.0] for k in range(6)])
    pred = np.stack([labels[k, :, :2] + (k + 1) * np.array([3.0, 4.0]) for k in range(6)])
    yaw = np.array([10.0, -30.0, 30.5, -60.0, 75.0, -97.0])  # bins 1, 1, 2, 2, 3, 3 (beyond 90: last bin)
    out = protocol_3ddfa(pred, labels, yaw)
    unit = 5.0 / 6.0
    assert out["count_0_30"] == 2 and out["count_30_60"] == 2 and out["count_60_90"] == 2
    assert out["nme_0_30"] == pytest.approx(1.5 * unit)  # images 0, 1: (1 + 2) / 2
    assert out["nme_30_60"] == pytest.approx(3.5 * unit)  # images 2, 3
    assert out["nme_60_90"] == pytest.approx(5.5 * unit)  # images 4, 5
    assert out["mean"] == pytest.approx(3.5 * unit)
    assert out["nme_all"] == pytest.approx(3.5 * unit)
    assert [row["nme"] for row in out["per_image"]] == pytest.approx([(k + 1) * unit for k in range(6)])
    assert [row["yaw_deg"] for row in out["per_image"]] == pytest.approx(yaw.tolist())

    # a point outside the crop (vis 0 at (0, 0), the 3DMM-STN frame's missing label) is neither in
    # the box nor in the error; an empty bin gives no mean
    missing = labels[:1].copy()
    missing[0, 5] = [0.0, 0.0, 0.0]
    shifted = pred[:1].copy()
    shifted[0, 5] = [500.0, 500.0]
    box_x = np.ptp(np.delete(missing[0, :, 0], 5))
    box_y = np.ptp(np.delete(missing[0, :, 1], 5))
    assert nme_box_per_image(shifted, missing)[0] == pytest.approx(5.0 / np.sqrt(box_x * box_y))
    lone = protocol_3ddfa(shifted, missing, [5.0])
    assert lone["mean"] is None and lone["nme_30_60"] is None and lone["count_0_30"] == 1

    with pytest.raises(ValueError, match="68 points"):
        protocol_3ddfa(pred[:, :21], labels[:, :21], yaw)
    with pytest.raises(ValueError, match="one yaw per image"):
        protocol_3ddfa(pred, labels, yaw[:3])

    # in the evaluation JSON beside the eye-corner NME, with the baseline's bin means
    report = landmark_report(pred, labels[0, :, :2], labels, protocol=dict(
        pred68=pred, baseline68=labels[0, :, :2], labels68=labels, yaw_deg=yaw))
    part = report[PROTOCOL_3DDFA_KEY]
    assert part["mean"] == pytest.approx(3.5 * unit)
    assert set(part["baseline"]) == {"nme_0_30", "nme_30_60", "nme_60_90", "mean", "nme_all"}
    assert part["baseline"]["nme_0_30"] == pytest.approx(np.mean(nme_box_per_image(
        np.broadcast_to(labels[0, :, :2], (2, 68, 2)), labels[:2])))
    json.dumps(report)


def test_nme_is_the_same_in_every_crop_frame():
    """A crop is a similarity of the photo's pixels: the NME of the 3DMM-STN y-up frame (flipped,
    scaled) and of DECA's NDC equals the one in the photo's own pixels, as 3DDFA computes it."""
    rng = np.random.default_rng(0)
    raw = np.concatenate([rng.uniform(100, 300, (3, 68, 2)), np.ones((3, 68, 1))], -1)
    pred = raw[..., :2] + rng.normal(0, 4, (3, 68, 2))
    expected = nme_box_per_image(pred, raw)
    stn_labels, stn_pred, ndc_labels, ndc_pred = [], [], [], []
    for k in range(3):
        transform = crops.deca_crop_transform(raw[k, :, :2], 1.6)
        stn_labels.append(crops.to_stn_frame(transform.apply(raw[k, :, :2])))
        stn_pred.append(crops.to_stn_frame(transform.apply(pred[k]))[:, :2])
        _, ndc, _ = crops.deca_crop(np.zeros((8, 8)), raw[k, :, :2], scale=1.6)
        ndc_labels.append(ndc)
        ndc_pred.append(transform.apply(pred[k]) / 224 * 2 - 1)
    assert nme_box_per_image(np.stack(stn_pred), np.stack(stn_labels)) == pytest.approx(expected, rel=1e-9)
    assert nme_box_per_image(np.stack(ndc_pred), np.stack(ndc_labels)) == pytest.approx(expected, rel=1e-9)


# --- end to end: an AFLW2000-3D-layout folder -> jface_aflw2000/stn -> the STN's --eval report --------

YAWS = (12.0, -25.0, 41.0, -58.0, 70.0, -88.0, 3.0)


def _aflw2000_folder(root, rng):
    """``imageNNNNN.jpg`` + ``.mat`` (``pt3d_68`` (3, 68), ``Pose_Para`` (1, 7)) as AFLW2000-3D.zip has them."""
    import scipy.io as sio
    from PIL import Image

    root.mkdir(parents=True)
    truth = []
    for k, yaw in enumerate(YAWS):
        name = f"image{k * 2 + 2:05d}"
        Image.fromarray(rng.integers(0, 255, (120, 120, 3), dtype=np.uint8)).save(root / f"{name}.jpg")
        points = np.stack([rng.uniform(35, 85, 68), rng.uniform(30, 90, 68), rng.normal(0, 5, 68)])
        pose = np.array([[0.1, np.radians(yaw), -0.05, 60.0, 60.0, 0.0, 0.001]])
        sio.savemat(str(root / f"{name}.mat"), {"pt3d_68": points, "Pose_Para": pose})
        truth.append(points[:2].T)
    return np.stack(truth)


def test_aflw2000_eval_reports_the_3ddfa_protocol(tmp_path, monkeypatch):
    import scipy.io as sio

    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    # these .mat files are our own: parse them in this process (the builder's child process per file
    # guards against hostile files and costs ~2 s each)
    monkeypatch.setattr(aflw2000, "read_mat", lambda path: sio.loadmat(str(path)))
    raw = _aflw2000_folder(tmp_path / "AFLW2000", np.random.default_rng(1))
    assert data_main(["build", "aflw2000", "--config", "stn", "--manual_dir", str(tmp_path / "AFLW2000")]) == 0

    # the tiny preset's model and localiser, with 68 iBUG points given to the toy head
    config = train_stn.preset("tiny").replace(eval_data="jface_aflw2000/stn")
    model = stn_training.load_model(config)
    model = model.replace(landmarks={**model.landmarks, "ibug68": jnp.arange(68, dtype=jnp.int32) * 3})
    data = load_all(open_source("jface_aflw2000/stn", task="stn", split="test", purpose="eval",
                                image_size=config.image_size))
    # the builder stores records in its own order; the names say which photo each is
    order = [int(str(name)[5:]) // 2 - 1 for name in data["name"]]
    assert sorted(order) == list(range(len(YAWS)))
    yaws = np.asarray(YAWS)[order]
    assert data["pose_deg"][:, 1] == pytest.approx(yaws, abs=1e-4)

    # a localiser whose weights are all zero outputs its theta bias, here 0 = the whitening's
    # init_bias: it predicts the whitening mean, the mean-pose-and-shape baseline
    localiser = stn_training.make_localiser(config, model.num_shape + model.num_expression)
    dummy = jnp.zeros((1, config.localiser_input, config.localiser_input, 3))
    shapes = jax.eval_shape(localiser.init, jax.random.PRNGKey(0), dummy)["params"]
    params = jax.tree_util.tree_map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), shapes)
    mean, std = stn_training.theta_prior(config, model)
    whitening = ThetaWhitening(mean=jnp.asarray(mean), std=jnp.asarray(std),
                               init_bias=jnp.zeros_like(jnp.asarray(mean)))
    ctx = stn_training.StepContext(config=config, localiser=localiser, model=model, whitening=whitening)
    report = stn_training.landmark_evaluation(ctx, params, data, batch=4)
    part = report[PROTOCOL_3DDFA_KEY]
    assert (part["count_0_30"], part["count_30_60"], part["count_60_90"]) == (3, 2, 2)
    assert [row["yaw_deg"] for row in part["per_image"]] == pytest.approx(yaws, abs=1e-4)
    assert [row["name"] for row in report["per_image"]] == [str(name) for name in data["name"]]

    # the baseline's points, taken back to the photo's own pixels through the crop, give 3DDFA's NME
    # computed there by hand
    size = config.image_size
    base = np.asarray(project(model, jnp.asarray(mean))["points"])[np.arange(68) * 3]
    expected = []
    for k in order:
        crop_px = (np.stack([base[:, 0] - 1.0, size - base[:, 1]], -1) + 0.5) * (224 / size) - 0.5
        photo_px = crops.deca_crop_transform(raw[k], 1.6).inverse(crop_px)
        box = np.sqrt(np.ptp(raw[k, :, 0]) * np.ptp(raw[k, :, 1]))
        expected.append(np.linalg.norm(photo_px - raw[k], axis=-1).mean() / box)
    got = [row["nme"] for row in part["per_image"]]
    assert got == pytest.approx(expected, rel=2e-3)
    bins = [np.mean([e for e, y in zip(expected, yaws) if lo < abs(y) <= hi or (lo == 0 and abs(y) <= hi)])
            for lo, hi in ((0, 30), (30, 60), (60, 90))]
    assert part["mean"] == pytest.approx(np.mean(bins), rel=2e-3)
    assert part["baseline"]["mean"] == pytest.approx(part["mean"], rel=1e-6)


def test_deca_aflw2000_eval_reports_the_3ddfa_protocol(tmp_path, monkeypatch):
    """The same folder built for DECA (``--config deca``) through
    ``jface.training.deca.landmark_evaluation``: the report carries the protocol with the images in
    their yaw bins, and the mean face's protocol NME is the one computed here from its 68 points."""
    import scipy.io as sio

    from jface.deca import networks as nets
    from jface.deca.stages import decode_geometry_batch
    from jface.training import deca as deca_training
    from train import deca as train_deca

    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setattr(aflw2000, "read_mat", lambda path: sio.loadmat(str(path)))
    _aflw2000_folder(tmp_path / "AFLW2000", np.random.default_rng(2))
    assert data_main(["build", "aflw2000", "--config", "deca", "--manual_dir", str(tmp_path / "AFLW2000")]) == 0

    config = train_deca.preset("tiny").replace(eval_data="jface_aflw2000/deca")
    model = deca_training.load_model(config)
    data = deca_training.load_eval_data(config, model)
    order = [int(str(name)[5:]) // 2 - 1 for name in data["name"]]
    yaws = np.asarray(YAWS)[order]

    # all-zero weights (BatchNorm scales too): E_coarse outputs 0, i.e. the code mean, the baseline
    networks = deca_training.make_networks(config)
    size = config.encoder_size()
    shapes = jax.eval_shape(networks.coarse.init, jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))
    variables = {"E_flame": jax.tree_util.tree_map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), shapes)}
    code_mean, code_std = deca_training.code_prior(config, model)
    setup = deca_training.make_setup(config, networks, code_mean, code_std)
    report = deca_training.landmark_evaluation(setup, model, variables, data, batch_size=8)
    part = report[PROTOCOL_3DDFA_KEY]
    assert (part["count_0_30"], part["count_30_60"], part["count_60_90"]) == (3, 2, 2)
    assert [row["yaw_deg"] for row in part["per_image"]] == pytest.approx(yaws, abs=1e-4)
    assert [row["name"] for row in report["per_image"]] == [str(name) for name in data["name"]]

    base = np.asarray(decode_geometry_batch(model, nets.split_codes(jnp.asarray(code_mean)[None]))["landmarks2d"][0])
    labels = np.asarray(data["landmarks68"], np.float64)
    expected = [np.linalg.norm(base[:, :2] - lab[:, :2], axis=-1).mean()
                / np.sqrt(np.ptp(lab[:, 0]) * np.ptp(lab[:, 1])) for lab in labels]
    assert part["baseline"]["nme_all"] == pytest.approx(np.mean(expected), rel=1e-4)
    bins = [np.mean([e for e, y in zip(expected, yaws) if lo < abs(y) <= hi or (lo == 0 and abs(y) <= hi)])
            for lo, hi in ((0, 30), (30, 60), (60, 90))]
    assert part["baseline"]["mean"] == pytest.approx(np.mean(bins), rel=1e-4)
    assert part["mean"] == pytest.approx(part["baseline"]["mean"], rel=1e-5)
