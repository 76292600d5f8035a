"""Loaders of the original model files and the project's own npz format (jface.models.loaders /
jface.models.store, jface.files.obj)."""

from __future__ import annotations

import json
import zipfile

import jax
import numpy as np
import pytest
import scipy.io
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jface.errors import ModelFileError
from jface.files.obj import load_obj
from jface.models import FlameModel, MorphableModel
from jface.models import loaders as mio
from jface.models import store as fmt

# ----------------------------------------------------------------------------------------------
# tiny files in the real layouts (made-up numbers)


def _tiny_bfm_fields(n=4, k=2, texture=True):
    rng = np.random.default_rng(0)
    fields = {
        "shapeMU": np.arange(3 * n, dtype=np.float32)[:, None],
        "shapePC": rng.normal(size=(3 * n, k)).astype(np.float32),
        "shapeEV": np.array([[2.0], [0.5]], dtype=np.float32)[:k],
        "tl": np.array([[1, 2, 3], [2, 4, 3]], dtype=np.float64),
    }
    if texture:
        fields.update(texMU=np.full((3 * n, 1), 128, np.float32),
                      texPC=rng.normal(size=(3 * n, 3)).astype(np.float32),
                      texEV=np.ones((3, 1), np.float32))
    return fields


def _savemat(path, fields):
    scipy.io.savemat(str(path), fields)
    return path


def test_bfm2009_deinterleaves_and_rebases(tmp_path):
    fields = _tiny_bfm_fields()
    bfm = mio.load_bfm2009(_savemat(tmp_path / "01_MorphableModel.mat", fields))
    assert bfm.mean.shape == (4, 3) and bfm.units == "um"
    np.testing.assert_array_equal(bfm.mean[1], [3, 4, 5])  # interleaved x0 y0 z0 x1 ...
    pc = fields["shapePC"]
    assert bfm.shape_basis.shape == (4, 3, 2)
    for v in range(4):
        for c in range(3):
            np.testing.assert_array_equal(bfm.shape_basis[v, c], pc[3 * v + c])
    np.testing.assert_array_equal(bfm.shape_ev, [2.0, 0.5])
    assert bfm.faces.dtype == np.int32
    np.testing.assert_array_equal(bfm.faces, [[0, 1, 2], [1, 3, 2]])
    assert bfm.tex_mean.shape == (4, 3) and bfm.tex_basis.shape == (4, 3, 3)
    assert bfm.mean.dtype == np.float32  # dtype as stored


def test_bfm2009_realdata(realdata):
    path = realdata / "synthetic_bfm" / "synth_01_MorphableModel.mat"
    bfm = mio.load_bfm2009(path)
    raw = scipy.io.loadmat(str(path))
    assert bfm.mean.shape == (53490, 3) and bfm.shape_basis.shape == (53490, 3, 5)
    assert bfm.faces.shape == (106466, 3) and bfm.faces.dtype == np.int32
    np.testing.assert_array_equal(bfm.mean.reshape(-1), raw["shapeMU"][:, 0])
    np.testing.assert_array_equal(bfm.faces, raw["tl"].astype(np.int32) - 1)
    assert bfm.faces.min() == 0 and bfm.faces.max() == 53489


def test_tddfa_expression_realdata(realdata):
    path = realdata / "synthetic_bfm" / "synth_Model_Expression.mat"
    expr = mio.load_tddfa_expression(path)
    raw = scipy.io.loadmat(str(path))
    assert expr.w_exp.shape == (53215, 3, 5) and expr.units == "um"
    np.testing.assert_array_equal(expr.w_exp[10, 2], raw["w_exp"][32])
    assert expr.mu_exp.shape == (53215, 3) and expr.sigma_exp.shape == (5,)


def test_map_uv_and_landmarks_realdata(realdata):
    base = realdata / "3dmmasstn"
    index = mio.load_map_tddfa_to_basel(base / "map_tddfa_to_basel.mat", n_vertices=53490)
    assert index.shape == (53215,) and index.dtype == np.int32
    assert index.min() >= 0 and np.all(np.diff(index) > 0)
    assert 53490 - index.shape[0] == 275  # the mouth interior 3DDFA lacks
    uv = mio.load_bfm_uv(base / "BFM_UV.mat", n_vertices=53490)
    assert uv.shape == (53490, 2) and uv.dtype == np.float64
    for name, count in (("Landmarks21_BFM", 21), ("Landmarks68_BFM", 68),
                        ("Landmarks21_112", 21), ("Landmarks68_224", 68)):
        idx = mio.load_anl(base / "landmarks" / f"{name}.anl")
        assert idx.shape == (count,) and idx.dtype == np.int32 and idx.min() >= 0
    idx = mio.load_anl(base / "landmarks" / "Landmarks68_112.anl")
    # the file repeats 1-based 6667 (its 64th and 66th points; the README says 63 and 66)
    np.testing.assert_array_equal(np.flatnonzero(idx == 6666), [63, 65])
    text = (base / "landmarks" / "Landmarks21_BFM.anl").read_text().split("\n")
    first = next(int(t) for t in text if t.strip() and not t.startswith("%"))
    assert mio.load_anl(base / "landmarks" / "Landmarks21_BFM.anl")[0] == first - 1


def test_head_template_obj(realdata):
    obj = load_obj(realdata / "deca" / "head_template.obj")
    assert obj.vertices.shape == (5023, 3) and obj.uv_coords.shape == (5118, 2)
    assert obj.faces.shape == (9976, 3) and obj.uv_faces.shape == (9976, 3)
    assert obj.faces.dtype == obj.uv_faces.dtype == np.int32
    assert obj.faces.min() == 0 and obj.faces.max() == 5022
    assert obj.uv_faces.min() == 0 and obj.uv_faces.max() == 5117
    # seam vertices keep their separate texture coordinates (95 of them in head_template.obj)
    pairs = np.unique(np.stack([obj.faces.ravel(), obj.uv_faces.ravel()], 1), axis=0)
    per_vertex = np.bincount(pairs[:, 0], minlength=5023)
    assert np.count_nonzero(per_vertex > 1) == 95


def test_obj_polygons_negative_indices_and_no_uv(tmp_path):
    path = tmp_path / "quad.obj"
    path.write_text("# quad\nv 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\n"
                    "f -4/-4 -3/-3 -2/-2 -1/-1\n")
    obj = load_obj(path)
    np.testing.assert_array_equal(obj.faces, [[0, 1, 2], [0, 2, 3]])
    np.testing.assert_array_equal(obj.uv_faces, obj.faces)
    path.write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nf 1//1 2//1 3//1\n")
    obj = load_obj(path)
    assert obj.uv_coords is None and obj.uv_faces is None


def test_synthetic_flame_npz_with_embedding(realdata):
    model = mio.load_flame(realdata / "synthetic_flame" / "synthetic_flame_model.npz",
                           realdata / "deca" / "landmark_embedding.npy")
    assert isinstance(model, FlameModel)
    assert model.parents == (-1, 0, 1, 1, 1) and model.n_shape == 300
    assert model.shapedirs.shape == (5023, 3, 400) and model.shapedirs.dtype == np.float32
    assert model.j_regressor.shape == (5, 5023) and model.faces.dtype == np.int32
    assert model.full_lmk_faces_idx.shape == (68,)
    assert model.full_lmk_bary_coords.shape == (68, 3)
    assert model.dynamic_lmk_bary_coords.shape == (79, 17, 3)
    reference = np.load(realdata / "deca" / "landmark_embedding_numpy.npz")
    np.testing.assert_array_equal(model.full_lmk_faces_idx, reference["full_lmk_faces_idx"][0])


# ----------------------------------------------------------------------------------------------
# the project's own format


def _tiny_morphable():
    import jax.numpy as jnp

    rng = np.random.default_rng(1)
    return MorphableModel(
        mean=jnp.asarray(rng.normal(size=(4, 3)).astype(np.float32)),
        shape_basis=jnp.asarray(rng.normal(size=(4, 3, 2)).astype(np.float32)),
        expression_basis=jnp.zeros((4, 3, 0), jnp.float32),
        faces=jnp.asarray([[0, 1, 2], [1, 3, 2]], dtype=jnp.int32),
        uv=jnp.asarray(rng.uniform(size=(4, 2)).astype(np.float32)),
        landmarks={"aflw21": jnp.asarray([0, 3], dtype=jnp.int32)},
        units="mm",
        grid_hw=(2, 2),
    )


def _assert_same_model(a, b):
    assert type(a) is type(b)
    leaves_a, tree_a = jax.tree_util.tree_flatten(a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(b)
    assert tree_a == tree_b  # same fields present and same static fields
    for x, y in zip(leaves_a, leaves_b):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_morphable_roundtrip_and_metadata(tmp_path):
    model = _tiny_morphable()
    src = tmp_path / "source.mat"
    src.write_bytes(b"pretend source")
    path = fmt.save_model(model, tmp_path / "m.npz", sources=[src])
    back = fmt.load_model(path)
    _assert_same_model(model, back)
    assert back.grid_hw == (2, 2) and back.units == "mm"
    meta = fmt.read_metadata(path)
    assert meta["version"] == fmt.FORMAT_VERSION and meta["model_type"] == "MorphableModel"
    assert meta["sources"][0]["name"] == "source.mat"
    assert meta["sources"][0]["sha256"] == fmt.sha256_file(src)
    assert "licence" in meta
    with np.load(path, allow_pickle=False) as z:  # plain arrays, no pickles
        assert "landmarks/aflw21" in z.files


def test_flame_roundtrip(tmp_path):
    from pathlib import Path

    pkl = Path(__file__).parent / "data" / "tiny_flame_chumpy.pkl"
    model = mio.load_flame(pkl, n_shape=4)
    path = fmt.save_model(model, tmp_path / "flame.npz")
    _assert_same_model(model, fmt.load_model(path))
    _assert_same_model(model, mio.load_flame(path))  # load_flame accepts the own format too


def test_save_is_atomic(tmp_path, monkeypatch):
    model = _tiny_morphable()
    path = fmt.save_model(model, tmp_path / "m.npz")
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        fmt.save_model(model.replace(units="um"), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]  # no temp file left


def _rewrite_meta(path, out, edit):
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays[fmt.META_KEY].tobytes())
    edit(meta, arrays)
    arrays[fmt.META_KEY] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(out, **arrays)
    return out


def test_load_model_errors(tmp_path):
    good = fmt.save_model(_tiny_morphable(), tmp_path / "m.npz")

    def newer(meta, arrays):
        meta["version"] = fmt.FORMAT_VERSION + 1

    with pytest.raises(ModelFileError, match="newer"):
        fmt.load_model(_rewrite_meta(good, tmp_path / "v.npz", newer))

    def drop_faces(meta, arrays):
        del arrays["faces"]

    with pytest.raises(ModelFileError, match=r"\[faces\]"):
        fmt.load_model(_rewrite_meta(good, tmp_path / "f.npz", drop_faces))

    def wrong_shape(meta, arrays):
        arrays["mean"] = arrays["mean"][:3]

    with pytest.raises(ModelFileError, match=r"\[mean\].*metadata records"):
        fmt.load_model(_rewrite_meta(good, tmp_path / "s.npz", wrong_shape))

    def wrong_type(meta, arrays):
        meta["model_type"] = "Teapot"

    with pytest.raises(ModelFileError, match="Teapot"):
        fmt.load_model(_rewrite_meta(good, tmp_path / "t.npz", wrong_type))

    def bad_faces(meta, arrays):
        arrays["faces"] = arrays["faces"] + 10

    with pytest.raises(ModelFileError, match=r"\[faces\].*0-based"):
        fmt.load_model(_rewrite_meta(good, tmp_path / "b.npz", bad_faces))

    np.savez(tmp_path / "plain.npz", mean=np.zeros((2, 3)))
    with pytest.raises(ModelFileError, match="not a jface model file"):
        fmt.load_model(tmp_path / "plain.npz")
    with zipfile.ZipFile(tmp_path / "meta.npz", "w") as z:
        z.writestr(fmt.META_KEY + ".npy", b"garbage")
    with pytest.raises(ModelFileError):
        fmt.load_model(tmp_path / "meta.npz")
    with pytest.raises(ModelFileError, match="is a directory"):
        fmt.save_model(_tiny_morphable(), tmp_path)
    with pytest.raises(ModelFileError, match="does not exist"):
        fmt.save_model(_tiny_morphable(), tmp_path / "no" / "such" / "m.npz")
    with pytest.raises(TypeError, match="MorphableModel or FlameModel"):
        fmt.save_model({"mean": 1}, tmp_path / "x.npz")


@settings(max_examples=30, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(flips=st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 255)), min_size=1,
                      max_size=8),
       cut=st.one_of(st.none(), st.integers(1, 10**9)))
def test_fuzz_corrupted_model_npz(tmp_path_factory, flips, cut):
    folder = tmp_path_factory.mktemp("npzfuzz")
    data = bytearray(fmt.save_model(_tiny_morphable(), folder / "m.npz").read_bytes())
    for pos, value in flips:
        data[pos % len(data)] = value
    if cut is not None:
        data = data[: cut % len(data) or 1]
    (folder / "m.npz").write_bytes(bytes(data))
    try:
        model = fmt.load_model(folder / "m.npz")
    except ModelFileError:
        return
    assert isinstance(model, MorphableModel)


# ----------------------------------------------------------------------------------------------
# bad input: every loader names the file and says what is wrong


_LOADERS = {
    "bfm": mio.load_bfm2009,
    "expression": mio.load_tddfa_expression,
    "map": mio.load_map_tddfa_to_basel,
    "uv": mio.load_bfm_uv,
    "anl": mio.load_anl,
    "obj": load_obj,
    "flame": mio.load_flame,
    "flame_pkl": mio.load_flame_pkl,
    "embedding": mio.load_landmark_embedding,
    "model": fmt.load_model,
}


@pytest.mark.parametrize("loader", sorted(_LOADERS))
def test_empty_directory_missing_garbage(tmp_path, loader):
    load = _LOADERS[loader]
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with pytest.raises(ModelFileError, match="empty") as info:
        load(empty)
    assert str(empty) in str(info.value)
    with pytest.raises(ModelFileError, match="directory"):
        load(tmp_path)
    with pytest.raises(ModelFileError, match="no such file"):
        load(tmp_path / "missing.mat")
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(bytes(np.random.default_rng(3).integers(0, 256, 3000, dtype=np.uint8)))
    with pytest.raises(ModelFileError) as info:
        load(garbage)
    assert str(garbage) in str(info.value)


def test_truncated_and_corrupt_mat(tmp_path):
    path = _savemat(tmp_path / "bfm.mat", _tiny_bfm_fields())
    data = path.read_bytes()
    for cut in (100, 200, len(data) // 2, len(data) - 10):
        bad = tmp_path / f"cut{cut}.mat"
        bad.write_bytes(data[:cut])
        with pytest.raises(ModelFileError) as info:
            mio.load_bfm2009(bad)
        assert str(bad) in str(info.value)
    corrupt = bytearray(data)
    corrupt[140:180] = b"\xff" * 40
    bad = tmp_path / "corrupt.mat"
    bad.write_bytes(bytes(corrupt))
    with pytest.raises(ModelFileError):
        mio.load_bfm2009(bad)


def test_mat_v73_is_named(tmp_path):
    path = tmp_path / "01_MorphableModel.mat"
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 .".ljust(512, b" ")
    path.write_bytes(header + b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)
    with pytest.raises(ModelFileError, match=r"7\.3") as info:
        mio.load_bfm2009(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("field,value,message", [
    ("shapePC", None, r"\[shapePC\]: missing field 'shapePC'"),
    ("tl", None, r"missing field 'tl'"),
    ("shapePC", np.zeros((11, 2), np.float32), r"\[shapePC\].*\(12, K\)"),
    ("shapeMU", np.zeros((13, 1), np.float32), r"\[shapeMU\].*interleaved"),
    ("shapeEV", np.ones((3, 1), np.float32), r"\[shapeEV\].*\(2,\)"),
    ("shapeMU", np.arange(12, dtype=np.int32)[:, None], r"\[shapeMU\].*floating.*int32"),
    ("tl", np.array([[0, 1, 2]], np.float64), r"\[tl\].*1-based"),
    ("tl", np.array([[1, 2, 5]], np.float64), r"\[tl\].*\[1, 4\]"),
    ("tl", np.array([[1.5, 2, 3]]), r"\[tl\].*not integers"),
    ("shapePC", np.full((12, 2), np.nan, np.float32), r"\[shapePC\].*NaN"),
    ("texEV", None, r"texture fields incomplete"),
])
def test_bfm_bad_fields(tmp_path, field, value, message):
    fields = _tiny_bfm_fields()
    if value is None:
        del fields[field]
    else:
        fields[field] = value
    with pytest.raises(ModelFileError, match=message):
        mio.load_bfm2009(_savemat(tmp_path / "bfm.mat", fields))


def test_other_mat_loaders_bad_fields(tmp_path):
    with pytest.raises(ModelFileError, match=r"\[w_exp\].*interleaved"):
        mio.load_tddfa_expression(_savemat(tmp_path / "e.mat", {"w_exp": np.zeros((10, 2))}))
    with pytest.raises(ModelFileError, match="missing field 'w_exp'"):
        mio.load_tddfa_expression(_savemat(tmp_path / "e2.mat", {"mu_exp": np.zeros((9, 1))}))
    with pytest.raises(ModelFileError, match="sorted and unique"):
        mio.load_map_tddfa_to_basel(_savemat(tmp_path / "m.mat", {
            "map_tddfa_to_basel": np.array([[0, 2, 1]], np.uint16)}))
    with pytest.raises(ModelFileError, match=r"integer array.*float64"):
        mio.load_map_tddfa_to_basel(_savemat(tmp_path / "m2.mat", {
            "map_tddfa_to_basel": np.array([[0.0, 1.0]])}))
    with pytest.raises(ModelFileError, match="n_vertices=2"):
        mio.load_map_tddfa_to_basel(_savemat(tmp_path / "m3.mat", {
            "map_tddfa_to_basel": np.array([[0, 1, 2]], np.uint16)}), n_vertices=2)
    with pytest.raises(ModelFileError, match=r"\[UV\].*\[0, 1\]"):
        mio.load_bfm_uv(_savemat(tmp_path / "uv.mat", {"UV": np.array([[0.5, 1.5]])}))
    with pytest.raises(ModelFileError, match=r"\[UV\].*\(N, 2\)"):
        mio.load_bfm_uv(_savemat(tmp_path / "uv2.mat", {"UV": np.zeros((4, 3))}))


def test_anl_errors(tmp_path):
    path = tmp_path / "x.anl"
    path.write_text("% comment\n12\nnose\n")
    with pytest.raises(ModelFileError, match="line 3"):
        mio.load_anl(path)
    path.write_text("% comment\n0\n")
    with pytest.raises(ModelFileError, match="1-based"):
        mio.load_anl(path)
    path.write_text("% only comments\n")
    with pytest.raises(ModelFileError, match="no landmark"):
        mio.load_anl(path)


def test_obj_errors(tmp_path, realdata):
    path = tmp_path / "bad.obj"
    path.write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nf 1 2 4\n")
    with pytest.raises(ModelFileError, match="line 4"):
        load_obj(path)
    path.write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nvt 0 0\nf 1/1 2/1 3\n")
    with pytest.raises(ModelFileError, match="texture index"):
        load_obj(path)
    path.write_text("v 0 0 zero\n")
    with pytest.raises(ModelFileError, match="line 1"):
        load_obj(path)
    data = (realdata / "deca" / "head_template.obj").read_bytes()
    path.write_bytes(data[: data.index(b"\nvt ")])  # truncated before the faces
    with pytest.raises(ModelFileError, match="no faces"):
        load_obj(path)


def test_landmark_embedding_bad_layouts(tmp_path, realdata):
    reference = dict(np.load(realdata / "deca" / "landmark_embedding_numpy.npz"))
    bad = dict(reference)
    del bad["dynamic_lmk_faces_idx"]
    np.savez(tmp_path / "a.npz", **bad)
    with pytest.raises(ModelFileError, match="dynamic_lmk_faces_idx"):
        mio.load_landmark_embedding(tmp_path / "a.npz")
    bad = dict(reference, static_lmk_bary_coords=reference["static_lmk_bary_coords"][:, :2])
    np.savez(tmp_path / "b.npz", **bad)
    with pytest.raises(ModelFileError, match="static_lmk_bary_coords"):
        mio.load_landmark_embedding(tmp_path / "b.npz")
    bad = dict(reference, static_lmk_faces_idx=reference["static_lmk_faces_idx"].astype(float))
    np.savez(tmp_path / "c.npz", **bad)
    with pytest.raises(ModelFileError, match=r"static_lmk_faces_idx.*integer"):
        mio.load_landmark_embedding(tmp_path / "c.npz")
    np.save(tmp_path / "plain.npy", np.zeros(3))
    with pytest.raises(ModelFileError, match="0-d object"):
        mio.load_landmark_embedding(tmp_path / "plain.npy")
