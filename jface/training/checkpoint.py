"""Checkpoints through orbax: the train state and the data iterator's JSON state per step."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

import jax
import orbax.checkpoint as ocp

from jface.training.state import TrainState

__all__ = ["Checkpointer", "restore_state_only"]


class Checkpointer:
    """Orbax ``CheckpointManager`` holding ``state`` (a pytree) and ``data`` (JSON) per step.

    Saves are synchronous and atomic (orbax writes into a temporary directory and renames it when
    complete), so ``latest_step()`` only ever sees whole checkpoints. All processes must call
    :meth:`save` and :meth:`restore` (orbax coordinates multi-host writes).
    """

    def __init__(self, directory, *, max_to_keep: int = 3):
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
