"""Checkpoints through orbax, and the lock that keeps one run per working directory.

Each checkpoint step holds three items: ``state`` (the :class:`TrainState` pytree), ``data`` (the
data iterator's JSON state, so a resumed run sees the batches an uninterrupted one would) and
``run`` (JSON: what is needed to use the parameters without the training data — the config, the
face model it was trained on, whitening statistics). A run directory is therefore self-contained:
:func:`read_run` and :func:`restore_params` load a trained run from it alone.

Restoring verifies the checkpoint it reads and falls back to the newest intact one, saying so; a
damaged step is moved aside into ``<directory>.damaged/`` (kept, not deleted). An intact step whose
train state has another layout than the run resuming it (other networks, sizes or optimiser state)
is not damage: :class:`CheckpointLayoutError` names the arrays and config fields that differ, and
the step stays where it is.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import shutil
import socket
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jface.training.state import TrainState

__all__ = ["Checkpointer", "restore_state_only", "read_run", "restore_params", "RunFormatError",
           "CheckpointError", "CheckpointLayoutError", "WorkdirLock", "WorkdirBusyError"]


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was expected (every step damaged, or none)."""


class RunFormatError(ValueError):
    """A run directory that lacks what loading it needs (e.g. saved before runs carried their
    metadata); the message names the directory and what is missing."""


class CheckpointLayoutError(ValueError):
    """An intact checkpoint whose train state does not fit the run resuming it (saved with other
    networks, sizes or optimiser layout); the message names the directory, the step, the arrays and
    the config fields that differ. The step is left in place."""


def _array_leaves(tree) -> dict:
    """``{path tuple: leaf}`` of a tree as orbax names its arrays, empty nodes (optax's EmptyState,
    None) left out."""
    flat = ocp.tree.to_flat_dict(tree)
    return {k: v for k, v in flat.items() if v is not None and not (isinstance(v, (dict, list, tuple)) and not v)}


def _warn(message: str) -> None:
    if jax.process_index() == 0:
        print(f"checkpoint: {message}", file=sys.stderr, flush=True)


class Checkpointer:
    """Orbax ``CheckpointManager`` holding ``state``, ``data`` and ``run`` per step.

    Saves are synchronous and atomic (orbax writes into a temporary directory and renames it when
    complete). All processes must call :meth:`save` and :meth:`restore` (orbax coordinates
    multi-host writes).
    """

    def __init__(self, directory, *, max_to_keep: int = 3):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "data", "run"))

    def latest_step(self) -> int | None:
        self.manager.reload()
        return self.manager.latest_step()

    def all_steps(self) -> list:
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: TrainState, data_state: Mapping, run: Mapping | None = None) -> None:
        """Write ``state``, ``data_state`` and (when given) the ``run`` metadata at ``step``."""
        items = dict(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(dict(data_state)))
        if run is not None:
            items["run"] = ocp.args.JsonSave(dict(run))
        self.manager.save(int(step), args=ocp.args.Composite(**items), force=True)
        self.manager.wait_until_finished()

    def _newest_intact(self, read: Callable[[int], Any], step: int | None, *, move_aside: bool = True):
        """``(read(step), step)`` for ``step``, or for the newest step that reads back; damaged
        steps newer than it are moved aside with a message. None when there is no step."""
        if step is not None:
            return read(step), step
        steps = self.all_steps()
        for index, candidate in enumerate(reversed(steps)):
            try:
                value = read(candidate)
            except CheckpointLayoutError:
                raise
            except Exception as err:  # noqa: BLE001 - orbax / TensorStore raise many types for damage
                reason = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
                older = steps[len(steps) - index - 2] if index + 1 < len(steps) else None
                then = f"falling back to step {older}" if older is not None else "no older step is left"
                _warn(f"step {candidate} in {self.directory} is damaged ({reason}); {then}")
                if move_aside:  # a resuming run moves it out of its way; a reader leaves the run as it is
                    self._move_aside(candidate)
                continue
            return value, candidate
        if steps:
            where = f"; they were moved to {self._damaged_dir()}" if move_aside else ""
            raise CheckpointError(f"{self.directory}: every checkpoint step is damaged ({steps}){where}")
        return None

    def _damaged_dir(self) -> Path:
        return self.directory.with_name(self.directory.name + ".damaged")

    def _move_aside(self, step: int) -> None:
        if jax.process_index() != 0:
            return
        source = self.directory / str(step)
        if not source.exists():
            return
        target = self._damaged_dir() / f"{step}_{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(source), str(target))
        self.manager.reload()

    def restore(self, target: TrainState, step: int | None = None, *, config: Mapping | None = None):
        """``(state, data_state, step)`` from ``step`` (default: the newest intact one), placed like
        ``target`` (same shardings), or None when there is no checkpoint.

        Raises :class:`CheckpointLayoutError` (and moves nothing) when a step is intact but its state
        has another layout than ``target``; ``config`` (the resuming run's, as a dict) lets the message
        name the fields that differ from the config saved with the step."""
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)

        def read(candidate):
            try:
                restored = self.manager.restore(candidate, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
            except Exception:
                difference = self._layout_difference(candidate, abstract)
                if difference is None:
                    raise  # damage (or an unreadable layout): the caller falls back past it
                raise CheckpointLayoutError(self._layout_message(candidate, difference, config)) from None
            return restored["state"], dict(restored["data"])

        found = self._newest_intact(read, step)
        if found is None:
            return None
        (state, data_state), step = found
        return state, data_state, step

    def _layout_difference(self, step: int, abstract) -> str | None:
        """What differs between the state layout saved at ``step`` (its metadata: paths and shapes) and
        ``abstract``'s, or None when they agree or the metadata does not read (then it is damage)."""
        try:
            # the handler's own reader: a manager opened on an existing run has no handler for the
            # item until it restores it, and its item_metadata is then None
            saved = ocp.StandardCheckpointHandler().metadata(self.directory / str(step) / "state")
            saved = _array_leaves(getattr(saved, "tree", saved))
            wanted = _array_leaves(ocp.tree.serialize_tree(abstract, keep_empty_nodes=True))
        except Exception:  # noqa: BLE001 - unreadable metadata is damage, judged by the read itself
            return None
        name = "/".join
        missing = sorted(name(k) for k in wanted.keys() - saved.keys())
        extra = sorted(name(k) for k in saved.keys() - wanted.keys())
        shapes = sorted(f"{name(k)} {tuple(getattr(saved[k], 'shape', ()))} (run: {tuple(wanted[k].shape)})"
                        for k in wanted.keys() & saved.keys()
                        if tuple(getattr(saved[k], "shape", ())) != tuple(wanted[k].shape))
        if not (missing or extra or shapes):
            return None

        def few(items):
            return ", ".join(items[:4]) + (f" and {len(items) - 4} more" if len(items) > 4 else "")
        parts = [f"{len(missing)} arrays of this run are not in it ({few(missing)})" if missing else "",
                 f"{len(extra)} saved arrays are not in this run ({few(extra)})" if extra else "",
                 f"{len(shapes)} saved arrays have other shapes ({few(shapes)})" if shapes else ""]
        return "; ".join(p for p in parts if p)

    def _layout_message(self, step: int, difference: str, config: Mapping | None) -> str:
        try:
            saved = self.read_run(step).get("config")
        except Exception:  # noqa: BLE001 - the run item is optional here: the layout is the news
            saved = None
        if isinstance(saved, Mapping) and config is not None:
            config = json.loads(json.dumps(dict(config), default=str))  # tuples as the saved JSON has them
            fields = [f"{k}: saved {saved[k]!r}, now {config[k]!r}" for k in sorted(saved.keys() & config.keys())
                      if k not in ("workdir", "steps") and saved[k] != config[k]]
            why = ("the config saved with it differs in " + "; ".join(fields[:8]) if fields else
                   "the config saved with it is the same, so the code that builds the state changed")
        else:
            why = "no saved config to compare"
        return (f"{self.directory}: step {step} is intact but holds a train state of another layout than "
                f"this run's: {difference}; {why}. It is left in place: resume with the settings it was "
                f"saved with, or train in a new --workdir")

    def read_run(self, step: int | None = None) -> dict:
        """The ``run`` item of ``step`` (default: the newest step that has one)."""
        steps = [step] if step is not None else list(reversed(self.all_steps()))
        if not steps:
            raise RunFormatError(f"{self.directory}: no checkpoint (expected a trained run's checkpoints/ folder)")
        for candidate in steps:
            if not (self.directory / str(candidate) / "run").exists():
                continue
            restored = self.manager.restore(candidate, args=ocp.args.Composite(run=ocp.args.JsonRestore()))
            return dict(restored["run"])
        raise RunFormatError(
            f"{self.directory}: the checkpoints have no run metadata (config, face model, whitening "
            f"statistics); the run was saved by an older jface: resume it for one step with the current "
            f"trainer (it rewrites the metadata) or retrain")

    def close(self) -> None:
        self.manager.close()


def restore_state_only(directory, target: TrainState, step: int | None = None):
    """Load just the ``state`` item of a checkpoint directory (for evaluation)."""
    ckpt = Checkpointer(directory)
    try:
        out = ckpt.restore(target, step)
    finally:
        ckpt.close()
    if out is None:
        raise FileNotFoundError(f"checkpoint: no checkpoint found in {directory}")
    return out


def _checkpoint_dir(directory) -> Path:
    directory = Path(directory)
    if not directory.exists():
        raise FileNotFoundError(f"{directory}: no such run or checkpoint directory")
    if not directory.is_dir():
        raise NotADirectoryError(f"{directory}: expected a run or checkpoint directory, got a file")
    return directory


def read_run(directory, step: int | None = None) -> dict:
    """The ``run`` metadata (JSON) saved with a checkpoint directory's newest step."""
    ckpt = Checkpointer(_checkpoint_dir(directory))
    try:
        return ckpt.read_run(step)
    finally:
        ckpt.close()


def restore_params(directory, step: int | None = None):
    """``(params, step)``: the ``params`` of the saved train state as nested dicts of numpy arrays,
    read without a template (no networks or optimiser need to be built), from ``step`` or the newest
    intact step."""
    ckpt = Checkpointer(_checkpoint_dir(directory))

    def read(candidate):
        restored = ckpt.manager.restore(candidate, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
        state = restored["state"]
        params = state["params"] if isinstance(state, Mapping) else state.params
        return jax.tree_util.tree_map(np.asarray, params)

    try:
        found = ckpt._newest_intact(read, step, move_aside=False)
    finally:
        ckpt.close()
    if found is None:
        raise RunFormatError(f"{directory}: no checkpoint (expected a trained run's checkpoints/ folder)")
    return found


class WorkdirBusyError(RuntimeError):
    """Another live run holds the working directory."""


class WorkdirLock:
    """An exclusive lock on a run's working directory (``<workdir>/.lock``, ``fcntl.flock``).

    A second run into a busy workdir raises :class:`WorkdirBusyError` naming the holder (pid, host,
    start time). The kernel drops the lock when its process dies, so the file a killed run leaves
    behind is recognised as stale and taken over, with a message. Only process 0 of a multi-process
    run takes it (the others share process 0's run).
    """

    def __init__(self, workdir):
        self.workdir = Path(workdir)
        self.path = self.workdir / ".lock"
        self._file = None

    def acquire(self) -> WorkdirLock:
        if jax.process_index() != 0:
            return self
        if self.workdir.exists() and not self.workdir.is_dir():
            raise NotADirectoryError(f"--workdir {self.workdir}: expected a directory, got a file")
        self.workdir.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise WorkdirBusyError(f"--workdir {self.workdir} is in use by another run ({holder}); wait for it "
                                   f"to finish or pass another --workdir") from None
        handle.seek(0)
        previous = handle.read().strip()
        if previous:
            _warn(f"{self.path}: stale lock of a run that is no longer running ({previous}); taking it over")
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": datetime.datetime.now().isoformat(timespec="seconds")}))
        handle.flush()
        self._file = handle
        return self

    def release(self) -> None:
        if self._file is None:
            return
        self._file.seek(0)
        self._file.truncate()
        self._file.flush()
        fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
        self._file.close()
        self._file = None

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
