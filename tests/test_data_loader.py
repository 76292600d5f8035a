"""jface.data.loader: deterministic, sharded, checkpointable batches; jface.data.synthetic_stn labels."""

from __future__ import annotations

import numpy as np
import pytest

from jface.data.loader import BatchLoader, mirror_labels_np


def _arrays(count=24):
    images = np.arange(count * 4 * 6 * 3, dtype=np.uint8).reshape(count, 4, 6, 3)
    labels = np.zeros((count, 21, 3), np.float32)
    labels[..., 0] = np.arange(21) + 1 + np.arange(count)[:, None]
    labels[..., 1] = 2.0
    labels[..., 2] = 1.0
    labels[:, 3] = 0.0  # a missing landmark stays (0, 0, 0)
    return {"images": images, "labels": labels, "index": np.arange(count), "identity": np.arange(count) // 4}


@pytest.mark.parametrize("use_grain", [False, True])
def test_batches_deterministic_and_resumable(use_grain):
    if use_grain:
        pytest.importorskip("grain")
    data = _arrays()
    first = BatchLoader(data, batch_size=6, seed=3, process_index=0, process_count=1, use_grain=use_grain)
    seen = [next(first)["index"] for _ in range(9)]  # crosses two epoch boundaries (4 steps/epoch)
    for epoch in range(2):
        epoch_items = np.concatenate(seen[4 * epoch:4 * epoch + 4])
        assert sorted(epoch_items) == list(range(24))  # a permutation per epoch
    assert not np.array_equal(np.concatenate(seen[:4]), np.concatenate(seen[4:8]))
    # Resume from a saved state continues exactly; the numpy and grain paths agree.
    resumed = BatchLoader(data, batch_size=6, seed=3, process_index=0, process_count=1,
                          use_grain=not use_grain)
    probe = BatchLoader(data, batch_size=6, seed=3, process_index=0, process_count=1, use_grain=use_grain)
    for _ in range(5):
        next(probe)
    state = probe.get_state()
    assert state == {"step": 5, "seed": 3}
    resumed.set_state(state)
    for k in range(5, 9):
        np.testing.assert_array_equal(next(resumed)["index"], seen[k])
    with pytest.raises(ValueError, match="seed"):
        resumed.set_state({"step": 1, "seed": 4})


def test_process_shards_partition_the_global_batch():
    data = _arrays()
    whole = BatchLoader(data, batch_size=8, seed=1, process_index=0, process_count=1, use_grain=False)
    parts = [BatchLoader(data, batch_size=8, seed=1, process_index=p, process_count=2, use_grain=False)
             for p in range(2)]
    for step in range(4):
        glob = whole.local_batch(step)["index"]
        np.testing.assert_array_equal(np.concatenate([p.local_batch(step)["index"] for p in parts]), glob)
    with pytest.raises(ValueError, match="batch_size"):
        BatchLoader(data, batch_size=7, process_index=0, process_count=2)


def test_identity_grouped_batches():
    data = _arrays()
    loader = BatchLoader(data, batch_size=4, seed=0, process_index=0, process_count=1,
                         group_key="identity", images_per_group=2, use_grain=False)
    for step in range(6):
        ids = loader.local_batch(step)["identity"]
        assert ids[0] == ids[1] and ids[2] == ids[3] and ids[0] != ids[2]
        assert len(set(loader.local_batch(step)["index"])) == 4
    with pytest.raises(ValueError, match="images_per_group"):
        BatchLoader(data, batch_size=10, group_key="identity", images_per_group=5,
                    process_index=0, process_count=1)


def test_mirror_interleaves_pairs():
    data = _arrays()
    loader = BatchLoader(data, batch_size=4, seed=0, process_index=0, process_count=1, mirror=True,
                         use_grain=False, mirror_fn=mirror_labels_np)
    batch = loader.local_batch(0)
    assert batch["images"].shape == (8, 4, 6, 3)
    np.testing.assert_array_equal(batch["images"][1], batch["images"][0][:, ::-1])
    np.testing.assert_array_equal(batch["index"][0::2], batch["index"][1::2])
    np.testing.assert_array_equal(batch["mirrored"], [False, True] * 4)
    original, mirrored = batch["labels"][0], batch["labels"][1]
    # x' = W + 1 - x (W = 6), landmark 0 <- old 5, the missing landmark 3 -> new slot 2 stays 0.
    assert mirrored[0, 0] == 7 - original[5, 0]
    np.testing.assert_array_equal(mirrored[2], [0, 0, 0])
    np.testing.assert_array_equal(mirror_labels_np(mirrored, 6), original)  # an involution


def test_mirror_matches_library():
    stn = pytest.importorskip("jface.stn")
    labels = _arrays()["labels"][:3]
    xy, vis = stn.mirror_labels(labels[..., :2], labels[..., 2], image_width=224)
    ours = mirror_labels_np(labels, 224)
    np.testing.assert_allclose(ours[..., :2], np.asarray(xy))
    np.testing.assert_allclose(ours[..., 2], np.asarray(vis))


def test_bad_arrays_raise():
    with pytest.raises(ValueError, match="equal-length"):
        BatchLoader({"a": np.zeros(3), "b": np.zeros(4)}, batch_size=1, process_index=0, process_count=1)
    with pytest.raises(ValueError, match="labels"):
        mirror_labels_np(np.zeros((2, 20, 3)))


def test_synthetic_labels_match_projection_and_pixels():
    import jax.numpy as jnp

    from jface.data import synthetic_stn

    model = synthetic_stn.toy_model(12)
    config = synthetic_stn.SyntheticConfig(image_hw=(48, 48), num_identities=2, images_per_identity=2, chunk=4)
    data = synthetic_stn.generate(model, config, seed=5)
    again = synthetic_stn.generate(model, config, seed=5)
    np.testing.assert_array_equal(data["images"], again["images"])  # deterministic in the seed
    assert data["images"].dtype == np.uint8 and data["images"].shape == (4, 48, 48, 3)
    np.testing.assert_array_equal(data["identity"], [0, 0, 1, 1])
    np.testing.assert_allclose(data["theta"][0, 6:11], data["theta"][1, 6:11])  # identity shared
    idx = np.asarray(model.landmarks["aflw21"])
    for k in range(4):
        points, _, _ = synthetic_stn.project(model, jnp.asarray(data["theta"][k]))
        vis = data["labels"][k, :, 2] > 0
        np.testing.assert_allclose(data["labels"][k, vis, :2], np.asarray(points)[idx][vis], atol=1e-4)
        # The nose tip (AFLW 15) is drawn where its label says: the y-up frame -> row H - y.
        if vis[14]:
            x, y = data["labels"][k, 14, :2]
            row, col = int(round(48 - y)), int(round(x - 1))
            rendered = data["images"][k, row, col].astype(float)
            assert np.abs(rendered - np.array([216, 168, 140]) * 1.0).max() < 200  # a face pixel
    assert abs(data["pose_deg"][:, 0]).max() <= 60
    labels_only = synthetic_stn.generate(model, config, seed=5, render_images=False)
    assert labels_only["images"] is None
    np.testing.assert_allclose(labels_only["labels"], data["labels"], atol=1e-4)
    np.testing.assert_array_equal(labels_only["theta"], data["theta"])
    other = synthetic_stn.generate(model, config, seed=6)
    assert not np.allclose(other["theta"], data["theta"])
    with pytest.raises(ValueError, match="landmark"):
        synthetic_stn.generate(model, synthetic_stn.SyntheticConfig(landmark_set="ibug68"))


def test_synthetic_projection_matches_stn():
    stn = pytest.importorskip("jface.stn")
    import jax.numpy as jnp

    from jface.data import synthetic_stn

    model = synthetic_stn.toy_model(10)
    theta = jnp.asarray(np.r_[0.1, -0.4, 0.05, 100.0, 120.0, -3.0, np.linspace(-1, 1, 10)], jnp.float32)
    points, rotated, shape = synthetic_stn.project(model, theta)
    ref = stn.project(model, theta)
    np.testing.assert_allclose(np.asarray(points), np.asarray(ref["points"]), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(np.asarray(rotated), np.asarray(ref["rotated"]), rtol=1e-5, atol=1e-3)
