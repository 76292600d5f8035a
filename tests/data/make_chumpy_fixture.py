"""Generate ``tiny_flame_chumpy.pkl``: a made-up 12-vertex, 5-joint model in FLAME's pkl layout,
pickled by the real chumpy package (``shapedirs`` a ``chumpy.ch.Ch``) with ``J_regressor`` a
``scipy.sparse.csc_matrix``, protocol 2 like FLAME's ``generic_model.pkl`` (FLAME 2020).

The data is random and ours (no FLAME content). Also writes ``tiny_flame_expected.npz`` with the
plain arrays a loader must produce. Run it in a throwaway environment that has chumpy 0.70::

    pip install chumpy==0.70 --no-deps --no-build-isolation --target /tmp/chumpy_env
    PYTHONPATH=/tmp/chumpy_env python tests/data/make_chumpy_fixture.py

chumpy 0.70 predates Python 3.11 and numpy 1.24, so this script (and only this script) patches
``inspect.getargspec``, the removed numpy aliases and ``scipy.sparse.linalg.interface`` before
importing it.
"""

import inspect
import pickle
import sys
from pathlib import Path

import numpy as np
import scipy.sparse
import scipy.sparse.linalg

# --- compatibility shims for chumpy 0.70 on a current stack (generator only) -------------------
if not hasattr(inspect, "getargspec"):
    inspect.getargspec = inspect.getfullargspec
for _alias, _type in (("bool", bool), ("int", int), ("float", float), ("complex", complex),
                      ("object", object), ("unicode", str), ("str", str)):
    if _alias not in np.__dict__:
        setattr(np, _alias, _type)
sys.modules.setdefault("scipy.sparse.linalg.interface", scipy.sparse.linalg)

import chumpy as ch  # noqa: E402

HERE = Path(__file__).resolve().parent


def make():
    rng = np.random.default_rng(20261121)
    n_v, n_j, n_shape, n_expr = 12, 5, 4, 2
    v_template = rng.normal(size=(n_v, 3))
    faces = np.array([[i, (i + 1) % n_v, (i + 5) % n_v] for i in range(10)], dtype=np.uint32)
    shapedirs = rng.normal(size=(n_v, 3, n_shape + n_expr)) * 1e-2
    posedirs = rng.normal(size=(n_v, 3, 9 * (n_j - 1))) * 1e-3
    j_dense = np.zeros((n_j, n_v))
    for j in range(n_j):
        cols = rng.choice(n_v, size=3, replace=False)
        j_dense[j, cols] = rng.dirichlet(np.ones(3))
    weights = rng.dirichlet(np.ones(n_j), size=n_v)
    # FLAME stores the root's parent as uint32(-1) = 4294967295.
    kintree = np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64)
    model = {
        "f": faces,
        "v_template": v_template,
        "shapedirs": ch.array(shapedirs),
        "posedirs": posedirs,
        "J_regressor": scipy.sparse.csc_matrix(j_dense),
        "kintree_table": kintree,
        "weights": weights,
        "J": j_dense @ v_template,
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }
    assert type(model["shapedirs"]).__module__ == "chumpy.ch"
    with open(HERE / "tiny_flame_chumpy.pkl", "wb") as f:
        pickle.dump(model, f, protocol=2)
    np.savez(
        HERE / "tiny_flame_expected.npz",
        f=faces, v_template=v_template, shapedirs=shapedirs, posedirs=posedirs,
        J_regressor=j_dense, kintree_table=kintree, weights=weights, n_shape=n_shape,
    )
    # Round trip through chumpy itself, as DECA loads it.
    with open(HERE / "tiny_flame_chumpy.pkl", "rb") as f:
        back = pickle.load(f, encoding="latin1")
    assert np.array_equal(np.asarray(back["shapedirs"]), shapedirs)
    assert np.array_equal(back["J_regressor"].toarray(), j_dense)


if __name__ == "__main__":
    make()
    for name in ("tiny_flame_chumpy.pkl", "tiny_flame_expected.npz"):
        print(name, (HERE / name).stat().st_size, "bytes")
