"""Shared test configuration.

float64 is enabled for the whole suite so that reference tests can run in double precision;
library code never relies on default dtypes (float32 in -> float32 out is tested explicitly).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import pytest

jax.config.update("jax_enable_x64", True)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("JFACE_SHARED", REPO.parent / "shared"))
REALDATA = SHARED / "realdata"
# Generated training data is not cached between tests or sessions (jface.data.generated_cache):
# every test generates what it trains on; the cache's own tests point JFACE_DATA_CACHE at a folder.
os.environ.setdefault("JFACE_DATA_CACHE", "0")


@pytest.fixture(scope="session")
def realdata() -> Path:
    """``../shared/realdata`` (real-layout files; never copied into the project). Its parent is
    ``$JFACE_SHARED`` when set, else ``../shared`` beside the repository."""
    if not REALDATA.is_dir():
        pytest.skip(f"real-layout files not found at {REALDATA}: set JFACE_SHARED to the folder that holds "
                    f"realdata/ (default: ../shared beside the repository)")
    return REALDATA


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Point the default-model cache at a per-session folder unless the caller set one."""
    if "JFACE_CACHE" not in os.environ:
        cache = tmp_path_factory.getbasetemp().parent / "jface-cache"
        monkeypatch.setenv("JFACE_CACHE", str(cache))


# The slowest modules (a few minutes each on 2 cores: trainers run end to end, fit programs compile,
# .mat fuzzers spawn child processes) run first, so that with ``-n 2 --dist worksteal`` (pyproject)
# the two workers end together instead of one finishing a long test alone at the end.
_SLOW_FIRST = (
    "test_train_deca.py", "test_tools_reconstruct.py", "test_train_data.py", "test_fit_video.py",
    "test_train_stn.py", "test_bench.py", "test_faults.py", "test_eval_protocol.py", "test_fit.py",
    "test_data_pipeline.py", "test_multiprocess.py", "test_render_soft.py", "test_data_synthetic.py",
    "test_render_rasterize.py", "test_render_antialias.py", "test_stn_localiser.py", "test_notebooks.py",
)


def pytest_collection_modifyitems(config, items):
    """Order the collected tests slowest module first (:data:`_SLOW_FIRST`), keeping each module's
    own order so its module-scoped fixtures are set up once per worker."""
    rank = {name: i for i, name in enumerate(_SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: modules keep their order
