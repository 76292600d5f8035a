"""The notebooks of the main flows execute top to bottom (nbclient, a fresh kernel, the repository on
``PYTHONPATH``, outputs under a temporary folder through ``NB_OUT``): DECA reconstruction of a
photograph, and training on your own photographs. The 3DMM-STN gradient fit's notebook runs in
tests/test_stn_demo.py::test_notebook_executes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _execute(name: str, tmp_path: Path, monkeypatch) -> str:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("skimage")
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("NB_OUT", str(tmp_path))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    notebook = nbformat.read(REPO / "notebooks" / name, as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO)}}).execute()
    return "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)


def test_deca_reconstruction_notebook(tmp_path, monkeypatch):
    text = _execute("deca_reconstruct_photo.ipynb", tmp_path, monkeypatch)
    assert "exit status 0" in text, text[-3000:]
    summary = json.loads((tmp_path / "recon" / "summary.json").read_text())
    assert summary["processed"] == 1 and "landmark fit" in summary["source"]
    (face,) = summary["images"]
    assert face["landmark_error_px"] < 8.0 and set(face["pose_deg"]) == {"yaw", "pitch", "roll"}
    assert list((tmp_path / "recon").rglob("coarse.obj")) and list((tmp_path / "recon").rglob("overlay.png"))


def test_train_on_photos_notebook(tmp_path, monkeypatch):
    text = _execute("train_on_photos.ipynb", tmp_path, monkeypatch)
    assert text.count("exit status 0") == 2, text[-3000:]
    report = json.loads((tmp_path / "stn_eval.json").read_text())
    assert report["images"] == 8 and report["step"] == 2 and report["nme"] > 0 and report["baseline_nme"] > 0
    assert (tmp_path / "runs" / "stn_photos" / "checkpoints").is_dir()
