"""Deterministic, shardable, checkpointable batches from in-memory arrays.

A batch is a pure function of ``(seed, step)``: the global batch at step ``n`` is drawn from the
epoch-``n // steps_per_epoch`` permutation (numpy PCG64 seeded with ``[seed, epoch]``), and process
``p`` of ``P`` takes the ``p``-th contiguous ``batch_size / P`` slice of it. The iterator's state is
therefore ``{"step": n}`` (JSON), and restoring it continues exactly where the run stopped, on any
number of processes with the same global batch.

Prefetching runs on grain (``grain.MapDataset`` over step numbers -> ``to_iter_dataset`` with
threads) when grain is importable; otherwise a plain numpy iterator with the same batches is used
(grain is missing on the GPU machines).

Options:

* ``group_key`` + ``images_per_group`` = K: identity-grouped batches, ``batch_size / K`` groups
  (identities, permuted per epoch) times K items of each (drawn without replacement per group).
* ``mirror``: the 3DMM-STN augmentation (``refineData`` in ``dagnn_3dmmasstn.m``): every item is
  followed by its left-right mirror (images flipped along width; ``labels`` through
  :func:`jface.stn.mirror_labels`), so the local batch doubles and positions (2i, 2i + 1) are
  (image, mirror). Keys other than ``images`` / ``labels`` are repeated, and a boolean
  ``mirrored`` is added.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping

import jax
import numpy as np

from jface.models.landmarks import AFLW21_MIRROR
from jface.stn.losses import mirror_labels

__all__ = ["BatchLoader", "mirror_labels_np"]


def mirror_labels_np(labels, image_width: int = 224):
    """Numpy mirror of AFLW-21 labels ``(..., 21, 3)`` (x, y, vis) in the y-up pixel frame.

    x' = (W + 1 - x) where x != 0 (missing points stay 0), y kept, landmarks and visibility
    reordered by the original's lookup (:data:`jface.models.landmarks.AFLW21_MIRROR`).
    """
    labels = np.asarray(labels)
    if labels.shape[-2:] != (21, 3):
        raise ValueError(f"labels: expected (..., 21, 3) AFLW-21 (x, y, vis), got {labels.shape}")
    out = labels.copy()
    out[..., 0] = np.where(labels[..., 0] != 0, image_width + 1 - labels[..., 0], 0)
    return out[..., AFLW21_MIRROR, :]


def _default_mirror(labels, image_width):
    xy, vis = mirror_labels(labels[..., :2], labels[..., 2], image_width=image_width)
    return np.concatenate([np.asarray(xy), np.asarray(vis)[..., None]], -1).astype(labels.dtype)


class StepIterator:
    """The iterator protocol of a loader whose batch is a function of its step: ``next`` starts the
    subclass's ``_make_iter(step)`` lazily (again after ``set_state`` resets ``_iter`` to None) and
    counts ``_step``, which is what a checkpoint saves."""

    _step: int = 0
    _iter = None

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self._iter is None:
            self._iter = self._make_iter(self._step)
        batch = next(self._iter)
        self._step += 1
        return batch

    def _make_iter(self, start: int):
        raise NotImplementedError


class BatchLoader(StepIterator):
    """Iterator of local (per-process) batches: dicts of numpy arrays with a leading batch axis.

    ``arrays``: name -> array with a common leading length M. ``batch_size``: the GLOBAL batch
    before mirroring (every process gets ``batch_size / process_count`` items, doubled by
    ``mirror``). ``process_index`` / ``process_count`` default to jax's.
    """

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray],
        *,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        process_index: int | None = None,
        process_count: int | None = None,
        group_key: str | None = None,
        images_per_group: int = 1,
        mirror: bool = False,
        mirror_fn: Callable | None = None,
        use_grain: bool | None = None,
        num_threads: int = 2,
        prefetch: int = 4,
    ):
        lengths = {name: len(value) for name, value in arrays.items()}
        if not lengths or len(set(lengths.values())) != 1:
            raise ValueError(f"arrays: expected a non-empty dict of equal-length arrays, got lengths {lengths}")
        if process_index is None or process_count is None:
            process_index, process_count = jax.process_index(), jax.process_count()
        if batch_size <= 0 or batch_size % process_count:
            raise ValueError(
                f"batch_size: {batch_size} must be positive and divisible by process_count={process_count}")
        self.arrays = dict(arrays)
        self.size = next(iter(lengths.values()))
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.process_index, self.process_count = process_index, process_count
        self.mirror = mirror
        self.mirror_fn = mirror_fn or _default_mirror
        self.images_per_group = images_per_group
        if group_key is not None:
            if batch_size % images_per_group:
                raise ValueError(f"batch_size: {batch_size} not divisible by images_per_group={images_per_group}")
            if self.size == 0:
                raise ValueError(f"arrays: the dataset is empty (0 items), no {group_key!r} groups to batch")
            groups = np.asarray(arrays[group_key])
            self._group_ids, inverse = np.unique(groups, return_inverse=True)
            self._members = [np.flatnonzero(inverse == g) for g in range(len(self._group_ids))]
            if min(len(m) for m in self._members) < images_per_group:
                raise ValueError(f"images_per_group: {images_per_group} exceeds the smallest group")
            per_batch = batch_size // images_per_group
            if per_batch > len(self._members):
                raise ValueError(f"batch_size: needs {per_batch} groups per batch, data has {len(self._members)}")
            self.steps_per_epoch = len(self._members) // per_batch
        else:
            self._members = None
            if batch_size > self.size:
                raise ValueError(f"batch_size: {batch_size} exceeds the data size {self.size}")
            self.steps_per_epoch = self.size // batch_size
        if use_grain is None:
            use_grain = importlib.util.find_spec("grain") is not None
        self.use_grain = use_grain
        self.num_threads, self.prefetch = num_threads, prefetch
        self._step = 0
        self._iter = None

    # --- pure indexing -----------------------------------------------------------------------
    def global_indices(self, step: int) -> np.ndarray:
        """Indices (into ``arrays``) of the global batch at ``step``, ``(batch_size,)``."""
        epoch, within = divmod(int(step), self.steps_per_epoch)
        rng = np.random.default_rng([self.seed, epoch])
        if self._members is None:
            order = rng.permutation(self.size) if self.shuffle else np.arange(self.size)
            return order[within * self.batch_size:(within + 1) * self.batch_size]
        per_batch = self.batch_size // self.images_per_group
        order = rng.permutation(len(self._members)) if self.shuffle else np.arange(len(self._members))
        chosen = order[within * per_batch:(within + 1) * per_batch]
        picks = []
        for g in chosen:
            members = self._members[g]
            pick_rng = np.random.default_rng([self.seed, epoch, int(g)])
            picks.append(pick_rng.choice(members, self.images_per_group, replace=False) if self.shuffle
                         else members[: self.images_per_group])
        return np.concatenate(picks)

    def local_batch(self, step: int) -> dict:
        """This process's slice of the global batch at ``step`` (mirrored if asked)."""
        indices = self.global_indices(step)
        per_process = self.batch_size // self.process_count
        indices = indices[self.process_index * per_process:(self.process_index + 1) * per_process]
        batch = {name: value[indices] for name, value in self.arrays.items()}
        if self.mirror:
            batch = self._mirror(batch)
        return batch

    def _mirror(self, batch):
        out = {}
        for name, value in batch.items():
            if name == "images":
                partner = value[:, :, ::-1]
            elif name == "labels":
                partner = self.mirror_fn(value, self.arrays["images"].shape[2] if "images" in self.arrays else 224)
            else:
                partner = value
            out[name] = np.stack([value, np.asarray(partner, value.dtype)], 1).reshape(
                (-1,) + value.shape[1:])
        count = len(next(iter(batch.values())))
        out["mirrored"] = np.tile(np.array([False, True]), count)
        return out

    # --- iteration and state -----------------------------------------------------------------
    def get_state(self) -> dict:
        """JSON-serialisable position: the next step to be produced."""
        return {"step": int(self._step), "seed": int(self.seed)}

    def set_state(self, state: Mapping) -> None:
        if int(state.get("seed", self.seed)) != self.seed:
            raise ValueError(f"state: saved with seed {state['seed']}, loader has seed {self.seed}")
        self._step = int(state["step"])
        self._iter = None

    def _make_iter(self, start: int):
        if not self.use_grain:
            return (self.local_batch(step) for step in range(start, 2**62))
        import grain

        dataset = grain.MapDataset.range(start, 2**62).map(self.local_batch)
        options = grain.ReadOptions(num_threads=self.num_threads, prefetch_buffer_size=self.prefetch)
        return iter(dataset.to_iter_dataset(options))
