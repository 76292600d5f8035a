"""Readers bounded by what a file expands to: memory bombs refused before they allocate.

Every bomb of :mod:`jface.bench.bombs` (a 9-byte pickle with memo index 2**27, FLAME pickles with
huge sparse ``J_regressor`` shapes, npz members and a ``.mat`` variable that decompress to
gigabytes, a torch storage and a tensor view that claim gigabytes) is loaded in a child process
under ``RLIMIT_AS`` = its size after the imports + 512 MiB, so a regression fails with
``MemoryError`` instead of swapping. The same figures come from ``python -m jface.bench bombs``.
"""

from __future__ import annotations

import pickle
import zipfile

import numpy as np
import pytest
import scipy.io

from jface.bench import bombs
from jface.errors import ModelFileError
from jface.files import paths
from jface.files.mat import load_mat
from jface.files.npy import load_npy
from jface.files.npz import read_npz
from jface.files.obj import load_obj
from jface.files.pickles import safe_loads
from jface.models.loaders import read_flame_fields

# Bombs whose refusal must come from the declared sizes alone, well under a second.
_INSTANT = {"npz-load_model", "npz-load_flame", "npz-load_variables", "memo-numpy-pickle",
            "torch-storage-2.2GB", "torch-view-8GiB", "flame-sparse-16384", "flame-sparse-16GiB"}


@pytest.mark.parametrize("name", list(bombs.BOMBS))
def test_bomb_is_refused_under_a_memory_limit(name, tmp_path):
    report = bombs.run_bomb(name, tmp_path)
    file_name = report["file"].rsplit("/", 1)[-1]
    if bombs.BOMBS[name][1].endswith(":main"):  # a command line: exit 2 (jface.cli), one line on stderr
        assert report["outcome"] == "returned" and report["value"] == "2", report
        lines = report["stderr"].strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("python -m jface."), report
        message = lines[0]
    else:
        assert report["outcome"] == "ModelFileError", report
        message = report["error"]
    assert file_name in message and report["phrase"] in message, message
    grown_mib = (report["rss_peak_kb"] - report["rss_before_kb"]) / 1024
    assert grown_mib < 64, f"{name}: the child's peak RSS grew by {grown_mib:.0f} MiB"
    if name in _INSTANT:
        assert report["seconds"] < 1.0, report


def test_memory_limit_catches_an_allocation(tmp_path):
    """The child's limit is real: allocating 2 GB there is a MemoryError, not a swap."""
    report = bombs.run_in_child("numpy:ones", [250_000_000])  # 2 GB of float64
    assert report["outcome"] == "MemoryError", report


def test_memo_bomb_message_names_the_index():
    with pytest.raises(ModelFileError, match=r"x\.pkl: pickle memo index 134217728 is out of range"):
        safe_loads(bombs.MEMO_BOMB, "x.pkl")


def test_memo_indices_of_real_pickles_pass():
    obj = {f"k{i}": np.arange(i) for i in range(300)}
    for protocol in (2, 4, 5):
        out = safe_loads(pickle.dumps(obj, protocol=protocol))
        assert sorted(out) == sorted(obj)


def test_flame_sparse_shape_checked_against_the_model(tmp_path):
    fields = bombs._tiny_flame_fields()
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(bombs._sparse_pickle((5, 13), fields))
    with pytest.raises(ModelFileError, match=r"generic_model\.pkl \[J_regressor\]: .*\(5, 13\), "
                                             r"expected \(5, 12\)"):
        read_flame_fields(path)
    path.write_bytes(bombs._sparse_pickle((5, 12), fields))
    assert read_flame_fields(path)["J_regressor"].shape == (5, 12)


def test_npz_member_larger_than_its_header_says(tmp_path):
    """A zip entry whose .npy header declares more (or less) data than the entry holds."""
    member = bombs._npy_small(np.zeros(4))
    header_end = member.index(b"\n") + 1
    lying = bombs._npy_header((1000,)) + member[header_end:]
    bombs.write_zip(tmp_path / "a.npz", [("x.npy", lying)])
    with pytest.raises(ModelFileError, match=r"a\.npz \[x\]: the \.npy header declares float64\[1000\]"):
        read_npz(tmp_path / "a.npz")


def test_npy_header_must_match_the_data(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(6.0).reshape(2, 3), allow_pickle=False)
    np.testing.assert_array_equal(load_npy(tmp_path / "a.npy"), np.arange(6.0).reshape(2, 3))
    data = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "b.npy").write_bytes(data.replace(b"(2, 3)", b"(9, 9)"))
    with pytest.raises(ModelFileError, match=r"b\.npy: the \.npy header declares float64\[9, 9\]"):
        load_npy(tmp_path / "b.npy")


def test_npz_limit_is_the_sum_of_members(tmp_path):
    np.savez(tmp_path / "two.npz", a=np.zeros(100), b=np.zeros(100))
    assert sorted(read_npz(tmp_path / "two.npz", limit=2000)) == ["a", "b"]
    with pytest.raises(ModelFileError, match=r"two\.npz \[b\]: .*1200-byte limit"):
        read_npz(tmp_path / "two.npz", limit=1200)


def test_npz_object_members_are_refused(tmp_path):
    np.savez(tmp_path / "o.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ModelFileError, match=r"o\.npz \[x\]: holds Python objects"):
        read_npz(tmp_path / "o.npz")


def test_mat_limit_counts_cell_contents(tmp_path):
    """Cells are sized after loading (their headers do not say); the child is memory-capped."""
    cell = np.empty((1, 1), dtype=object)
    cell[0, 0] = np.zeros(2000)
    scipy.io.savemat(tmp_path / "c.mat", {"c": cell, "v": np.zeros(10)})
    assert load_mat(tmp_path / "c.mat")["v"].shape == (1, 10)
    with pytest.raises(ModelFileError, match=r"c\.mat: its variables hold \d+ bytes, more than the "
                                             r"10000-byte limit"):
        load_mat(tmp_path / "c.mat", limit=10_000)
    scipy.io.savemat(tmp_path / "d.mat", {"d": np.zeros((300, 300))})
    with pytest.raises(ModelFileError, match=r"d\.mat: variable 'd' declares double \[300, 300\]"):
        load_mat(tmp_path / "d.mat", limit=10_000)


def test_default_limit_is_one_gibibyte():
    assert paths.MAX_EXPANDED_BYTES == 2**30


@pytest.mark.parametrize("line, tag", [("v 0 nan 0", "v"), ("v 0 0 inf", "v"), ("vt 0.5 -inf", "vt"),
                                       ("vn 0 NaN 1", "vn")])
def test_obj_refuses_non_finite_values(tmp_path, line, tag):
    path = tmp_path / "mesh.obj"
    path.write_text(f"v 0 0 0\nv 1 0 0\nv 1 1 0\nvt 0 0\n{line}\nf 1/1 2/1 3/1\n")
    with pytest.raises(ModelFileError, match=r"mesh\.obj: line 5: .*NaN or infinite"):
        load_obj(path)


def test_torch_zip_bomb_member_is_not_read(tmp_path):
    """The declared size is checked before the member is opened (a 2 MB zip claiming 2.2 GB)."""
    path = bombs.build("torch-storage-2.2GB", tmp_path)
    with zipfile.ZipFile(path) as zf:
        assert zf.getinfo("archive/data/0").file_size == 2_200_000_000
    assert path.stat().st_size < 3_000_000
