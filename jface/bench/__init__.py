"""Benchmarks: ``python -m jface.bench NAME [args]`` runs ``jface.bench.NAME.main(args)``.

Each benchmark measures on whatever devices exist, prints a table and can write JSON
(``--json PATH``). ``python -m jface.bench all`` runs every registered one (see
:mod:`jface.bench.all`). Timings use warm-up, ``block_until_ready`` and the median of repeats;
figures that go into BUILD_NOTES.md name the command, machine and date.
"""

import statistics
import time

__all__ = ["time_fn", "peak_memory_bytes"]


def time_fn(fn, *args, warmup: int = 3, repeats: int = 20):
    """Median wall time (s) of ``fn(*args)`` with its outputs blocked until ready."""
    import jax

    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_memory_bytes(device=None):
    """Peak bytes in use on ``device`` (default: the first), or None where the backend has no stats."""
    import jax

    device = device or jax.devices()[0]
    try:
        stats = device.memory_stats() or {}
    except Exception:  # CPU backends may not implement memory_stats
        return None
    return stats.get("peak_bytes_in_use")
