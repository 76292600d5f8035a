"""The training state: one pytree that a step changes and a checkpoint holds."""

from __future__ import annotations

from typing import Any

import flax.struct

__all__ = ["TrainState"]


@flax.struct.dataclass
class TrainState:
    """Everything a step changes: ``step`` (int32 scalar), ``params``, ``opt_state``, ``rng``
    (a raw uint32 ``(2,)`` key, so checkpoints stay plain arrays)."""

    step: Any
    params: Any
    opt_state: Any
    rng: Any
