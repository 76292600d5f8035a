"""jface.data.pipeline.StreamLoader: the batches of BatchLoader over any random-access source,
sharded per process, identity-grouped, mirrored, and resumed exactly from its state. (Processes
reading an on-disk dataset together, through jax.distributed: tests/test_multiprocess.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from jface.data.loader import BatchLoader
from jface.data.pipeline import StreamLoader, group_members, mirror_pairs
from jface.data.sources import ArraySource
from jface.models.landmarks import IBUG68_MIRROR
from jface.stn import mirror_labels

REPO = Path(__file__).resolve().parents[1]


def _arrays(identities=12, per_identity=4, size=8, points=21, seed=0):
    rng = np.random.default_rng(seed)
    count = identities * per_identity
    labels = rng.uniform(1, size, (count, points, 3)).astype(np.float32)
    labels[..., 2] = rng.integers(0, 2, (count, points))
    labels[labels[..., 2] == 0] = 0.0
    return {
        "images": rng.integers(0, 255, (count, size, size, 3), dtype=np.uint8),
        "labels": labels,
        "identity": np.repeat(np.arange(identities) * 7 + 3, per_identity).astype(np.int64),
    }


def _assert_batches_equal(a, b):
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("use_grain", [False, True])
@pytest.mark.parametrize("grouped,mirror", [(False, False), (True, False), (False, True), (True, True)])
def test_same_batches_as_batchloader(use_grain, grouped, mirror):
    """Over the same rows, StreamLoader reads exactly BatchLoader's batches, across epochs."""
    if use_grain:
        pytest.importorskip("grain")
    arrays = _arrays()
    k = 2 if grouped else 1
    reference = BatchLoader(arrays, batch_size=8, seed=5, process_index=0, process_count=1,
                            group_key="identity" if grouped else None, images_per_group=k, mirror=mirror,
                            use_grain=False)
    loader = StreamLoader(ArraySource(arrays), batch_size=8, seed=5, images_per_group=k, mirror=mirror,
                          use_grain=use_grain)
    assert loader.steps_per_epoch == reference.steps_per_epoch
    for _ in range(2 * loader.steps_per_epoch + 1):
        _assert_batches_equal(next(loader), next(reference))


def test_identity_grouped_layout():
    """B x K batches: K records of each identity, identity-major, K distinct records."""
    arrays = _arrays(identities=6, per_identity=5)
    loader = StreamLoader(ArraySource(arrays), batch_size=12, images_per_group=3, with_index=True, use_grain=False)
    for step in range(4):
        batch = loader.local_batch(step)
        groups = batch["identity"].reshape(4, 3)
        assert np.all(groups == groups[:, :1]) and len(set(groups[:, 0])) == 4
        assert np.all(arrays["identity"][batch["index"]] == batch["identity"])
        assert all(len(set(row)) == 3 for row in batch["index"].reshape(4, 3))


def test_small_identities_are_left_out_and_counted():
    identities = np.array([0, 0, 0, 1, 2, 2, 2, 3, 3])
    values, members, dropped = group_members(identities, 2)
    assert list(values) == [0, 2, 3] and dropped == 1
    assert [list(m) for m in members] == [[0, 1, 2], [4, 5, 6], [7, 8]]
    arrays = {"images": np.zeros((9, 2, 2, 3), np.uint8), "identity": identities}
    loader = StreamLoader(ArraySource(arrays), batch_size=4, images_per_group=2, use_grain=False)
    assert loader.dropped_groups == 1 and loader.steps_per_epoch == 1
    with pytest.raises(ValueError, match="needs 3 identities with >= 3 records"):
        StreamLoader(ArraySource(arrays), batch_size=9, images_per_group=3, use_grain=False)


@pytest.mark.parametrize("use_grain", [False, True])
def test_resume_reads_the_uninterrupted_batches(use_grain):
    if use_grain:
        pytest.importorskip("grain")
    source = ArraySource(_arrays())
    options = dict(batch_size=8, seed=3, images_per_group=2, mirror=True, use_grain=use_grain)
    uninterrupted = StreamLoader(source, **options)
    expected = [next(uninterrupted) for _ in range(9)]
    first = StreamLoader(source, **options)
    for _ in range(5):
        next(first)
    state = json.loads(json.dumps(first.get_state()))
    resumed = StreamLoader(source, **options)
    resumed.set_state(state)
    for want in expected[5:]:
        _assert_batches_equal(next(resumed), want)


def test_state_of_another_source_or_batch_is_refused():
    loader = StreamLoader(ArraySource(_arrays()), batch_size=8, use_grain=False)
    state = loader.get_state()
    other = StreamLoader(ArraySource(_arrays(identities=10)), batch_size=8, use_grain=False)
    with pytest.raises(ValueError, match="records=48"):
        other.set_state(state)
    with pytest.raises(ValueError, match="batch_size=8"):
        StreamLoader(ArraySource(_arrays()), batch_size=4, use_grain=False).set_state(state)
    loader.set_state({"step": 3, "seed": 0})  # BatchLoader's state is accepted
    assert loader.get_state()["step"] == 3


def test_shards_split_the_global_batch():
    """Two shards read disjoint halves of the one-process global batch; an epoch covers everything."""
    source = ArraySource(_arrays(identities=8, per_identity=4))  # 32 records, 4 steps of 8
    whole = StreamLoader(source, batch_size=8, seed=1, use_grain=False)
    shards = [StreamLoader(source, batch_size=8, seed=1, shard_index=i, shard_count=2, use_grain=False)
              for i in range(2)]
    seen = []
    for step in range(whole.steps_per_epoch):
        parts = [s.local_indices(step) for s in shards]
        np.testing.assert_array_equal(np.concatenate(parts), whole.global_indices(step))
        seen += [list(p) for p in parts]
    flat = np.concatenate(seen)
    assert len(flat) == len(source) and len(set(flat)) == len(source)


def test_bad_arguments():
    source = ArraySource(_arrays())
    with pytest.raises(ValueError, match="divisible by shard_count=3"):
        StreamLoader(source, batch_size=8, shard_count=3, shard_index=0)
    with pytest.raises(ValueError, match="shard_index"):
        StreamLoader(source, batch_size=8, shard_count=2, shard_index=2)
    with pytest.raises(ValueError, match="images_per_group=3"):
        StreamLoader(source, batch_size=8, images_per_group=3)
    with pytest.raises(ValueError, match="exceeds the 48 records"):
        StreamLoader(source, batch_size=64)
    with pytest.raises(KeyError, match="has no \\['landmarks68'\\]"):
        StreamLoader(source, batch_size=8, keys=("images", "landmarks68"), use_grain=False).local_batch(0)


def test_mirror_pairs_is_the_library_mirror():
    rng = np.random.default_rng(2)
    for points, order in ((21, None), (68, IBUG68_MIRROR)):
        labels = rng.uniform(1, 64, (3, points, 3)).astype(np.float32)
        labels[..., 2] = 1.0
        batch = {"images": rng.integers(0, 255, (3, 64, 64, 3), dtype=np.uint8), "labels": labels,
                 "identity": np.arange(3)}
        out = mirror_pairs(batch)
        kwargs = {} if order is None else {"order": order}
        xy, vis = mirror_labels(labels[..., :2], labels[..., 2], image_width=64, **kwargs)
        np.testing.assert_allclose(out["labels"][1::2, :, :2], np.asarray(xy), rtol=0, atol=1e-5)
        np.testing.assert_array_equal(out["labels"][1::2, :, 2], np.asarray(vis))
        np.testing.assert_array_equal(out["images"][1::2], batch["images"][:, :, ::-1])
        np.testing.assert_array_equal(out["labels"][0::2], labels)
        assert list(out["mirrored"]) == [False, True] * 3 and list(out["identity"]) == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="21 or 68"):
        mirror_pairs({"images": np.zeros((1, 4, 4, 3)), "labels": np.zeros((1, 5, 3))})


# --- host memory does not grow with the dataset -------------------------------------------------------

_RSS_CHILD = textwrap.dedent("""
    import json, sys, time
    from jface.data.pipeline import StreamLoader
    from jface.data.sources import open_source

    def peak_mb():  # VmHWM: this process's peak RSS since exec (ru_maxrss would include the parent's)
        status = open("/proc/self/status").read()
        return int(status.split("VmHWM:")[1].split()[0]) / 1024

    directory, steps = sys.argv[1], int(sys.argv[2])
    imported = peak_mb()
    source = open_source(directory, task="deca")
    loader = StreamLoader(source, batch_size=32, images_per_group=4, seed=0,
                          keys=("images", "landmarks68", "face_mask", "identity"))
    next(loader)
    first = peak_mb()
    start = time.perf_counter()
    for _ in range(steps - 1):
        batch = next(loader)
    elapsed = time.perf_counter() - start
    print(json.dumps({"records": len(source), "after_import_mb": imported, "after_first_batch_mb": first,
                      "peak_mb": peak_mb(), "batches_per_s": (steps - 1) / elapsed}))
""")


def write_deca_dataset(data_dir: Path, count: int, size: int = 64, per_identity: int = 4) -> Path:
    """``count`` records in the layout of ``jface_synthetic_faces/deca`` (image, face_mask, landmarks68,
    identity, frame) with random pixels, for measuring the reader (its memory does not depend on
    what the pixels show)."""
    import tensorflow_datasets as tfds

    class RssFaces(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            zlib = tfds.features.Encoding.ZLIB
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(size, size, 3), dtype=np.uint8, encoding=zlib),
                "face_mask": tfds.features.Tensor(shape=(size, size), dtype=np.uint8, encoding=zlib),
                "landmarks68": tfds.features.Tensor(shape=(68, 3), dtype=np.float32),
                "identity": tfds.features.Scalar(dtype=np.int64),
                "frame": tfds.features.Text()}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            rng = np.random.default_rng(0)
            mask = np.zeros((size, size), np.uint8)
            mask[size // 4:-size // 4, size // 4:-size // 4] = 1
            for i in range(count):
                landmarks = np.concatenate([rng.uniform(-0.8, 0.8, (68, 2)), np.ones((68, 1))], 1)
                yield f"{i:08d}", {"image": rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
                                   "face_mask": mask, "landmarks68": landmarks.astype(np.float32),
                                   "identity": i // per_identity, "frame": "deca ndc: x right, y down"}

    builder = RssFaces(data_dir=str(data_dir), file_format="array_record",
                       config=tfds.core.BuilderConfig(name=f"n{count}"))
    tfds.disable_progress_bar()
    builder.download_and_prepare()
    return Path(builder.data_dir)


@pytest.mark.slow
def test_host_memory_does_not_grow_with_the_dataset(tmp_path):
    """Peak RSS of reading 300 DECA batches (8 identities x 4, 64 px) through grain from 2,000 and
    from 20,000 on-disk records: the larger dataset costs no more than its record index."""
    pytest.importorskip("grain")
    if not Path("/proc/self/status").is_file():
        pytest.skip("peak RSS is read from /proc/self/status (Linux)")
    figures = {}
    for count in (2_000, 20_000):
        directory = write_deca_dataset(tmp_path, count)
        output = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(directory), "300"], cwd=REPO,
                                capture_output=True, text=True, timeout=900)
        assert output.returncode == 0, output.stdout + output.stderr
        figures[count] = json.loads(output.stdout.strip().splitlines()[-1])
        print(f"\n{count} records: {figures[count]}")
    assert figures[20_000]["records"] == 20_000
    assert figures[20_000]["peak_mb"] < figures[2_000]["peak_mb"] + 30, figures
