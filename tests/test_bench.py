"""Smoke tests of the benchmarks (jface.bench.deca / inference / scaling / all) at ``--size small``.

They check that each benchmark runs end to end and writes sane JSON (positive, finite
throughputs); no timing is asserted. The scaling bench runs in a subprocess with 4 forced CPU
devices (``--xla_force_host_platform_device_count=4``), with tfds / grain / dm-pix / trimesh
blocked as on the GPU machines.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("tensorflow_datasets", "tensorflow", "grain", "dm_pix", "pix", "trimesh")

# Each full bench compiles two to six train steps (ResNet-50-layout networks, the renderer): minutes
# on 2 CPU cores, so they run only when asked (as tests/test_faults.py's slow run does).
slow_bench = pytest.mark.skipif(
    not os.environ.get("JFACE_SLOW_BENCH"),
    reason="set JFACE_SLOW_BENCH=1: bench smoke runs (deca, inference, scaling: minutes each on 2 CPU cores)")


def _positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _blocked_env(tmp_path, devices=None):
    site = tmp_path / "block"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in BLOCKED))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    env["JAX_PLATFORMS"] = "cpu"
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


@pytest.mark.slow
@slow_bench
def test_deca_bench_small(tmp_path):
    from jface.bench import deca

    out = tmp_path / "deca.json"
    assert deca.main(["--size", "small", "--repeats", "1", "--dtype", "float32", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert _positive(result["deca_img_per_s"]) and _positive(result["resnet_img_per_s"])
    assert result["ratio"] == pytest.approx(result["deca_img_per_s"] / result["resnet_img_per_s"])
    assert result["ratio_pipelined"] == pytest.approx(result["resnet_pipelined_step_s"]
                                                      / result["deca_pipelined_step_s"])
    assert _positive(result["deca_pipelined_step_s"]) and _positive(result["resnet_pipelined_step_s"])
    assert result["batch"] == 4 and math.isfinite(result["deca_loss"])
    assert {"loss_landmark", "loss_photometric"} <= set(result["deca_losses"])


@pytest.mark.slow
@slow_bench
def test_inference_bench_small(tmp_path):
    from jface.bench import inference

    out = tmp_path / "inference.json"
    assert inference.main(["--size", "small", "--repeats", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    for part in ("encode", "flame", "render", "detail", "full"):
        assert _positive(result[part]["img_per_s"]), part
    assert result["img_per_s"] == result["full"]["img_per_s"]


@pytest.mark.slow
@slow_bench
def test_scaling_bench_four_cpu_devices(tmp_path):
    out = tmp_path / "scaling.json"
    code = textwrap.dedent(f"""
        import jax
        assert jax.device_count() == 4, jax.devices()
        from jface.bench import scaling
        raise SystemExit(scaling.main(["--size", "small", "--repeats", "1", "--only", "stn",
                                       "--launch", "thread", "--json", {str(out)!r}]))
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_blocked_env(tmp_path, 4),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["counts"] == [1, 2, 4]
    rows = result["stn"]
    assert [r["devices"] for r in rows] == [1, 2, 4]
    assert [r["global_batch"] for r in rows] == [4, 8, 16]
    assert all(_positive(r["img_per_s"]) and _positive(r["efficiency"]) for r in rows)
    assert rows[0]["efficiency"] == 1.0


@pytest.mark.slow
def test_scaling_bench_one_process_per_device(tmp_path):
    """--launch process: N jax.distributed peers on localhost (gloo on CPU), one device each; the
    rows come from rank 0, the global batch spans the processes, both timings are reported."""
    out = tmp_path / "scaling.json"
    env = _blocked_env(tmp_path)
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "jface.bench", "scaling", "--size", "small", "--repeats", "1", "--only", "stn",
         "--num-devices", "2", "--json", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["launch"] == "process" and result["counts"] == [1, 2]
    rows = result["stn"]
    assert [(r["devices"], r["processes"], r["global_batch"]) for r in rows] == [(1, 1, 4), (2, 2, 8)]
    for r in rows:
        assert _positive(r["step_s"]) and _positive(r["pipelined_step_s"]) and len(r["pipelined_windows_s"]) == 3
        assert r["img_per_s"] == pytest.approx(r["global_batch"] / r["pipelined_step_s"])
        assert r["img_per_s_blocking"] == pytest.approx(r["global_batch"] / r["step_s"])
    assert rows[0]["efficiency"] == 1.0
    assert rows[1]["efficiency"] == pytest.approx(rows[1]["img_per_s"] / (2 * rows[0]["img_per_s"]))
    assert "N=2 (2 process(es))" in proc.stdout


def test_scaling_process_launch_reports_a_failed_worker(tmp_path):
    """A worker that fails (an odd STN batch) makes the launcher exit 1 with one message naming the
    benchmark, the process count and the exit codes."""
    env = _blocked_env(tmp_path)
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "jface.bench", "scaling", "--size", "small", "--repeats", "1", "--only", "stn",
         "--num-devices", "1", "--stn-batch", "3"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "jface.bench scaling: stn with 1 processes: worker exit codes [1]" in proc.stderr
    assert "batch: expected an even number" in proc.stderr  # rank 0's own error is shown


def test_process_rows_slices_this_process_rows(monkeypatch):
    import jax

    from jface.bench.deca import process_rows

    batch = {"images": np.arange(8), "labels": np.arange(8) * 10}
    assert process_rows(batch) is batch  # one process: everything
    monkeypatch.setattr(jax, "process_count", lambda: 4)
    monkeypatch.setattr(jax, "process_index", lambda: 2)
    rows = process_rows(batch)
    np.testing.assert_array_equal(rows["images"], [4, 5])
    np.testing.assert_array_equal(rows["labels"], [40, 50])
    with pytest.raises(ValueError, match=r"batch\['images'\]: 6 rows not divisible by 4 processes"):
        process_rows({"images": np.arange(6)})


def _write_trace(path, events):
    import gzip

    meta = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
            {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}},
            {"ph": "M", "name": "thread_name", "pid": 2, "tid": 7, "args": {"name": "py_xla_execute/0"}}]
    with gzip.open(path, "wt") as handle:
        json.dump({"traceEvents": meta + events}, handle)


def test_trace_summary_per_step_busy_idle_gaps_and_launches(tmp_path, capsys):
    from jface.bench import trace

    x = lambda pid, tid, name, ts, dur: {"ph": "X", "pid": pid, "tid": tid, "name": name, "ts": ts, "dur": dur}  # noqa: E731
    events = [  # two "steps" on GPU 0 (µs): kernels a, b (b overlaps a on another stream), a gap, then c
        x(1, 10, "a", 0, 1000), x(1, 11, "b", 500, 1000), x(1, 10, "c", 4500, 500),
        x(1, 10, "a", 6000, 1000),
        x(2, 7, "[0] GpuExecutable::ExecuteThunks", 0, 3000), x(2, 7, "[0] GpuExecutable::ExecuteThunks", 5000, 1000),
    ]
    folder = tmp_path / "prof" / "plugins" / "profile" / "run1"
    folder.mkdir(parents=True)
    _write_trace(folder / "perfetto_trace.json.gz", events)
    assert trace.main([str(tmp_path / "prof"), "--steps", "2", "--json", str(tmp_path / "s.json")]) == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    gpu = summary["devices"]["/device:GPU:0"]
    assert gpu["busy_ms"] == pytest.approx((1.5 + 0.5 + 1.0) / 2)  # overlap of a and b counted once
    assert gpu["span_ms"] == pytest.approx(7.0 / 2) and gpu["idle_ms"] == pytest.approx(4.0 / 2)
    assert gpu["largest_gaps"][0]["ms"] == pytest.approx(3.0) and gpu["largest_gaps"][0]["after"] == "b"
    assert gpu["largest_gaps"][0]["before"] == "c" and gpu["kernels"] == 2
    assert gpu["top_kernels"][0] == {"name": "a", "ms": pytest.approx(1.0)}
    host = summary["host"]["/host:CPU py_xla_execute/0"]
    assert host["launch_ms"] == pytest.approx(2.0) and host["wait_ms"] == 0
    assert "busy 1.50 ms" in capsys.readouterr().out


def test_profile_calls_writes_a_trace_the_summary_reads(tmp_path, capsys):
    import jax
    import jax.numpy as jnp

    from jface.bench import trace
    from jface.bench.deca import profile_calls

    fn = jax.jit(lambda x: jnp.sin(x) @ x)
    profile_calls(fn, (jnp.ones((64, 64)),), tmp_path / "prof", calls=2)
    assert trace.main([str(tmp_path / "prof"), "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "perfetto_trace.json.gz" in out and "per step (trace of 2 steps)" in out


def test_trace_summary_bad_inputs(tmp_path, capsys):
    from jface.bench import trace

    assert trace.main([str(tmp_path / "missing")]) == 2
    assert "neither a trace file nor a folder" in capsys.readouterr().err
    assert trace.main([str(tmp_path)]) == 2
    assert "no perfetto_trace.json.gz under" in capsys.readouterr().err
    bad = tmp_path / "perfetto_trace.json.gz"
    bad.write_bytes(b"not gzip")
    assert trace.main([str(bad)]) == 2
    assert "is not a (gzipped) Chrome/Perfetto trace JSON" in capsys.readouterr().err


def test_device_counts_and_all_summary():
    from jface.bench import all as bench_all
    from jface.bench.scaling import device_counts

    assert device_counts(1) == [1]
    assert device_counts(4) == [1, 2, 4]
    assert device_counts(6) == [1, 2, 4, 6]
    assert device_counts(8, 4) == [1, 2, 4]
    rows = bench_all.summarize({
        "deca": {"status": "ok", "result": {"deca_img_per_s": 100.0, "resnet_img_per_s": 400.0, "ratio": 0.25}},
        "scaling": {"status": "ok", "result": {"stn": [{"devices": 1, "img_per_s": 10.0, "efficiency": 1.0}]}},
    })
    assert rows[0][:5] == ("deca", "DECA coarse step img/s", 100.0, 400.0, 0.25)
    assert rows[1][0] == "scaling" and rows[1][4] == 1.0


def test_scaling_counts_option_and_efficiency_base(capsys):
    """``--counts``: explicit device counts, increasing; efficiency is per-device throughput against
    the first row's, whatever its device count."""
    from jface.bench import scaling

    assert scaling._counts(None, 4, None) == [1, 2, 4]
    assert scaling._counts([1, 4], 4, None) == [1, 4]
    with pytest.raises(SystemExit, match="--counts 8 exceeds the 4 device"):
        scaling._counts([1, 8], 4, None)
    for bad in ("4,1", "0,2", "1,1", "a", ","):
        with pytest.raises(SystemExit):
            scaling.main(["--counts", bad])
        assert "--counts: expected increasing positive integers" in capsys.readouterr().err
    rows = [{"devices": 2, "img_per_s": 200.0, "img_per_s_blocking": 100.0},
            {"devices": 4, "img_per_s": 360.0, "img_per_s_blocking": 200.0}]
    scaling._add_efficiency(rows)
    assert rows[0]["efficiency"] == 1.0 and rows[1]["efficiency"] == pytest.approx(0.9)
    assert rows[1]["efficiency_blocking"] == pytest.approx(1.0)


def test_all_rejects_unknown_part(capsys):
    from jface.bench import all as bench_all

    with pytest.raises(SystemExit):
        bench_all.main(["--only", "nope"])
    assert "unknown parts" in capsys.readouterr().err


def test_render_bench_table_runs_on_a_tiny_obj(tmp_path):
    """Issue 24's table mode: an OBJ, one midpoint subdivision, antialias; the JSON has every field
    (no timing is asserted)."""
    from jface.bench import render

    obj = tmp_path / "tetra.obj"
    obj.write_text("v 0 1 0\nv -1 -1 0.5\nv 1 -1 0.5\nv 0 -0.5 -1\nf 1 2 3\nf 1 3 4\nf 1 4 2\nf 2 4 3\n")
    out = tmp_path / "render.json"
    assert render.main(["--mesh", str(obj), "--subdivide", "1", "--batch", "2", "--image", "16", "--antialias",
                        "--repeats", "1", "--warmup", "0", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["num_faces"] == 16 and result["num_vertices"] == 10 and result["subdivide"] == 1
    assert result["batch"] == 2 and result["image"] == 16 and 0.2 < result["coverage"] < 0.8
    for name in ("fwd", "fwd_bwd", "aa_fwd_bwd"):
        assert _positive(result[f"{name}_ms"]) and result["timings_ms"][name] == result[f"{name}_ms"]
    assert math.isfinite(result["aa_ms"]) and "--antialias" in result["command"]


def test_render_bench_subdivide_splits_every_face_in_four():
    from jface.bench.render import subdivide

    vertices = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]])
    faces = np.array([[0, 1, 2], [2, 1, 3]])
    new_v, new_f = subdivide(vertices, faces)
    assert new_v.shape == (4 + 5, 3) and new_f.shape == (8, 3)  # 5 unique edges
    area = lambda v, f: 0.5 * np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])[:, 2]  # noqa: E731
    np.testing.assert_allclose(area(new_v, new_f), np.tile(area(vertices, faces), 4) / 4)  # orientation kept
