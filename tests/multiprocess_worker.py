"""One process of ``tests/test_multiprocess.py`` (not a test module itself).

``python tests/multiprocess_worker.py OUT DATASET [--coordinator HOST:PORT --num_processes N
--process_id I] [--stn_steps S]``: joins ``jax.distributed`` when asked (CPU, gloo collectives,
the local device count from ``XLA_FLAGS``), reads the on-disk ``DATASET`` through the streamed
loader as this process's shard (one epoch, ungrouped and identity-grouped K = 2), assembles the
first global batch from every process's local slice (``shard_batch``) and gathers it back, then
trains ``train.stn``'s tiny preset for S steps on ``--data DATASET`` (and with ``--deca_dataset``
``train.deca``'s tiny pretraining stage). Writes ``OUT/report<I>.json``,
``OUT/stn_params.npz[.p<I>]`` and ``OUT/deca_params<I>.npz``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from jface.data.pipeline import StreamLoader
from jface.data.sources import open_source
from jface.training import deca as deca_training
from jface.training import stn as stn_training
from jface.training.distributed import initialize_distributed, make_mesh, shard_batch
from train import deca as train_deca
from train import stn as train_stn

BATCH = 8  # global batch (before the STN's mirror doubling)


def read_epoch(source, *, images_per_group: int) -> dict:
    """This process's batches of one epoch: record indices and identities, step by step."""
    loader = StreamLoader(source, batch_size=BATCH, seed=3, shard_index=jax.process_index(),
                          shard_count=jax.process_count(), images_per_group=images_per_group, with_index=True,
                          keys=("images", "labels", "identity"))
    batches = [next(loader) for _ in range(loader.steps_per_epoch)]
    return {"steps_per_epoch": loader.steps_per_epoch,
            "indices": [b["index"].tolist() for b in batches],
            "identities": [b["identity"].tolist() for b in batches],
            "images": [b["images"].shape[0] for b in batches],
            "first_batch": batches[0]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("dataset")
    parser.add_argument("--coordinator", default=None)
    parser.add_argument("--num_processes", type=int, default=None)
    parser.add_argument("--process_id", type=int, default=None)
    parser.add_argument("--stn_steps", type=int, default=3)
    parser.add_argument("--deca_dataset", default=None, help="also train.deca's tiny pretraining stage on it")
    parser.add_argument("--deca_steps", type=int, default=2)
    args = parser.parse_args(argv)
    out = Path(args.out)
    start = time.time()
    initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    report = {"process": jax.process_index(), "processes": jax.process_count(),
              "local_devices": jax.local_device_count(), "devices": jax.device_count()}

    source = open_source(args.dataset, task="stn", log=lambda *_: None)
    flat = read_epoch(source, images_per_group=1)
    grouped = read_epoch(source, images_per_group=2)
    batch = flat.pop("first_batch")
    grouped.pop("first_batch")
    report.update(flat=flat, grouped=grouped)

    # the global batch, assembled from every process's local slice, gathered back to each process
    mesh = make_mesh()
    local = {"index": batch["index"], "images": batch["images"]}
    global_batch = shard_batch(local, mesh)
    report["global_shape"] = list(global_batch["images"].shape)
    report["global_first_batch"] = np.asarray(
        multihost_utils.process_allgather(global_batch["index"], tiled=True)).tolist()
    # a reduction over the global batch inside jit: every process gets the sum over all processes
    total = jax.jit(lambda x: x.astype(np.float32).sum())(global_batch["images"])
    report["global_pixel_sum"] = float(np.asarray(total.addressable_shards[0].data))  # replicated
    report["local_pixel_sum"] = float(batch["images"].astype(np.float64).sum())
    report["data_s"] = time.time() - start

    if args.stn_steps:
        config = train_stn.preset("tiny").replace(
            data=args.dataset, steps=args.stn_steps, batch_size=BATCH, eval_at_end=False, checkpoint_every=1000,
            log_every=1, workdir=str(out / "stn_run"), export=str(out / "stn_params.npz"))
        result = stn_training.train(config)
        report["stn_step"] = int(result["step"])
    if args.deca_dataset:
        # BatchNorm statistics over the global batch: with the default per-device statistics the
        # normalisation of 4 devices x 1 image differs from 1 device x 4 images by design
        config = train_deca.preset("tiny").replace(
            stage="pretrain", data=args.deca_dataset, pretrain_steps=args.deca_steps, eval_at_end=False,
            checkpoint_every=1000, workdir=str(out / "deca_run"), bn_stats="global")
        params = deca_training.train(config)["params"]
        flat = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(value)
                for path, value in jax.tree_util.tree_flatten_with_path(params)[0]}
        np.savez(out / f"deca_params{jax.process_index()}.npz", **flat)
    report["total_s"] = time.time() - start
    (out / f"report{jax.process_index()}.json").write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
