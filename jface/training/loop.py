"""Pieces of the training loop: stopping on signals, the NaN guard, metrics read one step late, and
the progress bar."""

from __future__ import annotations

import math
import signal
from typing import Any, Callable, Mapping, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from jface.training.distributed import is_main_process

__all__ = ["TERMINATED_EXIT_CODE", "StopFlag", "NonFiniteLossError", "check_finite", "OneStepLate", "progress"]

TERMINATED_EXIT_CODE = 143  # 128 + SIGTERM: what a run stopped by a signal exits with, after saving


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


def progress(total: int, initial: int = 0, desc: str = "train"):
    """A tqdm bar on process 0 (a disabled one elsewhere)."""
    return tqdm(total=total, initial=initial, desc=desc, disable=not is_main_process(),
                dynamic_ncols=True, mininterval=2.0)
