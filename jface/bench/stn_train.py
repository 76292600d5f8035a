"""3DMM-STN training-step speed vs a bare VGG-16 classifier step: ``python -m jface.bench stn_train``.

Both steps are real jitted optax steps (SGD momentum 0.9 with the original's solver settings, as
``train.stn``'s paper preset), data-parallel over all devices, on the same backbone, batch and
compute dtype:

* **stn**: :func:`jface.training.stn.train_step`: VGG-16 localiser (VGG-Face topology) -> theta ->
  3DMM, projection, grid, bilinear sampler, visibility, masking and the four losses
  (``dagnn_3dmmasstn_init.m``'s graph), on an interleaved (image, mirror) batch.
* **vgg**: the same backbone with a 1000-way head and softmax cross-entropy (a bare classifier).

Reports images/s of both and their ratio (``vgg / stn``; the geometry + sampler + losses overhead
is ``1 - stn / vgg`` of the classifier's throughput), compile times, and a JSON line at the end.
``--size small`` runs a tiny configuration for CPU smoke tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jface import training as common
from jface.bench.deca import process_rows
from jface.stn import Localiser
from jface.training import stn as stn_training

__all__ = ["main", "run", "build_stn_step", "stn_config"]

# The original's solver (dagnn_3dmmasstn.m with MatConvNet's cnn_train_dag; train.stn's paper
# preset): SGD, momentum 0.9, lr 1e-10 with multipliers 4 / 8 on the theta weights / bias, weight
# decay 5e-4 (0 on the theta bias), summed losses. Raw theta: no whitening statistics (no data).
PAPER_SOLVER = dict(optimizer="sgd", learning_rate=1e-10, lr_schedule="constant", warmup_steps=0, momentum=0.9,
                    weight_decay=5e-4, theta_lr_mult=(4.0, 8.0), theta_bias_decay=False, mirror=True,
                    loss_reduction="sum", whiten_theta=False)


def stn_config(size: str, dtype: str, batch: int, model: str = "default") -> stn_training.Config:
    """The timed configuration: ``"full"`` = VGG-Face at 224 px on ``model`` with the original's
    solver; ``"small"`` = ``train.stn``'s tiny localiser (32 px input, width 2) on 64 px images of
    the 16 x 16 toy model with plain SGD momentum, for CPU smoke tests."""
    if size == "full":
        return stn_training.Config(model=model, localiser="vgg_face", image_size=224, compute_dtype=dtype,
                                   batch_size=batch // 2, **PAPER_SOLVER)
    if size == "small":
        return stn_training.Config(model="toy:16", image_size=64, localiser_input=32, localiser_width=2,
                                   compute_dtype=dtype, batch_size=batch // 2, optimizer="sgd",
                                   lr_schedule="constant", warmup_steps=0, whiten_theta=False)
    raise ValueError(f"size: expected 'full' or 'small', got {size!r}")


def _median_step_time(step, state, batch, repeats):
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return compile_s, float(np.median(times)), metrics


def build_stn_step(size: str, dtype: str, mesh, batch: int, model: str = "default"):
    """:func:`jface.training.stn.train_step` on ``mesh`` for ``batch`` images (image/mirror pairs)
    with random inputs. Returns ``(step, state, args, parts)``; ``parts`` holds what the baseline
    step reuses (localiser, init key and dummy input, host images, model)."""
    if batch % 2:
        raise ValueError(f"batch: expected an even number (image/mirror pairs), got {batch}")
    config = stn_config(size, dtype, batch, model)
    image = config.image_size
    model3d = stn_training.load_model(config)
    num_coeffs = model3d.num_shape + model3d.num_expression
    localiser = stn_training.make_localiser(config, num_coeffs)
    key = jax.random.PRNGKey(0)
    dummy = jnp.zeros((1,) + tuple(localiser.config.input_hw) + (3,), jnp.float32)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, size=(batch, image, image, 3)).astype(np.float32)
    labels = np.concatenate([rng.uniform(image * 0.3, image * 0.7, size=(batch, 21, 2)),
                             np.ones((batch, 21, 1))], -1).astype(np.float32)
    params = jax.jit(localiser.init)(key, dummy)["params"]
    optimizer = stn_training.make_optimizer(config, params)
    ctx = stn_training.StepContext(config=config, localiser=localiser, model=model3d, whitening=None,
                                   optimizer=optimizer)
    state = common.replicate(jax.tree_util.tree_map(np.asarray, common.TrainState(
        step=np.zeros((), np.int32), params=params, opt_state=optimizer.init(params),
        rng=np.asarray(key))), mesh)
    data = common.shard_batch(process_rows({"images": images, "labels": labels}), mesh)
    parts = {"image": image, "localiser": localiser, "key": key, "dummy": dummy, "images": images,
             "model": model3d, "rng": rng}
    return stn_training.make_train_step(ctx, mesh), state, (data,), parts


def run(size: str = "full", batch: int = 64, dtype: str = "bfloat16", repeats: int = 5,
        model: str = "default") -> dict:
    mesh = common.make_mesh()
    step, state, (stn_batch,), parts = build_stn_step(size, dtype, mesh, batch, model)
    image, localiser, key, dummy = parts["image"], parts["localiser"], parts["key"], parts["dummy"]
    images, model3d, rng = parts["images"], parts["model"], parts["rng"]
    stn_compile, stn_time, _ = _median_step_time(step, state, stn_batch, repeats)
    del state

    # --- bare VGG-16 classifier step (same backbone, 1000-way head, softmax cross-entropy)
    cls_config = dataclasses.replace(localiser.config, num_coeffs=1000 - 6)
    classifier = Localiser(config=cls_config, dtype=localiser.dtype)
    cls_params = jax.jit(classifier.init)(key, dummy)["params"]
    cls_opt = optax.chain(optax.trace(decay=0.9), optax.scale(-1e-3))

    def cls_step(state, batch):
        def loss_fn(p):
            small = batch["images"]
            if small.shape[1:3] != tuple(cls_config.input_hw):
                small = jax.image.resize(small, (small.shape[0],) + tuple(cls_config.input_hw) + (3,), "linear")
            logits = classifier.apply({"params": p}, small)
            return optax.softmax_cross_entropy_with_integer_labels(logits, batch["classes"]).mean()

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = cls_opt.update(grads, state.opt_state, state.params)
        return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                             opt_state=opt_state), {"loss": loss}

    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    cls_jit = jax.jit(cls_step, out_shardings=(replicated, replicated), donate_argnums=(0,))
    cls_state = common.replicate(jax.tree_util.tree_map(np.asarray, common.TrainState(
        step=np.zeros((), np.int32), params=cls_params, opt_state=cls_opt.init(cls_params),
        rng=np.asarray(key))), mesh)
    cls_batch = common.shard_batch({"images": images, "classes": rng.integers(0, 1000, batch).astype(np.int32)}, mesh)
    vgg_compile, vgg_time, _ = _median_step_time(cls_jit, cls_state, cls_batch, repeats)

    stn_ips, vgg_ips = batch / stn_time, batch / vgg_time
    return {
        "size": size, "batch": batch, "image": image, "dtype": dtype, "devices": jax.device_count(),
        "platform": jax.devices()[0].platform, "device_kind": jax.devices()[0].device_kind,
        "localiser_input": list(localiser.config.input_hw), "model_vertices": int(model3d.num_vertices),
        "stn_img_per_s": stn_ips, "vgg_img_per_s": vgg_ips, "ratio_vgg_over_stn": vgg_ips / stn_ips,
        "overhead_fraction": 1.0 - stn_ips / vgg_ips, "stn_step_s": stn_time, "vgg_step_s": vgg_time,
        "stn_compile_s": stn_compile, "vgg_compile_s": vgg_compile, "repeats": repeats,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jface.bench stn_train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="full", choices=("full", "small"))
    parser.add_argument("--batch", type=int, default=64, help="images per step, mirrors included")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"),
                        help="backbone compute dtype (theta layer and geometry stay float32)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="default", help="3DMM for --size full: 'default' or an npz")
    parser.add_argument("--out", default=None, help="also write the JSON result here")
    args = parser.parse_args(argv)
    result = run(args.size, args.batch, args.dtype, args.repeats, args.model)
    print(f"stn train step: {result['stn_img_per_s']:.1f} img/s (compile {result['stn_compile_s']:.1f}s)")
    print(f"vgg classifier step: {result['vgg_img_per_s']:.1f} img/s (compile {result['vgg_compile_s']:.1f}s)")
    print(f"ratio vgg/stn: {result['ratio_vgg_over_stn']:.3f} (overhead {100 * result['overhead_fraction']:.1f}%)")
    print(json.dumps(result))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
