"""Every benchmark in one go: ``python -m jface.bench all [--size small|full] [--json PATH]``.

Runs, each in its own subprocess (so device memory and a crash stay isolated, and this process
never touches the accelerator): ``render`` (when ``jface.bench.render`` exists), ``stn_train``
(3DMM-STN step vs VGG-16 classifier), ``deca`` (DECA coarse step vs ResNet-50 classifier),
``inference`` (DECA encode + decode + render at batch 64) and ``scaling`` (weak scaling over
1, 2, 4, ... devices; skipped on one device). Each part's output is streamed with its name as
prefix; after each part the combined JSON is rewritten, so a killed run keeps what finished.
Ends with one table: each figure, its baseline and the ratio (or the target it is compared to).

``--profile DIR`` passes ``--profile DIR/<part>`` to the parts that support it; ``--budget S``
skips the parts that would start after S seconds; ``--only a,b`` picks parts.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["main", "PARTS", "summarize"]

PARTS = ("render", "stn_train", "deca", "inference", "scaling")


def _part_command(name: str, size: str, json_path: str, profile: str | None, repeats: int | None) -> list:
    cmd = [sys.executable, "-u", "-m", "jface.bench", name, "--size", size]
    if name == "stn_train":
        cmd += ["--out", json_path]
        if repeats:
            cmd += ["--repeats", str(repeats)]
        return cmd
    cmd += ["--json", json_path]
    if name in ("deca", "inference", "scaling"):
        if profile:
            cmd += ["--profile", str(Path(profile) / name)]
        if repeats:
            cmd += ["--repeats", str(repeats)]
    if name == "scaling":
        cmd += ["--min-devices", "2"]
    return cmd


def _run_part(name: str, cmd: list, timeout: float, env: dict) -> tuple:
    """Run one part, streaming its output; returns (returncode, seconds)."""
    import threading

    start = time.perf_counter()
    print(f"[all] {name}: {' '.join(cmd[2:])}", flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            bufsize=1)
    killed = []
    timer = threading.Timer(timeout, lambda: (killed.append(True), proc.kill()))
    timer.start()
    try:
        for line in proc.stdout:
            if not line.startswith("{"):  # the parts' one-line JSON dumps go to the file instead
                print(f"[{name}] {line.rstrip()}", flush=True)
        proc.wait()
    finally:
        timer.cancel()
    if killed:
        print(f"[all] {name}: killed after {timeout:.0f}s", flush=True)
        return "timeout", time.perf_counter() - start
    return proc.returncode, time.perf_counter() - start


def _fmt(x, spec=".1f"):
    return "-" if x is None else format(x, spec)


def summarize(results: dict) -> list:
    """Rows ``(part, figure, value, baseline, ratio, note)`` of the combined results."""
    rows = []
    r = results.get("render", {}).get("result")
    if r:
        for key, value in sorted(r.items()):
            if isinstance(value, (int, float)) and "per_s" in key:
                rows.append(("render", key, value, None, None, ""))
            elif isinstance(value, (int, float)) and "ratio" in key:
                rows.append(("render", key, None, None, value, ""))
    r = results.get("stn_train", {}).get("result")
    if r:
        rows.append(("stn_train", "STN step img/s", r["stn_img_per_s"], r["vgg_img_per_s"],
                     r["stn_img_per_s"] / r["vgg_img_per_s"], "baseline: VGG-16 classifier step"))
    r = results.get("deca", {}).get("result")
    if r:
        rows.append(("deca", "DECA coarse step img/s", r["deca_img_per_s"], r["resnet_img_per_s"], r["ratio"],
                     "baseline: ResNet-50 classifier step; target ratio >= 0.25"))
    r = results.get("inference", {}).get("result")
    if r:
        rows.append(("inference", f"DECA inference img/s (B={r['batch']})", r["img_per_s"], r["target_img_per_s"],
                     r["img_per_s"] / r["target_img_per_s"], "vs target 2000 img/s (H100)"))
        for part in ("encode", "flame", "render", "detail"):
            if part in r:
                rows.append(("inference", f"  {part} img/s", r[part]["img_per_s"], None, None, ""))
    r = results.get("scaling", {}).get("result")
    if r and not r.get("skipped"):
        for name in ("stn", "deca"):
            for row in r.get(name, []):
                rows.append(("scaling", f"{name} N={row['devices']} img/s", row["img_per_s"], None,
                             row["efficiency"], "efficiency; target >= 0.9 at N=4"))
    return rows


def print_table(results: dict) -> None:
    rows = summarize(results)
    print("\n[all] summary", flush=True)
    print(f"{'part':10s} {'figure':36s} {'value':>11s} {'baseline':>11s} {'ratio':>7s}  note")
    for part, figure, value, base, ratio, note in rows:
        print(f"{part:10s} {figure:36s} {_fmt(value):>11s} {_fmt(base):>11s} {_fmt(ratio, '.3f'):>7s}  {note}")
    for part, entry in results.items():
        if isinstance(entry, dict) and entry.get("status") not in (None, "ok"):
            print(f"{part:10s} {entry['status']}")
    sys.stdout.flush()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jface.bench all", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="full", choices=("full", "small"))
    parser.add_argument("--json", default=None, help="combined JSON (rewritten after each part)")
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--profile", default=None, metavar="DIR")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (parts' default)")
    parser.add_argument("--timeout", type=float, default=360.0, help="seconds per part")
    parser.add_argument("--budget", type=float, default=None, help="start no part after this many seconds")
    parser.add_argument("--cache", default=None, metavar="DIR", help="JAX persistent compilation cache")
    args = parser.parse_args(argv)
    only = [p for p in args.only.split(",") if p]
    bad = [p for p in only if p not in PARTS]
    if bad:
        parser.error(f"--only: unknown parts {bad}; expected some of {', '.join(PARTS)}")
    env = dict(os.environ)
    if args.cache:
        env["JAX_COMPILATION_CACHE_DIR"] = args.cache
    results = {"size": args.size, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="jface-bench-") as tmp:
        for name in PARTS:
            if name not in only:
                continue
            if name == "render" and importlib.util.find_spec("jface.bench.render") is None:
                results[name] = {"status": "absent (no jface.bench.render)"}
                continue
            if args.budget is not None and time.perf_counter() - start > args.budget:
                results[name] = {"status": f"skipped (budget {args.budget:.0f}s spent)"}
                print(f"[all] {name}: skipped, budget spent", flush=True)
                continue
            path = os.path.join(tmp, f"{name}.json")
            code, seconds = _run_part(name, _part_command(name, args.size, path, args.profile, args.repeats),
                                      args.timeout, env)
            entry = {"status": "ok" if code == 0 else f"failed (exit {code})", "seconds": seconds}
            if os.path.exists(path):
                with open(path) as handle:
                    entry["result"] = json.load(handle)
            results[name] = entry
            print(f"[all] {name}: {entry['status']} in {seconds:.0f}s", flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=1))
    results["seconds"] = time.perf_counter() - start
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    failed = [name for name, v in results.items()
              if isinstance(v, dict) and not str(v.get("status", "ok")).startswith(("ok", "absent", "skipped"))]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
