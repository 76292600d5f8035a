"""Renderer benchmark: ``python -m jface.bench render [--size full|small] [--json PATH]``.

Times (median of ``--repeats`` after ``--warmup`` calls, each blocked until ready) on a batch of
FLAME-sized heads (``jface.models.default_flame_model()`` when it can be built, else the procedural
5023-vertex / 9976-face head of :mod:`jface.flame.heads`), framed like DECA's face crop, each item
with its own pose (yaw, pitch, scale, shift), vmapped:

* ``raster_interp_fwd``: :func:`~jface.render.rasterize` + :func:`~jface.render.interpolate` of
  DECA's 12 attribute channels, forward (issue target <= 1.0 ms at B=32, 224²);
* ``render_fwd_bwd``: the full DECA render (camera -> rasterize -> interpolate -> grid_sample
  albedo -> SH shading -> composite) and its gradient w.r.t. world vertices, albedo and lights
  (target <= 3 ms);
* ``soft_fwd_bwd``: :func:`~jface.render.soft_rasterize` silhouette and its gradient w.r.t. the
  vertices (target <= 5 ms);

plus the compiled temporary buffer size of each (``memory_analysis``), the device's peak memory
(``memory_stats``; target <= 2 GB) and the binning statistics that size the static budgets.
``--sweep`` also times the rasterizer for several (tile_size, capacity) pairs.
``--size small`` is a quick CPU smoke configuration (B=2, 64², a coarse procedural head).

Issue 24's table (``--mesh`` / ``--subdivide`` / ``--antialias``)::

    python -m jface.bench render --mesh OBJ --subdivide N --batch B --image S [--antialias] --json OUT

``--mesh`` is an OBJ file or ``flame`` (default: the default FLAME head template of
``jface.models.default_flame_model()``), midpoint-subdivided ``--subdivide`` times (each face into 4),
each item turned by a random yaw in +-0.5 rad and framed so the faces cover ~50 % of the image
(the measured coverage is reported). Times (median of ``--repeats``, default 40, after ``--warmup``):

* ``fwd``: :func:`~jface.render.rasterize` + :func:`~jface.render.interpolate` of 12 per-vertex
  channels;
* ``fwd_bwd``: the gradient of a fixed weighted sum of that image w.r.t. the attributes and the
  vertex positions;
* ``aa_fwd_bwd`` (with ``--antialias``): the same with :func:`~jface.render.antialias` of the image
  before the sum (``aa_ms`` = its cost over ``fwd_bwd``; ``--aa-chunk`` sets its ``chunk=``, 0 = the
  dense evaluation of every pixel pair).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import platform
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from jface.bench import peak_memory_bytes, time_fn
from jface.deca.render import render
from jface.files.obj import load_obj
from jface.flame.heads import demo_head, procedural_albedo, procedural_head
from jface.geometry import vertex_normals
from jface.render import antialias, edge_neighbours, interpolate, rasterize, soft, soft_rasterize
from jface.render.soft import binning_stats, plan_levels

SIZES = {
    "full": dict(batch=32, image=224, mesh="flame", repeats=50, warmup=5),
    "small": dict(batch=2, image=64, mesh="coarse", repeats=3, warmup=1),
}


def _heads(mesh: str) -> dict:
    if mesh == "flame":
        return demo_head()
    head = dict(procedural_head(n_rings=12, n_lon=16, num_vertices=0), albedo=procedural_albedo(64),
                name="procedural-coarse")
    head["scale"] = 8.0
    return head


def _poses(batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    yaw = rng.uniform(-0.5, 0.5, batch)
    pitch = rng.uniform(-0.2, 0.2, batch)
    scale = rng.uniform(0.9, 1.05, batch)
    shift = rng.uniform(-0.01, 0.01, (batch, 2))
    return yaw, pitch, scale, shift


def _batch_world(head, batch):
    """(B, V, 3) world vertices and (B, 3) cameras: each item rotated by its own yaw/pitch."""
    yaw, pitch, scale, shift = _poses(batch)
    v = head["vertices"].astype(np.float64)
    out = []
    for b in range(batch):
        cy, sy, cp, sp = np.cos(yaw[b]), np.sin(yaw[b]), np.cos(pitch[b]), np.sin(pitch[b])
        ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
        out.append(v @ (rx @ ry).T)
    cams = np.concatenate([(head["scale"] * scale)[:, None], shift], axis=1)
    return np.stack(out).astype(np.float32), cams.astype(np.float32)


def _ndc(world, cam):
    xy = cam[0] * (world[:, :2] + cam[1:3])
    z = cam[0] * world[:, 2]
    return jnp.stack([xy[:, 0], -xy[:, 1], -z], axis=-1)


def _temp_bytes(jitted, *args):
    try:
        analysis = jitted.lower(*args).compile().memory_analysis()
        return int(analysis.temp_size_in_bytes) if analysis is not None else None
    except Exception:  # noqa: BLE001 - not every backend reports it
        return None


def _stats(ndc_batch, faces, hw, sigma, tile_size, capacity):
    per = [binning_stats(v, faces, hw, sigma=sigma, tile_size=tile_size, capacity=capacity) for v in ndc_batch]
    out = {k: max(p[k] for p in per) for k in per[0] if k != "counts"}
    out["mean_count"] = float(np.mean([np.mean(p["counts"]) for p in per]))
    return out, [p["counts"] for p in per]


def _profile(fn, fargs, calls: int = 3, top: int = 15):
    """Top device ops of ``fn`` (µs per call) from a ``jax.profiler`` perfetto trace; [] if none."""
    try:
        folder = tempfile.mkdtemp(prefix="jface_prof_")
        with jax.profiler.trace(folder, create_perfetto_trace=True):
            for _ in range(calls):
                jax.block_until_ready(fn(*fargs))
        path = sorted(glob.glob(f"{folder}/**/perfetto_trace.json.gz", recursive=True))[-1]
        with gzip.open(path) as fh:
            data = json.load(fh)
        events = data["traceEvents"] if isinstance(data, dict) else data
        procs = {e["pid"]: e.get("args", {}).get("name", "") for e in events
                 if e.get("ph") == "M" and e.get("name") == "process_name"}
        device = {pid for pid, name in procs.items() if "host" not in name.lower()} or set(procs)
        total = collections.Counter()
        for e in events:
            if e.get("ph") == "X" and e.get("pid") in device:
                total[e["name"]] += float(e.get("dur", 0.0))
        try:  # the output shape of each top fusion, to tell which op it is
            text = fn.lower(*fargs).compile().as_text()
        except Exception:  # noqa: BLE001
            text = ""
        lines = {}
        for line in text.splitlines():
            head = line.strip().removeprefix("ROOT ").split(" = ", 1)
            if len(head) == 2:
                lines[head[0].lstrip("%")] = head[1][:90]
        out = []
        for name, us in total.most_common(top):
            key = name.rsplit("_", 1)
            key = f"{key[0]}.{key[1]}" if len(key) == 2 and key[1].isdigit() else name
            out.append((f"{name}  [{lines.get(key, lines.get(name, ''))}]", us / calls))
        return out
    except Exception as err:  # noqa: BLE001 - profiling is best-effort
        return [(f"profile failed: {err!r}", 0.0)]


def run(args: argparse.Namespace) -> dict:
    if args.soft_vjp_reduce:
        soft._VJP_REDUCE = args.soft_vjp_reduce
    cfg = dict(SIZES[args.size])
    for key in ("batch", "image", "repeats", "warmup"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    head = _heads(cfg["mesh"])
    hw = (cfg["image"], cfg["image"])
    batch = cfg["batch"]
    faces = jnp.asarray(head["faces"])
    uv_coords = jnp.asarray(head["uv_coords"])
    uv_faces = jnp.asarray(head["uv_faces"])
    world_np, cams_np = _batch_world(head, batch)
    world = jnp.asarray(world_np)
    cams = jnp.asarray(cams_np)
    ndc = jax.jit(jax.vmap(_ndc))(world, cams)
    albedo = jnp.broadcast_to(jnp.asarray(head["albedo"]), (batch,) + head["albedo"].shape)
    sh = np.zeros((9, 3), np.float32)
    sh[0], sh[2], sh[3] = 2.2, 0.25, 0.55
    lights = jnp.broadcast_to(jnp.asarray(sh), (batch, 9, 3))
    target = jnp.full((batch,) + hw + (3,), 0.5, jnp.float32)
    hard_tile, hard_cap = args.tile_size, args.capacity
    soft_tile, soft_cap = args.soft_tile_size, args.soft_capacity
    results = {
        "device": str(jax.devices()[0]),
        "device_kind": jax.devices()[0].device_kind,
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "host": platform.node(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "mesh": head["name"],
        "num_vertices": int(head["vertices"].shape[0]),
        "num_faces": int(head["faces"].shape[0]),
        "batch": batch,
        "image": hw,
        "hard": {"tile_size": hard_tile, "capacity": hard_cap, "impl": args.impl},
        "soft": {"tile_size": soft_tile, "capacity": soft_cap, "sigma": args.sigma, "impl": args.soft_impl},
        "timings_ms": {},
        "temp_bytes": {},
    }
    ndc_np = np.asarray(ndc)
    results["hard"]["binning"] = _stats(ndc_np, head["faces"], hw, 0.0, hard_tile, hard_cap)[0]
    soft_stats, soft_counts = _stats(ndc_np, head["faces"], hw, args.sigma, soft_tile, soft_cap)
    results["soft"]["binning"] = soft_stats
    # Size the soft rasterizer's static overflow levels from the data (it cannot grow under jit).
    soft_slots, soft_extra = plan_levels(soft_counts, soft_cap)
    soft_pairs = max(1024, int(soft_stats["pairs"] * 1.25))
    results["soft"].update(overflow_tiles=soft_slots, overflow_capacity=soft_extra, pair_budget=soft_pairs)

    normals = jax.vmap(vertex_normals, (0, None))
    attrs = jnp.concatenate(
        [ndc, world, normals(world, faces), normals(ndc, faces)], axis=-1
    )  # (B, V, 12): DECA's 12 channels (as per-vertex attributes)

    def raster_interp(v, a):
        frags = rasterize(v, faces, hw, tile_size=hard_tile, capacity=hard_cap, impl=args.impl)
        return interpolate(frags, a, faces), frags.mask

    def render_loss(w, cam, alb, light, tgt):
        out = render(w, _ndc(w, cam), faces, uv_coords, uv_faces, alb, light, image_hw=hw,
                     tile_size=hard_tile, capacity=hard_cap, impl=args.impl)
        return jnp.mean((out["images"] - tgt) ** 2)

    def soft_sil(v, impl=args.soft_impl):
        return soft_rasterize(v, faces, hw, sigma=args.sigma, tile_size=soft_tile, capacity=soft_cap,
                              overflow_tiles=soft_slots, overflow_capacity=soft_extra, pair_budget=soft_pairs,
                              impl=impl)

    def soft_loss(v, impl=args.soft_impl):
        return jnp.mean((soft_sil(v, impl) - 0.5) ** 2)

    stages = {
        "raster_interp_fwd": (jax.jit(jax.vmap(raster_interp)), (ndc, attrs)),
        "render_fwd_bwd": (
            jax.jit(jax.vmap(jax.value_and_grad(render_loss, argnums=(0, 2, 3)))),
            (world, cams, albedo, lights, target),
        ),
        "soft_fwd_bwd": (jax.jit(jax.vmap(jax.value_and_grad(soft_loss))), (ndc,)),
    }
    targets = {"raster_interp_fwd": 1.0, "render_fwd_bwd": 3.0, "soft_fwd_bwd": 5.0}
    only = set(args.only.split(",")) if args.only else set(stages)
    for name, (fn, fargs) in stages.items():
        if name not in only:
            continue
        start = time.perf_counter()
        jax.block_until_ready(fn(*fargs))
        compile_s = time.perf_counter() - start
        ms = 1e3 * time_fn(fn, *fargs, warmup=cfg["warmup"], repeats=cfg["repeats"])
        results["timings_ms"][name] = ms
        results[f"{name}_ms"] = ms
        results[f"{name}_img_per_s"] = batch / (ms * 1e-3)
        results[f"{name}_target_ratio"] = targets[name] / ms  # >= 1 meets the target
        results.setdefault("compile_s", {})[name] = compile_s
        results["temp_bytes"][name] = _temp_bytes(fn, *fargs)
        print(f"{name:>20s}: {ms:9.3f} ms  (target {targets[name]} ms at B=32, 224²; compile {compile_s:.1f} s)",
              flush=True)
        if args.profile:
            ops = _profile(fn, fargs)
            results.setdefault("profile_us", {})[name] = ops
            for op, us in ops:
                print(f"      {us:9.1f} us  {op[:110]}", flush=True)
    if args.sweep:
        results["sweep_ms"] = {}
        for tile, cap in ((8, 32), (8, 64), (8, 128), (16, 128), (16, 256)):
            fn = jax.jit(jax.vmap(lambda v, a, t=tile, c=cap: interpolate(
                rasterize(v, faces, hw, tile_size=t, capacity=c), a, faces)))
            ms = 1e3 * time_fn(fn, ndc, attrs, warmup=cfg["warmup"], repeats=cfg["repeats"])
            results["sweep_ms"][f"tile{tile}_cap{cap}"] = ms
            print(f"  sweep raster_interp_fwd tile_size={tile:3d} capacity={cap:4d}: {ms:9.3f} ms", flush=True)
    if args.soft_impl != "jnp" and "soft_fwd_bwd" in only:
        # the selected soft silhouette implementation against the jnp path: values and gradients
        # (the jnp reference at its own defaults, tile 4 / capacity 32: the jnp path compiles for
        # minutes at tile 8 and above)
        ref_stats, ref_counts = _stats(ndc_np, head["faces"], hw, args.sigma, 4, 32)
        ref_slots, ref_extra = plan_levels(ref_counts, 32)
        ref_pairs = max(1024, int(ref_stats["pairs"] * 1.25))

        def ref_sil(v):
            return soft_rasterize(v, faces, hw, sigma=args.sigma, tile_size=4, capacity=32, overflow_tiles=ref_slots,
                                  overflow_capacity=ref_extra, pair_budget=ref_pairs, impl="jnp")

        sil = jax.jit(jax.vmap(soft_sil))(ndc)
        ref = jax.jit(jax.vmap(ref_sil))(ndc)
        grad = jax.jit(jax.vmap(jax.grad(soft_loss)))(ndc)
        grad_ref = jax.jit(jax.vmap(jax.grad(lambda v: jnp.mean((ref_sil(v) - 0.5) ** 2))))(ndc)
        results["soft_max_abs_diff_vs_jnp"] = float(jnp.max(jnp.abs(sil - ref)))
        results["soft_grad_rel_diff_vs_jnp"] = float(jnp.max(jnp.abs(grad - grad_ref)) / jnp.max(jnp.abs(grad_ref)))
        print(f"{'soft vs jnp path':>20s}: max |silhouette diff| {results['soft_max_abs_diff_vs_jnp']:.3g}, "
              f"max |grad diff| / max |grad| {results['soft_grad_rel_diff_vs_jnp']:.3g} ({args.soft_impl})")
    if args.impl != "jnp":
        # the face ids of the selected z-buffer implementation against the jnp path's
        ids = jax.jit(jax.vmap(lambda v: rasterize(v, faces, hw, tile_size=hard_tile, capacity=hard_cap,
                                                          impl=args.impl).face_index))(ndc)
        ref = jax.jit(jax.vmap(lambda v: rasterize(v, faces, hw, tile_size=hard_tile, capacity=hard_cap,
                                                   impl="jnp").face_index))(ndc)
        same = float(jnp.mean(ids == ref))
        results["face_ids_equal_to_jnp"] = same
        print(f"{'face ids = jnp path':>20s}: {100 * same:.4f} % of pixels ({args.impl})")
    peak = peak_memory_bytes()
    results["peak_bytes"] = peak
    print(f"{'peak memory':>20s}: {'n/a' if peak is None else f'{peak / 2**30:.3f} GiB'} (target <= 2 GB)")
    print(f"mesh {results['mesh']} ({results['num_vertices']} v / {results['num_faces']} f), batch {batch}, "
          f"{hw[0]}x{hw[1]}, {results['device_kind']} ({results['backend']}), jax {results['jax']}")
    print(f"hard binning: {results['hard']}")
    print(f"soft binning: {results['soft']}")
    return results


# ------------------------------------------------------------------------------------------------
# Issue 24's table: rasterize + interpolate of 12 channels (+ antialias) on any mesh


def subdivide(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Midpoint subdivision: every face into 4 (corners and the three edge midpoints, shared
    between the faces of an edge); orientation kept. ``(V, 3), (F, 3)`` -> ``(V + E, 3), (4F, 3)``."""
    vertices = np.asarray(vertices)
    faces = np.asarray(faces, np.int64)
    num_faces = faces.shape[0]
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    unique, inverse = np.unique(np.sort(edges, axis=1), axis=0, return_inverse=True)
    mids = vertices.shape[0] + inverse.reshape(3, num_faces).T  # (F, 3): m01, m12, m20
    a, b, c = faces.T
    m01, m12, m20 = mids.T
    new_faces = np.concatenate([np.stack(f, axis=1) for f in
                                ((a, m01, m20), (m01, b, m12), (m20, m12, c), (m01, m12, m20))])
    new_vertices = np.concatenate([vertices, vertices[unique].mean(axis=1)])
    return new_vertices.astype(vertices.dtype), new_faces.astype(np.int32)


def table_mesh(mesh: str, levels: int) -> dict:
    """``{"vertices" (V, 3) centred, "faces", "name"}``: an OBJ file or ``"flame"`` (the default
    FLAME head template), subdivided ``levels`` times."""
    if mesh == "flame":
        head = demo_head()
        vertices, faces, name = head["vertices"], head["faces"], head["name"]
    else:
        obj = load_obj(mesh)
        vertices, faces, name = np.asarray(obj["vertices"], np.float32), np.asarray(obj["faces"], np.int32), mesh
    used = np.zeros(vertices.shape[0], bool)
    used[faces.reshape(-1)] = True
    if not used.any():
        raise ValueError(f"--mesh: {name} has no faces")
    vertices = vertices - 0.5 * (vertices[used].min(0) + vertices[used].max(0))
    vertices = vertices / max(float(np.max(np.abs(vertices[used]))), 1e-12)
    for _ in range(levels):
        vertices, faces = subdivide(vertices, faces)
    return {"vertices": vertices.astype(np.float32), "faces": faces.astype(np.int32), "name": name}


def _table_poses(vertices: np.ndarray, batch: int, scale: float, seed: int = 0) -> np.ndarray:
    """``(B, V, 3)`` NDC: each item turned by a random yaw in +-0.5 rad, then scaled."""
    yaw = np.random.default_rng(seed).uniform(-0.5, 0.5, batch)
    out = []
    for angle in yaw:
        c, s = np.cos(angle), np.sin(angle)
        world = vertices @ np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]).T
        out.append(np.stack([world[:, 0], -world[:, 1], -world[:, 2]], -1) * scale)
    return np.stack(out).astype(np.float32)


def run_table(args: argparse.Namespace) -> dict:
    batch = args.batch or 32
    size = args.image or 224
    repeats = args.repeats or 40
    warmup = args.warmup if args.warmup is not None else 5
    hw = (size, size)
    head = table_mesh(args.mesh or "flame", args.subdivide)
    faces = jnp.asarray(head["faces"])
    raster = lambda v: rasterize(v, faces, hw, tile_size=args.tile_size, capacity=args.capacity,  # noqa: E731
                                 impl=args.impl)
    # frame the faces to cover ~50 % of the image (DECA's crops), measured on the batch
    coverage_fn = jax.jit(jax.vmap(lambda v: jnp.mean(raster(v).mask)))
    scale = 0.8
    for _ in range(2):
        coverage = float(jnp.mean(coverage_fn(jnp.asarray(_table_poses(head["vertices"], batch, scale)))))
        scale *= float(np.sqrt(0.5 / max(coverage, 1e-3)))
    ndc = jnp.asarray(_table_poses(head["vertices"], batch, scale))
    coverage = float(jnp.mean(coverage_fn(ndc)))
    normals = jax.vmap(vertex_normals, (0, None))
    attrs = jnp.concatenate([ndc, ndc * 0.5 + 0.1, normals(ndc, faces), normals(ndc, faces) ** 2], axis=-1)
    weights = jnp.asarray(np.random.default_rng(1).uniform(0.5, 1.5, hw + (12,)).astype(np.float32))
    topology = edge_neighbours(faces)

    def forward(v, a):
        return interpolate(raster(v), a, faces)

    def loss(a, v):
        return jnp.sum(weights * forward(v, a))

    def loss_aa(a, v):
        fragments = raster(v)
        image = antialias(interpolate(fragments, a, faces), fragments, v, faces, topology=topology,
                          chunk=args.aa_chunk)
        return jnp.sum(weights * image)

    stages = {
        "fwd": (jax.jit(jax.vmap(forward)), (ndc, attrs)),
        "fwd_bwd": (jax.jit(jax.vmap(jax.value_and_grad(loss, argnums=(0, 1)))), (attrs, ndc)),
    }
    if args.antialias:
        stages["aa_fwd_bwd"] = (jax.jit(jax.vmap(jax.value_and_grad(loss_aa, argnums=(0, 1)))), (attrs, ndc))
    results = {
        "device": str(jax.devices()[0]),
        "device_kind": jax.devices()[0].device_kind,
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "command": "python -m jface.bench render " + " ".join(args.argv),
        "mesh": head["name"],
        "subdivide": args.subdivide,
        "num_vertices": int(head["vertices"].shape[0]),
        "num_faces": int(head["faces"].shape[0]),
        "batch": batch,
        "image": size,
        "coverage": coverage,
        "impl": args.impl,
        "aa_chunk": args.aa_chunk,
        "repeats": repeats,
        "warmup": warmup,
        "timings_ms": {},
        "compile_s": {},
    }
    for name, (fn, fargs) in stages.items():
        start = time.perf_counter()
        jax.block_until_ready(fn(*fargs))
        results["compile_s"][name] = time.perf_counter() - start
        ms = 1e3 * time_fn(fn, *fargs, warmup=warmup, repeats=repeats)
        results["timings_ms"][name] = ms
        results[f"{name}_ms"] = ms
        print(f"{name:>12s}: {ms:9.3f} ms  (compile {results['compile_s'][name]:.1f} s)", flush=True)
        if args.profile:
            ops = _profile(fn, fargs)
            results.setdefault("profile_us", {})[name] = ops
            for op, us in ops:
                print(f"{'':>14s}{us:9.1f} us  {op}", flush=True)
    if args.antialias:
        results["aa_ms"] = results["aa_fwd_bwd_ms"] - results["fwd_bwd_ms"]
        print(f"{'antialias':>12s}: {results['aa_ms']:+9.3f} ms over fwd_bwd", flush=True)
    results["peak_bytes"] = peak_memory_bytes()
    print(f"mesh {head['name']} x{args.subdivide} subdivisions ({results['num_vertices']} v / "
          f"{results['num_faces']} f), batch {batch}, {size}x{size}, coverage {100 * coverage:.1f} %, "
          f"{results['device_kind']} ({results['backend']}), impl {args.impl}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jface.bench render", description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--image", type=int)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--tile-size", type=int, default=8)
    parser.add_argument("--capacity", type=int, default=64)
    parser.add_argument("--soft-tile-size", type=int, default=4)
    parser.add_argument("--soft-capacity", type=int, default=32)
    parser.add_argument("--sigma", type=float, default=1e-4)
    parser.add_argument("--soft-impl", choices=("auto", "jnp", "pallas", "interpret"), default="auto",
                        help="soft silhouette evaluation (auto: Pallas kernels on GPUs)")
    parser.add_argument("--impl", choices=("auto", "jnp", "pallas", "interpret"), default="auto",
                        help="hard rasterizer z-buffer pass (auto: Pallas kernel on GPUs)")
    parser.add_argument("--only", help="comma-separated subset of raster_interp_fwd,render_fwd_bwd,soft_fwd_bwd")
    parser.add_argument("--sweep", action="store_true", help="also time several (tile_size, capacity)")
    parser.add_argument("--soft-vjp-reduce", choices=("variadic", "sums"), default=None)
    parser.add_argument("--profile", action="store_true", help="print each stage's top device ops")
    parser.add_argument("--mesh", help="issue 24's table: an OBJ file or 'flame' (the default FLAME head template)")
    parser.add_argument("--subdivide", type=int, default=0, help="midpoint subdivisions of --mesh (each: 4x faces)")
    parser.add_argument("--antialias", action="store_true", help="issue 24's table: also time the antialias stage")
    parser.add_argument("--aa-chunk", type=int, default=None,
                        help="antialias's chunk= (pairs per round; 0 = every pixel pair densely; default its own)")
    parser.add_argument("--json", help="write the results here")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv
    if args.aa_chunk is not None and args.aa_chunk < 0:
        parser.error(f"--aa-chunk: expected >= 0, got {args.aa_chunk}")
    if args.subdivide < 0:
        parser.error(f"--subdivide: expected >= 0, got {args.subdivide}")
    table = args.mesh is not None or args.subdivide or args.antialias
    results = run_table(args) if table else run(args)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2, default=str)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
