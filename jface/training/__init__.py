"""jface's training library: what ``train.stn`` and ``train.deca`` (and any research script) wire
together.

* :mod:`jface.training.distributed`: multi-process start-up, the ``'data'`` mesh, sharding and
  replication, per-device item maps.
* :mod:`jface.training.state`: :class:`TrainState`, one pytree (step, params, opt_state, rng).
* :mod:`jface.training.checkpoint`: orbax checkpoints of the state and the data iterator's state.
* :mod:`jface.training.loop`: signals, the NaN guard, metrics read one step late, progress.
* :mod:`jface.training.metrics`: TensorBoard scalars and PNG grids.
* :mod:`jface.training.config`: ``--set key=value`` / ``--key value`` overrides of a config.
"""

from jface.training.checkpoint import Checkpointer, restore_state_only
from jface.training.config import apply_overrides, override_pairs, parse_value
from jface.training.distributed import (
    add_distributed_args,
    barrier,
    enable_compilation_cache,
    initialize_distributed,
    initialize_from_args,
    is_main_process,
    make_mesh,
    map_items,
    parse_device_ids,
    replicate,
    shard_batch,
)
from jface.training.loop import (
    TERMINATED_EXIT_CODE,
    NonFiniteLossError,
    OneStepLate,
    StopFlag,
    check_finite,
    progress,
    train_loop,
)
from jface.training.metrics import MetricWriter, save_image_grid
from jface.training.state import TrainState

__all__ = [
    "Checkpointer", "restore_state_only", "apply_overrides", "override_pairs", "parse_value",
    "add_distributed_args", "barrier", "enable_compilation_cache", "initialize_distributed", "initialize_from_args",
    "is_main_process",
    "make_mesh", "map_items", "parse_device_ids", "replicate", "shard_batch", "TERMINATED_EXIT_CODE",
    "NonFiniteLossError", "OneStepLate", "StopFlag", "check_finite", "progress", "train_loop", "MetricWriter",
    "save_image_grid", "TrainState",
]
