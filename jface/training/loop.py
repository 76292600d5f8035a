"""Pieces of the training loop: stopping on signals, the NaN guard, metrics read one step late, and
the progress bar."""

from __future__ import annotations

import math
import shutil
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from jface.cli import WRITE_ERRNOS
from jface.training.distributed import barrier, is_main_process, shard_batch

__all__ = ["TERMINATED_EXIT_CODE", "StopFlag", "NonFiniteLossError", "check_finite", "OneStepLate", "progress",
           "CheckpointWriteError", "save_checkpoint", "train_loop"]

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


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written because of the disk (read-only, full, no permission); the
    message names the folder and the step, and says which checkpoint is still intact."""


_WRITE_FAILURES = ("RESOURCE_EXHAUSTED", "PERMISSION_DENIED", "No space left", "Read-only file system",
                   "Permission denied", "Disk quota exceeded")


def _is_write_failure(err: BaseException) -> bool:
    """Whether ``err`` (from orbax / TensorStore, which wrap OS errors in their own types) says the
    disk refused the write, rather than a bug."""
    if isinstance(err, OSError) and err.errno in WRITE_ERRNOS:
        return True
    text = str(err)
    return any(marker in text for marker in _WRITE_FAILURES)


def save_checkpoint(checkpointer, step: int, state, data_state, *, run=None, previous: int | None = None) -> None:
    """``checkpointer.save``; when the disk refuses the write (read-only, full), the half-written
    step (orbax's ``<step>.orbax-checkpoint-tmp*`` folder) is removed and :class:`CheckpointWriteError`
    raised in one line naming the folder, the step, the reason and the intact checkpoint ``previous``."""
    try:
        checkpointer.save(step, state, data_state, run=run)
    except Exception as err:
        leftovers = list(Path(checkpointer.directory).glob(f"{int(step)}.orbax-checkpoint-tmp*"))
        if not _is_write_failure(err):
            raise
        for partial in leftovers:
            shutil.rmtree(partial, ignore_errors=True)
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        kept = (f"the checkpoint of step {previous} is intact" if previous is not None
                else "no earlier checkpoint was written")
        raise CheckpointWriteError(
            f"cannot write the checkpoint of step {step} to {checkpointer.directory} (read-only or full disk? "
            f"{reason}); {kept}; free space or fix the folder's permissions, then run the same command "
            f"to resume") from None


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
    bar = None  # made after the compile, so a finished run shows none and the rate excludes compiling
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
                    save_checkpoint(checkpointer, step, state, loader.get_state(), run=run, previous=saved["step"])
                if bar is not None:
                    bar.close()
                log(f"signal {stop.signum}: checkpoint saved at {desc} step {step} in {checkpointer.directory}; "
                    f"exiting")
                raise SystemExit(TERMINATED_EXIT_CODE)
            batch = next(loader)
            global_batch = shard_batch(batch, mesh)
            if compiled is None:  # compile ahead, then line the processes up for the first collective
                t_compile = time.time()
                log(f"{desc}: compiling the train step (up to minutes on a CPU; a later run of the same "
                    f"config reads it from the compilation cache) ...")
                compiled = step_fn.lower(state, global_batch).compile()
                log(f"{desc}: compiled in {time.time() - t_compile:.1f} s")
                barrier(f"{desc}_compiled")
                bar = progress(steps, initial=step, desc=desc)
                t_start = time.time()
            new_state, device_metrics = compiled(state, global_batch)
            late.push(step, device_metrics)  # reads the previous step's metrics while this one runs
            state, step, steps_done = new_state, step + 1, steps_done + 1
            for every, callback in periodic:
                if every and step % every == 0 and is_main_process():
                    late.settle()
                    callback(step, state, batch)
            if step % checkpoint_every == 0 or step == steps:
                late.settle()  # a state is saved only after its own metrics were found finite
                save_checkpoint(checkpointer, step, state, loader.get_state(), run=run, previous=saved["step"])
                saved["step"] = step
            if step_delay:
                time.sleep(step_delay)
        late.settle()
        if bar is not None:
            bar.close()
    finally:
        stop.restore_handlers()
    return state, step
