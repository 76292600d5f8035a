"""Data-parallel weak scaling of the STN and DECA train steps: ``python -m jface.bench scaling``.

For N in 1, 2, 4, ... (and the device count), a 1-D ``'data'`` mesh over N devices
(``jface.training.make_mesh``), the batch sharded along it (``shard_batch``) and the state
replicated; the per-device batch stays constant (weak scaling), so the global batch is N times
it. Efficiency = throughput_N / (N · throughput_1), or per-device throughput against the first of
``--counts`` (target >= 0.9 at 4 GPUs).

Two ways to drive N devices (``--launch``):

* ``process`` (default): **one process per device**, started here as ``jax.distributed`` peers on
  localhost (``jface.training.initialize_distributed`` with ``local_device_ids=[rank]``), the usual
  GPU deployment and what ``python -m train.deca --coordinator ...`` runs. Each process launches
  only its own device's kernels.
* ``thread``: one process drives all N devices (a mesh over ``jax.devices()[:N]``); XLA launches
  each device's kernels from its own host thread. Measured on 4 H200s (BUILD_NOTES.md, "Data-parallel scaling"):
  the DECA step's ~2300 kernel launches per device then take 23–32 ms of host time per step
  instead of ~15.5 ms with one device (the launching threads contend), so the step is host-bound.

Each row reports two timings: ``step_s``, the median of steps each waited for
(``block_until_ready``), and ``pipelined_step_s``, steps dispatched back to back and waited for
once (the host's work for step i+1 overlaps the device's work for step i, as in a training loop;
the median of three such windows of ``--repeats`` steps).
Efficiencies are given for both; ``img_per_s`` and ``efficiency`` are the pipelined ones.

* **stn**: ``train.stn``'s jitted step (paper preset: VGG-Face localiser, SGD momentum; the same
  construction as ``jface.bench.stn_train``), ``--stn-batch`` images per device (mirrors included).
* **deca**: ``train.deca``'s coarse step as in ``jface.bench.deca`` (identity loss included at
  full size), ``--deca-ids`` identities × 4 images per device.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile

from jface import training as common
from jface.bench import stn_train
from jface.bench.deca import (
    add_common_args,
    apply_cache,
    build_deca_step,
    device_info,
    load_flame,
    log,
    peak_bytes,
    profile_steps,
    time_pipelined,
    time_step,
    write_json,
)

__all__ = ["main", "run", "run_processes", "measure", "build_stn_step", "device_counts"]


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


def _counts(explicit, total: int, largest: int | None) -> list:
    """``--counts`` if given (each at most ``total``), else :func:`device_counts`."""
    if explicit is None:
        return device_counts(total, largest)
    if explicit[-1] > total:
        raise SystemExit(f"jface.bench scaling: --counts {explicit[-1]} exceeds the {total} device(s) here")
    return list(explicit)


def build_stn_step(size: str, dtype: str, mesh, batch: int, model: str = "default"):
    """``train.stn``'s train step on ``mesh`` for ``batch`` images, as ``jface.bench.stn_train``
    builds it; returns ``(step, state, args)``."""
    step, state, args, _ = stn_train.build_stn_step(size, dtype, mesh, batch, model)
    return step, state, args


def _deca_k(size: str) -> int:
    """Images per identity of the DECA step (full: DECA's 4)."""
    return 4 if size == "full" else 2


def _per_device(name: str, size: str, stn_batch: int | None, deca_ids: int | None):
    if name == "stn":
        return stn_batch or (64 if size == "full" else 4)
    return (deca_ids or (8 if size == "full" else 1)) * _deca_k(size)


def _header(size: str, dtype: str, repeats: int, stn_batch: int | None, deca_ids: int | None) -> dict:
    return {"size": size, "dtype": dtype, "repeats": repeats,
            "stn_batch_per_device": _per_device("stn", size, stn_batch, deca_ids),
            "deca_batch_per_device": _per_device("deca", size, stn_batch, deca_ids)}


def measure(name: str, devices, *, size: str = "full", dtype: str = "bfloat16", stn_batch: int | None = None,
            deca_ids: int | None = None, repeats: int = 10, flame=None, profile: str | None = None) -> dict:
    """One row: ``name``'s step on a mesh over ``devices`` (every process's, in a multi-process run),
    ``per_device`` images each. Timings as the module docstring says."""
    import jax


    n = len(devices)
    per_device = _per_device(name, size, stn_batch, deca_ids)
    mesh = common.make_mesh(devices)
    if name == "stn":
        step, state, args = build_stn_step(size, dtype, mesh, per_device * n)
    else:
        k = _deca_k(size)
        step, state, args = build_deca_step(size, dtype, mesh, per_device // k * n, k, model=flame,
                                            identity=size == "full")
    step, state, compile_s, step_s, _ = time_step(step, state, args, repeats=repeats)
    state, pipelined_s, windows = time_pipelined(step, state, args, repeats=repeats)
    if profile:
        state = profile_steps(step, state, args, f"{profile}/{name}_{n}")
    local = [d for d in devices if d.process_index == jax.process_index()]
    return {"devices": n, "processes": jax.process_count(), "global_batch": per_device * n,
            "step_s": step_s, "pipelined_step_s": pipelined_s, "pipelined_windows_s": windows,
            "img_per_s": per_device * n / pipelined_s, "img_per_s_blocking": per_device * n / step_s,
            "compile_s": compile_s, "peak_bytes": peak_bytes(local)}


def _add_efficiency(rows: list) -> None:
    """Per-device throughput against the first row's (one device unless ``--counts`` says otherwise)."""
    base = rows[0]
    for row in rows:
        for key, out in (("img_per_s", "efficiency"), ("img_per_s_blocking", "efficiency_blocking")):
            row[out] = (row[key] / row["devices"]) / (base[key] / base["devices"])


def _log_row(name: str, row: dict) -> None:

    log(f"scaling: {name} N={row['devices']} ({row['processes']} process(es)): "
        f"{row['pipelined_step_s'] * 1e3:.1f} ms/step pipelined, {row['img_per_s']:.1f} img/s, "
        f"efficiency {row['efficiency']:.3f}; waited-for steps {row['step_s'] * 1e3:.1f} ms, "
        f"efficiency {row['efficiency_blocking']:.3f} (compile {row['compile_s']:.1f}s)")


def _finish(result: dict, which) -> dict:
    for name in which:
        at4 = [r["efficiency"] for r in result.get(name, []) if r["devices"] == 4]
        result[f"{name}_efficiency_at_4"] = at4[0] if at4 else None
    result["target_efficiency_at_4"] = 0.9
    return result


def run(size: str = "full", dtype: str = "bfloat16", stn_batch: int | None = None,
        deca_ids: int | None = None, repeats: int = 10, model: str = "default", max_devices: int | None = None,
        which=("stn", "deca"), profile: str | None = None, on_result=None, counts=None) -> dict:
    """``--launch thread``: every N in ``counts`` (default :func:`device_counts`) in this process,
    on ``jax.devices()[:N]``."""
    import jax


    devices = jax.devices()
    counts = _counts(counts, len(devices), max_devices)
    result = {"bench": "scaling", "launch": "thread", "counts": counts,
              **_header(size, dtype, repeats, stn_batch, deca_ids), **device_info(devices)}
    flame = load_flame(model) if "deca" in which else None
    for name in which:
        rows = []
        for n in counts:
            last = profile if profile and n == counts[-1] else None
            rows.append(measure(name, devices[:n], size=size, dtype=dtype, stn_batch=stn_batch, deca_ids=deca_ids,
                                repeats=repeats, flame=flame, profile=last))
            _add_efficiency(rows)
            _log_row(name, rows[-1])
            result[name] = rows
            if on_result is not None:
                on_result(_finish(result, which))
    return _finish(result, which)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def local_device_count() -> int:
    """This host's device count, asked of a child process (this one must not hold the devices)."""
    out = subprocess.run([sys.executable, "-c", "import jax; print(jax.local_device_count())"],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def run_processes(argv_common: list, which, counts: list, timeout_s: float = 900.0, on_result=None) -> dict:
    """``--launch process``: for each N in ``counts``, N worker processes (``--worker N,RANK,PORT``)
    that each drive one device; rank 0's rows are collected. ``argv_common``: the size / dtype /
    batch / repeats / model arguments, passed on to the workers unchanged."""

    result = {"bench": "scaling", "launch": "process", "counts": counts}
    with tempfile.TemporaryDirectory() as tmp:
        for name in which:
            rows = []
            for n in counts:
                port, out = _free_port(), os.path.join(tmp, f"{name}_{n}.json")
                procs, logs = [], []
                for rank in range(n):
                    cmd = [sys.executable, "-u", "-m", "jface.bench", "scaling", *argv_common, "--only", name,
                           "--worker", f"{n},{rank},{port}"]
                    if rank == 0:
                        cmd += ["--json", out]
                    # rank 0 prints here; the others' output goes to a log shown if they fail
                    logs.append(None if rank == 0 else open(os.path.join(tmp, f"{name}_{n}_rank{rank}.log"), "w+"))
                    procs.append(subprocess.Popen(cmd, stdout=logs[-1], stderr=subprocess.STDOUT if rank else None))
                try:
                    codes = [p.wait(timeout=timeout_s) for p in procs]
                except subprocess.TimeoutExpired:
                    for p in procs:
                        p.kill()
                    codes = None
                tails = []
                for rank, handle in enumerate(logs):
                    if handle is not None:
                        handle.seek(0)
                        text = handle.read()
                        handle.close()
                        if codes is None or codes[rank]:
                            tails.append(f"--- rank {rank} (last lines) ---\n" + "\n".join(text.splitlines()[-15:]))
                if codes is None:
                    raise RuntimeError(f"scaling: {name} with {n} processes did not finish in {timeout_s:.0f}s\n"
                                       + "\n".join(tails))
                if any(codes):
                    raise RuntimeError(f"scaling: {name} with {n} processes: worker exit codes {codes}\n"
                                       + "\n".join(tails))
                with open(out) as handle:
                    worker = json.load(handle)
                rows.append(worker[name][0])
                _add_efficiency(rows)
                _log_row(name, rows[-1])
                result.update({k: v for k, v in worker.items() if k not in (name, "counts", "launch")})
                result[name] = rows
                if on_result is not None:
                    on_result(_finish(result, which))
    log("scaling: one process per device (jax.distributed on localhost)")
    return _finish(result, which)


def _worker(args, which) -> dict:
    """One rank of a ``--launch process`` run: join the peers, measure on all their devices."""
    import jax


    n, rank, port = (int(v) for v in args.worker.split(","))
    common.initialize_distributed(f"127.0.0.1:{port}", n, rank, local_device_ids=[rank])
    if jax.device_count() != n:
        raise RuntimeError(f"--worker: expected {n} devices over {n} processes, got {jax.device_count()}")
    (name,) = which
    flame = load_flame(args.model) if name == "deca" else None
    row = measure(name, jax.devices(), size=args.size, dtype=args.dtype, stn_batch=args.stn_batch,
                  deca_ids=args.deca_ids, repeats=args.repeats, flame=flame,
                  profile=f"{args.profile}/rank{rank}" if args.profile else None)
    return {**_header(args.size, args.dtype, args.repeats, args.stn_batch, args.deca_ids),
            **device_info(jax.devices()), name: [row]}


def main(argv=None) -> int:

    parser = argparse.ArgumentParser(prog="python -m jface.bench scaling", description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--stn-batch", type=int, default=None, help="STN images per device (full: 64)")
    parser.add_argument("--deca-ids", type=int, default=None, help="DECA identities (x4 images) per device (full: 8)")
    parser.add_argument("--max-devices", type=int, default=None)
    parser.add_argument("--counts", default=None, metavar="N,N,...",
                        help="device counts to measure (default 1, 2, 4, ... up to --max-devices or all); "
                             "the first is the efficiency baseline")
    parser.add_argument("--only", default="stn,deca", help="comma-separated: stn, deca")
    parser.add_argument("--min-devices", type=int, default=1, help="skip (exit 0) with fewer devices")
    parser.add_argument("--launch", default="process", choices=("process", "thread"),
                        help="one process per device (default) or one process driving all of them")
    parser.add_argument("--num-devices", type=int, default=None,
                        help="--launch process: scale over this many one-device processes (default: this "
                             "host's device count; on CPU, any number of processes)")
    parser.add_argument("--worker", default=None, metavar="N,RANK,PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    counts = None
    if args.counts is not None:
        try:
            counts = [int(v) for v in args.counts.split(",") if v.strip()]
        except ValueError:
            counts = []
        if not counts or min(counts) < 1 or counts != sorted(set(counts)):
            parser.error(f"--counts: expected increasing positive integers such as 1,4, got {args.counts!r}")
    which = tuple(w for w in args.only.split(",") if w)
    bad = [w for w in which if w not in ("stn", "deca")]
    if bad:
        parser.error(f"--only: expected stn and/or deca, got {bad}")
    apply_cache(args.cache)
    if args.worker:
        if len(which) != 1:
            parser.error("--worker: expected one --only benchmark")
        write_json(args.json, _worker(args, which))
        return 0
    if args.launch == "process":
        total = args.num_devices or local_device_count()
    else:
        import jax

        total = jax.device_count()
    if total < args.min_devices:

        result = {"bench": "scaling", "skipped": f"{total} device(s) < --min-devices {args.min_devices}"}
        if args.launch == "thread":
            result.update(device_info())
        log(f"scaling: skipped ({result['skipped']})")
        write_json(args.json, result)
        return 0
    if args.launch == "process":
        passed = ["--size", args.size, "--dtype", args.dtype, "--repeats", str(args.repeats), "--model", args.model]
        for flag, value in (("--stn-batch", args.stn_batch), ("--deca-ids", args.deca_ids),
                            ("--cache", args.cache), ("--profile", args.profile)):
            if value is not None:
                passed += [flag, str(value)]
        try:
            result = run_processes(passed, which, _counts(counts, total, args.max_devices),
                                   on_result=lambda r: write_json(args.json, r))
        except RuntimeError as exc:  # a worker failed or hung: its message, no traceback of ours
            print(f"jface.bench {exc}", file=sys.stderr)
            return 1
    else:
        result = run(args.size, args.dtype, args.stn_batch, args.deca_ids, args.repeats, args.model,
                     args.max_devices, which, args.profile, on_result=lambda r: write_json(args.json, r),
                     counts=counts)
    print(json.dumps(result), flush=True)
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
