"""python -m jface.reconstruct (DECA tool): outputs, mesh round trips, camera, padding, transfer, panels
(translucent overlay, captions, pose, depth, PNCC), per-image skips, bad inputs, the --fit mode.

Runs the landmark-fit path (no encoder: a ResNet-50 compile is too slow for the test budget) with a
small randomly initialised detail generator, so the detail stage, detail mesh and detail renders are
exercised. One run of 2 images + a transfer source (+ 4 images that must be skipped) serves most
tests; one --fit run of 2 rendered photos (same detail generator and batch, so it reuses the decode
program) serves the fit tests.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import trimesh
from PIL import Image

from jface import export
from jface.reconstruct import POSE_CONVENTION, draw, fit_codes, main, pose_angles, run, transfer_codes
from jface.reconstruct.inputs import InputError


def _one_line_error(text, *names):
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in text, text
    for name in names:
        assert name in lines[0], (name, text)


def _landmark_pixels(model, pose, cam):
    """68 landmarks of the mean FLAME head (DECA camera), as 0-based pixels of a 224 image."""
    from jface.deca import decode_geometry

    geometry = decode_geometry(model, jnp.zeros(100, jnp.float32), jnp.zeros(50, jnp.float32),
                               jnp.asarray(pose, jnp.float32), jnp.asarray(cam, jnp.float32))
    return (np.asarray(geometry["landmarks2d"], np.float64) + 1.0) * 112.0


@pytest.fixture(scope="module")
def model():
    from jface.models import default_flame_model

    return default_flame_model()


@pytest.fixture(scope="module")
def detail():
    """A small randomly initialised detail generator and its params (shared by both runs)."""
    from jface.deca.networks import DetailGenerator

    generator = DetailGenerator(init_channels=8, block_channels=(4, 4, 4, 4, 4))
    params = {"D_detail": dict(jax.jit(generator.init)(jax.random.PRNGKey(0), jnp.zeros((1, 181), jnp.float32)))}
    return generator, params


@pytest.fixture(scope="module")
def reconstructed(tmp_path_factory, model, detail):
    root = tmp_path_factory.mktemp("deca_in")
    folder = root / "person"
    folder.mkdir()
    rng = np.random.default_rng(0)
    poses = {"p1": [0, 0.2, 0, 0, 0, 0], "p2": [0.1, -0.2, 0, 0, 0, 0], "src": [0, 0, 0, 0.25, 0, 0]}
    for name, pose in poses.items():
        target = root if name == "src" else folder
        Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)).save(target / f"{name}.png")
        np.savetxt(target / f"{name}.txt", _landmark_pixels(model, pose, [7.0, 0.0, 0.01]))
    # per-image failures, each skipped and named while the others are processed
    (folder / "zz_broken.png").write_bytes(b"\x89PNG garbage")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder / "zz_nolandmarks.png")
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(folder / "zz_tiny.png")  # a degenerate landmark box
    np.savetxt(folder / "zz_tiny.txt", np.zeros((68, 2)))
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(folder / "zz_nan.png")  # a malformed side file
    marks = np.ones((68, 2))
    marks[3, 0] = np.nan
    np.savetxt(folder / "zz_nan.txt", marks)
    generator, params = detail
    out = tmp_path_factory.mktemp("deca_out")
    lines = []
    summary = run([folder], out, fit_landmarks=True, transfer=root / "src.png", batch_size=2, fit_steps=150,
                  params=params, detail_generator=generator, model=model, log=lines.append)
    return model, out, summary, lines


def _codes(folder):
    with np.load(folder / "codes.npz") as z:
        return {k: z[k] for k in z.files}


EXPECTED_FILES = {
    "codes.npz", "codes.json", "flame.npz", "flame.json", "camera.json", "coarse.obj", "coarse.mtl", "coarse.png",
    "coarse_normals.png", "coarse.ply", "detail.obj", "detail.mtl", "detail.png", "detail.ply", "displacement.npy",
    "displacement.png", "normals.npy", "normals.png", "overlay.png", "shape.png", "shape_detail.png",
    "landmarks.json", "pose.json", "depth.npy", "depth.png", "pncc.png", "sheet.png", "uv_visibility.png"}


def test_every_output_exists_and_decodes(reconstructed):
    model, out, summary, _ = reconstructed
    assert len(summary["images"]) == 4 and summary["processed"] == 2  # 2 images + their transfers
    expected = EXPECTED_FILES
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
            elif name == "depth.npy":  # NaN on the background
                assert 0.2 < np.isfinite(np.load(path)).mean() < 0.95
            elif name.endswith(".npy"):
                assert np.all(np.isfinite(np.load(path)))
            elif name.endswith(".npz"):
                np.load(path).close()
    disp = np.load(out / "person" / "p1" / "displacement.npy")
    assert disp.shape == (256, 256) and 0 < np.abs(disp).max() <= 0.01  # tanh x 0.01 from F_d
    assert all(np.isfinite(r["landmark_error_px"]) for r in summary["images"])


def test_per_image_failures_are_skipped_and_named(reconstructed):
    _, out, summary, lines = reconstructed
    skipped = {s["image"].rsplit("/", 1)[-1]: s["reason"] for s in summary["skipped"]}
    assert set(skipped) == {"zz_broken.png", "zz_nolandmarks.png", "zz_tiny.png", "zz_nan.png"}
    assert "unreadable" in skipped["zz_broken.png"] and "no landmark" in skipped["zz_nolandmarks.png"]
    assert "degenerate landmark box" in skipped["zz_tiny.png"]
    assert "zz_nan.txt" in skipped["zz_nan.png"] and "NaN" in skipped["zz_nan.png"]
    assert not (out / "person" / "zz_tiny").exists()
    # the summary line: how many, then every skipped file and why; then the throughput
    assert lines[0].startswith("2 image(s) processed, 4 skipped:")
    for name in skipped:
        assert any(name in line and "skipped" in line for line in lines[0].splitlines()[1:])
    assert lines[-1].startswith("throughput: one batch only (2 image(s)")
    assert json.loads((out / "summary.json").read_text())["throughput"]["first_batch_images"] == 2


def test_meshes_round_trip(reconstructed):
    from jface import flame

    model, out, _, _ = reconstructed
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

    model, out, _, _ = reconstructed
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
    _, out, _, _ = reconstructed
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


def test_bad_inputs(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no images found"):
        run([empty], tmp_path / "o", fit_landmarks=True)
    assert main([str(empty), "-o", str(tmp_path / "o"), "--fit-landmarks"]) == 2
    _one_line_error(capsys.readouterr().err, "no images found")
    with pytest.raises(InputError, match="not an image"):
        (tmp_path / "notes.txt").write_text("x")
        run([tmp_path / "notes.txt"], tmp_path / "o", fit_landmarks=True)
    with pytest.raises(ValueError, match="landmarks_ndc"):
        fit_codes(None, np.full((1, 68, 2), np.nan))
    with pytest.raises(InputError, match="at most one"):
        run([empty], tmp_path / "o", fit=True, fit_landmarks=True)


def test_every_image_skipped_exits_1(tmp_path, capsys):
    """All images fail (a malformed side file, a 1 x 1 image): nothing is compiled, the summary
    names both, a progress bar counts the 2 images, and the exit status is 1 (nothing produced)."""
    folder = tmp_path / "faces"
    folder.mkdir()
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(folder / "face.png")
    marks = np.ones((68, 2))
    marks[3, 0] = np.nan
    np.savetxt(folder / "face.txt", marks)
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(folder / "tiny.png")
    np.savetxt(folder / "tiny.txt", np.zeros((68, 2)))
    summary = run([folder], tmp_path / "o", fit_landmarks=True, batch_size=4, log=lambda *_: None)
    assert summary["processed"] == 0 and len(summary["skipped"]) == 2
    capsys.readouterr()
    assert main([str(folder), "-o", str(tmp_path / "o2"), "--fit-landmarks"]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith("0 image(s) processed, 2 skipped:")
    assert "face.txt" in captured.out and "degenerate landmark box" in captured.out
    assert "0/2" in captured.err  # the bar counts images (batch 4: a batch count would be 0/1)
    assert captured.err.strip().splitlines()[-1].startswith("error: no image could be processed (2 skipped")
    assert "Traceback" not in captured.err


def test_output_and_model_file_errors_are_one_line(tmp_path, capsys):
    folder = tmp_path / "faces"
    folder.mkdir()
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(folder / "a.png")
    np.savetxt(folder / "a.txt", np.random.default_rng(0).uniform(5, 25, (68, 2)))
    a_file = tmp_path / "taken.txt"
    a_file.write_text("x")
    cases = [
        (["-o", str(a_file), "--fit-landmarks"], ["-o", "taken.txt", "not a folder"]),
        (["-o", str(a_file / "sub"), "--fit-landmarks"], ["-o", "taken.txt", "is a file, not a folder"]),
        (["-o", str(tmp_path / "o"), "--weights", str(tmp_path / "none.npz")], ["--weights", "none.npz", "no such"]),
        (["-o", str(tmp_path / "o"), "--flame", str(tmp_path / "none.pkl")], ["--flame", "none.pkl", "no such"]),
        (["-o", str(tmp_path / "o"), "--fixed-displacement", str(tmp_path / "none.npy")],
         ["--fixed-displacement", "none.npy", "no such"]),
        (["-o", str(tmp_path / "o"), "--flame", str(tmp_path)], ["--flame", "is a folder"]),
    ]
    for argv, names in cases:
        assert main([str(folder)] + argv) == 2, argv
        _one_line_error(capsys.readouterr().err, *names)
    assert not any((tmp_path / "o").glob("*/*"))  # nothing was processed


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_unwritable_output_and_unreadable_files(tmp_path, capsys):
    folder = tmp_path / "faces"
    folder.mkdir()
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(folder / "a.png")
    np.savetxt(folder / "a.txt", np.random.default_rng(0).uniform(5, 25, (68, 2)))
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    secret = tmp_path / "secret.npy"
    np.save(secret, np.zeros((256, 256)))
    secret.chmod(0)
    try:
        assert main([str(folder), "-o", str(locked), "--fit-landmarks"]) == 2
        _one_line_error(capsys.readouterr().err, "-o", "locked", "not writable")
        assert main([str(folder), "-o", str(locked / "new"), "--fit-landmarks"]) == 2
        _one_line_error(capsys.readouterr().err, "-o", "new", "cannot create")
        for flag in ("--fixed-displacement", "--flame", "--weights"):
            assert main([str(folder), "-o", str(tmp_path / "o"), flag, str(secret)]) == 2
            _one_line_error(capsys.readouterr().err, flag, "secret.npy", "not readable")
    finally:
        locked.chmod(0o700)
        secret.chmod(0o600)


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


# ------------------------------------------------------------------------------------------------
# Panels, pose, depth, PNCC


def _png(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(np.float64)


def test_overlay_is_translucent_and_captioned(reconstructed):
    """overlay.png = the render at 60 % over the crop inside the rendered head, the photo unchanged
    outside; every panel has a caption band below a 224 x 224 picture."""
    from scipy import ndimage

    _, out, _, _ = reconstructed
    folder = out / "person" / "p1"
    overlay = _png(folder / "overlay.png")
    photo = _png(folder / "sheet.png")[:224, :224]  # the sheet's first panel is the crop itself
    for name in ("overlay.png", "shape.png", "shape_detail.png", "depth.png", "pncc.png"):
        panel = _png(folder / name)
        assert panel.shape[1] == 224 and panel.shape[0] >= 224 + 12, name
        band = panel[224:]
        assert band.mean() < 80 and band.max() > 200, name  # dark band, light text
    coverage = np.isfinite(np.load(folder / "depth.npy"))
    assert 0.2 < coverage.mean() < 0.95
    picture = overlay[:224]
    outside = ~ndimage.binary_dilation(coverage, iterations=4)
    outside[:16] = False  # the pose text
    outside[170:, :50] = False  # the pose gizmo
    assert outside.sum() > 1000
    np.testing.assert_array_equal(picture[outside], photo[outside])
    # the photo (uniform noise, independent of the render) shows through at 40 % inside the head:
    # regressed on the photo, the overlay's slope is 0.4 (a little less where the wire and the
    # landmark contours are drawn), 1 for an opaque photo and 0 for an opaque render
    inside = ndimage.binary_erosion(coverage, iterations=3)
    slope = np.polyfit(photo[inside].ravel(), picture[inside].ravel(), 1)[0]
    assert 0.3 < slope < 0.42, slope


def test_pose_depth_and_pncc(reconstructed):
    _, out, summary, _ = reconstructed
    truth = {"p1": {"yaw": 11.46, "pitch": 0.0}, "p2": {"yaw": -11.46, "pitch": 5.73}}
    for name, angles in truth.items():
        folder = out / "person" / name
        pose = json.loads((folder / "pose.json").read_text())
        assert pose["convention"] == POSE_CONVENTION
        computed = pose_angles(_codes(folder)["pose"][:3])
        assert pose["yaw_deg"] == pytest.approx(computed["yaw"]) and pose["roll_deg"] == pytest.approx(computed["roll"])
        np.testing.assert_allclose(pose["rotation"], computed["rotation"], atol=1e-12)
        # the landmark fit recovers the rendered pose (degrees)
        assert abs(pose["yaw_deg"] - angles["yaw"]) < 5 and abs(pose["pitch_deg"] - angles["pitch"]) < 5, pose
        record = next(r for r in summary["images"] if r["folder"].endswith(f"/{name}"))
        assert record["pose_deg"]["yaw"] == pytest.approx(pose["yaw_deg"])
    folder = out / "person" / "p1"
    depth = np.load(folder / "depth.npy")
    marks = np.asarray(json.loads((folder / "landmarks.json").read_text())["crop_pixels"])
    col, row = np.round(marks[30]).astype(int)  # the nose tip is nearer the camera than the jaw's sides
    jaw = [depth[int(round(y)), int(round(x))] for x, y in marks[[3, 13]]]
    assert np.all(np.isfinite(jaw)) and depth[row, col] > max(jaw) + 5  # crop pixels
    pncc = _png(folder / "pncc.png")[:224] / 255.0
    coverage = np.isfinite(depth)
    rows, cols = np.nonzero(coverage)
    # PNCC: the mean shape's x (the head's left = image right) is red, y (up) green
    assert np.corrcoef(cols, pncc[rows, cols, 0])[0, 1] > 0.8
    assert np.corrcoef(rows, pncc[rows, cols, 1])[0, 1] < -0.8
    assert np.all(pncc[~coverage] == 0)


def test_pose_angles_convention(model):
    """POSE_CONVENTION's signs, read off the projected landmarks (DECA NDC: x right, y down)."""
    from jface.deca import decode_geometry_batch

    poses = np.zeros((4, 6))  # neutral, then 0.3 rad about x, y, z
    poses[[1, 2, 3], [0, 1, 2]] = 0.3
    codes = {"shape": jnp.zeros((4, 100)), "exp": jnp.zeros((4, 50)), "pose": jnp.asarray(poses),
             "cam": jnp.asarray([[7.0, 0.0, 0.0]] * 4)}
    marks = np.asarray(jax.jit(decode_geometry_batch)(model, codes)["landmarks2d"])
    nose_from_eyes = marks[:, 30] - 0.5 * (marks[:, 36] + marks[:, 45])
    for axis, name in enumerate(("pitch", "yaw", "roll")):
        angles = pose_angles(poses[axis + 1, :3])
        for other in ("pitch", "yaw", "roll"):
            assert angles[other] == pytest.approx(np.degrees(0.3) if other == name else 0.0, abs=1e-9)
    assert nose_from_eyes[2, 0] > nose_from_eyes[0, 0] + 0.02  # yaw: the face turns towards the image's right
    assert nose_from_eyes[1, 1] > nose_from_eyes[0, 1] + 0.02  # pitch: the face tilts down, the nose drops
    assert marks[3, 45, 1] < marks[3, 36, 1] - 0.02  # roll: the head's top tilts left, the image-right eye rises
    assert abs(marks[0, 45, 1] - marks[0, 36, 1]) < 0.01
    with pytest.raises(ValueError, match="global_pose"):
        pose_angles([0.1, 0.2])


def test_draw_pieces():
    photo = np.full((20, 60, 3), 100, np.uint8)
    render = np.full((20, 60, 3), 200, np.uint8)
    coverage = np.zeros((20, 60))
    coverage[5:10, 10:30] = 1.0
    blended = draw.blend(photo, render, coverage, 0.6)
    assert np.all(blended[coverage > 0] == 160) and np.all(blended[coverage == 0] == 100)
    captioned = draw.caption(photo, "a caption that is long enough to wrap onto two lines")
    assert captioned.shape[1] == 60 and captioned.shape[0] >= 20 + 2 * 10
    np.testing.assert_array_equal(captioned[:20], photo)  # the picture is not covered
    # UV iso-lines: u runs along the columns, 4 lines -> a wire column where u crosses 0.25, 0.5, 0.75
    u = np.linspace(-1, 1, 60, endpoint=False)[None, :].repeat(20, 0)
    grid = np.stack([u, np.zeros_like(u)], -1)
    wire = draw.wire_mask(grid, np.ones((20, 60)), lines=4)
    assert set(np.nonzero(wire[0])[0]) == {15, 30, 45} and wire.all(axis=0).sum() == 3
    assert not draw.wire_mask(grid, np.zeros((20, 60)), lines=4).any()


def test_throughput_counts_images_after_the_first_batch():
    from jface.reconstruct import _throughput

    record, line = _throughput([(4, 30.0), (4, 2.0), (2, 1.0)])
    assert record["images_per_s"] == pytest.approx(2.0) and record["after_compile_images"] == 6
    assert line.startswith("throughput: 2.00 images/s after compilation (6 image(s) in 3.0 s")


# ------------------------------------------------------------------------------------------------
# --fit: jface.fit.fit_flame in the tool


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, model, detail):
    """Two 224 photos of the mean face rendered with known albedo and coloured light over noise,
    their exact landmarks; fitted by the photometric stage alone (the landmark stage has 0 steps:
    the mean face's camera from the landmarks is already exact), albedo and light only, at 32 px
    (the smallest fit program). The photos are rendered by the tool's own decode program, with the
    batch and detail generator of ``reconstructed``: one compiled decode serves all three runs."""
    from jface.fit import FitConfig
    from jface.reconstruct import decode_batch

    rng = np.random.default_rng(3)
    batch = 2
    light = np.zeros((batch, 9, 3))
    light[:, 0] = [[3.6, 2.6, 2.2], [2.2, 2.8, 3.8]]
    light[:, 1:4] = 0.6 * rng.normal(size=(batch, 3, 3))
    codes = {"shape": np.zeros((batch, 100)), "exp": np.zeros((batch, 50)), "pose": np.zeros((batch, 6)),
             "cam": np.asarray([[8.0, 0.0, 0.0], [7.0, 0.03, -0.02]]), "tex": 1.5 * rng.normal(size=(batch, 50)),
             "light": light}
    generator, params = detail
    rendered = decode_batch(params, model, {k: np.asarray(v, np.float32) for k, v in codes.items()},
                            np.zeros((batch, 224, 224, 3), np.float32), detail_generator=generator)
    alpha = np.asarray(rendered["alpha_images"])
    photos = np.asarray(rendered["rendered_images"]) * alpha + rng.uniform(0.2, 0.6, (batch, 224, 224, 3)) * (1 - alpha)
    folder = tmp_path_factory.mktemp("fit_in") / "person"
    folder.mkdir()
    for b in range(batch):
        Image.fromarray(np.round(np.clip(photos[b], 0, 1) * 255).astype(np.uint8)).save(folder / f"f{b}.png")
        np.savetxt(folder / f"f{b}.txt", (np.asarray(rendered["landmarks2d"][b]) + 1.0) * 112.0)
    out = tmp_path_factory.mktemp("fit_out")
    config = FitConfig(landmark_steps=0, photometric_steps=30, render_size=32, refine_geometry=False)
    summary = run([folder], out, fit=True, fit_config=config, batch_size=2, params=params,
                  detail_generator=generator, model=model, log=lambda *_: None)
    return out, summary


def test_fit_lowers_the_photometric_error_and_writes_everything(fitted, model):
    from jface.deca import appearance

    out, summary = fitted
    assert summary["processed"] == 2 and "photometric fit (0 + 30 steps)" in summary["source"]
    for record in summary["images"]:
        folder = out / "person" / record["folder"].rsplit("/", 1)[-1]
        assert EXPECTED_FILES <= {p.name for p in folder.iterdir()}
        # against the mean albedo and white light (the start of the photometric stage)
        fit = record["fit"]
        assert fit["photometric_error_after"] < 0.5 * fit["photometric_error_before"], fit
        codes = _codes(folder)
        assert np.abs(codes["tex"]).max() > 0.1 and np.abs(codes["light"][0] - 3.0).max() > 0.1  # moved from white
        assert record["landmark_error_px"] < 1.0
        # the overlay shows the fitted albedo and light: over the rendered photo it nearly vanishes
        overlay = _png(folder / "overlay.png")[:224]
        photo = _png(folder / "sheet.png")[:224, :224]
        face = np.isfinite(np.load(folder / "depth.npy"))
        assert np.median(np.abs(overlay - photo)[face]) < 12
        # the UV texture keeps the photo only where the fit sees the surface; elsewhere the fitted albedo
        visible = _png(folder / "uv_visibility.png")[..., 0] > 127
        assert 0.1 < visible.mean() < 0.9
        texture = _png(folder / "coarse.png")
        albedo = np.clip(np.asarray(appearance.albedo(model, jnp.asarray(codes["tex"]), truncate=True)), 0, 1) * 255
        np.testing.assert_allclose(texture[~visible], albedo[~visible], atol=1.01)


def test_detector_gives_the_largest_face(monkeypatch):
    """--detector: jface.data.detect's detector (mediapipe by default), the largest face's 68
    points, None without a face."""
    from jface.data import detect
    from jface.reconstruct import inputs

    made = []

    def fake(name):
        made.append(name)
        return lambda image: [detect.Face(mesh=None, landmarks68=np.full((68, 2), float(image.shape[0])))] \
            if image.any() else []

    monkeypatch.setattr(detect, "make_detector", fake)
    assert inputs.make_detector(False) is None and made == []
    find = inputs.make_detector(True)
    assert made == ["mediapipe"]
    np.testing.assert_array_equal(find(np.ones((7, 5, 3), np.uint8)), np.full((68, 2), 7.0))
    assert find(np.zeros((7, 5, 3), np.uint8)) is None
    inputs.make_detector("dlib")
    assert made == ["mediapipe", "dlib"]
