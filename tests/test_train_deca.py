"""python -m train.deca end to end (tiny preset): every stage trains, checkpoints, and evaluates."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jface.data import synthetic_deca
from jface.deca import stages
from jface.reconstruct import load_train_deca
from jface.reconstruct.inputs import InputError
from jface.training import deca as training_deca
from jface.training.checkpoint import read_run
from train import deca

REPO = Path(__file__).resolve().parents[1]


def test_tiny_run_trains_all_stages_and_prints_metrics(tmp_path, monkeypatch, capsys):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    workdir = tmp_path / "deca"
    proc = subprocess.run(
        [sys.executable, "-m", "train.deca", "--preset", "tiny", "--workdir", str(workdir)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    # The run says up front which losses are off for lack of user weights.
    assert "identity loss is OFF" in out and "ID-MRF loss is OFF" in out
    assert "held-out metrics" in out and "UV photometric error" in out
    # each metric beside the mean face's with a verdict, and how the stages after pretraining moved it
    assert "generating train faces" in proc.stderr and "pretrain: compiling the train step" in out
    table = out[out.rindex("held-out metrics on"):].splitlines()
    for row in table[2:4]:
        assert any(v in row for v in ("better (", "worse (", "within noise (")), row
    assert "landmark NME (IOD) after all stages" in out and "after pretraining:" in out
    metrics = json.loads((workdir / "metrics.json").read_text())["final"]
    for who in ("model", "baseline"):
        assert metrics[who]["nme"] > 0 and metrics[who]["vertex_mm"] > 0
    assert set(metrics["uv_photometric"]) == {"coarse", "detail"}
    for stage in ("pretrain", "coarse", "detail"):
        steps = sorted(p.name for p in (workdir / stage / "checkpoints").iterdir() if p.name.isdigit())
        assert steps, f"no checkpoint for {stage}"
    # every checkpoint carries the run's metadata: config, face model, code whitening
    run = read_run(workdir / "detail" / "checkpoints")
    config = deca.preset("tiny").replace(workdir=str(workdir))
    assert run["config"] == json.loads(json.dumps(dataclasses.asdict(config)))
    assert run["face_model"]["model"] == "default" and run["face_model"]["generator_version"] >= 1
    assert len(run["code_mean"]) == len(run["code_std"]) == 236 and min(run["code_std"]) >= 1e-3
    # jface.reconstruct reads the run (--weights RUN_DIR) from its checkpoints alone: no data is
    # generated. Both encoders take DECA's 224 crops, resized to the run's encoder size (64 here) as
    # in training; F_d is the run's.
    def no_data(*args, **kwargs):
        raise AssertionError("loading a run must not generate data")

    monkeypatch.setattr(synthetic_deca, "generate_deca", no_data)
    monkeypatch.setattr(synthetic_deca, "iter_deca", no_data)
    start = time.perf_counter()
    params, encode, generator = load_train_deca(workdir)
    load_s = time.perf_counter() - start
    crops = np.random.default_rng(0).uniform(size=(2, 224, 224, 3)).astype(np.float32)
    codes = encode(crops)
    print(f"tiny run loaded in {load_s:.2f} s, first encode after {time.perf_counter() - start:.2f} s")
    assert codes["detail"].shape == (2, 128) and codes["exp"].shape == (2, 50)
    small = stages.encoder_images(crops, config.encoder_input_size)
    networks = training_deca.make_networks(config)
    expected = networks.detail.apply(params["E_detail"], small, train=False)
    np.testing.assert_allclose(np.asarray(codes["detail"]), np.asarray(expected), rtol=1e-5, atol=1e-6)
    # E_coarse through the run's code whitening: code = mean + std * raw
    raw = networks.coarse.apply(params["E_flame"], small, train=False)
    shape = np.asarray(run["code_mean"])[:100] + np.asarray(run["code_std"])[:100] * np.asarray(raw)[:, :100]
    np.testing.assert_allclose(np.asarray(codes["shape"]), shape, rtol=1e-5, atol=1e-5)
    assert generator == networks.generator
    # a run saved without the metadata (an older jface) gets one clear error naming what is missing
    old = tmp_path / "old_run"
    shutil.copytree(workdir, old)
    for item in old.glob("*/checkpoints/*/run"):
        shutil.rmtree(item)
    with pytest.raises(InputError, match="no run metadata") as err:
        load_train_deca(old)
    assert str(old) in str(err.value) and "\n" not in str(err.value)
    # --eval reads the finished run's metrics.
    ev = subprocess.run([sys.executable, "-m", "train.deca", "--eval", str(workdir)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0 and "landmark NME" in ev.stdout and "after pretraining:" in ev.stdout
    # the README's train.deca lines (tests/test_readme.py leaves them to this test) with --preset tiny
    # appended: a second start on the finished run reports it from its folder; no data (generation is
    # patched to fail above), no compile, no progress bar
    from test_readme import readme_commands, rule_of, run_command

    monkeypatch.setenv("JFACE_COMPILATION_CACHE", "0")
    lines = [c for c in readme_commands() if "test_tiny_run_trains_all_stages" in rule_of(c).why]
    assert "python -m train.deca --preset default" in lines, lines
    for line in lines:
        assert run_command(line, ["--preset", "tiny", "--workdir", str(workdir)]) == 0, line
        captured = capsys.readouterr()
        assert "is already finished (pretrain step 3 of 3" in captured.out, line
        assert "after pretraining:" in captured.out and "pretrain:" not in captured.err


def test_bad_config_fields_are_named():
    with pytest.raises(ValueError, match="not_a_field"):
        deca.parse_args(["--not_a_field", "1"])
    with pytest.raises(ValueError, match="stage"):
        deca.parse_args(["--stage", "everything"])
    with pytest.raises(ValueError, match="preset"):
        deca.parse_args(["--preset", "huge"])
    with pytest.raises(ValueError, match="stage_lr_scale"):
        deca.parse_args(["--stage_lr_scale", "1,2"])
    with pytest.raises(ValueError, match="detail_init"):
        deca.parse_args(["--detail_init", "xavier"])
    with pytest.raises(ValueError, match="detail_generator"):
        deca.parse_args(["--detail_generator", "huge"])


def test_pitch_and_roll_ranges_reach_the_generator_and_the_code_prior(monkeypatch):
    _, config = deca.parse_args(["--pitch_deg", "5", "--roll_deg", "35"])
    for split in ("train", "eval"):
        syn = training_deca.synth_config(config, split)
        assert (syn.pitch_deg, syn.roll_deg) == (5.0, 35.0)
    seen = []

    class Seen(Exception):
        pass

    def generate_deca(*args, config):
        seen.append(config)
        raise Seen

    monkeypatch.setattr(synthetic_deca, "generate_deca", generate_deca)
    with pytest.raises(Seen):
        training_deca.code_prior(config, None)
    assert (seen[0].pitch_deg, seen[0].roll_deg) == (5.0, 35.0)
    # a run saved before the fields existed keeps the ranges it was trained with
    saved = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("pitch_deg", "roll_deg")}
    old = training_deca.config_from_dict(saved)
    assert (old.pitch_deg, old.roll_deg) == (20.0, 15.0)


def test_empty_generated_split_is_a_usage_error_before_any_work(tmp_path, monkeypatch):
    """Zero images in a generated split: one UsageError naming the fields, before the data cache."""
    from jface.cli import UsageError
    from jface.training import deca as deca_training

    monkeypatch.setenv("JFACE_DATA_CACHE", str(tmp_path / "cache"))
    config = deca.preset("tiny")
    with pytest.raises(UsageError, match=r"num_identities x images_per_identity: expected >= 1 .* train image, got 0"):
        deca_training.make_data(dataclasses.replace(config, images_per_identity=0), None, split="train")
    with pytest.raises(UsageError, match=r"eval_identities x eval_images_per_identity: .* eval image, got 0"):
        deca_training.make_data(dataclasses.replace(config, eval_identities=0), None, split="eval")
    assert not (tmp_path / "cache").exists()


def test_detail_networks_per_preset(capsys):
    """The paper preset builds DECA's F_d with torch's initialisation and DECA's soft symmetry;
    the default preset the small He-initialised F_d with soft symmetry off, and says so."""
    paper, default = deca.preset("paper"), deca.preset("default")
    gen = training_deca.make_networks(paper).generator
    assert (gen.init_scheme, gen.init_channels, tuple(gen.block_channels)) == ("torch", 128, (128, 64, 64, 32, 16))
    assert paper.w_sym == 0.005
    gen = training_deca.make_networks(default).generator
    assert (gen.init_scheme, gen.init_channels, tuple(gen.block_channels)) == ("he", 32, (32, 16, 16, 8, 8))
    training_deca.announce(paper)
    assert "soft-symmetry loss is OFF" not in capsys.readouterr().out
    training_deca.announce(default)
    assert "soft-symmetry loss is OFF" in capsys.readouterr().out
    training_deca.announce(default.replace(stage="pretrain"))
    assert "soft-symmetry" not in capsys.readouterr().out


def test_stage_learning_rates():
    _, config = deca.parse_args(["--learning_rate", "0.01", "--stage_lr_scale", "1,0.5,2"])
    assert [config.stage_learning_rate(s) for s in deca.STAGES] == pytest.approx([0.01, 0.005, 0.02])
    default = deca.preset("default")
    assert default.stage_learning_rate("coarse") < default.stage_learning_rate("pretrain")
    assert deca.preset("paper").stage_learning_rate("detail") == pytest.approx(1e-4)


_PER_DEVICE_BN = r'''
import dataclasses, jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from jface import training as common
from jface.deca.networks import BatchNorm
from jface.training.deca import apply_train_mode

mesh = common.make_mesh()
assert mesh.size == 2
x = np.random.default_rng(0).normal(size=(8, 3, 3, 4)).astype(np.float32) * [1, 2, 3, 4] + [0, 1, 2, 3]
bn = BatchNorm()
variables = bn.init(jax.random.PRNGKey(0), x[:1])
xs = jax.device_put(x, NamedSharding(mesh, P("data")))
for mode in ("per_device", "global"):
    apply = lambda v, a: apply_train_mode(bn, v, a, mesh=mesh, bn_stats=mode)  # noqa: E731
    out, mut = jax.jit(apply)(variables, xs)
    out = np.asarray(out)
    halves = [x[:4], x[4:]] if mode == "per_device" else [x]
    ref = np.concatenate([(h - h.mean((0, 1, 2))) / np.sqrt(h.var((0, 1, 2)) + 1e-5) for h in halves])
    np.testing.assert_allclose(out, ref, atol=1e-4)
    means = np.mean([h.mean((0, 1, 2)) for h in halves], 0)
    np.testing.assert_allclose(np.asarray(mut["batch_stats"]["mean"]), 0.1 * means, atol=1e-5)
    # parameter gradients: summed over the devices (one flat all-reduce), equal to the gradient of
    # the per-shard forward passes summed on one device
    v2 = dict(variables, params={"scale": jnp.asarray([1.0, 2.0, 0.5, 1.5]), "bias": jnp.asarray([0.1, 0, -0.2, 0.3])})
    grad = jax.jit(jax.grad(lambda v: jnp.sum(apply(v, xs)[0] ** 3)))(v2)
    ref = jax.grad(lambda v: sum(jnp.sum(bn.apply(v, h, train=True, mutable=["batch_stats"])[0] ** 3)
                                 for h in halves))(v2)
    for name in ("scale", "bias"):
        np.testing.assert_allclose(np.asarray(grad["params"][name]), np.asarray(ref["params"][name]), rtol=1e-4,
                                   atol=1e-4)
        assert np.abs(np.asarray(ref["params"][name])).max() > 1.0
print("ok")
'''


def test_per_device_batchnorm_statistics_on_a_two_device_mesh():
    """bn_stats='per_device': each device normalises with its own batch (torch DDP without SyncBN);
    running statistics are averaged so they stay replicated; 'global' uses the whole batch."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _PER_DEVICE_BN], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


def test_encoder_input_size_resizes_before_the_encoders_only():
    import jax

    from jface.deca import networks as nets

    for bad in ("48", "-32", "16"):
        with pytest.raises(ValueError, match="encoder_input_size"):
            deca.parse_args(["--encoder_input_size", bad])
    with pytest.raises(ValueError, match="input_size"):
        nets.ResNetEncoder(8, stage_sizes=(1, 1, 1, 1), width=2, hidden=4, input_size=100).init(
            jax.random.PRNGKey(0), np.zeros((1, 100, 100, 3), np.float32))
    _, config = deca.parse_args(["--preset", "tiny", "--encoder_input_size", "64"])
    images = np.random.default_rng(0).uniform(size=(2, 224, 224, 3)).astype(np.float32)
    small = np.asarray(stages.encoder_images(images, config.encoder_input_size))
    assert small.shape == (2, 64, 64, 3)
    # antialiased: each output pixel is (close to) the mean of its 3.5 x 3.5 input block
    np.testing.assert_allclose(small.mean(), images.mean(), atol=2e-3)
    assert small.std() < 0.5 * images.std()
    assert stages.encoder_images(images, 0) is images
    assert deca.preset("paper").encoder_size() == 224
    networks = training_deca.make_networks(config)
    variables = training_deca.init_variables(config, networks, jax.random.PRNGKey(0))
    mean, std = np.zeros(236, np.float32), np.ones(236, np.float32)
    setup = training_deca.make_setup(config, networks, mean, std)
    codes, _ = stages.predict_codes(setup, variables["E_flame"], images, train=False)
    assert codes["shape"].shape == (2, 100) and np.all(np.isfinite(np.asarray(codes["cam"])))
    with pytest.raises(ValueError, match="images"):  # the encoder itself takes only its input size
        networks.coarse.apply(variables["E_flame"], images, train=False)


def test_flat_adam_is_the_same_update_and_an_old_layout_resumes(tmp_path, capsys):
    """``flat_adam`` (optax.flatten: one Adam over the parameters as one vector) gives the per-array
    update to float32 rounding; a run saved with per-array state (before the field existed) resumes
    with it instead of being taken for a damaged checkpoint."""
    import jax
    import optax

    from jface.training.runs import newest_step

    base = deca.preset("tiny").replace(workdir=str(tmp_path / "run"), stage="pretrain", pretrain_steps=2,
                                       checkpoint_every=1, eval_at_end=False, flat_adam=False)
    data = training_deca.prepare_data(base)
    networks = training_deca.make_networks(base)
    variables = training_deca.init_variables(base, networks, jax.random.PRNGKey(0))
    params = {"E_flame": variables["E_flame"]["params"]}
    rng = np.random.default_rng(0)
    grads = [jax.tree_util.tree_map(lambda x: rng.normal(size=np.shape(x)).astype(np.float32), params)
             for _ in range(3)]
    after = {}
    for flat in (False, True):
        # the stage's own optimizer (make_context), three updates with the same gradients
        ctx = training_deca.make_context(base.replace(flat_adam=flat), "pretrain", networks, *data.code_stats)
        state, current = ctx.optimizer.init(params), params
        for g in grads:
            updates, state = jax.jit(ctx.optimizer.update)(g, state, current)
            current = optax.apply_updates(current, updates)
        after[flat] = jax.tree_util.tree_leaves(current)
    moved = max(float(np.abs(np.asarray(a) - np.asarray(v)).max())
                for a, v in zip(after[False], jax.tree_util.tree_leaves(params)))
    assert moved > 1e-4  # the updates changed the encoder
    for a, b in zip(after[False], after[True]):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7)
    # a config read from an older run (no flat_adam field) keeps the per-array layout
    saved = dataclasses.asdict(base)
    del saved["flat_adam"]
    assert training_deca.config_from_dict(saved).flat_adam is False
    # train 2 steps with per-array state, then resume with today's default (flat) to step 3
    training_deca.train(base, data=data)
    checkpoints = tmp_path / "run" / "pretrain" / "checkpoints"
    assert newest_step(checkpoints) == 2
    capsys.readouterr()
    training_deca.train(base.replace(flat_adam=True, pretrain_steps=3), data=data)
    out = capsys.readouterr().out
    assert "resuming with the Adam state as it was saved (per parameter array; flat_adam=False)" in out, out
    assert "pretrain: resumed from step 2" in out, out
    assert newest_step(checkpoints) == 3
    assert not (tmp_path / "run" / "pretrain" / "checkpoints.damaged").exists()
    assert training_deca.resume_layout(base.replace(flat_adam=True), tmp_path / "nothing").flat_adam is True
