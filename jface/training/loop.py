"""Pieces of the training loop: stopping on signals, the NaN guard, metrics read one step late, and
the progress bar."""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from jface.training.distributed import barrier, is_main_process, shard_batch

__all__ = ["TERMINATED_EXIT_CODE", "StopFlag", "NonFiniteLossError", "check_finite", "OneStepLate", "progress",
           "train_loop"]

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


def check_finite(metrics: Mapping[str, Any], step: int, last_checkpoint: int | None,
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


def train_loop(state, step_fn: Callable, loader, mesh, checkpointer, *, steps: int, checkpoint_every: int,
               log_every: int, writer=None, desc: str = "train", prefix: str = "train",
               run: Mapping | None = None, last_saved: int | None = None, images_per_step: int = 0,
               postfix: Callable[[dict], dict] | None = None,
               periodic: Sequence[tuple[int, Callable[[int, Any, Mapping], None]]] = (),
               step_delay: float = 0.0, log: Callable[[str], None] = print):
    """The generic training loop: ``state <- step_fn(state, sharded batch)`` until ``steps``.

    * ``loader``: ``next(loader)`` -> a host batch (dict of arrays, this process's slice);
      ``loader.get_state()`` -> its JSON state, saved with every checkpoint so a resumed run sees
      the same batches.
    * ``step_fn``: a jitted ``(state, batch) -> (state, metrics)``; compiled ahead on the first
      batch, then the processes meet at a barrier before the first collective.
    * Metrics are read one step late (:class:`OneStepLate`): step i+1 is dispatched before the host
      waits for step i's. Every step's metrics go through :func:`check_finite`; every
      ``log_every`` steps they go to ``writer`` (under ``prefix``) and the progress bar.
    * Every ``checkpoint_every`` steps and at the end: a checkpoint of the state, the loader's state
      and ``run`` (only after the state's own metrics were found finite).
    * SIGTERM / SIGINT (:class:`StopFlag`): the state is saved and ``SystemExit(143)`` raised.
    * ``periodic``: ``(every, callback(step, state, batch))`` pairs, called on process 0 after the
      step (metrics settled first), e.g. sample images.

    Returns ``(state, step)``.
    """
    step = int(jax.device_get(state.step))
    bar = progress(steps, initial=step, desc=desc)
    stop = StopFlag()
    compiled = None
    t_start, steps_done = time.time(), 0
    saved = {"step": last_saved}

    def on_metrics(index, metrics):
        check_finite(metrics, index, saved["step"], checkpointer.directory)
        bar.update(1)
        done = index + 1
        if done % log_every == 0 or done == steps:
            if images_per_step:
                metrics["img_per_s"] = steps_done * images_per_step / max(time.time() - t_start, 1e-9)
            if writer is not None:
                writer.scalars(done, metrics, prefix=prefix)
            shown = postfix(metrics) if postfix is not None else {"loss": f"{metrics['loss']:.4g}"}
            bar.set_postfix(**shown)

    late = OneStepLate(on_metrics)
    try:
        while step < steps:
            if stop.should_stop():
                late.settle()
                if step != saved["step"]:  # the periodic save may have just written this step
                    checkpointer.save(step, state, loader.get_state(), run=run)
                bar.close()
                log(f"signal {stop.signum}: checkpoint saved at {desc} step {step} in {checkpointer.directory}; "
                    f"exiting")
                raise SystemExit(TERMINATED_EXIT_CODE)
            batch = next(loader)
            global_batch = shard_batch(batch, mesh)
            if compiled is None:  # compile ahead, then line the processes up for the first collective
                compiled = step_fn.lower(state, global_batch).compile()
                barrier(f"{desc}_compiled")
            new_state, device_metrics = compiled(state, global_batch)
            late.push(step, device_metrics)  # reads the previous step's metrics while this one runs
            state, step, steps_done = new_state, step + 1, steps_done + 1
            for every, callback in periodic:
                if every and step % every == 0 and is_main_process():
                    late.settle()
                    callback(step, state, batch)
            if step % checkpoint_every == 0 or step == steps:
                late.settle()  # a state is saved only after its own metrics were found finite
                checkpointer.save(step, state, loader.get_state(), run=run)
                saved["step"] = step
            if step_delay:
                time.sleep(step_delay)
        late.settle()
        bar.close()
    finally:
        stop.restore_handlers()
    return state, step
