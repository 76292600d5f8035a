"""Safe unpickling (jface.files.pickles) of FLAME's generic_model.pkl layout and DECA's torch-pickled
landmark file.

The FLAME-layout fixture ``tests/data/tiny_flame_chumpy.pkl`` was pickled by the real chumpy 0.70
(made-up 12-vertex model; ``tests/data/make_chumpy_fixture.py`` regenerates it).
"""

from __future__ import annotations

import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jface.errors import ModelFileError, UnsafePickleError
from jface.files import pickles as safe_pickle
from jface.files.npy import read_npy_header
from jface.files.torch_save import loads_with_tensors
from jface.models import FlameModel
from jface.models import loaders as mio

DATA = Path(__file__).resolve().parent / "data"
CHUMPY_PKL = DATA / "tiny_flame_chumpy.pkl"
EXPECTED = DATA / "tiny_flame_expected.npz"


# ----------------------------------------------------------------------------------------------
# helpers that craft pickles byte by byte


def _short_binstring(raw: bytes) -> bytes:
    return b"U" + bytes([len(raw)]) + raw


def _binstring(raw: bytes) -> bytes:
    return b"T" + struct.pack("<i", len(raw)) + raw


def _int(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)


def py2_array_pickle(data: bytes, shape, descr=b"f8", *, proto_header=True) -> bytes:
    """An ndarray pickled the way Python 2 + old numpy did (str payloads, numpy.core paths)."""
    shape_ops = b"(" + b"".join(_int(s) for s in shape) + b"t"
    body = (
        b"cnumpy.core.multiarray\n_reconstruct\n"
        b"cnumpy\nndarray\n"
        b"K\x00\x85" + _short_binstring(b"b") + b"\x87R"
        b"(K\x01" + shape_ops
        + b"cnumpy\ndtype\n" + _short_binstring(descr) + b"K\x00K\x01\x87R"
        b"(K\x03" + _short_binstring(b"<") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
        b"\x89" + _binstring(data) + b"tb"
    )
    return (b"\x80\x02" if proto_header else b"") + body


def _legacy_torch_stream(inner_pickle: bytes) -> bytes:
    head = b"".join(pickle.dumps(x, protocol=2) for x in (
        0x1950A86A20F9469CFC6C, 1001,
        {"protocol_version": 1001, "little_endian": True, "type_sizes": {"long": 4}}))
    return head + inner_pickle


def _npy_object(pickle_bytes: bytes) -> bytes:
    f = io.BytesIO()
    np.lib.format.write_array_header_1_0(  # writes the magic too
        f, {"descr": "|O", "fortran_order": False, "shape": ()})
    return f.getvalue() + pickle_bytes


class _Evil:
    """Pickles as a call of ``func(*args)``; loading it with plain pickle would run it."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


# ----------------------------------------------------------------------------------------------
# the chumpy-written FLAME-layout pickle


def test_chumpy_fixture_is_small_and_really_chumpy():
    data = CHUMPY_PKL.read_bytes()
    assert len(data) < 50_000
    assert data[:2] == b"\x80\x02"  # protocol 2, like generic_model.pkl
    assert b"chumpy.ch\nCh\n" in data and b"csc_matrix" in data


def test_read_flame_fields_matches_chumpy_arrays():
    fields = mio.read_flame_fields(CHUMPY_PKL)
    expected = np.load(EXPECTED)
    for key in ("f", "v_template", "shapedirs", "posedirs", "J_regressor", "kintree_table",
                "weights"):
        assert fields[key].dtype == expected[key].dtype, key
        np.testing.assert_array_equal(fields[key], expected[key], err_msg=key)
    assert fields["bs_style"] == "lbs"


def test_load_flame_from_chumpy_pickle():
    expected = np.load(EXPECTED)
    model = mio.load_flame(CHUMPY_PKL, n_shape=int(expected["n_shape"]))
    assert isinstance(model, FlameModel)
    assert model.parents == (-1, 0, 1, 1, 1)  # kintree_table[0] with the root set to -1
    assert model.n_shape == 4 and model.n_expression == 2
    assert model.faces.dtype == np.int32
    for name, key in (("v_template", "v_template"), ("shapedirs", "shapedirs"),
                      ("posedirs", "posedirs"), ("j_regressor", "J_regressor"),
                      ("lbs_weights", "weights")):
        value = np.asarray(getattr(model, name))
        assert value.dtype == np.float32, name
        np.testing.assert_array_equal(value, expected[key].astype(np.float32), err_msg=name)
    # load_flame_pkl is the pkl-only entry point and must agree
    other = mio.load_flame_pkl(CHUMPY_PKL, n_shape=4)
    np.testing.assert_array_equal(np.asarray(other.shapedirs), np.asarray(model.shapedirs))


def test_flame_n_shape_required_for_non_flame_width():
    with pytest.raises(ModelFileError, match="n_shape"):
        mio.load_flame(CHUMPY_PKL)


def test_old_scipy_and_numpy_module_paths(tmp_path):
    """Python-2 era pickles name ``scipy.sparse.csc`` and ``numpy.core.multiarray``."""
    data = CHUMPY_PKL.read_bytes()
    assert b"scipy.sparse._csc\n" in data
    old = data.replace(b"scipy.sparse._csc\n", b"scipy.sparse.csc\n").replace(
        b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    path = tmp_path / "old.pkl"
    path.write_bytes(old)
    fields = mio.read_flame_fields(path)
    np.testing.assert_array_equal(fields["J_regressor"], np.load(EXPECTED)["J_regressor"])


def test_python2_str_payload_array():
    arr = np.arange(6.0).reshape(2, 3)
    data = py2_array_pickle(arr.tobytes(), (2, 3)) + b"."
    out = safe_pickle.safe_loads(data)
    np.testing.assert_array_equal(out, arr)
    assert out.dtype == np.float64


def test_modern_protocols_roundtrip():
    obj = {"a": np.arange(5, dtype=np.int16), "b": np.float32(2.5), "c": {1, 2},
           "d": np.ones((2, 2), order="F")}
    for protocol in (2, 4, 5):
        out = safe_pickle.safe_loads(pickle.dumps(obj, protocol=protocol))
        np.testing.assert_array_equal(out["a"], obj["a"])
        assert out["a"].dtype == np.int16 and out["b"] == np.float32(2.5)
        assert out["c"] == {1, 2}
        np.testing.assert_array_equal(out["d"], obj["d"])


# ----------------------------------------------------------------------------------------------
# malicious pickles: nothing may run


def _marker_payloads(marker: Path):
    import builtins

    return {
        "os.system": _Evil(os.system, f"touch {marker}"),
        "eval": _Evil(builtins.eval, f"open({str(marker)!r}, 'w').close()"),
        "exec": _Evil(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
        "open": _Evil(builtins.open, str(marker), "w"),
    }


@pytest.mark.parametrize("protocol", [0, 2, 4])
@pytest.mark.parametrize("name", ["os.system", "eval", "exec", "open"])
def test_malicious_pickle_refused_and_not_executed(tmp_path, name, protocol):
    marker = tmp_path / "pwned"
    payload = {"v_template": np.zeros((3, 3)), "shapedirs": _marker_payloads(marker)[name]}
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(pickle.dumps(payload, protocol=protocol))
    if protocol == 0:
        with pytest.raises(ModelFileError):  # not binary: refused before unpickling
            mio.load_flame(path)
        with pytest.raises(UnsafePickleError) as info:
            safe_pickle.safe_loads(path.read_bytes(), path)
    else:
        with pytest.raises(UnsafePickleError) as info:
            mio.load_flame(path)
    message = str(info.value)
    assert str(path) in message and "not on the allow-list" in message
    expected_global = {"os.system": "system", "eval": "eval", "exec": "exec", "open": "open"}
    assert expected_global[name] in message
    assert not marker.exists()


def test_malicious_global_named_in_error(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(b"\x80\x02cposix\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.")
    with pytest.raises(UnsafePickleError, match=r"posix\.system"):
        mio.read_flame_fields(path)


def test_reconstructor_cannot_smuggle_callables(tmp_path):
    marker = tmp_path / "pwned"
    # copy_reg._reconstructor(builtins.eval, ...) -> eval is refused at find_class
    data = (b"\x80\x02ccopy_reg\n_reconstructor\nc__builtin__\neval\nc__builtin__\nobject\nN\x87R.")
    with pytest.raises(UnsafePickleError, match="eval"):
        safe_pickle.safe_loads(data, "x.pkl")
    # _codecs.encode with a non-latin1 codec is refused
    data = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R."
    with pytest.raises(ModelFileError, match="latin-1"):
        safe_pickle.safe_loads(data, "x.pkl")
    assert not marker.exists()


def test_malicious_torch_storage_stream(tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle.dumps(_Evil(os.system, f"touch {marker}"), protocol=2)
    stream = _legacy_torch_stream(evil)
    top = (b"\x80\x03}q\x00X\x15\x00\x00\x00dynamic_lmk_faces_idxq\x01"
           b"ctorch.storage\n_load_from_bytes\nq\x02B" + struct.pack("<I", len(stream)) + stream
           + b"\x85Rs.")
    path = tmp_path / "landmark_embedding.npy"
    path.write_bytes(_npy_object(top))
    with pytest.raises(UnsafePickleError, match="system"):
        mio.load_landmark_embedding(path)
    assert not marker.exists()


def test_torch_globals_refused_outside_landmark_files(tmp_path):
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(b"\x80\x02ctorch.storage\n_load_from_bytes\nC\x00\x85R.")
    with pytest.raises(UnsafePickleError, match="torch.storage._load_from_bytes"):
        mio.read_flame_fields(path)


# ----------------------------------------------------------------------------------------------
# absurd sizes and malformed structures


def test_absurd_array_shape(tmp_path):
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(b"\x80\x02}X\x09\x00\x00\x00shapedirs"
                     + py2_array_pickle(b"\x00" * 8, (1 << 20, 1 << 20), proto_header=False)
                     + b"s.")
    with pytest.raises(ModelFileError, match="absurd array size") as info:
        mio.read_flame_fields(path)
    assert str(path) in str(info.value) and info.value.field == "shapedirs"
    assert "[shapedirs]" in str(info.value)


def test_array_payload_size_mismatch():
    with pytest.raises(ModelFileError, match="carries 8 bytes"):
        safe_pickle.safe_loads(py2_array_pickle(b"\x00" * 8, (1000,)) + b".", "x.pkl")


def test_huge_memo_index_rejected_before_allocation():
    with pytest.raises(ModelFileError, match="memo index"):
        safe_pickle.safe_loads(b"\x80\x02K\x01r\xff\xff\xff\x7f.", "x.pkl")


def test_absurd_sparse_shape(tmp_path):
    fields = {"_shape": (1 << 20, 1 << 20), "indptr": np.zeros(1, np.int32),
              "indices": np.zeros(0, np.int32), "data": np.zeros(0)}
    sparse = safe_pickle.SparseMatrix._csc()
    sparse.__setstate__(fields)
    with pytest.raises(ModelFileError, match="absurd shape"):
        sparse.toarray("J.pkl", "J_regressor")


def test_sparse_bad_indices():
    sparse = safe_pickle.SparseMatrix._csc()
    sparse.__setstate__({"_shape": (2, 2), "indptr": np.array([0, 1, 2], np.int32),
                         "indices": np.array([0, 5], np.int32), "data": np.ones(2)})
    with pytest.raises(ModelFileError, match="out of range"):
        sparse.toarray("J.pkl", "J_regressor")


def test_chumpy_without_array(tmp_path):
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(b"\x80\x02}X\x09\x00\x00\x00shapedirscchumpy.ch\nCh\n)\x81}bs.")
    with pytest.raises(ModelFileError, match="'x'"):
        mio.read_flame_fields(path)


def test_pickle_not_a_dict(tmp_path):
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(ModelFileError, match="dict"):
        mio.read_flame_fields(path)


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.99])
def test_truncated_pickle(tmp_path, cut):
    data = CHUMPY_PKL.read_bytes()
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(ModelFileError):
        mio.load_flame(path, n_shape=4)


def test_missing_and_misshaped_flame_fields(tmp_path):
    fields = dict(np.load(EXPECTED))
    for drop in ("weights", "J_regressor"):
        bad = {k: v for k, v in fields.items() if k != drop}
        path = tmp_path / f"no_{drop}.npz"
        np.savez(path, **bad)
        with pytest.raises(ModelFileError, match=drop):
            mio.load_flame(path, n_shape=4)
    bad = dict(fields, posedirs=fields["posedirs"][:, :, :30])
    np.savez(tmp_path / "bad_posedirs.npz", **bad)
    with pytest.raises(ModelFileError, match=r"posedirs.*\(12, 3, 36\)"):
        mio.load_flame(tmp_path / "bad_posedirs.npz", n_shape=4)
    bad = dict(fields, f=fields["f"].astype(np.int64) + 100)
    np.savez(tmp_path / "bad_f.npz", **bad)
    with pytest.raises(ModelFileError, match=r"\[f\]"):
        mio.load_flame(tmp_path / "bad_f.npz", n_shape=4)
    bad = dict(fields, weights=fields["weights"].astype(np.complex64))
    np.savez(tmp_path / "bad_dtype.npz", **bad)
    with pytest.raises(ModelFileError, match=r"\[weights\].*floating"):
        mio.load_flame(tmp_path / "bad_dtype.npz", n_shape=4)


# ----------------------------------------------------------------------------------------------
# torch tensors rebuilt without torch


def test_torch_tensors_rebuilt_without_torch(tmp_path):
    torch = pytest.importorskip("torch")
    base = torch.arange(24, dtype=torch.int64).reshape(4, 6)
    tensors = {
        "contiguous_f32": torch.linspace(0, 1, 12, dtype=torch.float32).reshape(3, 4),
        "transposed_i64": base.t(),
        "offset_f64": torch.arange(10, dtype=torch.float64)[3:8],
        "strided_i64": base[:, ::2],
        "bool": torch.tensor([True, False, True]),
        "int32": torch.tensor([[1, -2], [3, 4]], dtype=torch.int32),
        "uint8": torch.tensor([0, 255], dtype=torch.uint8),
        "half": torch.tensor([0.5, -1.0], dtype=torch.float16),
    }
    path = tmp_path / "tensors.npy"
    np.save(path, tensors, allow_pickle=True)
    data = path.read_bytes()
    _, offset = read_npy_header(data, path)
    out = loads_with_tensors(data[offset:], path)[()]
    for key, tensor in tensors.items():
        expected = tensor.numpy()
        assert out[key].dtype == expected.dtype, key
        np.testing.assert_array_equal(out[key], expected, err_msg=key)


def test_landmark_embedding_without_torch_equals_numpy(realdata):
    emb = mio.load_landmark_embedding(realdata / "deca" / "landmark_embedding.npy")
    reference = np.load(realdata / "deca" / "landmark_embedding_numpy.npz")
    assert sorted(emb) == sorted(reference.files)
    for key in reference.files:
        assert emb[key].dtype == reference[key].dtype, key
        assert emb[key].shape == reference[key].shape, key
        np.testing.assert_array_equal(emb[key], reference[key], err_msg=key)


def test_truncated_landmark_embedding(realdata, tmp_path):
    data = (realdata / "deca" / "landmark_embedding.npy").read_bytes()
    for cut in (50, 3000, 20000, len(data) - 200):
        path = tmp_path / f"cut{cut}.npy"
        path.write_bytes(data[:cut])
        with pytest.raises(ModelFileError):
            mio.load_landmark_embedding(path)


# ----------------------------------------------------------------------------------------------
# fuzz: random corruption must give ModelFileError or a clean load, nothing else


_FUZZ = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture,
                                        HealthCheck.too_slow])


@_FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 255)), min_size=1,
                      max_size=6),
       cut=st.one_of(st.none(), st.integers(1, 10**9)))
def test_fuzz_corrupted_flame_pickle(tmp_path_factory, flips, cut):
    data = bytearray(CHUMPY_PKL.read_bytes())
    for pos, value in flips:
        data[pos % len(data)] = value
    if cut is not None:
        data = data[: cut % len(data) or 1]
    path = tmp_path_factory.mktemp("fuzz") / "generic_model.pkl"
    path.write_bytes(bytes(data))
    try:
        model = mio.load_flame(path, n_shape=4)
    except ModelFileError:
        return
    assert isinstance(model, FlameModel)


@_FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 255)), min_size=1,
                      max_size=6))
def test_fuzz_corrupted_landmark_embedding(realdata, tmp_path_factory, flips):
    data = bytearray((realdata / "deca" / "landmark_embedding.npy").read_bytes())
    for pos, value in flips:
        data[128 + pos % (len(data) - 128)] = value  # keep the npy header, hit the pickle
    path = tmp_path_factory.mktemp("fuzz") / "landmark_embedding.npy"
    path.write_bytes(bytes(data))
    try:
        emb = mio.load_landmark_embedding(path)
    except ModelFileError:
        return
    assert set(emb) == set(mio._EMBEDDING_KEYS)


def test_zip_format_torch_storage():
    """``_load_from_bytes`` given a zip-format ``torch.save`` stream (newer writers)."""
    torch = pytest.importorskip("torch")
    import warnings

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage deprecation
        torch.save(torch.arange(6, dtype=torch.float32).storage(), buf)
    stream = buf.getvalue()
    assert stream[:2] == b"PK"
    data = (b"\x80\x03ctorch._utils\n_rebuild_tensor_v2\n(ctorch.storage\n_load_from_bytes\nB"
            + struct.pack("<I", len(stream)) + stream + b"\x85R"
            + b"K\x01K\x02K\x02\x86K\x02K\x01\x86\x89ccollections\nOrderedDict\n)RtR.")
    out = loads_with_tensors(data, "zip.pkl")
    np.testing.assert_array_equal(out, [[1.0, 2.0], [3.0, 4.0]])
    assert out.dtype == np.float32
