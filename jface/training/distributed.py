"""Multi-process start-up and placement: :func:`initialize_distributed` (``jax.distributed`` from
flags, or automatically on Cloud TPU VMs), a 1-D :func:`make_mesh` over every device (axis
``'data'``), batches sharded along it (:func:`shard_batch`, from each process's local slice),
everything else replicated (:func:`replicate`), and :func:`map_items` for per-item functions that
must run per device."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jface.models.defaults.cache import cache_dir

__all__ = ["initialize_distributed", "add_distributed_args", "initialize_from_args", "parse_device_ids",
           "barrier", "is_main_process", "enable_compilation_cache", "make_mesh", "shard_batch", "map_items",
           "replicate"]


def _on_cloud_tpu_vm() -> bool:
    return any(k in os.environ for k in ("TPU_WORKER_HOSTNAMES", "CLOUD_TPU_TASK_ID", "TPU_WORKER_ID"))


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, local_device_ids=None) -> None:
    """Start multi-process JAX when asked.

    With ``coordinator`` ("host:port"), ``num_processes`` and ``process_id`` given, call
    ``jax.distributed.initialize`` with them (CPU processes use gloo collectives). On a Cloud TPU
    VM with none given, call it without arguments (it discovers the pod). Otherwise: one process.
    ``local_device_ids`` (GPUs: the devices of this host this process drives, e.g. ``[rank]`` for
    one process per GPU) is passed through; None lets each process use every visible device.
    """
    given = [coordinator is not None, num_processes is not None, process_id is not None]
    if any(given) and not all(given):
        raise ValueError("--coordinator, --num_processes and --process_id must be given together")
    if all(given):
        if num_processes > 1:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id, local_device_ids=local_device_ids)
    elif _on_cloud_tpu_vm():
        jax.distributed.initialize()


def add_distributed_args(parser) -> None:
    """The multi-process flags every training script takes: ``--coordinator host:port
    --num_processes N --process_id I`` and ``--local_device_ids IDS`` (read back by
    :func:`initialize_from_args`)."""
    parser.add_argument("--coordinator", default=None)
    parser.add_argument("--num_processes", type=int, default=None)
    parser.add_argument("--process_id", type=int, default=None)
    parser.add_argument("--local_device_ids", default=None, metavar="IDS",
                        help="this host's devices this process drives, comma-separated (one process per "
                             "GPU: its local rank); default: every visible device")


def initialize_from_args(args) -> None:
    """:func:`initialize_distributed` with the flags of :func:`add_distributed_args` (the device ids
    already parsed by :func:`parse_device_ids`)."""
    initialize_distributed(args.coordinator, args.num_processes, args.process_id,
                           local_device_ids=args.local_device_ids)


def parse_device_ids(text: str | None) -> list | None:
    """``--local_device_ids``: ``"0,1"`` -> ``[0, 1]``; None or empty -> None (every visible device)."""
    if text is None or str(text).strip() == "":
        return None
    try:
        ids = [int(part) for part in str(text).split(",")]
    except ValueError:
        ids = None
    if not ids or any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise ValueError(f"--local_device_ids: expected distinct non-negative integers separated by commas "
                         f"(e.g. 0 or 0,1), got {text!r}")
    return ids


def barrier(name: str, timeout_s: float = 1800.0) -> None:
    """Wait until every process reaches ``name`` (the coordination service's barrier).

    Used before the first collective of each phase: CPU (gloo) collectives give up when a peer is
    more than ~30 s late to set up a communicator, and data generation or compilation can differ
    by more than that between processes on a loaded machine.
    """
    if jax.process_count() == 1:
        return
    from jax._src import distributed  # no public barrier with a timeout in jax 0.10/0.11

    distributed.global_state.client.wait_at_barrier(f"jface_{name}", int(timeout_s * 1000))


def is_main_process() -> bool:
    return jax.process_index() == 0


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh over all devices (every process's), axis name ``'data'``."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("data",))


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict:
    """Global arrays sharded along axis 0 over ``'data'`` from each process's local slice.

    The global batch is the concatenation of all processes' local batches in process order;
    each local batch size must be divisible by the process's local device count.
    """
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    local = len(mesh.local_devices)
    out = {}
    for name, value in batch.items():
        value = np.asarray(value)
        if value.shape[0] % local:
            raise ValueError(
                f"batch[{name!r}]: local batch {value.shape[0]} not divisible by {local} local devices")
        out[name] = jax.make_array_from_process_local_data(sharding, value)
    return out


def map_items(fn, mesh: Mesh | None, *args, shared=()):
    """``jax.vmap(fn)`` over the leading (batch) axis of ``args`` and of every output; on a mesh of
    several devices inside ``jax.shard_map`` over ``'data'``, so each device maps its own shard.

    ``fn(*shared, *items)``: ``shared`` is a tuple of pytrees passed whole to every item (and
    replicated on the mesh) — pass traced arrays such as the model's faces here rather than
    closing over them (closed-over traced arrays carry the outer mesh's sharding).

    For per-item functions that contain custom calls XLA's SPMD partitioner has no rule for — the
    Pallas kernels of :mod:`jface.render` — whose operands it would otherwise replicate, so that
    every device would run them on the global batch.
    """
    shared = tuple(shared)
    batched = jax.vmap(fn, in_axes=(None,) * len(shared) + (0,) * len(args))
    if mesh is None or mesh.size == 1:
        return batched(*shared, *args)
    spec = PartitionSpec("data")
    in_specs = (PartitionSpec(),) * len(shared) + (spec,) * len(args)
    return jax.shard_map(batched, mesh=mesh, in_specs=in_specs, out_specs=spec, check_vma=False)(*shared, *args)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place every leaf, identical on all processes, fully replicated on the mesh."""
    sharding = NamedSharding(mesh, PartitionSpec())

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree_util.tree_map(put, tree)


def enable_compilation_cache(directory=None) -> Path | None:
    """JAX's persistent compilation cache in ``directory`` (default: ``<jface cache>/xla``, see
    :func:`jface.models.defaults.cache.cache_dir`): a program compiled once is read from disk by
    later runs of the same program. ``JFACE_COMPILATION_CACHE=0`` leaves it off. Returns the folder."""
    if os.environ.get("JFACE_COMPILATION_CACHE", "1") == "0":
        return None
    path = Path(directory) if directory is not None else cache_dir() / "xla"
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return path
