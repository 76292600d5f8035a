"""3DMM-STN losses (``layer/vl_nn*loss.m``, ``vl_nnsse``, ``vl_nnsiamese``, ``vl_nnsymmetry``) and the mirror
augmentation (``refineData`` in ``dagnn_3dmmasstn.m``) vs numpy references."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.test_util import check_grads

from jface import stn

LOOKUP_1BASED = [6, 5, 4, 3, 2, 1, 12, 11, 10, 9, 8, 7, 17, 16, 15, 14, 13, 20, 19, 18, 21]


# ---------------------------------------------------------------- numpy references (MATLAB layouts)
def ref_euclidean(pred, label):
    """vl_nneuclideanloss: pred 1x2x21xB, label 1x3x21xB (x, y, vis); plain sum, no mean."""
    d = pred[0] - label[0, :2]
    return np.sum(label[0, 2] * np.sum(d**2, axis=0))


def ref_symmetry(T):
    """vl_nnsymmetry on T (H x W x C x B): D over the whole batch, / #nonzero(T)."""
    F = T[:, ::-1]
    D = (T - F) * ((T != 0) & (F != 0))
    return np.sum(D**2) / np.count_nonzero(T), D


def ref_siamese(T):
    """vl_nnsiamese on T (H x W x C x B), pairs (2k-1, 2k) = batch positions (0, 1), (2, 3), ..."""
    A, B = T[..., 0::2], T[..., 1::2]
    D = (A - B) * ((A != 0) & (B != 0))
    return np.sum(D**2) / np.count_nonzero(T), D


def ref_refine_labels(label, width=224):
    """refineData's mirrored labels: label 1x3x21xB -> 1x3x21xB."""
    out = label.copy()
    x = label[0, 0]
    out[0, 0] = (width + 1 - x) * (x != 0)
    idx = np.array(LOOKUP_1BASED) - 1
    return out[:, :, idx]


@pytest.fixture(scope="module")
def textures():
    rng = np.random.default_rng(0)
    T = rng.uniform(1, 255, (4, 6, 5, 3))  # (B, H', W', C), odd width
    T[rng.uniform(size=T.shape) < 0.3] = 0.0  # invisible / black texels
    return T


def test_landmark_loss_vs_reference():
    rng = np.random.default_rng(1)
    pred = rng.uniform(0, 224, (3, 21, 2))
    label = rng.uniform(0, 224, (3, 21, 2))
    vis = (rng.uniform(size=(3, 21)) > 0.3).astype(float)
    label[vis == 0] = 0.0
    matlab_label = np.concatenate([label, vis[..., None]], -1).transpose(2, 1, 0)[None]
    expected = ref_euclidean(pred.transpose(2, 1, 0)[None], matlab_label)
    np.testing.assert_allclose(stn.landmark_loss_batch(pred, label, vis), expected, rtol=1e-12)
    np.testing.assert_allclose(
        sum(stn.landmark_loss(p, l, v) for p, l, v in zip(pred, label, vis)), expected, rtol=1e-12
    )
    # with indices into all projected vertices; vis defaults to 1
    points = rng.uniform(0, 224, (50, 2))
    idx = rng.choice(50, 21, replace=False)
    np.testing.assert_allclose(
        stn.landmark_loss(points, label[0], indices=idx), np.sum((points[idx] - label[0]) ** 2), rtol=1e-12
    )
    # gradient 2 vis (pred - label), as the original's backward
    grad = jax.grad(stn.landmark_loss)(pred[0], label[0], vis[0])
    np.testing.assert_allclose(grad, 2 * vis[0][:, None] * (pred[0] - label[0]), rtol=1e-12)
    with pytest.raises(ValueError, match="labels"):
        stn.landmark_loss(pred[0], label[0, :20])
    with pytest.raises(ValueError, match="vis"):
        stn.landmark_loss(pred[0], label[0], vis[0, :3])


def test_prior_loss():
    alpha = np.random.default_rng(2).normal(size=(3, 10))
    np.testing.assert_allclose(stn.prior_loss_batch(alpha), np.sum(alpha**2), rtol=1e-12)
    np.testing.assert_allclose(stn.prior_loss(alpha[0]), np.sum(alpha[0] ** 2), rtol=1e-12)
    np.testing.assert_allclose(jax.grad(stn.prior_loss)(alpha[0]), 2 * alpha[0], rtol=1e-12)


def test_symmetry_loss_vs_reference(textures):
    T = textures.transpose(1, 2, 3, 0)  # MATLAB H x W x C x B
    expected, D = ref_symmetry(T)
    np.testing.assert_allclose(stn.symmetry_loss_batch(textures), expected, rtol=1e-12)
    # per item: the count is that item's own
    one, _ = ref_symmetry(T[..., :1])
    np.testing.assert_allclose(stn.symmetry_loss(textures[0]), one, rtol=1e-12)
    # true gradient = 4 D / count; the original's hand-written backward gives 2 D (vl_nnsymmetry.m)
    grad = jax.grad(stn.symmetry_loss_batch)(textures)
    count = np.count_nonzero(T)
    np.testing.assert_allclose(grad, 4 * D.transpose(3, 0, 1, 2) / count, rtol=1e-10, atol=1e-14)
    # the odd width's centre column is compared with itself: zero difference there
    assert np.all(D[:, 2] == 0)


def test_siamese_loss_vs_reference(textures):
    T = textures.transpose(1, 2, 3, 0)
    expected, D = ref_siamese(T)
    np.testing.assert_allclose(stn.siamese_loss_batch(textures), expected, rtol=1e-12)
    a, b = textures[0], textures[1]
    pair, _ = ref_siamese(np.stack([a, b], -1))
    np.testing.assert_allclose(stn.siamese_loss(a, b), pair, rtol=1e-12)
    # true gradient: +2 D_k / count for the first member, -2 D_k / count for the second
    # (the original gives +2 D_k to both and does not divide, vl_nnsiamese.m)
    grad = np.asarray(jax.grad(stn.siamese_loss_batch)(textures))
    count = np.count_nonzero(T)
    Dk = D.transpose(3, 0, 1, 2)
    np.testing.assert_allclose(grad[0::2], 2 * Dk / count, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(grad[1::2], -2 * Dk / count, rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="even"):
        stn.siamese_loss_batch(textures[:3])
    with pytest.raises(ValueError, match="tex_b"):
        stn.siamese_loss(a, b[:2])


def test_losses_zero_means_invisible_and_empty_texture():
    tex = np.zeros((4, 4, 3))
    assert float(stn.symmetry_loss(tex)) == 0.0  # count guarded (the original: 0/0 = NaN)
    assert float(stn.siamese_loss(tex, tex + 7.0)) == 0.0  # nothing visible in both
    with pytest.raises(ValueError, match="texture"):
        stn.symmetry_loss(tex[..., 0])


def test_mirror_labels_vs_refine_data():
    rng = np.random.default_rng(3)
    labels = rng.uniform(1, 224, (2, 21, 2))
    vis = (rng.uniform(size=(2, 21)) > 0.2).astype(np.float64)
    labels[vis == 0] = 0.0
    m_labels, m_vis = stn.mirror_labels(labels, vis)
    matlab = np.concatenate([labels, vis[..., None]], -1).transpose(2, 1, 0)[None]
    ref = ref_refine_labels(matlab)[0].transpose(2, 1, 0)
    np.testing.assert_allclose(m_labels, ref[..., :2], rtol=1e-14)
    np.testing.assert_array_equal(m_vis, ref[..., 2])
    # missing points stay at 0; mirroring twice is the identity (labels and vis)
    assert np.all(np.asarray(m_labels)[np.asarray(m_vis) == 0] == 0)
    back, back_vis = stn.mirror_labels(m_labels, m_vis)
    np.testing.assert_allclose(back, labels, rtol=1e-14)
    np.testing.assert_array_equal(back_vis, vis)
    assert stn.mirror_labels(labels[0])[1] is None
    with pytest.raises(ValueError, match="labels"):
        stn.mirror_labels(labels[:, :20])


def test_mirror_batch_interleaves_and_mirrors_geometry():
    """Image mirroring and label mirroring agree: a bright pixel at label k moves to label k' ."""
    rng = np.random.default_rng(4)
    images = rng.uniform(0, 255, (2, 224, 224, 3)).astype(np.float32)
    labels = np.tile(np.linspace(20, 200, 21)[:, None], (2, 1, 2)).astype(np.float32)
    labels[..., 1] = rng.uniform(10, 214, (2, 21))
    vis = np.ones((2, 21), np.float32)
    out_images, out_labels, out_vis = stn.mirror_batch(images, labels, vis)
    assert out_images.shape == (4, 224, 224, 3) and out_labels.shape == (4, 21, 2)
    np.testing.assert_array_equal(out_images[0], images[0])
    np.testing.assert_array_equal(out_images[3], images[1][:, ::-1])
    np.testing.assert_array_equal(out_labels[2], labels[1])
    # the label frame: 1-based col = x, 0-based col = x - 1; a mirrored image has col' = W - 1 - col
    x, y = labels[0, 0]
    mirrored_x = float(out_labels[1, 5, 0])  # landmark 1 becomes landmark 6
    assert mirrored_x == pytest.approx(225 - x)
    row, col = int(224 - y), int(x - 1)
    assert out_images[1, row, 224 - 1 - col, 0] == images[0, row, col, 0]
    assert (224 - 1 - col) == int(mirrored_x - 1)
    np.testing.assert_array_equal(out_vis[1], vis[0][np.array(LOOKUP_1BASED) - 1])
    images_only, none_labels, none_vis = stn.mirror_batch(images)
    assert none_labels is None and none_vis is None and images_only.shape[0] == 4


# ---------------------------------------------------------------- the 3D shape term (jface's own)
def test_shape_loss_vs_reference_and_gradient():
    rng = np.random.default_rng(5)
    shapes, truth = rng.normal(size=(3, 7, 3)), rng.normal(size=(3, 7, 3))
    per_item = np.mean(np.sum((shapes - truth) ** 2, axis=-1), axis=-1)
    np.testing.assert_allclose(stn.shape_loss(shapes[0], truth[0]), per_item[0], rtol=1e-12)
    np.testing.assert_allclose(stn.shape_loss_batch(shapes, truth), per_item.mean(), rtol=1e-12)
    weights = np.array([1.0, 0.0, 1.0])  # e.g. the unmirrored images of a batch
    np.testing.assert_allclose(stn.shape_loss_batch(shapes, truth, weights), (per_item[0] + per_item[2]) / 2,
                               rtol=1e-12)
    assert float(stn.shape_loss_batch(shapes, truth, np.zeros(3))) == 0.0
    # analytic gradient 2 (s - t) / N, and float64 finite differences of the weighted batch loss
    np.testing.assert_allclose(jax.grad(stn.shape_loss)(shapes[0], truth[0]), 2 * (shapes[0] - truth[0]) / 7,
                               rtol=1e-12)
    check_grads(lambda s: stn.shape_loss_batch(s, truth, weights), (shapes,), order=2,
                              modes=("rev", "fwd"), eps=1e-6)


@pytest.mark.parametrize("args, message", [
    ((np.zeros((7, 2)), np.zeros((7, 2))), r"shape: expected \(N, 3\)"),
    ((np.zeros((7, 3)), np.zeros((6, 3))), r"true_shape: expected shape \(7, 3\)"),
])
def test_shape_loss_bad_shapes_name_the_argument(args, message):
    with pytest.raises(ValueError, match=message):
        stn.shape_loss(*args)


def test_shape_loss_batch_bad_shapes_name_the_argument():
    with pytest.raises(ValueError, match=r"shapes: expected \(B, N, 3\)"):
        stn.shape_loss_batch(np.zeros((7, 3)), np.zeros((7, 3)))
    with pytest.raises(ValueError, match=r"weights: expected shape \(2,\)"):
        stn.shape_loss_batch(np.zeros((2, 7, 3)), np.zeros((2, 7, 3)), np.ones(3))
