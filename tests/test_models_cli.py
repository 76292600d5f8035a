"""``python -m jface.models``: info, convert, prepare-stn and the command registry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from jface.models import FlameModel, MorphableModel
from jface.models import __main__ as cli
from jface.models import loaders as mio
from jface.models import store as fmt

DATA = Path(__file__).resolve().parent / "data"
CHUMPY_PKL = DATA / "tiny_flame_chumpy.pkl"
REPO = Path(__file__).resolve().parents[1]


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "jface.models", "--help"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for name in ("info", "convert", "prepare-stn"):
        assert name in out.stdout


def test_info_chumpy_pickle(capsys):
    assert cli.main(["info", str(CHUMPY_PKL)]) == 0
    out = capsys.readouterr().out
    assert "FLAME generic_model.pkl" in out
    assert "shapedirs" in out and "(12, 3, 6)" in out and "J_regressor" in out


def test_info_realdata(realdata, capsys):
    cases = {
        realdata / "synthetic_bfm" / "synth_01_MorphableModel.mat": "BFM 2009",
        realdata / "synthetic_bfm" / "synth_Model_Expression.mat": "3DDFA",
        realdata / "3dmmasstn" / "BFM_UV.mat": "BFM_UV",
        realdata / "3dmmasstn" / "landmarks" / "Landmarks21_112.anl": "21 indices",
        realdata / "deca" / "landmark_embedding.npy": "landmark_embedding",
        realdata / "deca" / "head_template.obj": "(5118, 2)",
    }
    for path, expected in cases.items():
        assert cli.main(["info", str(path)]) == 0
        assert expected in capsys.readouterr().out, path


def test_info_missing_file_reports_error(tmp_path, capsys):
    assert cli.main(["info", str(tmp_path / "nope.pkl")]) == 2
    err = capsys.readouterr().err
    assert "nope.pkl" in err and "no such file" in err


def test_convert_flame_pickle(tmp_path, capsys):
    out = tmp_path / "flame.npz"
    assert cli.main(["convert", str(CHUMPY_PKL), "-o", str(out), "--n-shape", "4"]) == 0
    assert "wrote" in capsys.readouterr().out
    model = fmt.load_model(out)
    assert isinstance(model, FlameModel) and model.n_shape == 4
    reference = mio.load_flame(CHUMPY_PKL, n_shape=4)
    np.testing.assert_array_equal(np.asarray(model.shapedirs), np.asarray(reference.shapedirs))
    meta = fmt.read_metadata(out)
    assert meta["sources"][0]["name"] == CHUMPY_PKL.name
    assert cli.main(["info", str(out)]) == 0
    assert "jface model file v1: FlameModel" in capsys.readouterr().out


def test_convert_bfm(tmp_path, realdata):
    src = realdata / "synthetic_bfm" / "synth_01_MorphableModel.mat"
    out = tmp_path / "bfm.npz"
    assert cli.main(["convert", str(src), "-o", str(out)]) == 0
    model = fmt.load_model(out)
    bfm = mio.load_bfm2009(src)
    assert isinstance(model, MorphableModel) and model.units == "um"
    assert model.num_expression == 0
    # the identity basis is scaled by the standard deviations (N(0, 1) coefficients)
    np.testing.assert_allclose(np.asarray(model.shape_basis[100]),
                               bfm.shape_basis[100] * bfm.shape_ev, rtol=1e-6)


def _grid_mesh(n=5):
    """An n x n planar grid in the BFM .mat layouts (µm), UV = normalised xy."""
    ys, xs = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    xyz = np.stack([xs.ravel(), ys.ravel(), np.zeros(n * n)], 1) * 1000.0
    faces = []
    for i in range(n - 1):
        for j in range(n - 1):
            a, b, c, d = i * n + j, i * n + j + 1, (i + 1) * n + j, (i + 1) * n + j + 1
            faces += [[a, b, d], [a, d, c]]
    uv = xyz[:, :2] / xyz[:, :2].max()
    return xyz, np.asarray(faces), uv


def _write_tiny_stn_inputs(folder: Path):
    rng = np.random.default_rng(0)
    xyz, faces, uv = _grid_mesh()
    n = len(xyz)
    keep = np.setdiff1d(np.arange(n), [12])  # the "mouth" vertex 3DDFA lacks
    pc = rng.normal(size=(3 * n, 3))
    scipy.io.savemat(folder / "bfm.mat", {
        "shapeMU": xyz.reshape(-1, 1).astype(np.float32), "shapePC": pc.astype(np.float32),
        "shapeEV": np.array([[3.0], [2.0], [1.0]], np.float32), "tl": faces + 1.0})
    scipy.io.savemat(folder / "expr.mat", {"w_exp": rng.normal(size=(3 * len(keep), 2))})
    scipy.io.savemat(folder / "uv.mat", {"UV": uv})
    scipy.io.savemat(folder / "map.mat", {"map_tddfa_to_basel": keep[None].astype(np.uint16)})
    (folder / "lm.anl").write_text("% two grid landmarks\n1\n16\n")
    return {name: folder / name for name in ("bfm.mat", "expr.mat", "uv.mat", "map.mat", "lm.anl")}


def test_prepare_stn_wiring(tmp_path, monkeypatch, capsys):
    """The command hands the loaders' results to prepare_stn_model and saves what it returns."""
    import jax.numpy as jnp

    from jface.models import prepare

    files = _write_tiny_stn_inputs(tmp_path)
    seen = {}

    def fake_prepare(bfm, expression, uv, map_tddfa_to_basel, res=112, n_shape=5,
                     n_expression=5, progress=None):
        seen.update(bfm=bfm, expression=expression, uv=uv, map=map_tddfa_to_basel, res=res,
                    n_shape=n_shape, n_expression=n_expression)
        progress("fake step")
        k = res * res
        return MorphableModel(mean=jnp.zeros((k, 3)), shape_basis=jnp.zeros((k, 3, n_shape)),
                              expression_basis=jnp.zeros((k, 3, n_expression)),
                              faces=jnp.asarray([[0, 1, 2]], jnp.int32), grid_hw=(res, res))

    monkeypatch.setattr(prepare, "prepare_stn_model", fake_prepare)
    out = tmp_path / "stn.npz"
    argv = ["prepare-stn", "--bfm", str(files["bfm.mat"]), "--expression", str(files["expr.mat"]),
            "--uv", str(files["uv.mat"]), "--map", str(files["map.mat"]), "-o", str(out),
            "--res", "4", "--n-shape", "2", "--n-expression", "1",
            "--landmarks", f"pts={files['lm.anl']}"]
    assert cli.main(argv) == 0
    assert "fake step" in capsys.readouterr().out
    assert seen["bfm"]["mean"].shape == (25, 3) and seen["expression"]["w_exp"].shape == (24, 3, 2)
    assert seen["uv"].shape == (25, 2) and seen["map"].dtype == np.int32
    assert (seen["res"], seen["n_shape"], seen["n_expression"]) == (4, 2, 1)
    model = fmt.load_model(out)
    np.testing.assert_array_equal(np.asarray(model.landmarks["pts"]), [0, 15])
    names = [s["name"] for s in fmt.read_metadata(out)["sources"]]
    assert names == ["bfm.mat", "expr.mat", "uv.mat", "map.mat", "lm.anl"]


def test_prepare_stn_end_to_end_tiny(tmp_path, capsys):
    files = _write_tiny_stn_inputs(tmp_path)
    out = tmp_path / "stn.npz"
    argv = ["prepare-stn", "--bfm", str(files["bfm.mat"]), "--expression", str(files["expr.mat"]),
            "--uv", str(files["uv.mat"]), "--map", str(files["map.mat"]), "-o", str(out),
            "--res", "4", "--n-shape", "2", "--n-expression", "2"]
    assert cli.main(argv) == 0
    assert "done" in capsys.readouterr().out
    model = fmt.load_model(out)
    assert model.units == "mm" and model.grid_hw == (4, 4)
    assert model.mean.shape == (16, 3) and model.shape_basis.shape == (16, 3, 2)
    assert model.expression_basis.shape == (16, 3, 2) and model.faces.shape == (18, 3)
    # the planar grid's UV is its normalised xy (4 mm wide); grid vertex 0 is (u, v) = (0, 1) and
    # the last (1, 0) (BFM_UV.mat as resampleModel.m reads it: V flipped so the texture is upright)
    np.testing.assert_allclose(np.asarray(model.mean)[[0, 15], :2], [[0, 4], [4, 0]], atol=1e-5)


def test_prepare_stn_bad_landmark_spec(tmp_path):
    files = _write_tiny_stn_inputs(tmp_path)
    with pytest.raises(SystemExit):
        cli.main(["prepare-stn", "--bfm", str(files["bfm.mat"]), "--expression",
                  str(files["expr.mat"]), "--uv", str(files["uv.mat"]), "--map",
                  str(files["map.mat"]), "-o", str(tmp_path / "x.npz"), "--landmarks", "novalue"])


def hello_command(parser):
    """A test command registered through COMMANDS."""
    parser.add_argument("--name", default="world")
    return lambda args: print(f"hello {args.name}") or 0


def test_command_registry_one_line(monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "hello", ("say hello", f"{__name__}:hello_command"))
    assert cli.main(["hello", "--name", "jface"]) == 0
    assert capsys.readouterr().out.strip() == "hello jface"
