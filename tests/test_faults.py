"""Fault suite (issue 13): bad, hostile and degenerate input across the public entry points.

This file fills the gaps left by the per-module tests (see BUILD_NOTES.md for the table of
every fault test in the repository):

* hypothesis fuzzing of the model-file loaders (.mat with random field shapes/dtypes, .anl, .obj),
  of landmark side files, of :func:`jface.data.real.read_image` and of the torch-free weight readers;
* NaN/Inf parameters in the jitted math (propagated, never a crash or a hang);
* zero-area / degenerate meshes, empty datasets and folders;
* the command lines on bad files: a non-zero exit and a one-line message naming the file.

Tests marked ``xfail(strict=True)`` are real bugs in other modules, reported with a suggested fix.
Conventions decided here: host-side loaders and CLIs reject NaN/Inf with a clear error naming the
file/argument; inside jitted math NaN propagates to the outputs that depend on it.
"""

from __future__ import annotations

import io
import pickle
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.io
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from jface.data.real import ImageReadError, read_image, read_landmarks
from jface.errors import ModelFileError
from jface.files.obj import load_obj
from jface.files.pickles import load_numpy_pickle
from jface.files.torch_save import load_torch_file
from jface.models import loaders as mio

REPO = Path(__file__).resolve().parents[1]

FUZZ = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
# .mat files are parsed in a child process (jface.files.mat), ~1 s each on 2 cores: fewer examples
MAT_FUZZ = settings(FUZZ, max_examples=12)


def _fresh(tmp_path_factory, name):
    return tmp_path_factory.mktemp(name)


# ================================================================================================
# 1. model-file loaders: hypothesis-generated .mat / .anl / .obj
# ================================================================================================

_MAT_LOADERS = {
    "bfm": (mio.load_bfm2009, ("shapeMU", "shapePC", "shapeEV", "tl", "texMU", "texPC", "texEV")),
    "expression": (mio.load_tddfa_expression, ("w_exp", "mu_exp", "sigma_exp")),
    "map": (mio.load_map_tddfa_to_basel, ("map_tddfa_to_basel",)),
    "uv": (mio.load_bfm_uv, ("UV",)),
}
_DTYPES = ("float32", "float64", "int32", "uint16", "uint8", "int64", "complex128", "bool")
_SIZES = (0, 1, 2, 3, 4, 6, 12)


@st.composite
def _mat_value(draw):
    kind = draw(st.sampled_from(["array", "array", "array", "string", "cell", "struct"]))
    if kind == "string":
        return draw(st.text(max_size=8))
    if kind == "cell":
        cell = np.empty((1, 2), dtype=object)
        cell[0, 0], cell[0, 1] = np.zeros(3), "x"
        return cell
    if kind == "struct":
        return {"a": np.ones((2, 1))}
    shape = tuple(draw(st.lists(st.sampled_from(_SIZES), min_size=1, max_size=3)))
    dtype = np.dtype(draw(st.sampled_from(_DTYPES)))
    fill = draw(st.sampled_from(["range", "range", "random", "nan", "inf", "huge"]))
    size = int(np.prod(shape))
    if fill == "range":
        values = np.arange(1, size + 1)
    elif fill == "random":
        values = np.random.default_rng(draw(st.integers(0, 2**16))).normal(size=size) * 5
    elif fill == "huge":
        values = np.full(size, 1e30)
    else:
        values = np.full(size, np.nan if fill == "nan" else np.inf)
    with np.errstate(invalid="ignore", over="ignore"):
        return values.astype(dtype).reshape(shape) if dtype.kind != "b" else (values.reshape(shape) > 3)


@st.composite
def _mat_fields(draw, names):
    keep = draw(st.lists(st.sampled_from(names), unique=True, min_size=0, max_size=len(names)))
    fields = {name: draw(_mat_value()) for name in keep}
    if draw(st.booleans()):
        fields["extra_field"] = draw(_mat_value())
    return fields


def _check_loaded(name, out):
    """Whatever a loader returns must be in the documented layout (no garbage passes)."""
    if name == "bfm":
        n = out["mean"].shape[0]
        assert out["mean"].shape == (n, 3) and out["shape_basis"].shape[:2] == (n, 3)
        assert np.all(np.isfinite(out["mean"])) and np.all(np.isfinite(out["shape_basis"]))
        assert out["faces"].dtype == np.int32 and out["faces"].min() >= 0 and out["faces"].max() < n
    elif name == "expression":
        assert out["w_exp"].ndim == 3 and out["w_exp"].shape[1] == 3
        assert np.all(np.isfinite(out["w_exp"]))
    elif name == "map":
        assert out.dtype == np.int32 and out.min() >= 0 and np.all(np.diff(out) > 0)
    else:
        assert out.ndim == 2 and out.shape[1] == 2 and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("loader", sorted(_MAT_LOADERS))
def test_fuzz_mat_loaders_random_fields(tmp_path_factory, loader):
    load, names = _MAT_LOADERS[loader]
    folder = _fresh(tmp_path_factory, f"mat_{loader}")

    @MAT_FUZZ
    @given(fields=_mat_fields(names))
    def run(fields):
        path = folder / "f.mat"
        try:
            scipy.io.savemat(str(path), fields)
        except Exception:  # noqa: BLE001 - scipy cannot write this combination; not our concern
            assume(False)
        try:
            out = load(path)
        except ModelFileError as exc:
            assert str(path) in str(exc)
            return
        _check_loaded(loader, out)

    run()


def _valid_bfm_fields():
    return {
        "shapeMU": np.arange(12, dtype=np.float32)[:, None],
        "shapePC": np.ones((12, 2), np.float32),
        "shapeEV": np.ones((2, 1), np.float32),
        "tl": np.array([[1, 2, 3], [2, 4, 3]], np.float64),
    }


@MAT_FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6),
       cut=st.one_of(st.none(), st.integers(1, 10**6)))
def test_fuzz_corrupted_mat_bytes(tmp_path_factory, flips, cut):
    folder = _fresh(tmp_path_factory, "matbytes")
    scipy.io.savemat(str(folder / "m.mat"), _valid_bfm_fields())
    data = bytearray((folder / "m.mat").read_bytes())
    for pos, value in flips:
        data[pos % len(data)] = value
    if cut is not None:
        data = data[: cut % len(data) or 1]
    (folder / "m.mat").write_bytes(bytes(data))
    try:
        out = mio.load_bfm2009(folder / "m.mat")
    except ModelFileError as exc:
        assert "m.mat" in str(exc)
        return
    _check_loaded("bfm", out)


# .anl: lines of comments, blanks, indices (up to 9 digits: see the xfail below for larger ones)
_ANL_LINE = st.one_of(
    st.integers(-5, 10**9 - 1).map(str),
    st.just(""), st.just("   "), st.text(max_size=6).map(lambda s: "%" + s),
    st.text(alphabet="0123456789 .-+eE\t%x", max_size=8),
    st.binary(max_size=6).map(lambda b: b.decode("latin1")),
)


@FUZZ
@given(lines=st.lists(_ANL_LINE, max_size=8), crlf=st.booleans())
def test_fuzz_anl_text(tmp_path_factory, lines, crlf):
    path = _fresh(tmp_path_factory, "anl") / "x.anl"
    path.write_bytes(("\r\n" if crlf else "\n").join(lines).encode("utf-8", "surrogatepass"))
    try:
        index = mio.load_anl(path)
    except ModelFileError as exc:
        assert str(path) in str(exc)
        return
    assert index.dtype == np.int32 and index.ndim == 1 and index.size > 0 and index.min() >= 0


def test_anl_index_beyond_int32_is_a_clear_error(tmp_path):
    path = tmp_path / "big.anl"
    path.write_text("% landmarks\n12\n99999999999\n")
    with pytest.raises(ModelFileError, match="big.anl"):
        mio.load_anl(path)


_OBJ_NUMBER = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32).map(repr),
                        st.sampled_from(["0", "1", "-1", "x", "1e400", ""]))
_OBJ_INDEX = st.integers(-4, 6).map(str) | st.sampled_from(["", "a", "1.5", "99999999999999999999"])


@st.composite
def _obj_line(draw):
    tag = draw(st.sampled_from(["v", "v", "vt", "f", "f", "vn", "#", "g", "usemtl", "o", "??"]))
    if tag == "v":
        return "v " + " ".join(draw(st.lists(_OBJ_NUMBER, min_size=0, max_size=4)))
    if tag == "vt":
        return "vt " + " ".join(draw(st.lists(_OBJ_NUMBER, min_size=0, max_size=3)))
    if tag == "f":
        corners = draw(st.lists(st.tuples(_OBJ_INDEX, st.one_of(st.none(), _OBJ_INDEX)), max_size=5))
        return "f " + " ".join(v if t is None else f"{v}/{t}" for v, t in corners)
    return tag + " " + draw(st.text(max_size=6))


@FUZZ
@given(lines=st.lists(_obj_line(), max_size=12))
def test_fuzz_obj_text(tmp_path_factory, lines):
    path = _fresh(tmp_path_factory, "obj") / "m.obj"
    path.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass"))
    try:
        out = load_obj(path)
    except ModelFileError as exc:
        assert str(path) in str(exc)
        return
    v = out["vertices"]
    assert v.ndim == 2 and v.shape[1] == 3 and np.all(np.isfinite(v))
    assert out["faces"].min() >= 0 and out["faces"].max() < len(v)
    if out["uv_faces"] is not None:
        assert out["uv_faces"].shape == out["faces"].shape
        assert out["uv_faces"].min() >= 0 and out["uv_faces"].max() < len(out["uv_coords"])


# ================================================================================================
# 2. landmark side files and images (jface.data.real)
# ================================================================================================


@FUZZ
@given(rows=st.lists(st.lists(st.one_of(st.floats(width=32).map(repr), st.sampled_from(["", "x", ",", "{", "}"])),
                              max_size=3), max_size=70),
       suffix=st.sampled_from([".txt", ".pts"]), n=st.sampled_from([None, 68, 2]))
def test_fuzz_landmark_side_files(tmp_path_factory, rows, suffix, n):
    path = _fresh(tmp_path_factory, "lmk") / f"a{suffix}"
    path.write_text("\n".join(" ".join(r) for r in rows))
    try:
        pts = read_landmarks(path, n)
    except ImageReadError as exc:
        assert str(path) in str(exc)
        return
    assert pts.ndim == 2 and pts.shape[1] == 2 and np.all(np.isfinite(pts))
    assert n is None or pts.shape[0] == n


@pytest.mark.parametrize("array", [np.zeros((3,), np.float32), np.zeros((68, 1)), np.zeros((67, 2)),
                                   np.full((68, 2), np.inf)], ids=["1d", "one-column", "67", "inf"])
def test_landmark_npy_bad_layouts(tmp_path, array):
    np.save(tmp_path / "a.npy", array)
    with pytest.raises(ImageReadError, match="a.npy"):
        read_landmarks(tmp_path / "a.npy")


def test_landmark_npy_object_array_is_refused_without_unpickling(tmp_path):
    np.save(tmp_path / "a.npy", np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ImageReadError, match="a.npy"):
        read_landmarks(tmp_path / "a.npy")


@pytest.mark.parametrize("array", [np.array([["a", "b"]] * 68), np.zeros((68, 2), np.complex64) + 1j],
                         ids=["strings", "complex"])
def test_landmark_npy_non_real_dtype_names_the_file(tmp_path, array):
    np.save(tmp_path / "s.npy", array)
    with pytest.raises(ImageReadError, match="s.npy"):
        read_landmarks(tmp_path / "s.npy")


def _encoded(fmt, array=None, **kw):
    array = np.random.default_rng(0).integers(0, 255, (12, 10, 3), np.uint8) if array is None else array
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kw)
    return buf.getvalue()


_PNG, _JPEG = _encoded("PNG"), _encoded("JPEG", quality=90)


@FUZZ
@given(base=st.sampled_from(["png", "jpeg", "random"]), cut=st.integers(0, 10**6),
       flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4),
       noise=st.binary(max_size=64))
def test_fuzz_read_image_random_truncated_and_flipped(tmp_path_factory, base, cut, flips, noise):
    data = bytearray({"png": _PNG, "jpeg": _JPEG, "random": noise}[base])
    if data:
        for pos, value in flips:
            data[pos % len(data)] = value
        data = data[: cut % (len(data) + 1)]
    path = _fresh(tmp_path_factory, "img") / "face.png"
    path.write_bytes(bytes(data))
    try:
        image = read_image(path)
    except ImageReadError as exc:
        assert str(path) in str(exc)
        return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and image.size > 0


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F"])
def test_read_image_every_pillow_mode(tmp_path, mode):
    """Binary, grey, grey+alpha, palette, RGBA, CMYK, 16-bit, 32-bit int and float images -> RGB uint8."""
    base = Image.fromarray(np.random.default_rng(1).integers(0, 255, (9, 7, 3), np.uint8))
    if mode in ("I;16", "I", "F"):
        grey = np.asarray(base.convert("L"), np.float64)
        array = {"I;16": (grey * 257).astype(np.uint16), "I": (grey * 257).astype(np.int32),
                 "F": grey.astype(np.float32)}[mode]
        image = Image.fromarray(array)
    else:
        image = base.convert(mode)
    suffix = ".tif" if mode in ("I", "F", "CMYK") else ".png"
    path = tmp_path / f"x{suffix}"
    image.save(path)
    out = read_image(path)
    assert out.shape == (9, 7, 3) and out.dtype == np.uint8


def _png_header_only(width, height):
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def test_read_image_header_lies_about_size(tmp_path):
    """A 10000 x 9000 header over 64 bytes of pixel data is refused (truncated), not allocated."""
    path = tmp_path / "liar.png"
    path.write_bytes(_png_header_only(10_000, 9_000))
    with pytest.raises(ImageReadError, match="liar.png"):
        read_image(path)


def test_read_image_decompression_bomb_is_an_image_read_error(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(100_000, 100_000))
    with pytest.raises(ImageReadError, match="bomb.png"):
        read_image(path)


# ================================================================================================
# 3. torch-free weight readers (jface.files)
# ================================================================================================

_GOOD_PKL = pickle.dumps({"step": 3, "name": "x", "list": [1.5, None, (2, 3)]}, protocol=2)


@st.composite
def _zip_member(draw):
    name = draw(st.sampled_from(["archive/data.pkl", "archive/data.pkl", "archive/byteorder",
                                 "archive/data/0", "archive/version", "data.pkl", "a/b/data.pkl",
                                 "other/data.pkl"]))
    kind = draw(st.sampled_from(["bytes", "pickle", "byteorder"]))
    if kind == "bytes":
        data = draw(st.binary(max_size=48))
    elif kind == "pickle":
        data = bytearray(_GOOD_PKL)
        for pos, value in draw(st.lists(st.tuples(st.integers(0, 999), st.integers(0, 255)), max_size=3)):
            data[pos % len(data)] = value
        data = bytes(data[: draw(st.integers(1, len(data)))])
    else:
        data = draw(st.sampled_from([b"little", b"big", b"middle", b"\xff\xfe", b""]))
    return name, data


@FUZZ
@given(members=st.lists(_zip_member(), min_size=1, max_size=4),
       deflate=st.booleans())
def test_fuzz_torch_zip_random_members(tmp_path_factory, members, deflate):
    path = _fresh(tmp_path_factory, "tzip") / "w.tar"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED) as zf:
        for name, data in dict(members).items():
            zf.writestr(name, data)
    try:
        load_torch_file(path)
    except ModelFileError as exc:
        assert str(path) in str(exc)


def _write_archive(path, deflate=False):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", _GOOD_PKL)
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/version", "3\n")
    return path


def test_corrupted_torch_zip_container_is_a_model_file_error(tmp_path):
    clean = _write_archive(tmp_path / "clean.tar", deflate=True).read_bytes()
    rng = np.random.default_rng(0)
    leaked = []
    for _trial in range(200):
        data = bytearray(clean)
        for _ in range(3):
            data[rng.integers(len(data))] = rng.integers(256)
        path = tmp_path / "bad.tar"
        path.write_bytes(bytes(data))
        try:
            load_torch_file(path)
        except ModelFileError:
            pass
        except Exception as exc:  # noqa: BLE001
            leaked.append(type(exc).__name__)
    assert not leaked, f"{len(leaked)}/200 damaged archives raised {sorted(set(leaked))}"


@pytest.mark.parametrize("opcode", [b"\x80\x04\x8e" + (2**62).to_bytes(8, "little"),
                                    b"\x80\x05\x96" + (2**63 + 5).to_bytes(8, "little")],
                         ids=["binbytes8", "bytearray8"])
def test_pickle_length_bombs_are_refused(tmp_path, opcode):
    (tmp_path / "p.pkl").write_bytes(opcode)
    with zipfile.ZipFile(tmp_path / "z.tar", "w") as zf:
        zf.writestr("archive/data.pkl", opcode)
    with pytest.raises(ModelFileError, match="p.pkl"):
        load_numpy_pickle(tmp_path / "p.pkl")
    with pytest.raises(ModelFileError, match="z.tar"):
        load_torch_file(tmp_path / "z.tar")


def test_models_pickle_length_bombs_are_refused(tmp_path):
    for name, opcode in (("a", b"\x80\x04\x8e" + (2**62).to_bytes(8, "little")),
                         ("b", b"\x80\x05\x96" + (2**63 + 5).to_bytes(8, "little")),
                         ("c", b"\x80\x04\x8d" + (2**61).to_bytes(8, "little"))):
        (tmp_path / f"{name}.pkl").write_bytes(opcode)
        with pytest.raises(ModelFileError, match=f"{name}.pkl"):
            mio.load_flame_pkl(tmp_path / f"{name}.pkl")


# ================================================================================================
# 4. NaN / Inf inside the jitted math: propagated, never a crash or a hang
# ================================================================================================


def test_stn_flatten_nan_and_inf_theta():
    from jface import stn
    from jface.data.synthetic_stn import toy_model

    model = toy_model(12)
    d = model.shape_basis.shape[-1] + model.expression_basis.shape[-1]
    thetas = np.zeros((4, 6 + d), np.float32)
    thetas[1, 0] = np.nan  # rotation
    thetas[2, 3] = np.nan  # translation x
    thetas[3, 5] = np.inf  # log-scale: s = 0.99**inf = 0, every vertex at the centre
    image = np.random.default_rng(0).uniform(0, 255, (24, 24, 3)).astype(np.float32)
    out = jax.jit(jax.vmap(stn.flatten, in_axes=(None, 0, None)))(model, thetas, image)
    out = jax.tree_util.tree_map(np.asarray, out)
    assert np.all(np.isfinite(out["texture"][0]))
    # NaN rotation: every point, texel and the texture are NaN; the visibility mask is 0 (not NaN).
    assert np.all(np.isnan(out["points"][1])) and np.all(np.isnan(out["texture"][1]))
    assert np.all(out["mask"][1] == 0)
    # NaN x: the x coordinates are NaN. A sample is NaN where its row is inside the image and 0
    # (zero padding) where the row is outside: NaN never becomes another finite value.
    assert np.all(np.isnan(out["points"][2][:, 0])) and np.all(np.isfinite(out["points"][2][:, 1]))
    sampled = out["sampled"][2]
    assert np.all(np.isnan(sampled) | (sampled == 0)) and np.isnan(sampled).any()
    # Inf log-scale collapses the face to the image centre: finite, every texel the same colour.
    assert np.all(np.isfinite(out["sampled"][3]))
    assert np.allclose(out["sampled"][3], out["sampled"][3][0, 0])


def test_flame_forward_nan_pose_and_shape():
    from jface import flame
    from jface.flame.testing import random_flame_model

    model = random_flame_model(0)
    poses = np.zeros((3, 6))
    poses[1, 0] = np.nan  # global rotation
    poses[2, 3] = np.inf  # jaw
    fwd = jax.jit(jax.vmap(lambda p: flame.forward(model, jnp.zeros(6), jnp.zeros(4), p)))
    out = jax.tree_util.tree_map(np.asarray, fwd(poses))
    assert all(np.all(np.isfinite(v[0])) for v in out.values())
    assert all(np.all(np.isnan(v[1])) for k, v in out.items() if k != "joints")
    assert np.all(np.isfinite(out["joints"][1][0]))  # the root joint does not depend on its rotation
    assert np.all(np.isfinite(out["joints"][2])), "a bad jaw pose must not move the joints"
    assert np.isnan(out["vertices"][2]).any()


def test_rasterize_nan_inf_and_degenerate_faces_paint_nothing():
    from jface.render import rasterize

    v = np.array([[-0.6, -0.6, 0.0], [0.6, -0.6, 0.0], [0.0, 0.6, 0.0],  # 0-2 a good triangle
                  [np.nan, 0.0, 0.0], [np.inf, 0.0, 0.0], [-np.inf, 1.0, 0.0],
                  [0.0, 0.0, -1.0], [0.3, 0.3, -1.0], [0.6, 0.6, -1.0],  # 6-8 collinear, in front
                  [0.2, -0.2, np.nan]], np.float32)
    faces = np.array([[3, 1, 2], [4, 5, 2], [6, 7, 8], [6, 6, 6], [0, 1, 9], [0, 1, 2]], np.int32)
    frags = rasterize(v, faces, (16, 16))
    index = np.asarray(frags.face_index)
    assert set(np.unique(index)) == {-1, 5}  # only the good triangle is drawn, NaN/Inf/degenerate nothing
    covered = index == 5
    assert 40 < covered.sum() < 200
    for name in ("bary", "depth", "mask"):
        assert np.all(np.isfinite(np.asarray(getattr(frags, name)))), name
    np.testing.assert_array_equal(np.asarray(frags.mask) > 0, covered)


# ================================================================================================
# 5. zero-area and degenerate meshes (host-side geometry: clear errors)
# ================================================================================================


@pytest.mark.parametrize("vertices", [np.zeros((3, 3)), [[0, 0, 0], [1, 1, 1], [2, 2, 2.0]]], ids=["point", "line"])
def test_degenerate_triangles_are_named(vertices):
    from jface.models.prepare import laplace_beltrami
    from jface.models.tutte import tutte_embedding

    faces = np.array([[0, 1, 2]])
    with pytest.raises(ValueError, match=r"faces:.*degenerate \(zero-area\).*face 0"):
        laplace_beltrami(vertices, faces)
    with pytest.raises(ValueError, match="degenerate"):
        tutte_embedding(vertices, faces, symmetric=False)


def test_geometry_rejects_nan_vertices_and_empty_meshes():
    from jface.models.prepare import laplace_beltrami
    from jface.models.resample import resample_model
    from jface.models.tutte import tutte_embedding

    v = np.array([[0, 0, 0], [1, 0, 0], [0, np.nan, 0]])
    with pytest.raises(ValueError, match="vertices: contains non-finite"):
        laplace_beltrami(v, [[0, 1, 2]])
    with pytest.raises(ValueError, match="no boundary"):
        tutte_embedding(np.zeros((0, 3)), np.zeros((0, 3), int), symmetric=False)
    with pytest.raises(ValueError, match="faces: expected a non-empty"):
        resample_model(np.zeros((3, 3)), None, np.zeros((0, 3), int), np.eye(3)[:, :2], 4)


def test_resample_zero_area_uv_faces_fall_back_to_nearest():
    """UV triangles of zero area contain no grid point; every grid vertex takes the nearest
    boundary point instead (finite, flagged ``outside``)."""
    from jface.models.resample import resample_model

    mean = np.arange(9.0).reshape(3, 3)
    out = resample_model(mean, None, [[0, 1, 2]], np.zeros((3, 2)), 3)
    assert np.all(np.isfinite(out["mean"])) and np.all(out["outside"])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_resample_rejects_non_finite_uv(bad):
    from jface.models.resample import resample_model

    uv = np.array([[0, 0], [1, 0], [bad, 1.0]])
    with pytest.raises(ValueError, match="uv"):
        resample_model(np.arange(9.0).reshape(3, 3), None, [[0, 1, 2]], uv, 3)


# ================================================================================================
# 6. empty datasets and folders
# ================================================================================================


def test_batch_loader_empty_and_too_small():
    from jface.data.loader import BatchLoader

    kw = dict(process_index=0, process_count=1, use_grain=False)
    with pytest.raises(ValueError, match="arrays: expected a non-empty"):
        BatchLoader({}, batch_size=1, **kw)
    with pytest.raises(ValueError, match="batch_size: 2 exceeds the data size 0"):
        BatchLoader({"a": np.zeros((0, 3))}, batch_size=2, **kw)
    with pytest.raises(ValueError, match="batch_size: 4 exceeds the data size 3"):
        BatchLoader({"a": np.zeros((3, 3))}, batch_size=4, **kw)


def test_batch_loader_empty_grouped_names_the_argument():
    from jface.data.loader import BatchLoader

    with pytest.raises(ValueError, match="arrays|batch_size|images_per_group"):
        BatchLoader({"a": np.zeros((0, 3)), "g": np.zeros(0)}, batch_size=2, group_key="g", images_per_group=2,
                    process_index=0, process_count=1, use_grain=False)


def test_data_cli_empty_and_missing_manual_dirs(tmp_path, capsys):
    from jface.data.__main__ import main

    empty = tmp_path / "empty"
    empty.mkdir()
    for dataset, config in (("real", "deca_test"), ("aflw2000", "raw")):
        with pytest.raises(SystemExit, match=r"--manual_dir .*empty is empty"):
            main(["build", dataset, "--config", config, "--manual_dir", str(empty), "--data_dir", str(tmp_path)])
        with pytest.raises(SystemExit, match="is not a directory"):
            main(["build", dataset, "--config", config, "--manual_dir", str(tmp_path / "nope"),
                  "--data_dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="not built"):
        main(["inspect", "--dataset", "real", "--config", "deca_test", "--data_dir", str(tmp_path / "none"),
              "-o", str(tmp_path / "s.png")])


def test_tfds_real_builder_on_folders_without_usable_images(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    from jface.data.tfds_real import JfaceRealFaces

    manual = tmp_path / "manual"
    (manual / "alice").mkdir(parents=True)
    (manual / "alice" / "notes.txt").write_text("no images here")
    builder = JfaceRealFaces(config="deca_test", data_dir=str(tmp_path / "tfds"), file_format="array_record")
    with pytest.raises(ImageReadError, match="no images found"):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))


# ================================================================================================
# 7. command lines on bad files: non-zero exit, one line naming the file, no traceback
# ================================================================================================


def _one_line_error(text, name):
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and name in lines[0] and "Traceback" not in text, text


def test_cli_subprocess_corrupt_model_file(tmp_path):
    bad = tmp_path / "broken.mat"
    bad.write_bytes(b"MATLAB 5.0 MAT-file" + b"\x00" * 40)
    proc = subprocess.run([sys.executable, "-m", "jface.models", "info", str(bad)], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert proc.returncode != 0
    _one_line_error(proc.stderr, "broken.mat")


def test_cli_in_process_bad_files(tmp_path, capsys):
    from jface.models.__main__ import main as models_main
    from jface.weights.__main__ import main as weights_main

    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(bytes(range(256)) * 4)
    for argv in (["info", str(garbage)], ["convert", str(garbage), "-o", str(tmp_path / "o.npz")]):
        assert models_main(argv) != 0
        _one_line_error(capsys.readouterr().err, "garbage.bin")
    for kind in ("deca", "vggface2", "vgg19", "vggface-matconvnet"):
        assert weights_main(["convert", kind, str(garbage), "-o", str(tmp_path / "w.npz")]) != 0
        _one_line_error(capsys.readouterr().err, "garbage.bin")
    assert not (tmp_path / "w.npz").exists() and not (tmp_path / "o.npz").exists()


def test_weights_cli_damaged_archive(tmp_path, capsys):
    from jface.weights.__main__ import main as weights_main

    data = bytearray(_write_archive(tmp_path / "w.tar", deflate=True).read_bytes())
    data[60:64] = b"\xff\xff\xff\xff"  # inside the deflated data.pkl stream
    (tmp_path / "w.tar").write_bytes(bytes(data))
    assert weights_main(["convert", "deca", str(tmp_path / "w.tar"), "-o", str(tmp_path / "o.npz")]) != 0
    _one_line_error(capsys.readouterr().err, "w.tar")


@pytest.fixture
def one_face(tmp_path):
    folder = tmp_path / "faces"
    folder.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(folder / "a.png")
    np.savetxt(folder / "a.txt", np.random.default_rng(0).uniform(5, 35, (68, 2)))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage, not a zip")
    return folder, bad


def test_flatten_cli_bad_checkpoint_is_one_line(one_face, tmp_path, capsys):
    from jface.flatten import main

    folder, bad = one_face
    for checkpoint in (bad, tmp_path / "no_such_run"):
        assert main([str(folder), "-o", str(tmp_path / "o"), "--checkpoint", str(checkpoint)]) == 2
        _one_line_error(capsys.readouterr().err, checkpoint.name)


def test_flatten_cli_bad_model_file(one_face, tmp_path, capsys):
    from jface.flatten import main

    folder, bad = one_face
    rc = main([str(folder), "-o", str(tmp_path / "o"), "--fit-landmarks", "--steps", "1", "--model", str(bad)])
    assert rc != 0
    _one_line_error(capsys.readouterr().err, "bad.npz")


@pytest.mark.parametrize("option", ["--flame", "--fixed-displacement", "--weights"])
def test_reconstruct_cli_bad_files(one_face, tmp_path, capsys, option):
    from jface.reconstruct import main

    folder, bad = one_face
    rc = main([str(folder), "-o", str(tmp_path / "o"), option, str(bad)])
    assert rc != 0
    _one_line_error(capsys.readouterr().err, "bad.npz")


def test_train_deca_bad_config_is_one_line(capsys):
    deca = pytest.importorskip("train.deca")
    assert deca.main(["--preset", "tiny", "--no_such_field", "1"]) == 2
    _one_line_error(capsys.readouterr().err, "no_such_field")
    assert deca.main(["--preset", "nope"]) == 2
    _one_line_error(capsys.readouterr().err, "nope")
    assert deca.main(["--preset", "tiny", "--stage", "finetune"]) == 2
    _one_line_error(capsys.readouterr().err, "finetune")


# ================================================================================================
# 8. train.deca: NaN loss (opt-in: the tiny preset takes ~4 min on a 2-core CPU, see BUILD_NOTES.md)
# ================================================================================================


@pytest.mark.slow
@pytest.mark.skipif(not __import__("os").environ.get("JFACE_SLOW_FAULTS"),
                    reason="set JFACE_SLOW_FAULTS=1: one train.deca tiny run (~4 min on 2 CPU cores)")
def test_train_deca_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    workdir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "train.deca", "--preset", "tiny", "--stage", "pretrain", "--learning_rate", "nan",
         "--checkpoint_every", "1", "--eval_at_end", "false", "--workdir", str(workdir)],
        capture_output=True, text=True, cwd=REPO, timeout=900)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "non-finite training metrics at step 1" in proc.stderr
    assert "the last good checkpoint is step 1" in proc.stderr and "Traceback" not in proc.stderr
    checkpoints = workdir / "pretrain" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir() if p.is_dir()) == ["1"]  # the NaN state never saved
    assert (checkpoints / "1" / "commit_success.txt").exists()
