"""python -m train.deca end to end (tiny preset): every stage trains, checkpoints, and evaluates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_tiny_run_trains_all_stages_and_prints_metrics(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    workdir = tmp_path / "deca"
    proc = subprocess.run(
        [sys.executable, "-m", "train.deca", "--preset", "tiny", "--workdir", str(workdir)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    # The run says up front which losses are off for lack of user weights.
    assert "identity loss is OFF" in out and "ID-MRF loss is OFF" in out
    assert "held-out metrics" in out and "UV photometric error" in out
    metrics = json.loads((workdir / "metrics.json").read_text())["final"]
    for who in ("model", "baseline"):
        assert metrics[who]["nme"] > 0 and metrics[who]["vertex_mm"] > 0
    assert set(metrics["uv_photometric"]) == {"coarse", "detail"}
    for stage in ("pretrain", "coarse", "detail"):
        steps = sorted(p.name for p in (workdir / stage / "checkpoints").iterdir() if p.name.isdigit())
        assert steps, f"no checkpoint for {stage}"
    # --eval reads the finished run's metrics.
    ev = subprocess.run([sys.executable, "-m", "train.deca", "--eval", str(workdir)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0 and "landmark NME" in ev.stdout


def test_bad_config_fields_are_named():
    from train import deca

    with pytest.raises(ValueError, match="not_a_field"):
        deca.parse_args(["--not_a_field", "1"])
    with pytest.raises(ValueError, match="stage"):
        deca.parse_args(["--stage", "everything"])
    with pytest.raises(ValueError, match="preset"):
        deca.parse_args(["--preset", "huge"])
