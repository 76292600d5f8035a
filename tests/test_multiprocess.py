"""Several processes on CPU: two ``jax.distributed`` processes with two local devices each
(``XLA_FLAGS=--xla_force_host_platform_device_count=2``, coordinator on localhost) read an on-disk
dataset through the streamed loader; the batches each process reads are disjoint and together the
global batches a single process reads, the global batch assembled from the local slices is that
batch, and a few ``train.stn`` steps on ``--data DATASET`` give the parameters of a one-process run
with the same global batch. Also DECA's identity-grouped B x K = 2 batches from a photo folder
(``tests/multiprocess_worker.py`` is the worker)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_data_sources import _photo, _toy

from jface.data.pipeline import StreamLoader
from jface.data.sources import open_source
from jface.training import deca as deca_training
from train import deca as train_deca

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("multiprocess_worker.py")
STEPS = 3


def _env(cache, devices: int) -> dict:
    env = dict(os.environ)
    env.update({
        "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
        "JAX_PLATFORMS": "cpu",
        "JAX_ENABLE_X64": "0",
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JFACE_COMPILATION_CACHE": "0",
    })
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def _params(path: Path) -> dict:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The on-disk dataset (24 records of 8 identities, 3DMM-STN frame, theta labels), read and
    trained on by two processes x two devices and, at the same time, by one process x one device."""
    root = tmp_path_factory.mktemp("multiprocess")
    dataset = _toy(root / "tfds", "mp", count=24, size=32, mask=False, theta=True,
                   frame="3dmm-stn y-up pixel frame (x, y, vis)")
    cache = root / "jax-cache"
    port = _free_port()
    single, multi = root / "single", root / "multi"
    single.mkdir()
    multi.mkdir()
    common = [sys.executable, str(WORKER)]
    commands = [(common + [str(single), str(dataset), "--stn_steps", str(STEPS)], 1)]
    commands += [(common + [str(multi), str(dataset), "--stn_steps", str(STEPS), "--coordinator", f"localhost:{port}",
                            "--num_processes", "2", "--process_id", str(i)], 2) for i in range(2)]
    logs = [root / f"worker{k}.log" for k in range(3)]
    procs = [subprocess.Popen(command, cwd=REPO, env=_env(cache, devices), stdout=open(log, "w"),
                              stderr=subprocess.STDOUT) for (command, devices), log in zip(commands, logs)]
    # a peer that fails leaves the other waiting for the coordination service's time-out: stop it
    deadline = time.time() + 900
    while any(p.poll() is None for p in procs) and time.time() < deadline:
        if any(p.poll() not in (None, 0) for p in procs):
            break
        time.sleep(0.2)
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    outs = [log.read_text() for log in logs]
    assert [p.returncode for p in procs] == [0, 0, 0], "\n-----\n".join(out[-3000:] for out in outs)
    reports = [json.loads((single / "report0.json").read_text())]
    reports += [json.loads((multi / f"report{i}.json").read_text()) for i in range(2)]
    return {"dataset": dataset, "single": single, "multi": multi, "reports": reports, "outs": outs}


def test_processes_read_disjoint_shards_that_make_the_global_batches(runs):
    one, p0, p1 = runs["reports"]
    assert (one["processes"], one["devices"]) == (1, 1)
    assert (p0["processes"], p0["local_devices"], p0["devices"]) == (2, 2, 4)
    assert (p1["process"], p1["local_devices"]) == (1, 2)
    for kind in ("flat", "grouped"):
        steps = one[kind]["steps_per_epoch"]
        assert p0[kind]["steps_per_epoch"] == p1[kind]["steps_per_epoch"] == steps >= 2
        seen = []
        for step in range(steps):
            a, b, whole = p0[kind]["indices"][step], p1[kind]["indices"][step], one[kind]["indices"][step]
            assert len(a) == len(b) == 4 and len(whole) == 8
            assert not set(a) & set(b)  # disjoint
            assert a + b == whole  # together: the one-process global batch, in process order
            seen += whole
        assert len(seen) == len(set(seen))  # an epoch reads each record at most once
        if kind == "flat":  # 24 records, batches of 8: one epoch is the whole split
            assert sorted(seen) == list(range(24))
    # identity-grouped (K = 2): each process's slice holds whole pairs of one identity
    for report in (p0, p1):
        for identities in report["grouped"]["identities"]:
            pairs = np.asarray(identities).reshape(-1, 2)
            assert (pairs[:, 0] == pairs[:, 1]).all()
    # the global batch assembled from the two local slices (shard_batch over the 4-device mesh),
    # gathered back on each process, is the one-process batch; a jitted sum over it spans both
    assert p0["global_shape"][0] == 8
    assert p0["global_first_batch"] == p1["global_first_batch"] == one["flat"]["indices"][0]
    assert p0["global_pixel_sum"] == pytest.approx(p0["local_pixel_sum"] + p1["local_pixel_sum"], rel=1e-6)
    assert p0["global_pixel_sum"] == pytest.approx(one["local_pixel_sum"], rel=1e-6)


def test_two_processes_train_like_one(runs):
    one, p0, p1 = runs["reports"]
    assert one["stn_step"] == p0["stn_step"] == p1["stn_step"] == STEPS
    assert "2 process(es)" not in runs["outs"][0]
    reference = _params(runs["single"] / "stn_params.npz")
    a, b = _params(runs["multi"] / "stn_params.npz.p0"), _params(runs["multi"] / "stn_params.npz.p1")
    assert a.keys() == b.keys() == reference.keys()
    for key in reference:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)  # replicated: identical on both
        np.testing.assert_allclose(a[key], reference[key], rtol=2e-4, atol=2e-6, err_msg=key)
    # and the steps moved the parameters away from their start
    assert any(np.abs(reference[key]).max() > 0 for key in reference)


# --- DECA's identity-grouped batches from a folder of photographs ----------------------------------

def test_deca_grouped_batches_from_a_photo_folder(tmp_path):
    """The coarse stage's B x K batches (tiny preset: 2 identities x K = 2) as ``train.deca --data
    FOLDER`` builds them: rows 2g, 2g + 1 are two different photos of one identity (the pairs that
    DECA's shape-consistency swap exchanges codes within), and two processes' shards split each
    global batch into whole groups."""
    rng = np.random.default_rng(5)
    folder = tmp_path / "photos"
    for person, count in (("ann", 3), ("bob", 2), ("cy", 2), ("dee", 4), ("solo", 1)):
        for k in range(count):
            _photo(folder / person / f"{k}.png", rng, side=".npy")
    config = train_deca.preset("tiny").replace(data=str(folder), data_dir=str(tmp_path / "tfds"))
    assert config.batch("coarse") == (2, 2)
    source = open_source(str(folder), task="deca", data_dir=tmp_path / "tfds", detector=None, progress=False,
                         log=lambda *_: None)
    names = np.array([Path(source._raw(i)["path"].decode()).parent.name for i in range(len(source))])
    loader = deca_training._loader(config, "coarse", source)
    assert isinstance(loader, StreamLoader) and loader.dropped_groups == 1  # "solo" has one photo
    shards = [StreamLoader(source, batch_size=4, seed=loader.seed, shard_index=i, shard_count=2,
                           images_per_group=2, with_index=True, keys=("images", "identity")) for i in range(2)]
    for step in range(3 * loader.steps_per_epoch):
        batch = next(loader)
        assert set(batch) == {"images", "landmarks68", "face_mask", "identity"}
        assert batch["images"].shape == (4, 224, 224, 3)
        indices = loader.global_indices(step).reshape(2, 2)
        for pair in indices:
            assert pair[0] != pair[1] and names[pair[0]] == names[pair[1]] != "solo"
        assert (batch["identity"].reshape(2, 2)[:, 0] == batch["identity"].reshape(2, 2)[:, 1]).all()
        assert names[indices[0, 0]] != names[indices[1, 0]]
        local = [shard.local_batch(step)["index"].tolist() for shard in shards]
        assert local[0] + local[1] == indices.reshape(-1).tolist()
