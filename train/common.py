"""Training infrastructure shared by ``train.stn`` (and later ``train.deca``).

* Distributed start-up: :func:`initialize_distributed` (``jax.distributed.initialize`` from flags,
  or automatically on Cloud TPU VMs) and a 1-D :func:`make_mesh` over all devices, axis ``'data'``.
* Placement: batches sharded along ``'data'`` (:func:`shard_batch`, from each process's local
  slice), everything else replicated (:func:`replicate`).
* :class:`TrainState`: one pytree (step, params, opt_state, rng) — what a checkpoint holds,
  together with the data iterator's JSON state.
* :class:`Checkpointer`: orbax ``CheckpointManager`` (synchronous; a step directory appears only
  once fully written, so a crash while writing leaves the previous checkpoint the latest).
* :class:`StopFlag`: SIGTERM/SIGINT set a flag the loop checks every step (agreed across
  processes), so the loop saves and exits cleanly.
* :func:`check_finite`: the NaN guard. :class:`MetricWriter` (tensorboardX, else a minimal
  event-file writer), :func:`save_image_grid` (PNG grid), :func:`progress` (tqdm on process 0).
"""

from __future__ import annotations

import math
import os
import signal
import struct as _struct
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import flax.struct
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "initialize_distributed",
    "add_distributed_args",
    "initialize_from_args",
    "OneStepLate",
    "parse_device_ids",
    "make_mesh",
    "shard_batch",
    "replicate",
    "map_items",
    "TrainState",
    "Checkpointer",
    "StopFlag",
    "NonFiniteLossError",
    "check_finite",
    "MetricWriter",
    "save_image_grid",
    "progress",
    "is_main_process",
    "barrier",
]


# --- distributed set-up ----------------------------------------------------------------------

def _on_cloud_tpu_vm() -> bool:
    return any(k in os.environ for k in ("TPU_WORKER_HOSTNAMES", "CLOUD_TPU_TASK_ID", "TPU_WORKER_ID"))


def initialize_distributed(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
                           process_id: Optional[int] = None, local_device_ids=None) -> None:
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


def parse_device_ids(text: Optional[str]) -> Optional[list]:
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


def map_items(fn, mesh: Optional[Mesh], *args, shared=()):
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


# --- state -------------------------------------------------------------------------------------

@flax.struct.dataclass
class TrainState:
    """Everything a step changes: ``step`` (int32 scalar), ``params``, ``opt_state``, ``rng``
    (a raw uint32 ``(2,)`` key, so checkpoints stay plain arrays)."""

    step: Any
    params: Any
    opt_state: Any
    rng: Any


# --- checkpoints -------------------------------------------------------------------------------

class Checkpointer:
    """Orbax ``CheckpointManager`` holding ``state`` (a pytree) and ``data`` (JSON) per step.

    Saves are synchronous and atomic (orbax writes into a temporary directory and renames it when
    complete), so ``latest_step()`` only ever sees whole checkpoints. All processes must call
    :meth:`save` and :meth:`restore` (orbax coordinates multi-host writes).
    """

    def __init__(self, directory, *, max_to_keep: int = 3):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "data"))

    def latest_step(self) -> Optional[int]:
        self.manager.reload()
        return self.manager.latest_step()

    def all_steps(self):
        self.manager.reload()
        return list(self.manager.all_steps())

    def save(self, step: int, state: TrainState, data_state: Mapping) -> None:
        ocp = self._ocp
        self.manager.save(int(step), args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(dict(data_state))), force=True)
        self.manager.wait_until_finished()

    def restore(self, target: TrainState, step: Optional[int] = None):
        """``(state, data_state, step)`` from ``step`` (default: the latest), placed like
        ``target`` (same shardings), or None when there is no checkpoint."""
        ocp = self._ocp
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
        return restored["state"], dict(restored["data"]), step

    def close(self):
        self.manager.close()


def restore_state_only(directory, target: TrainState, step: Optional[int] = None):
    """Load just the ``state`` item of a checkpoint directory (for evaluation)."""
    ckpt = Checkpointer(directory)
    try:
        out = ckpt.restore(target, step)
    finally:
        ckpt.close()
    if out is None:
        raise FileNotFoundError(f"checkpoint: no checkpoint found in {directory}")
    return out


# --- stopping ------------------------------------------------------------------------------------

class StopFlag:
    """Set by SIGTERM (and SIGINT): the loop saves a checkpoint at the next step and exits.

    :meth:`should_stop` agrees across processes (any process signalled -> all stop at the same
    step), so the collective checkpoint save cannot deadlock.
    """

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
        self.signum = None
        self._previous = {}
        for sig in signals:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass

    def _handle(self, signum, frame):
        del frame
        self.signum = signum

    def should_stop(self) -> bool:
        flag = self.signum is not None
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            flag = bool(np.any(multihost_utils.process_allgather(np.asarray([flag]))))
        return flag

    def restore_handlers(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class NonFiniteLossError(FloatingPointError):
    """The loss (or a metric) became NaN/inf; the run stops and keeps the last good checkpoint."""


def check_finite(metrics: Mapping[str, Any], step: int, last_checkpoint: Optional[int],
                 directory=None) -> None:
    """Raise :class:`NonFiniteLossError` naming the step and the last good checkpoint."""
    bad = {k: float(v) for k, v in metrics.items() if not math.isfinite(float(v))}
    if bad:
        where = (f"the last good checkpoint is step {last_checkpoint} in {directory}"
                 if last_checkpoint is not None else "no checkpoint was written yet")
        raise NonFiniteLossError(
            f"non-finite training metrics at step {step}: {bad}; stopping without saving this "
            f"state ({where}). Lower the learning rate or check the data, then resume.")


class OneStepLate:
    """Reads a train step's metrics one step late, so the host never waits for the step it has just
    dispatched: ``push(i, metrics)`` right after dispatching step i hands step i-1's metrics (now
    fetched, as floats) to ``handle(index, metrics)``, while step i runs; ``settle()`` hands over
    the pending ones now — call it before saving a state (so a saved state's own metrics were
    checked), before anything that reads the state, and after the loop.
    """

    def __init__(self, handle: Callable[[int, dict], None]):
        self._handle = handle
        self._pending = None

    def push(self, index: int, device_metrics) -> None:
        self.settle()
        self._pending = (index, device_metrics)

    def settle(self) -> None:
        if self._pending is None:
            return
        index, device_metrics = self._pending
        self._pending = None
        self._handle(index, {k: float(v) for k, v in jax.device_get(device_metrics).items()})


# --- logging -------------------------------------------------------------------------------------

def progress(total: int, initial: int = 0, desc: str = "train"):
    """A tqdm bar on process 0 (a disabled one elsewhere)."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not is_main_process(),
                dynamic_ncols=True, mininterval=2.0)


class _TinyEventWriter:
    """Minimal TensorBoard event-file writer (scalars only) used when tensorboardX is missing."""

    def __init__(self, logdir):
        Path(logdir).mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{os.uname().nodename}.jface"
        self._file = open(Path(logdir) / name, "ab")
        self._write(self._event(time.time(), 0, b"\x1a" + self._bytes(b"brain.Event:2")))

    @staticmethod
    def _varint(n):
        out = b""
        while True:
            byte = n & 0x7F
            n >>= 7
            if n:
                out += bytes([byte | 0x80])
            else:
                return out + bytes([byte])

    def _bytes(self, payload):
        return self._varint(len(payload)) + payload

    def _event(self, wall_time, step, body):
        return b"\x09" + _struct.pack("<d", wall_time) + b"\x10" + self._varint(step) + body

    def _write(self, event):
        header = _struct.pack("<Q", len(event))
        self._file.write(header + _struct.pack("<I", _masked_crc32c(header)) + event
                         + _struct.pack("<I", _masked_crc32c(event)))
        self._file.flush()

    def add_scalar(self, tag, value, step):
        value_msg = b"\x0a" + self._bytes(tag.encode()) + b"\x15" + _struct.pack("<f", float(value))
        summary = b"\x0a" + self._bytes(value_msg)
        self._write(self._event(time.time(), int(step), b"\x2a" + self._bytes(summary)))

    def add_image(self, *args, **kwargs):  # images go to PNG files instead
        pass

    def flush(self):
        self._file.flush()

    def close(self):
        self._file.close()


def _crc32c_table():
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc32c_table()


def _masked_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class MetricWriter:
    """Scalars to TensorBoard event files (process 0 only) and a line on stdout."""

    def __init__(self, logdir, *, use_tensorboardx: Optional[bool] = None):
        self.enabled = is_main_process() and logdir is not None
        self._writer = None
        if not self.enabled:
            return
        if use_tensorboardx is None:
            try:
                import tensorboardX  # noqa: F401

                use_tensorboardx = True
            except ImportError:
                use_tensorboardx = False
        if use_tensorboardx:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(str(logdir))
        else:
            self._writer = _TinyEventWriter(logdir)

    def scalars(self, step: int, values: Mapping[str, float], prefix: str = "train") -> None:
        if not self.enabled:
            return
        for name, value in values.items():
            self._writer.add_scalar(f"{prefix}/{name}", float(value), int(step))
        self._writer.flush()

    def close(self):
        if self._writer is not None:
            self._writer.close()


def save_image_grid(path, images, *, columns: Optional[int] = None, pad: int = 2) -> None:
    """Write ``images (B, H, W, C)`` (0-255) as one PNG grid (process 0 only)."""
    if not is_main_process():
        return
    from PIL import Image

    images = np.clip(np.asarray(images, np.float32), 0, 255).astype(np.uint8)
    count, height, width, channels = images.shape
    columns = columns or int(math.ceil(math.sqrt(count)))
    rows = int(math.ceil(count / columns))
    canvas = np.full((rows * (height + pad) + pad, columns * (width + pad) + pad, channels), 255, np.uint8)
    for k in range(count):
        r, c = divmod(k, columns)
        canvas[pad + r * (height + pad):pad + r * (height + pad) + height,
               pad + c * (width + pad):pad + c * (width + pad) + width] = images[k]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas.squeeze(-1) if channels == 1 else canvas).save(path)


# --- configuration overrides (shared by train.stn and train.deca) ------------------------------

def _parse_value(field, text: str):
    """``text`` -> a value of the field's default type (bool, int, float, tuple of the element type)."""
    default = field.default
    if isinstance(default, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"--{field.name}: expected true/false, got {text!r}")
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    if isinstance(default, tuple):
        element = type(default[0]) if default else float
        return tuple(element(v) for v in text.split(",") if v)
    return text


def apply_overrides(config, pairs):
    """``pairs`` of (field name, text) -> a new dataclass config; unknown names raise naming the field."""
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(config)}
    updates = {}
    for name, text in pairs:
        if name not in fields:
            raise ValueError(f"--{name}: not a config field (fields: {', '.join(sorted(fields))})")
        updates[name] = _parse_value(fields[name], text)
    return dataclasses.replace(config, **updates)


def override_pairs(set_items, rest):
    """``--set KEY=VALUE`` items and the remaining ``--key value`` / ``--key=value`` tokens -> pairs."""
    pairs = []
    for item in set_items:
        if "=" not in item:
            raise ValueError(f"--set: expected KEY=VALUE, got {item!r}")
        pairs.append(tuple(item.split("=", 1)))
    i = 0
    while i < len(rest):
        token = rest[i]
        if not token.startswith("--"):
            raise ValueError(f"unexpected argument {token!r}")
        if "=" in token:
            pairs.append(tuple(token[2:].split("=", 1)))
            i += 1
        else:
            if i + 1 >= len(rest):
                raise ValueError(f"{token}: missing value")
            pairs.append((token[2:], rest[i + 1]))
            i += 2
    return pairs
