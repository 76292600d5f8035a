"""Data-parallel weak scaling of the STN and DECA train steps: ``python -m jface.bench scaling``.

For N in 1, 2, 4, ... (and the device count), a 1-D ``'data'`` mesh over the first N devices
(``train.common.make_mesh(devices=...)``), the batch sharded along it (``shard_batch``) and the
state replicated; the per-device batch stays constant (weak scaling), so the global batch is N
times it. Efficiency = throughput_N / (N · throughput_1) (issue 12 target >= 0.9 at 4 GPUs).

* **stn**: ``train.stn``'s jitted step (paper preset: VGG-Face localiser, SGD momentum; the same
  construction as ``jface.bench.stn_train``), ``--stn-batch`` images per device (mirrors included).
* **deca**: ``train.deca``'s coarse step as in ``jface.bench.deca`` (identity loss included at
  full size), ``--deca-ids`` identities × 4 images per device.

Note: train-mode BatchNorm statistics are over the global batch (XLA inserts the all-reduces),
as train.deca/train.stn define them; that is part of what this measures.
"""

from __future__ import annotations

import argparse
import json
import sys

import jax

from jface.bench.deca import (
    add_common_args, apply_cache, build_deca_step, device_info, load_flame, log, peak_bytes, profile_steps,
    time_step, write_json)

__all__ = ["main", "run", "build_stn_step", "device_counts"]


def device_counts(total: int, largest: int | None = None) -> list:
    """1, 2, 4, ... up to ``largest`` (default: all), plus ``total`` itself."""
    largest = total if largest is None else min(largest, total)
    counts, n = [], 1
    while n <= largest:
        counts.append(n)
        n *= 2
    if largest not in counts:
        counts.append(largest)
    return counts


def build_stn_step(size: str, dtype: str, mesh, batch: int, model: str = "default"):
    """``train.stn``'s train step on ``mesh`` for ``batch`` images, as ``jface.bench.stn_train``
    builds it; returns ``(step, state, args)``."""
    from jface.bench.stn_train import build_stn_step as build

    step, state, args, _ = build(size, dtype, mesh, batch, model)
    return step, state, args


def run(size: str = "full", dtype: str = "bfloat16", stn_batch: int | None = None,
        deca_ids: int | None = None, repeats: int = 10, model: str = "default", max_devices: int | None = None,
        which=("stn", "deca"), profile: str | None = None, on_result=None) -> dict:
    from train import common

    stn_batch = stn_batch or (64 if size == "full" else 4)
    deca_ids = deca_ids or (8 if size == "full" else 1)
    k = 4 if size == "full" else 2
    devices = jax.devices()
    counts = device_counts(len(devices), max_devices)
    result = {"bench": "scaling", "size": size, "dtype": dtype, "counts": counts,
              "stn_batch_per_device": stn_batch, "deca_batch_per_device": deca_ids * k, **device_info(devices)}
    flame = load_flame(model) if "deca" in which else None
    for name in which:
        per_device = stn_batch if name == "stn" else deca_ids * k
        rows = []
        for n in counts:
            mesh = common.make_mesh(devices[:n])
            if name == "stn":
                step, state, args = build_stn_step(size, dtype, mesh, stn_batch * n)
            else:
                step, state, args = build_deca_step(size, dtype, mesh, deca_ids * n, k, model=flame,
                                                    identity=size == "full")
            step, state, compile_s, step_s, _ = time_step(step, state, args, repeats=repeats)
            ips = per_device * n / step_s
            row = {"devices": n, "global_batch": per_device * n, "step_s": step_s, "img_per_s": ips,
                   "compile_s": compile_s, "peak_bytes": peak_bytes(devices[:n])}
            row["efficiency"] = ips / (n * rows[0]["img_per_s"]) if rows else 1.0
            rows.append(row)
            log(f"scaling: {name} N={n}: {step_s * 1e3:.1f} ms/step, {ips:.1f} img/s, "
                f"efficiency {row['efficiency']:.3f} (compile {compile_s:.1f}s)")
            if profile and n == counts[-1]:
                profile_steps(step, state, args, f"{profile}/{name}_{n}")
            del step, state, args
            result[name] = rows
            if on_result is not None:
                on_result(result)
        at4 = [r["efficiency"] for r in rows if r["devices"] == 4]
        result[f"{name}_efficiency_at_4"] = at4[0] if at4 else None
    result["target_efficiency_at_4"] = 0.9
    result["repeats"] = repeats
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jface.bench scaling", description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--stn-batch", type=int, default=None, help="STN images per device (full: 64)")
    parser.add_argument("--deca-ids", type=int, default=None, help="DECA identities (x4 images) per device (full: 8)")
    parser.add_argument("--max-devices", type=int, default=None)
    parser.add_argument("--only", default="stn,deca", help="comma-separated: stn, deca")
    parser.add_argument("--min-devices", type=int, default=1, help="skip (exit 0) with fewer devices")
    args = parser.parse_args(argv)
    apply_cache(args.cache)
    if jax.device_count() < args.min_devices:
        result = {"bench": "scaling", "skipped": f"{jax.device_count()} device(s) < --min-devices {args.min_devices}",
                  **device_info()}
        log(f"scaling: skipped ({result['skipped']})")
        write_json(args.json, result)
        return 0
    which = tuple(w for w in args.only.split(",") if w)
    bad = [w for w in which if w not in ("stn", "deca")]
    if bad:
        parser.error(f"--only: expected stn and/or deca, got {bad}")
    result = run(args.size, args.dtype, args.stn_batch, args.deca_ids, args.repeats, args.model,
                 args.max_devices, which, args.profile, on_result=lambda r: write_json(args.json, r))
    print(json.dumps(result), flush=True)
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
