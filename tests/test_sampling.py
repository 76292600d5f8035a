"""jface.sampling: MatConvNet bilinear sampler (vl_nnbilinearsampler) and DECA's grid_sample."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jface.sampling import bilinear_sample, grid_sample, sample_pixels

# One compiled function per convention, reused with the same shapes (compiles dominate test time).
_sample = jax.jit(bilinear_sample, static_argnames="padding")
_grid_sample = jax.jit(grid_sample)


def ref_matconvnet(image, grid, cpu=False):
    """Literal per-pixel transcription of vl_nnbilinearsampler (MatConvNet), float64."""
    height, width, channels = image.shape
    out = np.zeros(grid.shape[:2] + (channels,))
    for j in range(grid.shape[0]):
        for i in range(grid.shape[1]):
            py = (grid[j, i, 0] + 1) / 2 * (height - 1)
            px = (grid[j, i, 1] + 1) / 2 * (width - 1)
            sy, sx = math.floor(py), math.floor(px)
            wy, wx = py - sy, px - sx
            if cpu and (sy == -1 or sx == -1):
                continue
            for dy, wgt_y in ((0, 1 - wy), (1, wy)):
                for dx, wgt_x in ((0, 1 - wx), (1, wx)):
                    r, c = sy + dy, sx + dx
                    if 0 <= r < height and 0 <= c < width:
                        out[j, i] += wgt_y * wgt_x * image[r, c]
    return out


def ref_torch_grid_sample(image, grid_xy):
    """PyTorch grid_sample(bilinear, zeros, align_corners=False), float64, per pixel."""
    height, width, _ = image.shape
    rows = ((grid_xy[..., 1] + 1) * height - 1) / 2
    cols = ((grid_xy[..., 0] + 1) * width - 1) / 2
    grid = np.stack([rows / (height - 1) * 2 - 1, cols / (width - 1) * 2 - 1], -1)
    return ref_matconvnet(image, grid)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (6, 7, 3))
    # Points inside, on borders, within 1 px outside each edge, and far outside.
    grid = rng.uniform(-1.4, 1.4, (5, 6, 2))
    grid[0, 0] = (-1.0, -1.0)
    grid[0, 1] = (1.0, 1.0)
    grid[0, 2] = (-1.1, 0.2)  # within one pixel above the top edge
    grid[0, 3] = (0.3, -1.2)  # within one pixel left of the left edge
    grid[0, 4] = (1.2, 0.0)   # within one pixel below the bottom edge
    return image, grid


@pytest.mark.parametrize("padding", ["symmetric", "matconvnet_cpu"])
def test_bilinear_sample_matches_spec_reference(data, padding):
    image, grid = data
    out = _sample(image, grid, padding=padding)
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(out, ref_matconvnet(image, grid, cpu=padding != "symmetric"), atol=1e-10)


def test_bilinear_sample_border_quirk(data):
    image, grid = data
    sym = np.asarray(_sample(image, grid, padding="symmetric"))
    cpu = np.asarray(_sample(image, grid, padding="matconvnet_cpu"))
    # -1/+1 hit the border pixel centres exactly (align corners).
    np.testing.assert_allclose(sym[0, 0], image[0, 0], atol=1e-12)
    np.testing.assert_allclose(sym[0, 1], image[-1, -1], atol=1e-12)
    # top / left band: GPU interpolates towards zero, CPU gives 0; bottom band: both interpolate.
    assert np.all(sym[0, 2] > 0) and np.all(cpu[0, 2] == 0)
    assert np.all(sym[0, 3] > 0) and np.all(cpu[0, 3] == 0)
    np.testing.assert_allclose(sym[0, 4], cpu[0, 4])
    assert np.all(sym[0, 4] > 0)


def test_bilinear_sample_equals_torch_convention_with_swapped_channels(data):
    """GPU semantics = grid_sample(align_corners=True) with (x, y) -> (vertical, horizontal)."""
    image, grid = data
    height, width, _ = image.shape
    rows = (grid[..., 0] + 1) / 2 * (height - 1)
    cols = (grid[..., 1] + 1) / 2 * (width - 1)
    # align_corners=False grid that addresses the same pixel coordinates
    grid_xy = np.stack([(2 * cols + 1) / width - 1, (2 * rows + 1) / height - 1], -1)
    np.testing.assert_allclose(_sample(image, grid, padding="symmetric"), _grid_sample(image, grid_xy), atol=1e-9)


def test_bilinear_sample_float32_and_vmap(data):
    image, grid = data
    out = jax.jit(jax.vmap(bilinear_sample))(jnp.stack([image, image]).astype(jnp.float32),
                                    jnp.stack([grid, -grid]).astype(jnp.float32))
    assert out.dtype == jnp.float32 and out.shape == (2, 5, 6, 3)
    np.testing.assert_allclose(out[1], ref_matconvnet(image, -grid), rtol=1e-4, atol=1e-3)


def _central_fd(f, x, eps=1e-6):
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        dx = np.zeros_like(x)
        dx[idx] = eps
        grad[idx] = (f(x + dx) - f(x - dx)) / (2 * eps)
    return grad


@pytest.mark.parametrize("padding", ["symmetric", "matconvnet_cpu"])
def test_bilinear_sample_gradients_vs_finite_differences(data, padding):
    """Autodiff gradients (image and grid) vs central differences of the numpy reference."""
    image, grid = data
    height, width, _ = image.shape
    # move every sample away from integer pixel positions (the floor's kinks)
    rows = (grid[..., 0] + 1) / 2 * (height - 1)
    cols = (grid[..., 1] + 1) / 2 * (width - 1)
    rows = np.floor(rows) + np.clip(rows - np.floor(rows), 0.1, 0.9)
    cols = np.floor(cols) + np.clip(cols - np.floor(cols), 0.1, 0.9)
    grid = np.stack([rows / (height - 1) * 2 - 1, cols / (width - 1) * 2 - 1], -1)
    weights = np.random.default_rng(1).normal(size=grid.shape[:2] + (image.shape[-1],))
    cpu = padding != "symmetric"

    g_img, g_grid = _sample_grads(image, grid, weights, padding)
    # the sampler is linear in the image: the exact gradient is the reference's response to e_i
    fd_img = _central_fd(lambda a: np.sum(ref_matconvnet(a, grid, cpu) * weights), image, eps=1.0)
    fd_grid = _central_fd(lambda b: np.sum(ref_matconvnet(image, b, cpu) * weights), grid, eps=1e-6)
    np.testing.assert_allclose(g_img, fd_img, atol=1e-8)
    np.testing.assert_allclose(g_grid, fd_grid, rtol=1e-6, atol=1e-6)


@jax.jit
def _sample_grads_symmetric(image, grid, weights):
    return jax.grad(lambda a, b: jnp.sum(bilinear_sample(a, b) * weights), argnums=(0, 1))(image, grid)


@jax.jit
def _sample_grads_cpu(image, grid, weights):
    return jax.grad(
        lambda a, b: jnp.sum(bilinear_sample(a, b, padding="matconvnet_cpu") * weights), argnums=(0, 1)
    )(image, grid)


def _sample_grads(image, grid, weights, padding):
    fn = _sample_grads_symmetric if padding == "symmetric" else _sample_grads_cpu
    return fn(image, grid, weights)


def test_bilinear_sample_grid_gradient_matches_spec_backward():
    """dG formula of vl_nnbilinearsampler's backward: (1-wy)(I[sy,sx+1]-I[sy,sx]) + wy(...) times (W-1)/2."""
    rng = np.random.default_rng(2)
    image = rng.uniform(0, 1, (4, 5, 1))
    py, px = 1.3, 2.6
    grid = np.array([[[py / 3 * 2 - 1, px / 4 * 2 - 1]]])
    weights = np.ones((1, 1, 1))
    g = _sample_grads(image, grid, weights, "symmetric")[1]
    sy, sx, wy, wx = 1, 2, 0.3, 0.6
    img = image[..., 0]
    d_px = (1 - wy) * (img[sy, sx + 1] - img[sy, sx]) + wy * (img[sy + 1, sx + 1] - img[sy + 1, sx])
    d_py = (1 - wx) * (img[sy + 1, sx] - img[sy, sx]) + wx * (img[sy + 1, sx + 1] - img[sy, sx + 1])
    np.testing.assert_allclose(g[0, 0], [d_py * 3 / 2, d_px * 4 / 2], rtol=1e-10)


def test_grid_sample_matches_torch_reference(data):
    image, _ = data
    rng = np.random.default_rng(3)
    grid_xy = rng.uniform(-1.2, 1.2, (4, 5, 2))
    np.testing.assert_allclose(_grid_sample(image, grid_xy), ref_torch_grid_sample(image, grid_xy), atol=1e-9)
    # The reference's mapping is PyTorch's documented unnormalisation for align_corners=False:
    # -1 / +1 are the outer edges of the border pixels, so x = -1 + 1/W hits column 0's centre.
    edge = np.array([[[-1 + 1 / image.shape[1], -1 + 1 / image.shape[0]]]])
    np.testing.assert_allclose(ref_torch_grid_sample(image, edge)[0, 0], image[0, 0], atol=1e-12)


def test_sampling_errors():
    image = np.zeros((4, 4, 3))
    with pytest.raises(ValueError, match="padding"):
        bilinear_sample(image, np.zeros((2, 2, 2)), padding="reflect")
    with pytest.raises(ValueError, match="image"):
        bilinear_sample(np.zeros((4, 4)), np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="grid"):
        bilinear_sample(image, np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="grid_xy"):
        grid_sample(image, np.zeros((2, 2, 3)))


@pytest.mark.parametrize("shape", [(0, 0, 3), (0, 4, 3), (4, 0, 1)])
def test_empty_image_is_a_clear_error(shape):
    """An image without pixels names the argument (not a gather error from inside XLA)."""
    image = np.zeros(shape)
    with pytest.raises(ValueError, match=r"image: expected at least one pixel"):
        bilinear_sample(image, np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match=r"image: expected at least one pixel"):
        grid_sample(image, np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match=r"image: expected at least one pixel"):
        sample_pixels(image, np.zeros(3), np.zeros(3))
