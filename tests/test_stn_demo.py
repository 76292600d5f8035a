"""The demo.m replacement: jax.grad fitting vs a numpy transcription of the original's hand-written
analytic backward (``layer/vl_nn*.m``), the panels, the CLI and the notebook."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import jax
import numpy as np
import pytest

from jface import stn
from jface.stn import demo
from jface.stn.toy import toy_grid_model

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------- the original's forward/backward, float64 numpy
def _skew(v):
    return np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])


def ref_r2R(r):
    if np.all(r == 0):
        return np.eye(3)
    theta = np.linalg.norm(r)
    K = _skew(r / theta)
    return np.eye(3) + math.sin(theta) * K + (1 - math.cos(theta)) * K @ K


def ref_dR_dr(r, R):
    """vl_nnr2R backward: so(3) generators at r = 0, else Gallego & Yezzi (``vl_nnr2R.m``)."""
    eye = np.eye(3)
    if np.all(r == 0):
        return [_skew(eye[i]) for i in range(3)]
    return [(r[i] * _skew(r) + _skew(np.cross(r, (eye - R) @ eye[i]))) @ R / (r @ r) for i in range(3)]


def ref_demo_loss_and_grad(shape_mu, shape_pc, idx, theta, label):
    """demo.m, one item: layers' forwards then their analytic backwards (``vl_nnsplit`` ... ``vl_nnselection``).

    shape_mu (3N,) / shape_pc (3N, D) interleaved (MATLAB layout), idx 0-based, label 2 x L.
    """
    r, t, logs, alpha = theta[0:3], theta[3:5], theta[5], theta[6:]
    X = np.reshape(shape_mu + shape_pc @ alpha, (3, -1), order="F")  # vl_nnmodel
    R = ref_r2R(r)  # vl_nnr2R
    Xr = R @ X  # vl_nnrotate3D
    Y = Xr[:2]  # vl_nnprojection
    s = 0.99**logs  # vl_nnlogScale2Scale
    Z = s * Y  # vl_nnscale2D
    W = Z + t[:, None]  # vl_nntranslate2D
    pred = W[:, idx]  # vl_nnselection
    diff = pred - label
    loss = np.sum(diff**2)
    # backward, layer by layer
    dpred = 2 * diff
    dW = np.zeros_like(W)
    dW[:, idx] = dpred  # overwrite (no accumulation)
    dt = dW.sum(axis=1)
    dZ = dW
    ds = np.sum(dZ * Y)
    dY = s * dZ
    dlogs = ds * s * math.log(0.99)
    dXr = np.vstack([dY, np.zeros((1, dY.shape[1]))])
    dR = dXr @ X.T
    dX = R.T @ dXr
    dalpha = shape_pc.T @ dX.reshape(-1, order="F")
    dr = np.array([np.sum(dR * g) for g in ref_dR_dr(r, R)])
    return loss, np.concatenate([dr, dt, [dlogs], dalpha])


def ref_demo_fit(model, labels, theta0, max_steps, step=1e-6, gain=101.0, tol=1.0):
    """demo.m's loop: theta -= 1e-6 dtheta with dalpha x 101; stop when |loss_k - loss_k-1| < 1."""
    basis = np.asarray(model.basis, np.float64)
    shape_mu = np.asarray(model.mean, np.float64).reshape(-1)
    shape_pc = basis.reshape(-1, basis.shape[-1])
    idx = np.asarray(model.landmarks["aflw21"])
    theta = np.array(theta0, np.float64)
    trajectory = []
    for _ in range(max_steps):
        total, grads = 0.0, []
        for b in range(theta.shape[0]):
            loss, grad = ref_demo_loss_and_grad(shape_mu, shape_pc, idx, theta[b], labels[b].T)
            total += loss
            grad[6:] *= gain
            grads.append(grad)
        theta = theta - step * np.stack(grads)
        trajectory.append(total)
        if len(trajectory) > 1 and abs(trajectory[-1] - trajectory[-2]) < tol:
            break
    return theta, np.array(trajectory)


@pytest.fixture(scope="module")
def problem():
    model = toy_grid_model(16, num_shape=3, num_expression=2, dtype=np.float64)
    rng = np.random.default_rng(0)
    theta_gt = np.concatenate(
        [rng.normal(0, 0.15, (2, 3)), 112 + rng.uniform(-6, 6, (2, 2)), rng.uniform(20, 30, (2, 1)),
         rng.normal(size=(2, 5))], axis=1)
    indices = np.asarray(model.landmarks["aflw21"])
    labels = np.stack([np.asarray(stn.project(model, th)["points"])[indices] for th in theta_gt])
    labels += rng.normal(0, 1.0, labels.shape)
    theta0 = np.asarray(demo.init_theta(jax.random.PRNGKey(0), 2, 5, dtype=np.float64))
    return model, labels, theta0


def test_init_theta_matches_demo_setup():
    theta0 = np.asarray(demo.init_theta(jax.random.PRNGKey(1), 6, 10))
    np.testing.assert_array_equal(theta0[:, :6], np.tile([0, 0, 0, 112, 112, 1], (6, 1)))
    assert theta0.shape == (6, 16) and abs(theta0[:, 6:].std() - 1) < 0.3


def test_autodiff_gradient_equals_handwritten_backward(problem):
    """At r = 0 exactly (demo.m's first iteration) and at a generic pose."""
    model, labels, theta0 = problem
    grad = jax.jit(jax.grad(lambda th: demo.landmark_objective(model, th, labels)))
    basis = np.asarray(model.basis)
    args = (np.asarray(model.mean).reshape(-1), basis.reshape(-1, basis.shape[-1]),
            np.asarray(model.landmarks["aflw21"]))
    generic = theta0 + np.r_[0.2, -0.3, 0.1, 3, -2, 5, np.zeros(5)]
    for theta in (theta0, generic):
        expected = np.stack([ref_demo_loss_and_grad(*args, theta[b], labels[b].T)[1] for b in range(2)])
        np.testing.assert_allclose(grad(theta), expected, rtol=1e-10, atol=1e-8)


def test_gd_trajectory_matches_original_update_rule(problem):
    model, labels, theta0 = problem
    theta_ref, traj_ref = ref_demo_fit(model, labels, theta0, max_steps=3000)
    theta, traj = demo.fit_gd(model, labels, theta0, max_steps=3000)
    assert len(traj) == len(traj_ref) < 3000  # the |dloss| < 1 rule stopped both at the same step
    np.testing.assert_allclose(traj, traj_ref, rtol=1e-9)
    np.testing.assert_allclose(theta, theta_ref, rtol=1e-8, atol=1e-8)
    assert traj[-1] < 0.5 * traj[0]
    # Adam converges in fewer steps to a lower loss
    theta_adam, traj_adam = demo.fit_adam(model, labels, theta0, max_steps=3000)
    assert len(traj_adam) < len(traj) and traj_adam[-1] < traj[-1]


def test_gd_on_real_demo_labels(realdata):
    """demodata.mat's real labels with a small model: jax.grad vs the original rule."""
    images, labels = demo.load_demodata(realdata / "3dmmasstn" / "demodata.mat")
    assert images.shape == (6, 224, 224, 3) and labels.shape == (6, 21, 2)
    assert 0 <= images.min() and images.max() <= 255 and images.max() > 1
    # y points up: brows (1-6) above the eyes (7-12), above the mouth (18-20), above the chin (21)
    assert np.all(labels[:, :6, 1].mean(1) > labels[:, 6:12, 1].mean(1))
    assert np.all(labels[:, 6:12, 1].mean(1) > labels[:, 17:20, 1].mean(1))
    assert np.all(labels[:, 17:20, 1].mean(1) > labels[:, 20, 1])
    # image-left brow (1) has smaller x than image-right brow (6)
    assert np.all(labels[:, 0, 0] < labels[:, 5, 0])
    model = toy_grid_model(16, num_shape=3, num_expression=2, dtype=np.float64)
    theta0 = np.asarray(demo.init_theta(jax.random.PRNGKey(0), 6, 5, dtype=np.float64))
    labels = labels.astype(np.float64)
    theta_ref, traj_ref = ref_demo_fit(model, labels, theta0, max_steps=150)
    theta, traj = demo.fit_gd(model, labels, theta0, max_steps=150)
    np.testing.assert_allclose(traj, traj_ref, rtol=1e-9)
    np.testing.assert_allclose(theta, theta_ref, rtol=1e-8, atol=1e-8)
    assert traj[-1] < traj[0]
    # part (b) on the real images: the fitted face samples the photo (not the black border)
    flat = demo.panels(model, theta[:2], images[:2])
    assert flat["texture"].shape == (2, 16, 16, 3) and 0.5 < flat["mask"].mean() <= 1.0
    centre = flat["texture"][:, 5:11, 5:11]
    assert np.all(centre.mean(axis=(1, 2, 3)) > 20)


def test_gd_on_real_demo_labels_default_model(realdata):
    """The same check with the embedded 112-grid default model (D = 42), 40 steps."""
    try:
        from jface.models import default_stn_model

        model = default_stn_model()
    except (ImportError, AttributeError):
        pytest.skip("jface.models.default_stn_model is not available")
    model = jax.tree_util.tree_map(
        lambda x: np.asarray(x, np.float64) if np.issubdtype(np.asarray(x).dtype, np.floating) else x, model)
    _, labels = demo.load_demodata(realdata / "3dmmasstn" / "demodata.mat")
    labels = labels.astype(np.float64)
    theta0 = np.asarray(demo.init_theta(jax.random.PRNGKey(0), 6, model.basis.shape[-1], dtype=np.float64))
    theta_ref, traj_ref = ref_demo_fit(model, labels, theta0, max_steps=40)
    theta, traj = demo.fit_gd(model, labels, theta0, max_steps=40)
    np.testing.assert_allclose(traj, traj_ref, rtol=1e-9)
    np.testing.assert_allclose(theta, theta_ref, rtol=1e-8, atol=1e-8)
    assert traj[-1] < traj[0]


def test_load_demodata_errors(tmp_path):
    import scipy.io

    path = tmp_path / "nodemo.mat"
    scipy.io.savemat(str(path), {"Images": np.zeros((4, 4, 3, 1))})
    with pytest.raises(ValueError, match="Labels"):
        demo.load_demodata(path)
    with pytest.raises(ValueError, match="missing.mat"):
        demo.load_demodata(tmp_path / "missing.mat")


def test_demo_cli_writes_panels(tmp_path):
    """python -m jface.stn.demo with a user-saved model npz: step counts, five-panel PNGs."""
    from PIL import Image

    from jface.models import save_model

    model_path = tmp_path / "stn_model.npz"
    save_model(toy_grid_model(16), model_path)
    out = tmp_path / "demo"
    argv = ["--model", str(model_path), "--batch", "2", "--max-steps", "400", "-o", str(out)]
    assert demo.main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["gd_steps"] > 1 and summary["adam_steps"] > 1
    assert summary["gd_loss"][1] < summary["gd_loss"][0]
    sheet = Image.open(out / "stn_demo_0.png")
    assert sheet.size == (5 * 224 + 16, 224)
    assert len(summary["panels"]) == 2


def test_notebook_executes(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("STN_DEMO_OUT", str(tmp_path))
    notebook = nbformat.read(REPO / "notebooks" / "stn_grad_demo.ipynb", as_version=4)
    nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO)}}).execute()
    text = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
    assert "gradient descent (demo.m rule):" in text and "optax Adam:" in text
    assert len(list(tmp_path.glob("stn_demo_*.png"))) >= 2
