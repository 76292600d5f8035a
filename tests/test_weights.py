"""The torch-free torch.save reader and the numpy-pickle reader (jface.files), the converters
(jface.files.weights, jface.deca.weights) and the CLI (python -m jface.weights).

The archives here are written by a small helper (zipfile + a protocol-2 pickle with persistent ids),
so the reader is tested without torch; a second set compares against real ``torch.save`` files when
torch is importable. Malicious files must be refused before anything runs.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import sys
import tarfile
import types
import zipfile

import numpy as np
import pytest

from jface.deca import weights as dw
from jface.errors import ModelFileError, UnsafePickleError, WeightConversionError
from jface.files import weights as fw
from jface.files.pickles import load_numpy_pickle
from jface.files.torch_save import load_torch_file
from jface.weights.__main__ import main as cli_main

# ------------------------------------------------------------------------------------------------
# A torch.save-compatible writer (no torch): globals are pickled from stand-in modules and renamed.
# ------------------------------------------------------------------------------------------------

_FAKE_UTILS = "jface_test_fake_torch_utils"
_FAKE_TORCH = "jface_test_fake_torch"


def _install_fake_modules():
    if _FAKE_UTILS in sys.modules:
        return sys.modules[_FAKE_UTILS], sys.modules[_FAKE_TORCH]
    utils = types.ModuleType(_FAKE_UTILS)
    torch_mod = types.ModuleType(_FAKE_TORCH)

    def _rebuild_tensor_v2(*args):  # never called: only its name is pickled
        raise AssertionError

    def _rebuild_parameter(*args):
        raise AssertionError

    for fn in (_rebuild_tensor_v2, _rebuild_parameter):
        fn.__module__, fn.__qualname__ = _FAKE_UTILS, fn.__name__
        setattr(utils, fn.__name__, fn)
    for name in (
        "FloatStorage",
        "DoubleStorage",
        "HalfStorage",
        "LongStorage",
        "IntStorage",
        "BoolStorage",
        "ByteStorage",
    ):
        cls = type(name, (), {"__module__": _FAKE_TORCH})
        setattr(torch_mod, name, cls)
    sys.modules[_FAKE_UTILS], sys.modules[_FAKE_TORCH] = utils, torch_mod
    return utils, torch_mod


_STORAGE_NAME = {
    np.float32: "FloatStorage",
    np.float64: "DoubleStorage",
    np.float16: "HalfStorage",
    np.int64: "LongStorage",
    np.int32: "IntStorage",
    np.bool_: "BoolStorage",
    np.uint8: "ByteStorage",
}


class Storage:
    def __init__(self, key, array):
        self.key, self.array = key, np.ascontiguousarray(array).ravel()


class Tensor:
    """Pickles like a torch tensor: _rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())."""

    def __init__(self, storage, offset, size, stride, parameter=False):
        self.storage, self.offset, self.size, self.stride, self.parameter = (
            storage,
            offset,
            tuple(size),
            tuple(stride),
            parameter,
        )

    def __reduce__(self):
        utils, _ = _install_fake_modules()
        args = (self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict())
        if self.parameter:
            return utils._rebuild_parameter, (
                Tensor(self.storage, self.offset, self.size, self.stride),
                True,
                collections.OrderedDict(),
            )
        return utils._rebuild_tensor_v2, args


def tensor(key, array, parameter=False):
    array = np.asarray(array)
    stride = tuple(s // array.itemsize for s in np.array(array, order="C").strides)
    return Tensor(Storage(key, array), 0, array.shape, stride, parameter)


class _Pickler(pickle.Pickler):
    def __init__(self, f, storages, pid_override=None):
        super().__init__(f, protocol=2)
        self.storages, self.pid_override = storages, pid_override

    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            _, torch_mod = _install_fake_modules()
            self.storages[obj.key] = obj.array
            stype = getattr(torch_mod, _STORAGE_NAME[obj.array.dtype.type])
            if self.pid_override is not None:
                return self.pid_override(obj, stype)
            return ("storage", stype, obj.key, "cpu", obj.array.size)
        return None


def _dumps(obj, storages, pid_override=None):
    _install_fake_modules()
    buf = io.BytesIO()
    _Pickler(buf, storages, pid_override).dump(obj)
    data = buf.getvalue()
    data = data.replace(f"c{_FAKE_UTILS}\n".encode(), b"ctorch._utils\n").replace(
        f"c{_FAKE_TORCH}\n".encode(), b"ctorch\n"
    )
    assert _FAKE_TORCH.encode() not in data
    return data


def write_torch_zip(
    path, obj, *, root="archive", byteorder="little", pid_override=None, data_pkl=None, extra=None
):
    storages: dict = {}
    data = _dumps(obj, storages, pid_override) if data_pkl is None else data_pkl
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{root}/data.pkl", data)
        zf.writestr(f"{root}/byteorder", byteorder)
        for key, array in storages.items():
            arr = array.astype(array.dtype.newbyteorder("<" if byteorder == "little" else ">"))
            zf.writestr(f"{root}/data/{key}", arr.tobytes())
        for name, payload in (extra or {}).items():
            zf.writestr(name, payload)
        zf.writestr(f"{root}/version", "3\n")
    return path


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# ------------------------------------------------------------------------------------------------
# reader tests without torch
# ------------------------------------------------------------------------------------------------


def test_handcrafted_zip_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3, 2, 2)).astype(np.float32)
    base = np.arange(12, dtype=np.float64)
    shared = Storage("5", base)
    obj = {
        "E": collections.OrderedDict(
            [
                ("conv.weight", tensor("0", w, parameter=True)),
                ("bn.num_batches_tracked", tensor("1", np.array(7, np.int64))),
                ("half", tensor("2", np.array([1.5, -2.0], np.float16))),
                ("mask", tensor("3", np.array([True, False]))),
            ]
        ),
        "transposed": Tensor(shared, 1, (3, 2), (1, 4)),  # non-contiguous view with an offset
        "row": Tensor(shared, 4, (4,), (1,)),  # shares the storage
        "step": 5,
        "name": "deca",
    }
    got = load_torch_file(write_torch_zip(tmp_path / "m.tar", obj))
    np.testing.assert_array_equal(got["E"]["conv.weight"], w)
    assert got["E"]["conv.weight"].dtype == np.float32
    assert got["E"]["bn.num_batches_tracked"].shape == () and got["E"]["bn.num_batches_tracked"] == 7
    np.testing.assert_array_equal(got["E"]["half"], np.array([1.5, -2.0], np.float16))
    np.testing.assert_array_equal(got["E"]["mask"], [True, False])
    np.testing.assert_array_equal(
        got["transposed"], np.lib.stride_tricks.as_strided(base[1:], (3, 2), (8, 32))
    )
    np.testing.assert_array_equal(got["row"], base[4:8])
    assert got["step"] == 5 and got["name"] == "deca"
    assert isinstance(got["E"], collections.OrderedDict)
    # big-endian archives
    got = load_torch_file(write_torch_zip(tmp_path / "be.tar", {"x": tensor("0", w)}, byteorder="big"))
    np.testing.assert_array_equal(got["x"], w)


def test_refuses_code_execution(tmp_path):
    marker = tmp_path / "pwned"
    path = write_torch_zip(
        tmp_path / "evil.tar", None, data_pkl=pickle.dumps({"a": _Evil(marker)}, protocol=2)
    )
    with pytest.raises(
        UnsafePickleError, match=r"refusing to load global posix\.system|refusing to load global os\.system"
    ):
        load_torch_file(path)
    assert not marker.exists()
    # builtins and torch functions outside the allow-list are refused too
    for module, name in (
        ("builtins", "eval"),
        ("torch._utils", "_rebuild_tensor"),
        ("torch.nn.modules.conv", "Conv2d"),
    ):
        data = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"X\x04\x00\x00\x00codeq\x00\x85R."
        with pytest.raises(UnsafePickleError, match=f"{module}.{name}"):
            load_torch_file(write_torch_zip(tmp_path / f"{name}.tar", None, data_pkl=data))
    # the numpy-pickle reader as well
    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps({"a": _Evil(marker)}, protocol=2))
    with pytest.raises(UnsafePickleError, match="system"):
        load_numpy_pickle(p)
    assert not marker.exists()


def test_refuses_storage_outside_archive(tmp_path):
    w = np.ones((2,), np.float32)
    outside = lambda obj, stype: ("storage", stype, "../../../etc/passwd", "cpu", 2)  # noqa: E731
    with pytest.raises(UnsafePickleError, match="invalid storage key"):
        load_torch_file(write_torch_zip(tmp_path / "a.tar", {"x": tensor("0", w)}, pid_override=outside))
    absent = lambda obj, stype: ("storage", stype, "9", "cpu", 2)  # noqa: E731
    with pytest.raises(UnsafePickleError, match="not in the archive"):
        load_torch_file(write_torch_zip(tmp_path / "b.tar", {"x": tensor("0", w)}, pid_override=absent))
    weird = lambda obj, stype: ("storage", "torch.FloatStorage", "0", "cpu", 2)  # noqa: E731
    with pytest.raises(UnsafePickleError, match="storage type"):
        load_torch_file(write_torch_zip(tmp_path / "c.tar", {"x": tensor("0", w)}, pid_override=weird))
    # a tensor reaching past its storage
    big = {"x": Tensor(Storage("0", w), 1, (4,), (1,))}
    with pytest.raises(ModelFileError, match="runs past its storage"):
        load_torch_file(write_torch_zip(tmp_path / "d.tar", big))

    # a BUILD opcode that rewrites a tensor record after it was checked
    class Rebuilt(Tensor):
        def __reduce__(self):
            return (*super().__reduce__(), {"size": (1000,), "stride": (1,)})

    with pytest.raises(ModelFileError, match="runs past its storage"):
        load_torch_file(write_torch_zip(tmp_path / "f.tar", {"x": Rebuilt(Storage("0", w), 0, (2,), (1,))}))

    class Retyped(Tensor):
        def __reduce__(self):
            return (*super().__reduce__(), {"size": "oops"})

    with pytest.raises(ModelFileError, match="malformed tensor record"):
        load_torch_file(write_torch_zip(tmp_path / "g.tar", {"x": Retyped(Storage("0", w), 0, (2,), (1,))}))
    # a storage shorter than its declared size
    short = lambda obj, stype: ("storage", stype, obj.key, "cpu", 100)  # noqa: E731
    with pytest.raises(ModelFileError, match="expected 400"):
        load_torch_file(write_torch_zip(tmp_path / "e.tar", {"x": tensor("0", w)}, pid_override=short))


def test_truncated_and_unsupported_files(tmp_path):
    good = write_torch_zip(tmp_path / "good.tar", {"x": tensor("0", np.arange(1000, dtype=np.float32))})
    raw = good.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ModelFileError, match="cut.tar"):
        load_torch_file(cut)
    old = tmp_path / "old.tar"
    with tarfile.open(old, "w") as tf:
        info = tarfile.TarInfo("sys_info")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(ModelFileError, match="pre-0.4 torch tar"):
        load_torch_file(old)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"hello world")
    with pytest.raises(ModelFileError, match="not a torch.save file"):
        load_torch_file(junk)
    with pytest.raises(ModelFileError, match="no such file"):
        load_torch_file(tmp_path / "missing.tar")
    nopkl = tmp_path / "nopkl.zip"
    with zipfile.ZipFile(nopkl, "w") as zf:
        zf.writestr("a/b.txt", "x")
    with pytest.raises(ModelFileError, match="data.pkl"):
        load_torch_file(nopkl)


def test_numpy_pickle_reader(tmp_path):
    rng = np.random.default_rng(1)
    weights = collections.OrderedDict(
        [
            ("conv1.weight", rng.normal(size=(2, 3, 1, 1)).astype(np.float32)),
            ("bn1.running_var", np.float64(3.5) * np.ones(2)),
            ("scalar", np.float32(2.5)),
        ]
    )
    for protocol in (2, 4):
        p = tmp_path / f"w{protocol}.pkl"
        p.write_bytes(pickle.dumps(weights, protocol=protocol))
        got = load_numpy_pickle(p)
        assert list(got) == list(weights)
        for k in weights:
            np.testing.assert_array_equal(got[k], weights[k])
            assert np.asarray(got[k]).dtype == np.asarray(weights[k]).dtype
    objs = tmp_path / "objects.pkl"
    objs.write_bytes(pickle.dumps({"a": np.array([{"x": 1}], dtype=object)}, protocol=2))
    with pytest.raises(ModelFileError, match="object"):
        load_numpy_pickle(objs)


def test_convert_state_dict_lists_all_problems():
    template = {
        "params": {
            "conv": {"kernel": np.zeros((3, 3, 2, 4))},
            "fc_0": {"kernel": np.zeros((5, 6)), "bias": np.zeros(6)},
        },
        "batch_stats": {"bn": {"mean": np.zeros(4), "var": np.zeros(4)}},
    }
    template["params"]["bn"] = {"scale": np.zeros(4), "bias": np.zeros(4)}
    good = {
        "conv.weight": np.ones((4, 2, 3, 3)),
        "fc.0.weight": np.arange(30.0).reshape(6, 5),
        "fc.0.bias": np.ones(6),
        "bn.weight": np.ones(4),
        "bn.bias": np.zeros(4),
        "bn.running_mean": np.ones(4),
        "bn.running_var": np.ones(4),
        "bn.num_batches_tracked": np.array(3),
    }
    out = fw.convert_state_dict(good, template)
    assert out["params"]["conv"]["kernel"].shape == (3, 3, 2, 4)
    np.testing.assert_array_equal(out["params"]["fc_0"]["kernel"], np.arange(30.0).reshape(6, 5).T)
    assert out["params"]["fc_0"]["kernel"].dtype == np.float32
    bad = dict(good)
    del bad["bn.running_var"]
    bad["conv.weight"] = np.ones((4, 2, 5, 5))
    bad["head.weight"] = np.ones(3)
    with pytest.raises(WeightConversionError) as err:
        fw.convert_state_dict(bad, template, source="ckpt.tar")
    msg = str(err.value)
    assert "ckpt.tar" in msg and "unexpected key(s): head.weight" in msg
    assert "missing leaf/leaves: batch_stats/bn/var" in msg and "conv.weight: (4, 2, 5, 5)" in msg
    assert fw.torch_module_path("encoder.layer1.0.downsample.0") == ("encoder", "layer1_0", "downsample_0")
    assert fw.strip_prefix({"module.a": 1, "module.b": 2}) == {"a": 1, "b": 2}


def _tiny_deca_modules():
    from jface.deca import networks as nw

    j = dict(stage_sizes=(1, 1, 1, 1), width=2, hidden=4)
    return {
        "E_flame": nw.ResNetEncoder(236, **j),
        "E_detail": nw.ResNetEncoder(128, **j),
        "D_detail": nw.DetailGenerator(init_size=1, init_channels=2, block_channels=(2, 2, 2, 2, 2)),
    }


def _torch_module(flax_path):
    """('encoder', 'layer1_0', 'downsample_0') -> 'encoder.layer1.0.downsample.0'."""
    parts = []
    for p in flax_path:
        head, _, tail = p.rpartition("_")
        parts.append(f"{head}.{tail}" if head and tail.isdigit() else p)
    return ".".join(parts)


def _torch_names_for(module):
    """The torch state dict a module's layout corresponds to (inverse of the converter's mapping)."""
    from jface.deca import networks as nw

    template = nw.init_variables(module, shapes_only=True)
    sd = {}
    rng = np.random.default_rng(2)
    for path, leaf in fw.flatten_tree(template["params"]).items():
        mod = _torch_module(path[:-1])
        shape = leaf.shape
        if path[-1] == "kernel":
            shape = shape[::-1] if len(shape) == 2 else (shape[3], shape[2], shape[0], shape[1])
        sd[f"{mod}.{ {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias'}[path[-1]] }"] = rng.normal(
            size=shape
        ).astype(np.float32)
    for path, leaf in fw.flatten_tree(template["batch_stats"]).items():
        mod = _torch_module(path[:-1])
        sd[f"{mod}.running_{path[-1]}"] = rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        sd[f"{mod}.num_batches_tracked"] = np.array(1, np.int64)
    return sd


def test_cli_convert_deca_without_torch(tmp_path, monkeypatch):
    modules = _tiny_deca_modules()
    monkeypatch.setattr(dw, "deca_modules", lambda: modules)
    sds = {name: _torch_names_for(m) for name, m in modules.items()}
    assert (
        "encoder.layer1.0.downsample.0.weight" in sds["E_flame"]
        and "conv_blocks.21.weight" in sds["D_detail"]
    )
    obj = {
        name: collections.OrderedDict((k, tensor(f"{name}_{i}", v)) for i, (k, v) in enumerate(sd.items()))
        for name, sd in sds.items()
    }
    obj["global_step"] = 10
    src = write_torch_zip(tmp_path / "deca_model.tar", obj, root="deca_model")
    dst = tmp_path / "out" / "deca.npz"
    assert cli_main(["convert", "deca", str(src), "-o", str(dst)]) == 0
    weights, meta = fw.load_variables(dst, kind="deca", with_meta=True)
    assert meta == {"format_version": fw.FORMAT_VERSION, "kind": "deca", "source": "deca_model.tar"}
    np.testing.assert_array_equal(
        weights["E_flame"]["params"]["encoder"]["conv1"]["kernel"],
        sds["E_flame"]["encoder.conv1.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        weights["D_detail"]["batch_stats"]["conv_blocks_3"]["var"],
        sds["D_detail"]["conv_blocks.3.running_var"],
    )
    with pytest.raises(ModelFileError, match="kind 'deca', expected 'vgg19'"):
        fw.load_variables(dst, kind="vgg19")
    # a state dict missing a group / with a wrong shape -> exit status 2 and the reason on stderr
    del obj["E_detail"]
    bad = write_torch_zip(tmp_path / "bad.tar", obj)
    assert cli_main(["convert", "deca", str(bad), "-o", str(tmp_path / "x.npz")]) == 2
    with pytest.raises(WeightConversionError, match=r"missing state dict\(s\) \['E_detail'\]"):
        dw.convert_deca(bad)


def test_cli_matconvnet_dispatch(tmp_path, monkeypatch, capsys):
    """The vggface-matconvnet kind goes to jface.stn.localiser.convert_matconvnet(src, dst) when it exists."""
    import importlib

    src, dst = str(tmp_path / "vgg-face.mat"), str(tmp_path / "o.npz")
    try:
        localiser = importlib.import_module("jface.stn.localiser")
    except ImportError:
        localiser = None
    if localiser is not None:
        calls = []
        fake = lambda a, b: calls.append((a, b)) or "converted by the localiser"  # noqa: E731
        monkeypatch.setattr(localiser, "convert_matconvnet", fake, raising=False)
        assert cli_main(["convert", "vggface-matconvnet", src, "-o", dst]) == 0
        assert calls == [(src, dst)] and "converted by the localiser" in capsys.readouterr().out
        monkeypatch.delattr(localiser, "convert_matconvnet")
    with pytest.raises(SystemExit, match="convert_matconvnet is not available"):
        cli_main(["convert", "vggface-matconvnet", src, "-o", dst])


# ------------------------------------------------------------------------------------------------
# against real torch.save files (skipped without torch)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("zip_format", [True, False])
def test_reads_real_torch_save(tmp_path, zip_format):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3), torch.nn.Linear(4, 5))
    base = torch.arange(24, dtype=torch.float64).reshape(4, 6)
    obj = {
        "model": net.state_dict(),
        "param": torch.nn.Parameter(torch.randn(2, 2)),
        "view": base[1:, ::2].t(),  # offset + non-contiguous
        "same": base,  # shares storage with view
        "ints": torch.tensor([1, -2], dtype=torch.int32),
        "half": torch.tensor([0.5, 2.0], dtype=torch.float16),
        "bf16": torch.tensor([0.5, 3.0], dtype=torch.bfloat16),
        "flag": torch.tensor([True]),
        "step": 3,
    }
    path = tmp_path / "t.pt"
    torch.save(obj, path, _use_new_zipfile_serialization=zip_format)
    got = load_torch_file(path)
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(got["model"][k], v.numpy())
        assert got["model"][k].dtype == v.numpy().dtype
    np.testing.assert_array_equal(got["param"], obj["param"].detach().numpy())
    np.testing.assert_array_equal(got["view"], obj["view"].numpy())
    np.testing.assert_array_equal(got["same"], base.numpy())
    np.testing.assert_array_equal(got["ints"], [1, -2])
    np.testing.assert_array_equal(got["half"], [0.5, 2.0])
    np.testing.assert_array_equal(got["bf16"].astype(np.float32), [0.5, 3.0])
    assert got["flag"].dtype == np.bool_ and got["step"] == 3


def test_vgg19_converter_accepts_features_only_state_dict(tmp_path):
    torch = pytest.importorskip("torch")
    from jface.deca import networks as nw

    feats = torch.nn.Sequential(
        torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(64, 64, 3, padding=1)
    )
    path = tmp_path / "features.pth"
    torch.save(feats.state_dict(), path)
    out = dw.convert_vgg19(path, module=nw.VGG19Features(layers=("relu1_4",)))
    np.testing.assert_array_equal(
        out["params"]["features_2"]["kernel"], feats[2].weight.detach().numpy().transpose(2, 3, 1, 0)
    )
    full = dw.convert_vgg19  # the default template wants all 16 convs: a clear listing otherwise
    with pytest.raises(WeightConversionError, match="missing leaf/leaves: .*params/features_5/kernel"):
        full(path)
    sub = dw.subset_vgg19({"params": {**out["params"], "features_99": {}}}, ("relu1_2",))
    assert list(sub["params"]) == ["features_0"]


def _py2_numpy_pickle(name: str, array: np.ndarray) -> bytes:
    """A dict {name: array} pickled the way Python 2 + numpy wrote it (str payloads, SHORT_BINSTRING)."""

    def s(b: bytes) -> bytes:
        assert len(b) < 256
        return b"U" + bytes([len(b)]) + b

    assert array.dtype == np.float32 and array.ndim == 1 and array.size < 256
    dtype = (
        b"cnumpy\ndtype\n"
        + s(b"f4")
        + b"K\x00K\x01\x87R"
        + b"(K\x03"
        + s(b"<")
        + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    )
    arr = (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85"
        + s(b"b")
        + b"\x87R"
        + b"(K\x01K"
        + bytes([array.size])
        + b"\x85"
        + dtype
        + b"\x89"
        + s(array.astype("<f4").tobytes())
        + b"tb"
    )
    return b"\x80\x02}(" + s(name.encode()) + arr + b"u."


def test_numpy_pickle_reader_python2_layout(tmp_path):
    """cydonia999's resnet50_ft_weight.pkl is a Python-2 pickle: str payloads read with latin-1."""
    values = np.array([1.5, -2.0, 3.25], np.float32)
    p = tmp_path / "py2.pkl"
    p.write_bytes(_py2_numpy_pickle("conv1.weight", values))
    got = load_numpy_pickle(p)
    np.testing.assert_array_equal(got["conv1.weight"], values)
    assert got["conv1.weight"].dtype == np.float32
