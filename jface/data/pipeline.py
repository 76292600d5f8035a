"""Streamed training batches from any random-access source: sharded, shuffled, identity-grouped,
mirrored, resumable.

A *source* is anything with ``len(source)``, ``source[i] -> dict of numpy arrays`` (one record)
and ``source.identities() -> (N,) int64`` (the identity of every record, read without decoding
images): :class:`jface.data.sources.ArraySource` (in memory) or
:class:`jface.data.sources.DatasetSource` (a built TFDS dataset, read from ArrayRecord).

Which records form a batch is a pure function of ``(seed, step)``, exactly as in
:class:`jface.data.loader.BatchLoader`, so a source holding the same rows gives the same batches:

* ungrouped: the global batch at step ``n`` is slice ``n mod steps_per_epoch`` of the
  epoch-``n // steps_per_epoch`` permutation of the records (numpy PCG64 seeded with
  ``[seed, epoch]``); the remainder of an epoch is not read in that epoch;
* ``images_per_group`` = K > 1 (DECA's shape / detail consistency): ``batch_size / K`` identities
  (the epoch's permutation of identities) times K records of each, drawn without replacement with
  PCG64 ``[seed, epoch, group]``, laid out identity-major (records ``g*K .. g*K + K - 1`` share an
  identity). Identities with fewer than K records are left out and counted (``dropped_groups``);
* process ``shard_index`` of ``shard_count`` reads only the ``shard_index``-th contiguous
  ``batch_size / shard_count`` slice of the global batch. The shards of an epoch are disjoint and
  together cover what the epoch reads, and the global batch does not depend on the number of
  processes, so a run on two hosts sees the batches of a run on one;
* ``mirror`` (the 3DMM-STN augmentation, ``refineData`` in ``dagnn_3dmmasstn.m``): every record is
  followed by its left-right mirror (image flipped along width, ``labels`` through
  :func:`jface.stn.mirror_labels` with the AFLW-21 or iBUG-68 reorder), so the local batch doubles
  and rows (2i, 2i + 1) are (record, mirror); other keys are repeated and a boolean ``mirrored``
  is added.

The state is ``{"step": n, ...}`` (JSON): restoring it into a fresh loader over the same source
continues with exactly the batches an uninterrupted run would have read.

Reading goes through grain when it is importable (``grain.MapDataset`` over record positions ->
``to_iter_dataset`` with ``num_threads`` reader threads and a ``prefetch`` records buffer ->
batches); otherwise a plain loop reads the same records in the same order. Host memory holds the
record indices of one epoch (8 bytes per record) and the prefetch buffer, never the dataset.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from jface.data.loader import StepIterator
from jface.models.landmarks import AFLW21_MIRROR, IBUG68_MIRROR
from jface.stn.losses import mirror_labels

__all__ = ["StreamLoader", "mirror_pairs", "group_members", "stack_records"]

_MIRROR_ORDER = {21: AFLW21_MIRROR, 68: IBUG68_MIRROR}


def group_members(identities, images_per_group: int) -> tuple[np.ndarray, list[np.ndarray], int]:
    """Records grouped by identity: ``(identity values (G,), members (G lists of record indices,
    ascending), number of identities dropped for having fewer than images_per_group records)``.

    Identities are in ascending order of their value (``np.unique``'s order), as
    :class:`jface.data.loader.BatchLoader` numbers its groups.
    """
    identities = np.asarray(identities)
    if identities.ndim != 1:
        raise ValueError(f"identities: expected a (N,) array, got shape {identities.shape}")
    values, inverse, counts = np.unique(identities, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    members = np.split(order, np.cumsum(counts)[:-1]) if len(values) else []
    keep = [g for g, m in enumerate(members) if len(m) >= images_per_group]
    return values[keep], [members[g] for g in keep], len(values) - len(keep)


def stack_records(records: Sequence[Mapping]) -> dict:
    """A list of records (dicts of equal keys) -> one dict of numpy arrays with a leading axis."""
    if not records:
        raise ValueError("records: expected at least one record to stack")
    return {key: np.stack([np.asarray(r[key]) for r in records]) for key in records[0]}


def mirror_pairs(batch: Mapping[str, np.ndarray]) -> dict:
    """Interleave every row of ``batch`` with its left-right mirror (the 3DMM-STN augmentation).

    ``images (B, H, W, C)`` -> flipped along W; ``labels (B, L, 3)`` (x, y, vis) in the 3DMM-STN
    y-up pixel frame (L = 21 AFLW or 68 iBUG) -> :func:`jface.stn.mirror_labels` with
    ``image_width`` = W; every other key is repeated. Returns ``(2B, ...)`` arrays with rows
    (2i, 2i + 1) = (row i, its mirror) and ``mirrored (2B,)`` bool.
    """
    if "images" not in batch:
        raise ValueError(f"batch: mirroring needs 'images', got keys {sorted(batch)}")
    width = int(batch["images"].shape[2])
    out = {}
    for name, value in batch.items():
        value = np.asarray(value)
        if name == "images":
            partner = value[:, :, ::-1]
        elif name == "labels":
            partner = _mirror_labels_host(value, width)
        else:
            partner = value
        out[name] = np.stack([value, np.asarray(partner, value.dtype)], 1).reshape((-1,) + value.shape[1:])
    out["mirrored"] = np.tile(np.array([False, True]), len(batch["images"]))
    return out


def _mirror_labels_host(labels: np.ndarray, width: int) -> np.ndarray:
    if labels.ndim != 3 or labels.shape[-1] != 3 or labels.shape[1] not in _MIRROR_ORDER:
        raise ValueError(f"labels: expected (B, 21 or 68, 3) (x, y, vis) to mirror, got shape {labels.shape}")
    # The library's mirror, on this process's host CPU: the data pipeline never touches the
    # accelerator (jax.devices("cpu")[0] would be process 0's CPU, not addressable from the others).
    with jax.default_device(jax.local_devices(backend="cpu")[0]):
        xy, vis = mirror_labels(labels[..., :2], labels[..., 2], image_width=width,
                                order=_MIRROR_ORDER[labels.shape[1]])
    return np.concatenate([np.asarray(xy), np.asarray(vis)[..., None]], -1).astype(labels.dtype)


class StreamLoader(StepIterator):
    """Iterator of this process's batches over a random-access ``source`` (see the module docstring).

    ``batch_size``: the GLOBAL batch before mirroring (this process gets ``batch_size /
    shard_count`` records, doubled by ``mirror``). ``shard_index`` / ``shard_count``: this process
    and the number of processes (``jax.process_index()`` / ``jax.process_count()``, passed in).
    ``keys``: the record keys to batch (default: all of the first record's). ``with_index``: add
    ``index (b,)`` int64, the records' positions in the source. ``use_grain``: None = when
    importable.

    ``next(loader)`` -> dict of numpy arrays; ``get_state()`` -> JSON dict; ``set_state(state)``.
    """

    def __init__(self, source, *, batch_size: int, seed: int = 0, shuffle: bool = True,
                 shard_index: int = 0, shard_count: int = 1, images_per_group: int = 1,
                 mirror: bool = False, keys: Sequence[str] | None = None, with_index: bool = False,
                 use_grain: bool | None = None, num_threads: int = 4, prefetch: int | None = None):
        self.source = source
        self.name = str(getattr(source, "name", type(source).__name__))
        self.size = len(source)
        if shard_count < 1 or not 0 <= shard_index < shard_count:
            raise ValueError(f"shard_index/shard_count: expected 0 <= {shard_index} < {shard_count}")
        if batch_size <= 0 or batch_size % shard_count:
            raise ValueError(f"batch_size: {batch_size} must be positive and divisible by shard_count={shard_count}")
        if images_per_group < 1 or batch_size % images_per_group:
            raise ValueError(f"batch_size: {batch_size} not divisible by images_per_group={images_per_group}")
        if self.size == 0:
            raise ValueError(f"{self.name}: the source is empty (0 records)")
        self.batch_size, self.seed, self.shuffle = int(batch_size), int(seed), bool(shuffle)
        self.shard_index, self.shard_count = int(shard_index), int(shard_count)
        self.images_per_group, self.mirror = int(images_per_group), bool(mirror)
        self.per_shard = self.batch_size // self.shard_count
        self.keys = None if keys is None else tuple(keys)
        self.with_index = with_index
        self.dropped_groups = 0
        if self.images_per_group > 1:
            self.group_values, self._members, self.dropped_groups = group_members(
                source.identities(), self.images_per_group)
            per_batch = self.batch_size // self.images_per_group
            if per_batch > len(self._members):
                raise ValueError(
                    f"{self.name}: a batch needs {per_batch} identities with >= {self.images_per_group} records "
                    f"each; the source has {len(self._members)} ({self.dropped_groups} smaller identities left out)")
            self.steps_per_epoch = len(self._members) // per_batch
        else:
            self._members = None
            if self.batch_size > self.size:
                raise ValueError(f"batch_size: {self.batch_size} exceeds the {self.size} records of {self.name}")
            self.steps_per_epoch = self.size // self.batch_size
        self.use_grain = importlib.util.find_spec("grain") is not None if use_grain is None else bool(use_grain)
        self.num_threads = int(num_threads)
        self.prefetch = int(prefetch) if prefetch is not None else 2 * self.per_shard
        self._epoch_cache: tuple[int, np.ndarray] | None = None
        self._lock = threading.Lock()
        self._step = 0
        self._iter = None

    # --- which records ----------------------------------------------------------------------
    def _epoch_order(self, epoch: int) -> np.ndarray:
        with self._lock:
            if self._epoch_cache is not None and self._epoch_cache[0] == epoch:
                return self._epoch_cache[1]
        count = self.size if self._members is None else len(self._members)
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(count) if self.shuffle else np.arange(count)
        with self._lock:
            self._epoch_cache = (epoch, order)
        return order

    def global_indices(self, step: int) -> np.ndarray:
        """Record indices of the global batch at ``step``, ``(batch_size,)`` (before mirroring)."""
        epoch, within = divmod(int(step), self.steps_per_epoch)
        order = self._epoch_order(epoch)
        if self._members is None:
            return order[within * self.batch_size:(within + 1) * self.batch_size]
        per_batch = self.batch_size // self.images_per_group
        picks = []
        for g in order[within * per_batch:(within + 1) * per_batch]:
            members = self._members[g]
            if self.shuffle:
                rng = np.random.default_rng([self.seed, epoch, int(g)])
                picks.append(rng.choice(members, self.images_per_group, replace=False))
            else:
                picks.append(members[: self.images_per_group])
        return np.concatenate(picks)

    def local_indices(self, step: int) -> np.ndarray:
        """This process's slice of :meth:`global_indices`, ``(batch_size / shard_count,)``."""
        start = self.shard_index * self.per_shard
        return self.global_indices(step)[start:start + self.per_shard]

    # --- reading ----------------------------------------------------------------------------
    def _read(self, index: int) -> dict:
        record = self.source[int(index)]
        if self.keys is not None:
            missing = [k for k in self.keys if k not in record]
            if missing:
                raise KeyError(f"{self.name}: record {index} has no {missing} (has {sorted(record)})")
            record = {k: record[k] for k in self.keys}
        else:
            record = dict(record)
        if self.with_index:
            record["index"] = np.int64(index)
        return record

    def _read_position(self, position: int) -> dict:
        step, within = divmod(int(position), self.per_shard)
        return self._read(self.local_indices(step)[within])

    def _collate(self, records) -> dict:
        batch = stack_records(records)
        return mirror_pairs(batch) if self.mirror else batch

    def local_batch(self, step: int) -> dict:
        """This process's batch at ``step``, read directly (no prefetching, no state change)."""
        return self._collate([self._read(i) for i in self.local_indices(step)])

    # --- iteration and state ----------------------------------------------------------------
    def get_state(self) -> dict:
        """JSON-serialisable position: the next step, and what the batches depend on."""
        return {"step": int(self._step), "seed": self.seed, "records": int(self.size),
                "batch_size": self.batch_size, "images_per_group": self.images_per_group}

    def set_state(self, state: Mapping) -> None:
        """Continue from ``state`` (of :meth:`get_state`, or ``BatchLoader``'s ``{"step", "seed"}``)."""
        for key, mine in (("seed", self.seed), ("records", self.size), ("batch_size", self.batch_size),
                          ("images_per_group", self.images_per_group)):
            if key in state and int(state[key]) != mine:
                raise ValueError(f"state: saved with {key}={state[key]}, this loader over {self.name} has "
                                 f"{key}={mine}; resuming would read other batches")
        if "step" not in state:
            raise ValueError(f"state: expected a 'step' entry, got {sorted(state)}")
        self._step = int(state["step"])
        self._iter = None

    def _make_iter(self, start: int):
        if not self.use_grain:
            return (self.local_batch(step) for step in range(start, 2**62))
        import grain

        positions = grain.MapDataset.range(start * self.per_shard, 2**62).map(self._read_position)
        options = grain.ReadOptions(num_threads=self.num_threads, prefetch_buffer_size=self.prefetch)
        return iter(positions.to_iter_dataset(options).batch(self.per_shard, batch_fn=self._collate))
