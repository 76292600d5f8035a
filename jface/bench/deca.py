"""DECA coarse training step vs a bare ResNet-50 classifier step: ``python -m jface.bench deca``.

Both are real jitted Adam steps, data-parallel over the mesh (``jface.training``), on synthetic
random inputs (no data generation on the timed path), in the same process:

* **deca**: :func:`jface.training.deca.train_step` of the coarse stage (the forward pass and
  losses of :func:`jface.deca.stages.stage_loss`, DECA's ``Trainer.training_step``): E_coarse
  (ResNet-50, train-mode BN) -> codes -> FLAME -> landmarks, rasterize + render at 224², shaded
  photometric, landmark / eye / lip losses, regularisers, and the identity loss through a frozen
  VGGFace2 ResNet-50 (random weights; forward on overlay and image, backward to the overlay), on
  B identities × K images, duplicated by the shape-code swap, so every loss sees 2·B·K.
* **resnet**: the same ResNet-50 backbone + Linear(2048, 1000), softmax cross-entropy, Adam, at the
  same batch and compute dtype: the "bare network" baseline.

Reports images/s of both (images = B·K encoder inputs per step), ``ratio = deca / resnet``
(issue 10 target >= 0.25) of steps each waited for, ``ratio_pipelined`` of steps dispatched back to
back as a training loop runs them (:func:`time_pipelined`), step and compile times, peak device
memory and the compiled step's temporary buffer size. ``--size small`` is a tiny CPU smoke
configuration; ``--profile DIR`` writes a ``jax.profiler`` trace of a few DECA steps.

The identity network's variables are passed to the jitted step as an argument (train.deca keeps
them in the step context, where jit would close over them as constants); the computation is the same.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jface import training as common
from jface.bench import peak_memory_bytes
from jface.deca import networks as nets
from jface.training import deca as train_deca

__all__ = ["main", "run", "build_deca_step", "build_resnet_step", "time_step", "time_pipelined",
           "process_rows", "device_info"]


# --- shared helpers (also used by inference.py and scaling.py) ----------------------------------

def log(msg: str) -> None:
    print(msg, flush=True)


def device_info(devices=None) -> dict:
    devices = jax.devices() if devices is None else devices
    return {"platform": devices[0].platform, "device_kind": devices[0].device_kind,
            "devices": len(devices), "jax": jax.__version__}


def time_step(step, state, args, *, warmup: int = 2, repeats: int = 10):
    """Compile ``step`` (a jitted ``(state, *args) -> (state, metrics)``) ahead of time, then run
    it: ``warmup`` untimed calls and ``repeats`` timed ones. Returns ``(compiled, state, compile_s,
    median_s, metrics)``; ``compiled`` replaces ``step`` for further calls (no second compile)."""
    start = time.perf_counter()
    compiled = step.lower(state, *args).compile()
    compile_s = time.perf_counter() - start
    metrics = None
    for _ in range(max(warmup, 1)):
        state, metrics = compiled(state, *args)
    jax.block_until_ready((state, metrics))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        state, metrics = compiled(state, *args)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - start)
    return compiled, state, compile_s, float(np.median(times)), metrics


def time_pipelined(compiled, state, args, *, repeats: int = 10, windows: int = 3):
    """Seconds per step of ``repeats`` calls dispatched back to back and blocked on once at the
    end, as a training loop that does not wait for each step runs: the host's work for step i+1
    (argument handling, kernel launches) overlaps the device's work for step i. The median over
    ``windows`` such windows (one slow window — a host hiccup — does not move it). Returns
    ``(state, seconds_per_step, per_window_seconds_per_step)``."""
    jax.block_until_ready(state)
    times = []
    for _ in range(max(windows, 1)):
        start = time.perf_counter()
        metrics = None
        for _ in range(repeats):
            state, metrics = compiled(state, *args)
        jax.block_until_ready((state, metrics))
        times.append((time.perf_counter() - start) / repeats)
    return state, float(np.median(times)), times


def process_rows(batch: dict) -> dict:
    """This process's rows of a host batch that holds the global batch (``shard_batch`` takes each
    process's local slice): rows ``[p·n/P, (p+1)·n/P)`` for process p of P; all rows on one process."""
    count, index = jax.process_count(), jax.process_index()
    if count == 1:
        return batch
    out = {}
    for name, value in batch.items():
        if len(value) % count:
            raise ValueError(f"batch[{name!r}]: {len(value)} rows not divisible by {count} processes")
        per = len(value) // count
        out[name] = value[index * per:(index + 1) * per]
    return out


def profile_steps(step, state, args, directory, steps: int = 3):
    """Write a ``jax.profiler`` trace of ``steps`` calls into ``directory`` (with a Perfetto JSON
    that ``python -m jface.bench trace DIR`` summarises); returns the state."""
    jax.block_until_ready(state)
    jax.profiler.start_trace(str(directory), create_perfetto_trace=True)
    try:
        for i in range(steps):
            with jax.profiler.StepTraceAnnotation("step", step_num=i):
                state, metrics = step(state, *args)
            jax.block_until_ready((state, metrics))
    finally:
        jax.profiler.stop_trace()
    log(f"profile: trace of {steps} steps written under {directory}")
    return state


def profile_calls(fn, args, directory, calls: int = 3) -> None:
    """Write a ``jax.profiler`` trace of ``calls`` calls of a stateless ``fn(*args)``."""
    jax.block_until_ready(fn(*args))
    jax.profiler.start_trace(str(directory), create_perfetto_trace=True)
    try:
        for i in range(calls):
            with jax.profiler.StepTraceAnnotation("call", step_num=i):
                jax.block_until_ready(fn(*args))
    finally:
        jax.profiler.stop_trace()
    log(f"profile: trace of {calls} calls written under {directory}")


def compiled_memory(compiled) -> dict:
    """Argument / output / temporary bytes (per device) of a compiled step, where XLA says."""
    try:
        analysis = compiled.memory_analysis()
        return {"argument_bytes": int(analysis.argument_size_in_bytes),
                "output_bytes": int(analysis.output_size_in_bytes),
                "temp_bytes": int(analysis.temp_size_in_bytes)}
    except Exception as exc:  # backend without memory analysis
        return {"error": f"{type(exc).__name__}: {exc}"[:200]}


def peak_bytes(devices) -> int | None:
    peaks = [peak_memory_bytes(d) for d in devices]
    return None if any(p is None for p in peaks) else int(max(peaks))


def load_flame(model: str = "default"):
    """The FLAME model, float32: ``'default'`` (embedded, generated into the cache) or a file
    (:func:`jface.training.deca.load_face_model`)."""
    return train_deca.load_face_model(model)


def code_statistics():
    """A fixed (mean, std) of DECA's 236-d code for the encoder's output map
    (:class:`jface.deca.stages.DecaSetup`): small shape / expression / texture / pose spread, camera s ≈ 9 (the head
    fills the crop, as DECA's crops do), grey ambient SH light; so random encoders render faces."""
    mean = np.zeros(236, np.float32)
    std = np.full(236, 0.1, np.float32)
    std[200:206] = 0.05  # pose
    mean[206], std[206] = 9.0, 0.3  # cam scale
    std[207:209] = 0.02  # cam translation
    mean[209:212] = 3.0  # light band 0 (RGB)
    return mean, std


def synthetic_batch(batch: int, size: int = 224, seed: int = 0) -> dict:
    """Random uint8 images, 68 NDC landmarks (visibility 1) and skin masks (an ellipse)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / (size - 1) * 2 - 1
    mask = ((xx / 0.7) ** 2 + (yy / 0.9) ** 2 < 1).astype(np.uint8)
    return {
        "images": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
        "landmarks68": np.concatenate([rng.uniform(-0.6, 0.6, (batch, 68, 2)), np.ones((batch, 68, 1))],
                                      -1).astype(np.float32),
        "face_mask": np.broadcast_to(mask, (batch, size, size)).copy(),
    }


# --- the two steps -----------------------------------------------------------------------------

def deca_config(size: str, dtype: str, ids: int, k: int, identity: bool = True) -> train_deca.Config:
    if size == "full":
        return train_deca.Config(encoder="full", compute_dtype=dtype, render_size=224, coarse_batch=(ids, k))
    if size == "small":
        return train_deca.Config(encoder="small", encoder_width=4, encoder_hidden=32, compute_dtype=dtype,
                           render_size=224 if identity else 32, coarse_batch=(ids, k))
    raise ValueError(f"size: expected 'full' or 'small', got {size!r}")


def _backbone_kwargs(size: str) -> dict:
    return {} if size == "full" else {"stage_sizes": (1, 1, 1, 1), "width": 4}


def build_deca_step(size: str, dtype: str, mesh, ids: int, k: int = 4, model=None, seed: int = 0,
                    identity: bool = True):
    """The coarse-stage DECA step on ``mesh`` for a global batch of ``ids × k`` images, with the
    identity loss through a random-weight VGGFace2 ResNet-50 when ``identity`` (it needs 224²
    renders; without it ``--size small`` renders at 32²).

    Returns ``(step, state, args)``: ``state, metrics = step(state, *args)`` (state donated).
    """
    config = deca_config(size, dtype, ids, k, identity)
    compute = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype]
    id_module = id_vars = None
    if identity:
        id_module = nets.VGGFace2ResNet50(dtype=compute, **_backbone_kwargs(size))
        id_vars = jax.jit(id_module.init)(jax.random.PRNGKey(seed + 1), jnp.zeros((1, 224, 224, 3), jnp.float32))
        id_vars = common.replicate(jax.tree_util.tree_map(np.asarray, id_vars), mesh)
    networks = train_deca.make_networks(config, identity=(id_module, None) if identity else None)
    ctx = train_deca.make_context(config, "coarse", networks, *code_statistics(), mesh=mesh)
    variables = train_deca.init_variables(config, networks, jax.random.PRNGKey(seed))
    trainable = {n: variables[n]["params"] for n in ctx.stage.trainable}
    host = jax.tree_util.tree_map(np.asarray, common.TrainState(
        step=np.zeros((), np.int32), params=variables, opt_state=ctx.optimizer.init(trainable),
        rng=np.asarray(jax.random.PRNGKey(seed + 2))))
    state = common.replicate(host, mesh)
    batch = common.shard_batch(process_rows(synthetic_batch(ids * k, seed=seed)), mesh)
    model = common.replicate(load_flame() if model is None else model, mesh)

    def step(state, batch, model, id_vars):
        step_ctx = ctx
        if identity:
            networks = dataclasses.replace(ctx.networks, identity=(id_module, id_vars))
            step_ctx = dataclasses.replace(ctx, setup=dataclasses.replace(ctx.setup, networks=networks))
        return train_deca.train_step(step_ctx, state, batch, model)

    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    jitted = jax.jit(step, out_shardings=(replicated, replicated), donate_argnums=(0,))
    return jitted, state, (batch, model, id_vars)


def build_resnet_step(size: str, dtype: str, mesh, batch: int, seed: int = 0):
    """ResNet-50 (DECA's backbone) + Linear(1000), softmax CE, Adam 1e-4, train-mode BN."""
    compute = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype]
    kwargs = _backbone_kwargs(size)

    class Classifier(nn.Module):
        @nn.compact
        def __call__(self, images, train: bool = False):
            x = nets.ResNet50(dtype=compute, name="backbone", **kwargs)(images, train)
            return nn.Dense(1000, dtype=compute, param_dtype=jnp.float32, name="head")(x)

    module = Classifier()
    variables = jax.jit(module.init)(jax.random.PRNGKey(seed), jnp.zeros((1, 224, 224, 3), jnp.float32))
    optimizer = optax.adam(1e-4)
    host = jax.tree_util.tree_map(np.asarray, common.TrainState(
        step=np.zeros((), np.int32), params=dict(variables),
        opt_state=optimizer.init(variables["params"]), rng=np.zeros(2, np.uint32)))
    state = common.replicate(host, mesh)
    rng = np.random.default_rng(seed)
    data = common.shard_batch(process_rows({
        "images": rng.integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8),
        "classes": rng.integers(0, 1000, batch).astype(np.int32)}), mesh)

    def step(state, batch):
        images = batch["images"].astype(jnp.float32) / 255.0

        def loss_fn(params):
            logits, mutated = module.apply({"params": params, "batch_stats": state.params["batch_stats"]},
                                           images, train=True, mutable=["batch_stats"])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                                   batch["classes"]).mean()
            return loss, mutated["batch_stats"]

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params["params"])
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params["params"])
        params = {"params": optax.apply_updates(state.params["params"], updates), "batch_stats": stats}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), {"loss": loss}

    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    jitted = jax.jit(step, out_shardings=(replicated, replicated), donate_argnums=(0,))
    return jitted, state, (data,)


# --- the benchmark -----------------------------------------------------------------------------

def run(size: str = "full", dtype: str = "bfloat16", ids: int | None = None, k: int | None = None,
        repeats: int = 10, model: str = "default", profile: str | None = None, devices=None,
        identity: bool | None = None) -> dict:
    identity = (size == "full") if identity is None else identity
    ids = ids or (8 if size == "full" else 2)
    k = k or (4 if size == "full" else 2)
    devices = jax.devices() if devices is None else devices
    mesh = common.make_mesh(devices)
    batch = ids * k
    if batch % len(devices):
        raise ValueError(f"batch {ids}x{k} = {batch} not divisible by {len(devices)} devices")
    result = {"bench": "deca", "size": size, "dtype": dtype, "batch": batch, "identities": ids, "k": k,
              "image": 224, "identity_loss": identity,
              "render": deca_config(size, dtype, ids, k, identity).render_size, **device_info(devices)}

    t0 = time.perf_counter()
    flame = load_flame(model)
    result["model_load_s"] = time.perf_counter() - t0
    log(f"deca: FLAME model ready ({result['model_load_s']:.1f}s, {flame.faces.shape[0]} faces)")

    # bare classifier first, so the process peak after it is its own
    step, state, args = build_resnet_step(size, dtype, mesh, batch)
    step, state, compile_s, step_s, metrics = time_step(step, state, args, repeats=repeats)
    state, piped_s, _ = time_pipelined(step, state, args, repeats=repeats)
    result.update(resnet_img_per_s=batch / step_s, resnet_step_s=step_s, resnet_compile_s=compile_s,
                  resnet_pipelined_step_s=piped_s,
                  resnet_peak_bytes=peak_bytes(devices), resnet_memory=compiled_memory(step))
    log(f"deca: resnet50 classifier step {step_s * 1e3:.1f} ms, {batch / step_s:.1f} img/s "
        f"(first call {compile_s:.1f}s, loss {float(metrics['loss']):.3f}); pipelined {piped_s * 1e3:.1f} ms")
    del step, state, args

    step, state, args = build_deca_step(size, dtype, mesh, ids, k, model=flame, identity=identity)
    step, state, compile_s, step_s, metrics = time_step(step, state, args, repeats=repeats)
    state, piped_s, _ = time_pipelined(step, state, args, repeats=repeats)
    result.update(deca_img_per_s=batch / step_s, deca_step_s=step_s, deca_compile_s=compile_s,
                  deca_pipelined_step_s=piped_s,
                  deca_peak_bytes=peak_bytes(devices), deca_memory=compiled_memory(step),
                  deca_loss=float(metrics["loss"]),
                  deca_losses={k_: float(v) for k_, v in metrics.items() if k_.startswith("loss_")})
    log(f"deca: coarse train step {step_s * 1e3:.1f} ms, {batch / step_s:.1f} img/s "
        f"(first call {compile_s:.1f}s, loss {result['deca_loss']:.4g})")
    if not np.isfinite(result["deca_loss"]):
        log("deca: WARNING: non-finite loss")
    result["ratio"] = result["deca_img_per_s"] / result["resnet_img_per_s"]
    result["ratio_pipelined"] = result["resnet_pipelined_step_s"] / result["deca_pipelined_step_s"]
    result["target_ratio"] = 0.25
    result["repeats"] = repeats
    log(f"deca: coarse train step pipelined {piped_s * 1e3:.1f} ms")
    log(f"deca: ratio deca/resnet = {result['ratio']:.3f} (target >= 0.25); "
        f"pipelined {result['ratio_pipelined']:.3f}")
    if profile:
        profile_steps(step, state, args, profile)
        result["profile_dir"] = profile
    return result


def add_common_args(parser, *, dtype_default="bfloat16"):
    parser.add_argument("--size", default="full", choices=("full", "small"))
    parser.add_argument("--dtype", default=dtype_default, choices=("bfloat16", "float32"),
                        help="compute dtype of the convolutional networks")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--model", default="default", help="FLAME: 'default' (embedded) or a file")
    parser.add_argument("--json", default=None, help="write the result here")
    parser.add_argument("--profile", default=None, metavar="DIR", help="write a jax.profiler trace here")
    parser.add_argument("--cache", default=None, metavar="DIR",
                        help="JAX persistent compilation cache (reruns on the same machine skip compiles)")


def apply_cache(directory) -> None:
    """Turn on JAX's persistent compilation cache in ``directory`` (every compile is cached)."""
    if directory:
        jax.config.update("jax_compilation_cache_dir", str(directory))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def write_json(path, result) -> None:
    if path:
        with open(path, "w") as handle:
            json.dump(result, handle, indent=1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jface.bench deca", description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--ids", type=int, default=None, help="identities per step (full: 8)")
    parser.add_argument("--k", type=int, default=None, help="images per identity (full: 4)")
    parser.add_argument("--identity", default=None, choices=("on", "off"),
                        help="identity loss (default: on for full, off for small; on needs 224² renders)")
    args = parser.parse_args(argv)
    apply_cache(args.cache)
    identity = None if args.identity is None else args.identity == "on"
    result = run(args.size, args.dtype, args.ids, args.k, args.repeats, args.model, args.profile,
                 identity=identity)
    print(json.dumps(result), flush=True)
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
