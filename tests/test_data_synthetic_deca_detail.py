"""Procedural fine detail of the generated DECA faces (jface.data.synthetic_deca).

One render shape (64 px, chunk 4) compiled twice (detail on / off); everything else is numpy. The
plain look (albedo x SH light): the test localises the shading change to the folds, which the
photo look's camera blur and JPEG would spread (tests/test_data_synthetic_deca_photo.py checks
that the detail shades the photo look too).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from jface.data import synthetic_deca as sd

SIZE, CHUNK = 64, 4
NASOLABIAL_ONLY = sd.DecaSynthConfig(chunk=CHUNK, detail_depth_mm=(0.0, 0.0, 0.0, 1.5), look="plain")
NO_DETAIL = dataclasses.replace(NASOLABIAL_ONLY, detail_depth_mm=(0.0, 0.0, 0.0, 0.0))


@pytest.fixture(scope="module")
def flame():
    from jface.models import default_flame_model

    return default_flame_model()


@pytest.fixture(scope="module")
def patterns(flame):
    return sd.detail_patterns(flame)


def test_patterns_are_grooves_placed_by_the_landmarks(flame, patterns):
    assert patterns.shape == (4, 256, 256) and patterns.dtype == np.float32
    assert np.all(patterns <= 0) and patterns.min() >= -1.0 - 1e-6
    assert np.all(patterns.min(axis=(1, 2)) < -0.8)  # each groove reaches close to its full depth
    lmk = sd._landmark_uv(flame, (256, 256))  # (row, col) texels
    brow_row = lmk[17:27, 0].mean()
    rows, cols = np.mgrid[0:256, 0:256]
    forehead, glabella, crows, naso = (p < -0.05 for p in patterns)
    # forehead creases above the brows, between the brows' ends
    assert rows[forehead].max() < brow_row and rows[forehead].min() > brow_row - 30
    assert cols[forehead].min() >= lmk[17:27, 1].min() - 1 and cols[forehead].max() <= lmk[17:27, 1].max() + 1
    # glabella lines near the centre line, around the brows
    assert np.all(np.abs(cols[glabella] - 0.5 * (lmk[36, 1] + lmk[45, 1])) < 0.15 * (lmk[45, 1] - lmk[36, 1]))
    # crow's feet beyond the outer eye corners (both sides), at eye height
    left, right = cols[crows] < lmk[36, 1], cols[crows] > lmk[45, 1]
    assert np.all(left | right) and left.any() and right.any()
    assert np.all(np.abs(rows[crows] - lmk[36, 0]) < 0.2 * (lmk[8, 0] - lmk[36, 0]))
    # nasolabial folds between the nose wings' and the mouth corners' rows, outside the nose
    assert rows[naso].min() > lmk[27, 0] and rows[naso].max() < lmk[8, 0]
    assert not naso[:, int(round(lmk[33, 1]))].any()
    # mirror symmetric about the face's centre column (the default head's UV is symmetric)
    for p in patterns:
        assert np.abs(p - p[:, ::-1]).max() < 0.2


def test_amplitudes_follow_expression_and_jaw():
    cfg = sd.DecaSynthConfig()
    depth = np.asarray(cfg.detail_depth_mm) * 1e-3
    static = np.array([[0.1, 0.2, 0.3, 0.4]] * 3, np.float32)
    expr = np.zeros((3, 50), np.float32)
    jaw = np.zeros(3, np.float32)
    # zero expression and closed jaw: the static part only
    np.testing.assert_allclose(sd.detail_amplitudes(expr, jaw, static, cfg), static * depth, rtol=1e-6)
    expr[1, 2] = 1.2  # brow raise: forehead creases deepen, by depth * psi / sigma
    expr[2, 2] = -1.2  # the negative side does not drive it
    jaw[2] = cfg.jaw_max_rad  # an open jaw deepens the nasolabial folds by one unit
    amp = sd.detail_amplitudes(expr, jaw, static, cfg)
    np.testing.assert_allclose(amp[1] - amp[0], [depth[0] * 1.2 / cfg.expression_std, 0, 0, 0], rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(amp[2] - amp[0], [0, 0, 0, depth[3]], rtol=1e-5, atol=1e-9)
    with pytest.raises(ValueError, match="static"):
        sd.detail_amplitudes(expr, jaw, static[:2], cfg)
    with pytest.raises(ValueError, match="detail_depth_mm"):
        sd.detail_amplitudes(expr, jaw, static, sd.DecaSynthConfig(detail_depth_mm=(1.0,)))


def test_static_detail_is_deterministic_per_seed_and_identity():
    a = sd.sample_detail_static(3, 7)
    np.testing.assert_array_equal(a, sd.sample_detail_static(3, 7))
    assert not np.array_equal(a, sd.sample_detail_static(4, 7))
    assert not np.array_equal(a, sd.sample_detail_static(3, 8))
    assert np.all((a >= 0) & (a <= sd.DecaSynthConfig().detail_static_max))


@pytest.fixture(scope="module")
def renders(flame):
    with_detail = sd.generate_deca(flame, 2, 2, 5, SIZE, config=NASOLABIAL_ONLY)
    without = sd.generate_deca(flame, 2, 2, 5, SIZE, config=NO_DETAIL)
    return with_detail, without


def test_detail_changes_only_the_shading_where_the_displacement_is(flame, renders):
    det, flat = renders
    # the labels (and every random draw) are those of the detail-free generator
    for key in det:
        if key != "images":
            np.testing.assert_array_equal(det[key], flat[key], err_msg=key)
    disp = sd.detail_displacements(flame, det, 5, NASOLABIAL_ONLY)
    assert disp.shape == (4, 256, 256) and np.all(disp.max(axis=(1, 2)) <= 0) and np.all(disp.min(axis=(1, 2)) < -1e-4)
    diff = np.abs(det["images"].astype(int) - flat["images"].astype(int)).max(-1)
    assert diff.max() > 5  # the folds are visible
    for i in range(4):
        changed = diff[i] > 0
        assert changed.any()
        assert not (changed & (det["face_mask"][i] == 0) & (diff[i] > 2)).any()  # nothing off the face
        # only around the nasolabial region: between the nose bridge's and the chin's rows
        pix = (det["landmarks68"][i, :, :2] + 1) * SIZE / 2 - 0.5
        rows = np.nonzero(changed)[0]
        assert rows.min() >= pix[27, 1] - 2 and rows.max() <= pix[8, 1] + 2
    # reproducible from the labels and the seed: the same maps with the same seed, others with another
    np.testing.assert_array_equal(disp, sd.detail_displacements(flame, det, 5, NASOLABIAL_ONLY))
    assert not np.array_equal(disp, sd.detail_displacements(flame, det, 6, NASOLABIAL_ONLY))
