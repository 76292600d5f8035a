"""Summarise a ``jax.profiler`` trace: ``python -m jface.bench trace DIR [--steps N] [--top K]``.

Reads the Perfetto JSON (``perfetto_trace.json.gz``) that ``--profile DIR`` of the deca, inference
and scaling benchmarks writes (``jax.profiler.start_trace(..., create_perfetto_trace=True)``) and
prints what BUILD_NOTES.md's scaling figures need from a trace:

* per device lane (``/device:GPU:i``, ``/device:TPU:i``): the time its kernels ran (``busy``),
  the span from its first to its last kernel, the idle time inside that span and its largest gaps
  (with the kernels on either side), and the top kernels by total time;
* per host thread: the time in XLA's executable launches (``ExecuteThunks``) and Python's waits;

each divided by ``--steps`` (the number of profiled steps, 3 by default) to give per-step figures.
Overlapping events of one lane (several streams) count once towards ``busy``.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import sys
from pathlib import Path

__all__ = ["main", "load_events", "summarize", "find_trace"]


def find_trace(path) -> Path:
    """``path`` itself if it is a file, else the newest ``perfetto_trace.json.gz`` below it."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"trace: {path} is neither a trace file nor a folder")
    found = sorted(path.rglob("perfetto_trace.json.gz"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"trace: no perfetto_trace.json.gz under {path} (profile with "
                                f"create_perfetto_trace=True, as the benchmarks' --profile does)")
    return found[-1]


def load_events(path) -> tuple:
    """``(complete_events, process_names, thread_names)`` of a Perfetto / Chrome trace JSON (.gz)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt") as handle:
            data = json.load(handle)
    except (OSError, ValueError) as exc:
        raise ValueError(f"trace: {path} is not a (gzipped) Chrome/Perfetto trace JSON: {exc}") from exc
    events = data["traceEvents"] if isinstance(data, dict) else data
    if not isinstance(events, list):
        raise ValueError(f"trace: {path}: expected a list of trace events")
    processes, threads, complete = {}, {}, []
    for e in events:
        if not isinstance(e, dict):
            continue
        if e.get("ph") == "M" and e.get("name") == "process_name":
            processes[e.get("pid")] = e.get("args", {}).get("name", str(e.get("pid")))
        elif e.get("ph") == "M" and e.get("name") == "thread_name":
            threads[(e.get("pid"), e.get("tid"))] = e.get("args", {}).get("name", str(e.get("tid")))
        elif e.get("ph") == "X" and "ts" in e and "dur" in e:
            complete.append(e)
    return complete, processes, threads


def _union_ms(intervals) -> float:
    total, end = 0.0, None
    for start, stop in sorted(intervals):
        if end is None or start > end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total / 1e3


def summarize(events, processes, threads, *, steps: int = 3, top: int = 10, gaps: int = 5) -> dict:
    """Per-step figures (ms) per device lane and per host thread; see the module docstring."""
    steps = max(int(steps), 1)
    devices = collections.defaultdict(list)
    hosts = collections.defaultdict(list)
    for e in events:
        name = processes.get(e.get("pid"), "")
        if "/device:" in name:
            devices[name].append(e)
        else:
            hosts[(name, threads.get((e.get("pid"), e.get("tid")), str(e.get("tid"))))].append(e)
    out = {"steps": steps, "devices": {}, "host": {}}
    for lane, evs in sorted(devices.items()):
        evs.sort(key=lambda e: e["ts"])
        spans = [(e["ts"], e["ts"] + e["dur"]) for e in evs]
        busy = _union_ms(spans)
        first, last = spans[0][0], max(s for _, s in spans)
        holes, end, before = [], spans[0][1], evs[0]
        for e, (start, stop) in zip(evs[1:], spans[1:]):
            if start > end:
                holes.append(((start - end) / 1e3, (end - first) / 1e3, before["name"][:60], e["name"][:60]))
            if stop > end:
                end, before = stop, e
        holes.sort(reverse=True)
        kernels = collections.Counter()
        for e in evs:
            kernels[e["name"][:80]] += e["dur"] / 1e3
        out["devices"][lane] = {
            "busy_ms": busy / steps, "span_ms": (last - first) / 1e3 / steps,
            "idle_ms": ((last - first) / 1e3 - busy) / steps, "kernels": len(evs) / steps,
            "largest_gaps": [{"ms": g, "at_ms": at, "after": a, "before": b} for g, at, a, b in holes[:gaps]],
            "top_kernels": [{"name": k, "ms": v / steps} for k, v in kernels.most_common(top)],
        }
    for (process, thread), evs in sorted(hosts.items()):
        launch = [(e["ts"], e["ts"] + e["dur"]) for e in evs if "ExecuteThunks" in e["name"]]
        wait = [(e["ts"], e["ts"] + e["dur"]) for e in evs
                if "Wait for" in e["name"] or "block_until_ready" in e["name"]]
        if launch or wait:
            out["host"][f"{process} {thread}"] = {"launch_ms": _union_ms(launch) / steps,
                                                  "wait_ms": _union_ms(wait) / steps}
    return out


def format_summary(summary: dict) -> str:
    lines = [f"per step (trace of {summary['steps']} steps):"]
    if not summary["devices"]:
        lines.append("  no device lanes in this trace (a CPU run: only host threads)")
    for lane, d in summary["devices"].items():
        lines.append(f"  {lane}: busy {d['busy_ms']:.2f} ms, span {d['span_ms']:.2f} ms, idle {d['idle_ms']:.2f} ms, "
                     f"{d['kernels']:.0f} kernels")
        for g in d["largest_gaps"]:
            lines.append(f"      gap {g['ms']:.3f} ms at {g['at_ms']:.2f} ms: after {g['after']} -> {g['before']}")
        for k in d["top_kernels"]:
            lines.append(f"      {k['ms']:8.3f} ms  {k['name']}")
    for thread, h in summary["host"].items():
        lines.append(f"  host {thread}: launching {h['launch_ms']:.2f} ms, waiting {h['wait_ms']:.2f} ms")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jface.bench trace", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="a perfetto_trace.json.gz, or a --profile folder (the newest trace below it)")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps (per-step figures); default 3")
    parser.add_argument("--top", type=int, default=10, help="kernels listed per device")
    parser.add_argument("--json", default=None, help="write the summary here")
    args = parser.parse_args(argv)
    try:
        path = find_trace(args.path)
        summary = summarize(*load_events(path), steps=args.steps, top=args.top)
    except (FileNotFoundError, ValueError) as exc:
        print(f"jface.bench trace: {exc}", file=sys.stderr)
        return 2
    summary["trace"] = str(path)
    print(f"trace: {path}")
    print(format_summary(summary), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
