"""python -m jface.reconstruct (DECA tool): outputs, mesh round trips, camera, padding, transfer, bad inputs.

Runs the landmark-fit path (no encoder: a ResNet-50 compile is too slow for the test budget) with a
small randomly initialised detail generator, so the detail stage, detail mesh and detail renders are
exercised. One run of 2 images + a transfer source serves every test.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import trimesh
from PIL import Image

from jface import export
from jface.reconstruct import fit_codes, run, transfer_codes
from jface.reconstruct.inputs import InputError, LandmarkFileError


def _landmark_pixels(model, pose, cam):
    """68 landmarks of the mean FLAME head (DECA camera), as 0-based pixels of a 224 image."""
    from jface.deca import decode_geometry

    geometry = decode_geometry(model, jnp.zeros(100, jnp.float32), jnp.zeros(50, jnp.float32),
                               jnp.asarray(pose, jnp.float32), jnp.asarray(cam, jnp.float32))
    return (np.asarray(geometry["landmarks2d"], np.float64) + 1.0) * 112.0


@pytest.fixture(scope="module")
def reconstructed(tmp_path_factory):
    from jface.deca.networks import DetailGenerator
    from jface.models import default_flame_model

    model = default_flame_model()
    root = tmp_path_factory.mktemp("deca_in")
    folder = root / "person"
    folder.mkdir()
    rng = np.random.default_rng(0)
    poses = {"p1": [0, 0.2, 0, 0, 0, 0], "p2": [0.1, -0.2, 0, 0, 0, 0], "src": [0, 0, 0, 0.25, 0, 0]}
    for name, pose in poses.items():
        target = root if name == "src" else folder
        Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)).save(target / f"{name}.png")
        np.savetxt(target / f"{name}.txt", _landmark_pixels(model, pose, [7.0, 0.0, 0.01]))
    (folder / "zz_broken.png").write_bytes(b"\x89PNG garbage")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder / "zz_nolandmarks.png")
    generator = DetailGenerator(init_channels=8, block_channels=(4, 4, 4, 4, 4))
    params = {"D_detail": dict(jax.jit(generator.init)(jax.random.PRNGKey(0), jnp.zeros((1, 181), jnp.float32)))}
    out = tmp_path_factory.mktemp("deca_out")
    summary = run([folder], out, fit_landmarks=True, transfer=root / "src.png", batch_size=2, fit_steps=150,
                  params=params, detail_generator=generator, model=model, log=lambda *_: None)
    return model, out, summary


def _codes(folder):
    with np.load(folder / "codes.npz") as z:
        return {k: z[k] for k in z.files}


def test_every_output_exists_and_decodes(reconstructed):
    model, out, summary = reconstructed
    assert len(summary["images"]) == 4  # 2 images + their transfers
    expected = {"codes.npz", "codes.json", "flame.npz", "flame.json", "camera.json", "coarse.obj", "coarse.mtl",
                "coarse.png", "coarse_normals.png", "coarse.ply", "detail.obj", "detail.mtl", "detail.png",
                "detail.ply", "displacement.npy", "displacement.png", "normals.npy", "normals.png", "overlay.png",
                "shape.png", "shape_detail.png", "landmarks.json"}
    for record in summary["images"]:
        folder = out / "person" / record["folder"].rsplit("/", 1)[-1]
        names = {p.name for p in folder.iterdir()}
        assert expected <= names, expected - names
        for name in names:
            path = folder / name
            if name.endswith(".png"):
                with Image.open(path) as im:
                    im.load()
            elif name.endswith(".json"):
                json.loads(path.read_text())
            elif name.endswith(".npy"):
                assert np.all(np.isfinite(np.load(path)))
            elif name.endswith(".npz"):
                np.load(path).close()
    disp = np.load(out / "person" / "p1" / "displacement.npy")
    assert disp.shape == (256, 256) and 0 < np.abs(disp).max() <= 0.01  # tanh x 0.01 from F_d
    skipped = {s["image"].rsplit("/", 1)[-1] for s in summary["skipped"]}
    assert skipped == {"zz_broken.png", "zz_nolandmarks.png"}


def test_meshes_round_trip(reconstructed):
    from jface import flame

    model, out, _ = reconstructed
    folder = out / "person" / "p1"
    codes = _codes(folder)
    verts = np.asarray(flame.forward(model, codes["shape"], codes["exp"], codes["pose"])["vertices"])
    faces = np.asarray(model.faces)
    ply = trimesh.load(folder / "coarse.ply", process=False)
    np.testing.assert_allclose(ply.vertices, verts, atol=2e-6)
    np.testing.assert_array_equal(ply.faces, faces)
    obj = trimesh.load(folder / "coarse.obj", process=False, maintain_order=True)
    assert obj.vertices.shape == verts.shape and obj.faces.shape == faces.shape
    np.testing.assert_allclose(obj.vertices, verts, atol=1e-6)
    assert obj.visual.material.image.size == (256, 256)  # the texture came with the OBJ
    detail_ply = trimesh.load(folder / "detail.ply", process=False)
    detail_obj = trimesh.load(folder / "detail.obj", process=False, maintain_order=True)
    assert detail_obj.vertices.shape == detail_ply.vertices.shape and detail_ply.vertices.shape[0] > 1000
    assert detail_obj.faces.shape == detail_ply.faces.shape
    np.testing.assert_allclose(detail_obj.vertices, detail_ply.vertices, atol=1e-6)
    assert detail_obj.visual.material.image.size == (256, 256)
    # DECA's util.upsample_mesh: dense vertex = barycentric point on the coarse mesh + displacement x unit normal
    table = export.uv_pixel_table(model.uv_coords, model.uv_faces, (256, 256), model.uv_face_eye_mask)
    assert table.num_pixels == detail_ply.vertices.shape[0]
    on_surface, _, _ = export.upsample_mesh(verts, faces, table, np.zeros((256, 256)))
    disp = np.load(folder / "displacement.npy")[table.rows, table.cols]
    np.testing.assert_allclose(np.linalg.norm(detail_ply.vertices - on_surface, axis=1), np.abs(disp), atol=2e-6)


def test_camera_matrix_and_padding(reconstructed):
    from jface.deca import decode_geometry

    model, out, _ = reconstructed
    folder = out / "person" / "p2"
    codes = _codes(folder)
    camera = json.loads((folder / "camera.json").read_text())
    matrix = np.asarray(camera["deca_ndc_matrix"])
    points = np.random.default_rng(1).normal(size=(20, 3)) * 0.1
    from jface.deca import project

    np.testing.assert_allclose(export.apply_matrix(matrix, points), np.asarray(project(points, codes["cam"])),
                               atol=1e-5)
    geometry = decode_geometry(model, codes["shape"], codes["exp"], codes["pose"], codes["cam"])
    ply = trimesh.load(folder / "coarse.ply", process=False)
    np.testing.assert_allclose(export.apply_matrix(matrix, ply.vertices), np.asarray(geometry["trans_verts"]),
                               atol=1e-5)
    flame = json.loads((folder / "flame.json").read_text())
    assert len(flame["shape"]) == 300 and len(flame["expression"]) == 100
    np.testing.assert_allclose(flame["shape"][:100], codes["shape"], rtol=1e-6)
    assert not np.any(flame["shape"][100:]) and not np.any(flame["expression"][50:])
    np.testing.assert_allclose(flame["jaw_pose"], codes["pose"][3:], rtol=1e-6)
    # the landmark fit got close to the synthetic landmarks (NDC units; 0.02 ~ 2 px)
    marks = json.loads((folder / "landmarks.json").read_text())
    assert np.sqrt(np.mean(np.sum((np.asarray(marks["ndc"]) - np.asarray(marks["input_ndc"])) ** 2, -1))) < 0.03


def test_transfer_changes_only_expression_and_jaw(reconstructed):
    _, out, _ = reconstructed
    base = {k: _codes(out / "person" / k) for k in ("p1", "p2")}
    moved = {k: _codes(out / "person" / f"{k}_transfer") for k in ("p1", "p2")}
    for k in ("p1", "p2"):
        for name in base[k]:
            if name not in ("exp", "pose"):
                np.testing.assert_array_equal(moved[k][name], base[k][name])
        np.testing.assert_array_equal(moved[k]["pose"][:3], base[k]["pose"][:3])
    np.testing.assert_array_equal(moved["p1"]["exp"], moved["p2"]["exp"])
    np.testing.assert_array_equal(moved["p1"]["pose"][3:], moved["p2"]["pose"][3:])
    assert moved["p1"]["pose"][3] > 0.1  # the source's open jaw (0.25 rad) came across
    a = trimesh.load(out / "person" / "p1" / "coarse.ply", process=False).vertices
    b = trimesh.load(out / "person" / "p1_transfer" / "coarse.ply", process=False).vertices
    assert np.abs(a - b).max() > 1e-3
    # the library function on its own
    target = {"exp": np.zeros((2, 50)), "pose": np.zeros((2, 6)), "shape": np.ones((2, 100))}
    source = {"exp": np.ones(50), "pose": np.arange(6.0), "shape": np.zeros(100)}
    swapped = transfer_codes(target, source)
    np.testing.assert_array_equal(swapped["pose"], [[0, 0, 0, 3, 4, 5]] * 2)
    assert np.all(swapped["exp"] == 1) and np.all(swapped["shape"] == 1) and np.all(target["exp"] == 0)


def test_bad_inputs(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no images found"):
        run([empty], tmp_path / "o", fit_landmarks=True)
    from jface.reconstruct import main

    assert main([str(empty), "-o", str(tmp_path / "o"), "--fit-landmarks"]) == 2
    with pytest.raises(InputError, match="not an image"):
        (tmp_path / "notes.txt").write_text("x")
        run([tmp_path / "notes.txt"], tmp_path / "o", fit_landmarks=True)
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(tmp_path / "face.png")
    lm = np.ones((68, 2))
    lm[3, 0] = np.nan
    np.savetxt(tmp_path / "face.txt", lm)
    with pytest.raises(LandmarkFileError, match="face.txt.*NaN"):
        run([tmp_path / "face.png"], tmp_path / "o", fit_landmarks=True)
    with pytest.raises(ValueError, match="landmarks_ndc"):
        fit_codes(None, np.full((1, 68, 2), np.nan))


def test_load_weights(tmp_path):
    from jface.errors import ModelFileError
    from jface.files.weights import save_variables
    from jface.reconstruct import load_weights

    tree = {"E_flame": {"params": {"layers_2": {"bias": np.arange(3.0, dtype=np.float32)}}}}
    save_variables(tmp_path / "deca.npz", tree, kind="deca")
    loaded = load_weights(tmp_path / "deca.npz")
    np.testing.assert_array_equal(loaded["E_flame"]["params"]["layers_2"]["bias"], [0, 1, 2])
    save_variables(tmp_path / "vgg.npz", tree, kind="vgg19")
    with pytest.raises(ModelFileError, match="kind"):
        load_weights(tmp_path / "vgg.npz")
    save_variables(tmp_path / "other.npz", {"D_detail": tree["E_flame"]}, kind="deca")
    with pytest.raises(InputError, match="E_flame"):
        load_weights(tmp_path / "other.npz")
