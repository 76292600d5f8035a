"""DECA renderer stages (``SRenderY`` in ``decalib/utils/renderer.py``): world2uv, render, render_shape, composite."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jface.deca.render import composite, pos_mask, render, render_shape
from jface.flame.heads import deca_camera, demo_head, procedural_head
from jface.lighting import SH_CONSTANTS, directional_shading
from jface.render import world2uv
from jface.sampling import grid_sample


def test_world2uv_affine_attributes():
    # quad in UV [0.2, 0.8]^2; uv stored in a permuted order with an unused entry
    uv = np.array([[0.2, 0.2], [0.8, 0.2], [0.8, 0.8], [0.2, 0.8]])
    faces = np.array([[0, 1, 2], [0, 2, 3]], np.int32)
    perm = np.array([3, 0, 2, 1])  # uv_coords[j] = uv[perm[j]]
    inv = np.argsort(perm)
    uv_coords = np.concatenate([uv[perm], [[0.5, 0.5]]])
    uv_faces = inv[faces].astype(np.int32)
    attrs = np.stack([uv[:, 0], uv[:, 1], 2 * uv[:, 0] + 3 * uv[:, 1]], -1)
    size = 20
    out = np.asarray(world2uv(attrs, faces, uv_coords, uv_faces, size))
    assert out.shape == (size, size, 3)
    t = (np.arange(size) + 0.5) / size
    u = np.broadcast_to(t[None, :], (size, size))
    v = np.broadcast_to(1 - t[:, None], (size, size))  # row 0 is v = 1
    inside = (u > 0.2) & (u < 0.8) & (v > 0.2) & (v < 0.8)
    np.testing.assert_allclose(out[..., 0][inside], u[inside], atol=1e-12)
    np.testing.assert_allclose(out[..., 1][inside], v[inside], atol=1e-12)
    np.testing.assert_allclose(out[..., 2][inside], (2 * u + 3 * v)[inside], atol=1e-12)
    assert np.all(out[~inside & ((u < 0.15) | (u > 0.85) | (v < 0.15) | (v > 0.85))] == 0)
    g = jax.grad(lambda a: jnp.sum(world2uv(a, faces, uv_coords, uv_faces, size)))(attrs)
    assert np.all(np.asarray(g) > 0)
    with pytest.raises(ValueError, match="uv_faces"):
        world2uv(attrs, faces, uv_coords, uv_faces[:1], size)


def test_world2uv_known_layout_is_rasterized_once_and_equals_a_traced_layout():
    """A UV layout given as values (a model constant) is rasterized once per size and enters jitted
    programs as constants; a traced layout is rasterized inside the program: same maps."""
    from jface.render import uv as uv_module

    rng = np.random.default_rng(1)
    uv_coords = rng.uniform(0.05, 0.95, (30, 2))
    uv_faces = rng.integers(0, 30, (40, 3)).astype(np.int32)
    faces = rng.integers(0, 12, (40, 3)).astype(np.int32)
    attrs = jnp.asarray(rng.normal(size=(12, 2)))
    uv_module._LAYOUTS.clear()
    known = jax.jit(lambda a: world2uv(a, faces, uv_coords, uv_faces, 24))(attrs)
    assert len(uv_module._LAYOUTS) == 1
    jax.jit(lambda a: world2uv(2 * a, faces, uv_coords, uv_faces, 24))(attrs)
    assert len(uv_module._LAYOUTS) == 1  # the same layout and size: reused
    traced = jax.jit(lambda a, c: world2uv(a, faces, c, uv_faces, 24))(attrs, jnp.asarray(uv_coords))
    np.testing.assert_allclose(np.asarray(known), np.asarray(traced), atol=1e-12)
    g_known = jax.grad(lambda a: jnp.sum(world2uv(a, faces, uv_coords, uv_faces, 24) ** 2))(attrs)
    g_traced = jax.jit(jax.grad(lambda a, c: jnp.sum(world2uv(a, faces, c, uv_faces, 24) ** 2)))(
        attrs, jnp.asarray(uv_coords))
    np.testing.assert_allclose(np.asarray(g_known), np.asarray(g_traced), atol=1e-12)


@pytest.fixture(scope="module")
def small_head():
    head = procedural_head(n_rings=8, n_lon=12, num_vertices=0)
    world = head["vertices"].astype(np.float64)
    ndc = deca_camera(world, 8.0)
    rng = np.random.default_rng(0)
    albedo = rng.uniform(0.2, 0.9, (16, 16, 3))
    return head, world, ndc, albedo


def test_render_outputs_follow_deca(small_head):
    head, world, ndc, albedo = small_head
    sh = np.zeros((9, 3))
    sh[0] = [2.0, 1.5, 1.0]
    hw = (32, 32)
    args = (world, ndc, head["faces"], head["uv_coords"], head["uv_faces"], albedo)
    out = render(*args, sh, image_hw=hw)
    alpha = np.asarray(out["alpha_images"])
    assert alpha.shape == hw + (1,) and 0.3 < alpha.mean() < 0.9
    np.testing.assert_array_equal(alpha[..., 0], np.asarray(out["fragments"].mask))
    np.testing.assert_allclose(np.asarray(out["albedo_images"]), np.asarray(grid_sample(albedo, out["grid"])),
                               atol=1e-12)
    # band 0 only: shading = c0 L0 everywhere, images = albedo * shading * alpha
    np.testing.assert_allclose(np.asarray(out["shading_images"]), np.broadcast_to(SH_CONSTANTS[0] * sh[0], hw + (3,)),
                               atol=1e-12)
    np.testing.assert_allclose(np.asarray(out["images"]),
                               np.asarray(out["albedo_images"]) * SH_CONSTANTS[0] * sh[0] * alpha, atol=1e-12)
    # interpolated normals are not renormalised (shorter than 1 inside faces)
    n = np.linalg.norm(np.asarray(out["normal_images"]), axis=-1)[alpha[..., 0] > 0]
    assert n.max() <= 1 + 1e-9 and n.min() < 0.999
    # camera-facing mask: transformed normals point to -z for visible front faces
    assert np.asarray(out["pos_mask"])[alpha[..., 0] > 0].mean() > 0.9
    bg = np.full(hw + (3,), 0.25)
    comp = render(*args, sh, image_hw=hw, background=bg)["images"]
    np.testing.assert_allclose(np.asarray(comp), np.asarray(out["images"]) + 0.25 * (1 - alpha), atol=1e-12)
    no_light = render(*args, None, image_hw=hw)
    assert "shading_images" not in no_light
    np.testing.assert_allclose(np.asarray(no_light["images"]), np.asarray(out["albedo_images"]) * alpha, atol=1e-12)

    def loss(w, n, a, l):
        return jnp.sum(render(w, n, head["faces"], head["uv_coords"], head["uv_faces"], a, l, image_hw=hw)["images"])

    sh_full = sh + np.random.default_rng(1).normal(size=(9, 3)) * 0.3  # normals matter beyond band 0
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(world, ndc, albedo, sh_full)
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g))) and np.any(np.asarray(g) != 0)
    # albedo_images' gradient (background pixels take the centre sample through one sum) equals
    # plain grid_sample's over the whole image
    weights = np.random.default_rng(2).normal(size=hw + (3,))
    grid = jax.lax.stop_gradient(out["grid"])
    g_render = jax.grad(lambda a: jnp.sum(render(*args[:5], a, sh, image_hw=hw)["albedo_images"] * weights))(albedo)
    g_plain = jax.grad(lambda a: jnp.sum(grid_sample(a, grid) * weights))(albedo)
    np.testing.assert_allclose(np.asarray(g_render), np.asarray(g_plain), atol=1e-10)
    with pytest.raises(ValueError, match="lights"):
        render(*args, np.zeros(27), image_hw=hw)


def test_render_shape_and_helpers(small_head):
    head, world, ndc, _ = small_head
    hw = (32, 32)
    out = render_shape(world, ndc, head["faces"], image_hw=hw)
    alpha = np.asarray(out["alpha_images"])
    shade = np.asarray(directional_shading(out["normal_images"]))
    np.testing.assert_allclose(np.asarray(out["images"]), 180 / 255 * shade * alpha, atol=1e-12)
    assert alpha.sum() > 0 and alpha.sum() <= np.asarray(out["fragments"].mask).sum()
    img = np.ones((4, 4, 3))
    np.testing.assert_allclose(np.asarray(composite(img, np.full((4, 4), 0.25), [0.0, 1.0, 0.0])),
                               np.broadcast_to([0.25, 1.0, 0.25], (4, 4, 3)))
    normals = np.zeros((2, 2, 3))
    normals[0, 0, 2] = -0.1
    np.testing.assert_array_equal(np.asarray(pos_mask(normals))[..., 0], [[1, 0], [0, 0]])


def test_demo_head_is_flame_sized():
    head = demo_head()
    assert head["faces"].shape[1] == 3 and head["albedo"].shape[-1] == 3
    if head["name"] == "procedural":
        assert head["vertices"].shape == (5023, 3) and head["faces"].shape == (9976, 3)
