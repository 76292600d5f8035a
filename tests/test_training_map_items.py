"""jface.training.map_items: per-device mapping of per-item functions (Pallas kernels inside)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_SCRIPT = r"""
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from jface import training as common
from jface.render import rasterize, interpolate

assert jax.device_count() == 2
mesh = common.make_mesh()
rng = np.random.default_rng(0)
faces = rng.integers(0, 30, (40, 3)).astype(np.int32)
verts = rng.uniform(-1, 1, (4, 30, 3)).astype(np.float32)
colors = rng.uniform(0, 1, (4, 30, 3)).astype(np.float32)
hw = (16, 20)

def item(f, v, c):
    frags = rasterize(v, f, hw, impl="interpret")  # a pallas_call inside shard_map
    return {"image": interpolate(frags, c, f), "ids": frags.face_index}

sharded = [jax.device_put(x, NamedSharding(mesh, P("data"))) for x in (verts, colors)]
faces_r = jax.device_put(faces, NamedSharding(mesh, P()))
# the faces are a traced argument of the jitted function, passed as `shared`
got = jax.jit(lambda f, v, c: common.map_items(item, mesh, v, c, shared=(f,)))(faces_r, *sharded)
ref = jax.vmap(item, in_axes=(None, 0, 0))(faces, verts, colors)
assert got["image"].sharding.spec[0] == "data", got["image"].sharding
np.testing.assert_array_equal(np.asarray(got["ids"]), np.asarray(ref["ids"]))
np.testing.assert_allclose(np.asarray(got["image"]), np.asarray(ref["image"]), atol=1e-6)
loss = lambda fn: (lambda v, c: jnp.sum(fn(v, c)["image"] ** 2))
g = jax.jit(jax.grad(loss(lambda v, c: common.map_items(item, mesh, v, c, shared=(faces_r,))), argnums=(0, 1)))(
    *sharded)
g_ref = jax.grad(loss(lambda v, c: jax.vmap(item, in_axes=(None, 0, 0))(faces, v, c)), argnums=(0, 1))(verts, colors)
for a, b in zip(g, g_ref):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
# one device / no mesh: plain vmap
one = common.map_items(item, None, verts, colors, shared=(faces,))
np.testing.assert_array_equal(np.asarray(one["ids"]), np.asarray(ref["ids"]))
print("ok")
"""


def test_map_items_on_a_two_device_mesh_equals_vmap():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]
