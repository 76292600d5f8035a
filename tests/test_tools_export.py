"""jface.export: camera matrices, FLAME padding, OBJ/MTL/PNG/PLY round trips, the UV-pixel mesh."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from jface import export


def _np_project(points, cam):
    # DECA's batch_orth_proj + y/z flip: x = s(X + tx), y = -s(Y + ty), z = -s Z
    s, tx, ty = cam
    return np.stack([s * (points[:, 0] + tx), -s * (points[:, 1] + ty), -s * points[:, 2]], axis=1)


def test_camera_matrix_reproduces_trans_verts():
    from jface.deca import project

    rng = np.random.default_rng(0)
    for _ in range(3):
        cam = np.array([rng.uniform(-10, 10), rng.normal(), rng.normal()])
        points = rng.normal(size=(50, 3)) * 0.1
        ndc = export.apply_matrix(export.deca_camera_matrix(cam), points)
        np.testing.assert_allclose(ndc, _np_project(points, cam), atol=1e-12)
        np.testing.assert_allclose(ndc, np.asarray(project(points, cam)), atol=1e-10)
        gl = export.apply_matrix(export.opengl_projection(cam), points)
        np.testing.assert_allclose(gl, ndc * np.array([1.0, -1.0, 1.0]), atol=1e-12)
    # NDC -> pixel centres (DECA's StandardRasterizer): -1 is the left edge of pixel 0, +1 the right edge of pixel W-1
    pix = export.apply_matrix(export.ndc_to_pixel_matrix((10, 20)), np.array([[-1.0, -1.0], [1.0, 1.0]]))
    np.testing.assert_allclose(pix, [[-0.5, -0.5], [19.5, 9.5]])
    record = export.camera_record(np.array([8.0, 0.1, -0.2]))
    assert np.allclose(record["deca_ndc_matrix"], export.deca_camera_matrix([8.0, 0.1, -0.2]))


def test_pad_flame_parameters():
    rng = np.random.default_rng(1)
    shape, exp, pose = rng.normal(size=100), rng.normal(size=50), rng.normal(size=6)
    out = export.pad_flame_parameters(shape, exp, pose)
    assert out["shape"].shape == (300,) and out["expression"].shape == (100,)
    np.testing.assert_array_equal(out["shape"][:100], shape)
    assert not out["shape"][100:].any() and not out["expression"][50:].any()
    np.testing.assert_array_equal(out["expression"][:50], exp)
    np.testing.assert_array_equal(out["global_pose"], pose[:3])
    np.testing.assert_array_equal(out["jaw_pose"], pose[3:])
    np.testing.assert_array_equal(out["full_pose"], np.concatenate([pose[:3], np.zeros(3), pose[3:], np.zeros(6)]))
    with pytest.raises(ValueError, match="shape"):
        export.pad_flame_parameters(np.zeros(301), exp, pose)
    with pytest.raises(ValueError, match="pose"):
        export.pad_flame_parameters(shape, exp, np.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        export.pad_flame_parameters(shape, np.full(50, np.nan), pose)


def _quad():
    # two triangles with a UV seam at vertex 1 (two different vt), 5 vt for 4 v
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0.5]], np.float64)
    faces = np.array([[0, 1, 2], [1, 3, 2]])
    uv = np.array([[0.1, 0.1], [0.45, 0.1], [0.1, 0.9], [0.9, 0.9], [0.55, 0.1]])
    uv_faces = np.array([[0, 1, 2], [4, 3, 2]])
    return vertices, faces, uv, uv_faces


def test_obj_mtl_png_round_trip(tmp_path):
    vertices, faces, uv, uv_faces = _quad()
    texture = np.random.default_rng(2).uniform(size=(16, 8, 3))
    normals = np.zeros((16, 8, 3))
    normals[..., 2] = 1
    paths = export.write_obj(tmp_path / "m.obj", vertices, faces, uv_coords=uv, uv_faces=uv_faces,
                             texture=texture, normal_map=normals)
    assert {p.name for p in paths} == {"m.obj", "m.png", "m_normals.png", "m.mtl"}
    mesh = trimesh.load(tmp_path / "m.obj", process=False, maintain_order=True)
    assert mesh.vertices.shape == vertices.shape and mesh.faces.shape == faces.shape
    np.testing.assert_allclose(mesh.vertices, vertices, atol=1e-7)
    np.testing.assert_array_equal(mesh.faces, faces)
    image = mesh.visual.material.image
    assert image is not None and image.size == (8, 16)
    np.testing.assert_array_equal(np.asarray(image.convert("RGB")), export.to_uint8(texture))
    ply = export.write_ply(tmp_path / "m.ply", vertices, faces, vertex_colors=texture[0, :4])[0]
    back = trimesh.load(ply, process=False)
    np.testing.assert_allclose(back.vertices, vertices, atol=1e-7)
    np.testing.assert_array_equal(back.faces, faces)
    np.testing.assert_array_equal(back.visual.vertex_colors[:, :3], export.to_uint8(texture[0, :4]))
    with pytest.raises(ValueError, match="faces"):
        export.write_obj(tmp_path / "bad.obj", vertices, faces + 10)
    with pytest.raises(ValueError, match="texture"):
        export.write_obj(tmp_path / "bad.obj", vertices, faces, texture=texture)


def test_uv_pixel_table_and_upsample_reference():
    # A single UV triangle covering half the UV square; mesh = the same triangle in the z = 0 plane.
    vertices = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    faces = np.array([[0, 1, 2]])
    uv = vertices[:, :2].copy()
    table = export.uv_pixel_table(uv, faces, (16, 16))
    # numpy reference of the pixel centres (StandardRasterizer, SRenderY.world2uv): pixel (r, c) has u = (c + .5)/16,
    # v = 1 - (r + .5)/16; inside the triangle u >= 0, v >= 0, u + v < 1 (edge-strict corner 0)
    u = (table.cols + 0.5) / 16
    v = 1.0 - (table.rows + 0.5) / 16
    assert np.all(u + v <= 1.0 + 1e-9)
    rr, cc = np.mgrid[0:16, 0:16]
    ref_inside = ((cc + 0.5) / 16 + 1 - (rr + 0.5) / 16) < 1.0
    assert table.num_pixels == ref_inside.sum()
    dense_v, dense_f, colors = export.upsample_mesh(vertices, faces, table, np.zeros((16, 16)),
                                                    np.ones((16, 16, 3)))
    np.testing.assert_allclose(dense_v, np.stack([u, v, np.zeros_like(u)], 1), atol=1e-6)
    assert dense_f.shape[1] == 3 and dense_f.max() < table.num_pixels and colors.shape == dense_v.shape
    # a displacement d moves each point by d along the (renormalised) normal, here +z
    disp = np.random.default_rng(3).uniform(-0.01, 0.01, (16, 16))
    moved, _, _ = export.upsample_mesh(vertices, faces, table, disp)
    np.testing.assert_allclose(moved[:, 2], disp[table.rows, table.cols], atol=1e-9)
    with pytest.raises(ValueError, match="displacement_map"):
        export.upsample_mesh(vertices, faces, table, np.zeros((8, 8)))
