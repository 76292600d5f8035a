"""train.stn: config parsing, data-parallel equivalence, resume, signals, NaN guard, checkpoints,
and a run loaded from its checkpoint alone (``jface.training.stn.load_run``, ``jface.flatten --weights``).

Training runs are subprocesses of ``python -m train.stn --preset tiny`` (float32, as users run it;
the test session itself has x64 on). They share a persistent compilation cache to keep compiles
off the critical path.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
STEPS = 8
COMMON = ["--preset", "tiny", "--steps", str(STEPS), "--checkpoint_every", "2"]


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("jax-cache")


def _env(cache, **extra):
    env = dict(os.environ)
    env.update({
        "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
        "JAX_PLATFORMS": "cpu",
        "JAX_ENABLE_X64": "0",
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
        "XLA_FLAGS": "",
    })
    env.update(extra)
    return env


def _start(cache, workdir, *args, env=None):
    cmd = [sys.executable, "-m", "train.stn", *COMMON, "--workdir", str(workdir),
           "--export", str(workdir / "params.npz"), *args]
    return subprocess.Popen(cmd, cwd=REPO, env=env or _env(cache), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _run(cache, workdir, *args, env=None, expect=0):
    proc = _start(cache, workdir, *args, env=env)
    out, _ = proc.communicate(timeout=1200)
    assert proc.returncode == expect, out
    return out


def _params(path):
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def _assert_params(a, b, exact=False):
    assert a.keys() == b.keys()
    for key in a:
        if exact:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        else:
            np.testing.assert_allclose(a[key], b[key], rtol=2e-4, atol=2e-6, err_msg=key)


def _wait_for_checkpoint(proc, directory, minimum=2, timeout=900):
    start = time.time()
    while time.time() - start < timeout:
        steps = [int(p.name) for p in Path(directory).glob("[0-9]*") if p.name.isdigit()]
        if steps and max(steps) >= minimum:
            return max(steps)
        if proc.poll() is not None:
            raise AssertionError(f"run ended before a checkpoint: {proc.stdout.read()}")
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, jax_cache):
    """One process, one device, uninterrupted; also prints the held-out table."""
    workdir = tmp_path_factory.mktemp("reference")
    out = _run(jax_cache, workdir)
    return workdir, out, _params(workdir / "params.npz")


def test_reference_run_prints_metrics_and_eval_cli(reference, jax_cache):
    workdir, out, _ = reference
    assert "landmark NME (IOD)" in out and "baseline" in out
    # no silent minute: generation and compile are announced; each metric has a verdict
    assert "data: generating 32 training images and 8 held-out images" in out
    assert "stn: compiling the train step" in out and "evaluating on 8 held-out images" in out
    table = out[out.index("held-out metrics on"):].splitlines()
    for row in table[2:5]:
        assert any(v in row for v in ("better (", "worse (", "within noise (")), row
    assert json.loads((workdir / "metrics.json").read_text())["step"] == STEPS
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    proc = subprocess.run([sys.executable, "-m", "train.stn", "--eval", str(workdir / "checkpoints")],
                          cwd=REPO, env=_env(jax_cache), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"step {STEPS}" in proc.stdout and "pose error (deg)" in proc.stdout


def test_second_start_on_the_finished_run_only_reports(reference, capsys, monkeypatch):
    """A finished run is recognised from its folder: no data, no compile, no progress bar; it prints
    the metrics it saved."""
    from jface.data import synthetic_stn
    from train import stn

    workdir, out, _ = reference
    monkeypatch.setenv("JFACE_COMPILATION_CACHE", "0")
    monkeypatch.setattr(synthetic_stn, "generate", lambda *a, **k: pytest.fail("generated data"))
    before = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    start = time.perf_counter()
    assert stn.main([*COMMON, "--workdir", str(workdir)]) == 0
    elapsed = time.perf_counter() - start
    captured = capsys.readouterr()
    assert f"is already finished (step {STEPS} of {STEPS})" in captured.out
    saved = out[out.index("held-out metrics on"):].splitlines()[3]  # the NME row of the first run
    assert saved in captured.out and "stn:" not in captured.err
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == before
    assert elapsed < 5.0, elapsed


def test_readme_train_stn_commands(reference, tmp_path, monkeypatch, capsys):
    """The README's train.stn lines as written with ``--preset tiny ...`` appended (tests/test_readme.py
    leaves them to this test): on a copy of the reference run as runs/stn, the quickstart and
    ``--preset default`` lines find it finished and print its metrics; ``--eval runs/stn`` evaluates it."""
    import shutil

    import jax
    from test_readme import readme_commands, rule_of, run_command

    workdir, _, _ = reference
    shutil.copytree(workdir, tmp_path / "runs" / "stn")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JFACE_COMPILATION_CACHE", "0")
    lines = [c for c in readme_commands() if "test_readme_train_stn_commands" in rule_of(c).why]
    assert {"python -m train.stn", "python -m train.stn --eval runs/stn"} <= set(lines), lines
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", False)  # as a user runs it
    try:
        for line in lines:
            extra = [] if "--eval" in line else [*COMMON, "--workdir", "runs/stn"]
            assert run_command(line, extra) == 0, line
            out = capsys.readouterr().out
            if "--eval" in line:
                assert f"step {STEPS}" in out and "pose error (deg)" in out, out
                assert any(v in out for v in ("better (", "worse (", "within noise (")), out
            else:
                assert f"runs/stn is already finished (step {STEPS} of {STEPS})" in out, out
    finally:
        jax.config.update("jax_enable_x64", previous)


def test_two_processes_match_one(reference, tmp_path, jax_cache):
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    procs = [_start(jax_cache, tmp_path, "--coordinator", f"localhost:{port}", "--num_processes", "2",
                    "--process_id", str(i), "--eval_at_end", "false") for i in range(2)]
    outs = [p.communicate(timeout=1200)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "2 process(es), 2 device(s)" in outs[0]
    p0, p1 = _params(tmp_path / "params.npz.p0"), _params(tmp_path / "params.npz.p1")
    _assert_params(p0, p1, exact=True)
    _assert_params(p0, reference[2])


def test_four_host_devices_match_one(reference, tmp_path, jax_cache):
    env = _env(jax_cache, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    out = _run(jax_cache, tmp_path, "--eval_at_end", "false", env=env)
    assert "1 process(es), 4 device(s)" in out
    _assert_params(_params(tmp_path / "params.npz"), reference[2])


def test_kill9_sigterm_and_resume_match_uninterrupted(reference, tmp_path, jax_cache):
    """kill -9 mid-run, resume, SIGTERM (checkpoint + exit 143), resume: == the uninterrupted run."""
    ckpts = tmp_path / "checkpoints"
    proc = _start(jax_cache, tmp_path, "--eval_at_end", "false", "--step_delay", "0.5")
    first = _wait_for_checkpoint(proc, ckpts, minimum=2)
    proc.kill()
    proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL

    proc = _start(jax_cache, tmp_path, "--eval_at_end", "false", "--step_delay", "0.5")
    _wait_for_checkpoint(proc, ckpts, minimum=first + 2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 143, out
    assert f"resumed from {ckpts} step {first}" in out
    saved = int(re.search(r"checkpoint saved at (?:\w+ )?step (\d+)", out).group(1))
    assert first + 2 <= saved < STEPS and (ckpts / str(saved)).is_dir()
    assert not (tmp_path / "params.npz").exists()

    out = _run(jax_cache, tmp_path, "--eval_at_end", "false")
    assert f"resumed from {ckpts} step {saved}" in out
    _assert_params(_params(tmp_path / "params.npz"), reference[2], exact=True)


def test_resuming_with_another_localiser_names_it_and_keeps_the_run(reference, tmp_path, jax_cache):
    """A run resumed with settings that change the state's layout: one line naming the arrays and
    the setting, exit 2, and the run's checkpoints and config.json left as they were."""
    import shutil

    workdir = tmp_path / "run"
    shutil.copytree(reference[0], workdir)
    saved = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    config = (workdir / "config.json").read_text()
    out = _run(jax_cache, workdir, "--steps", str(STEPS + 2), "--localiser_width", "3", "--eval_at_end", "false",
               expect=2)
    assert "is intact but holds a train state of another layout" in out
    assert "localiser_width: saved 2, now 3" in out and "saved arrays have other shapes" in out
    assert "damaged" not in out and not (workdir / "checkpoints.damaged").exists()
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == saved
    assert (workdir / "config.json").read_text() == config


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, jax_cache):
    # Adam's first step at lr 1e30 moves every weight by ~1e30: step 2's loss overflows.
    out = _run(jax_cache, tmp_path, "--eval_at_end", "false", "--learning_rate", "1e30",
               "--lr_schedule", "constant", "--checkpoint_every", "1", expect=1)
    assert "non-finite training metrics at step 1" in out
    assert "last good checkpoint is step 1" in out
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager(tmp_path / "checkpoints")
    assert list(manager.all_steps()) == [1]
    restored = manager.restore(1)
    leaves = [np.asarray(x) for x in __import__("jax").tree_util.tree_leaves(restored["state"])]
    assert all(np.all(np.isfinite(x)) for x in leaves if np.issubdtype(x.dtype, np.floating))


def test_failed_checkpoint_write_leaves_previous(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    from jface import training as common

    mesh = common.make_mesh()
    state = common.replicate(common.TrainState(
        step=np.int32(1), params={"w": np.arange(3, dtype=np.float32)}, opt_state={},
        rng=np.zeros(2, np.uint32)), mesh)
    ckpt = common.Checkpointer(tmp_path / "ck")
    ckpt.save(1, state, {"step": 1})

    def broken(self, directory, *args, **kwargs):
        (Path(directory) / "partial").write_text("half a checkpoint")
        raise OSError("disk full (injected)")

    for name in ("save", "async_save"):
        if hasattr(ocp.handlers.JsonCheckpointHandler, name):
            monkeypatch.setattr(ocp.handlers.JsonCheckpointHandler, name, broken)
    later = state.replace(params={"w": state.params["w"] + 100})
    with pytest.raises(Exception, match="injected"):
        ckpt.save(2, later, {"step": 2})
    monkeypatch.undo()
    fresh = common.Checkpointer(tmp_path / "ck")
    assert fresh.latest_step() == 1
    restored, data_state, step = fresh.restore(state)
    assert step == 1 and data_state == {"step": 1}
    np.testing.assert_array_equal(np.asarray(restored.params["w"]), np.arange(3))
    fresh.save(2, later, {"step": 2})  # a later save still works
    assert fresh.latest_step() == 2


def test_pitch_and_roll_ranges_reach_the_generator():
    from jface.training import stn

    config = stn.Config(model="toy:16", num_identities=20, images_per_identity=10, image_size=64)
    model = stn.load_model(config)
    ranges = {}
    for roll in (0.0, 35.0):
        data = stn.make_data(config.replace(pitch_deg=5.0, roll_deg=roll), model, split="train", render_images=False)
        ranges[roll] = np.abs(np.asarray(data["pose_deg"])).max(0)
    assert ranges[0.0][2] < 1e-3 and 10 < ranges[35.0][2] <= 35.0 + 1e-3  # roll
    assert ranges[0.0][1] <= 5.0 + 1e-3 and ranges[35.0][1] <= 5.0 + 1e-3  # pitch
    assert abs(ranges[0.0][0] - ranges[35.0][0]) < 1e-3  # yaw: the same draws
    # a run saved before the fields existed keeps the ranges it was trained with
    import dataclasses

    saved = {k: v for k, v in dataclasses.asdict(config.replace(roll_deg=35.0, localiser_norm="grey")).items()
             if k not in ("pitch_deg", "roll_deg", "localiser_norm")}
    old = stn.config_from_dict(saved)
    assert (old.pitch_deg, old.roll_deg, old.localiser_norm) == (20.0, 15.0, "fixed")
    assert stn.make_localiser(config.replace(localiser_norm="grey"), 10).config.input_norm == "grey"


def test_config_overrides_and_errors():
    from train import stn

    assert stn.preset("tiny").model == "toy:16" and stn.preset("default") == stn.Config()
    gpu = stn.preset("gpu")  # the default's recipe at a GPU's budget (BUILD_NOTES' figures)
    assert (gpu.num_identities * gpu.images_per_identity, gpu.localiser_input, gpu.localiser_width, gpu.batch_size,
            gpu.steps, gpu.generator, gpu.shape_weight) == (6000, 128, 16, 64, 6000, "photo", 30.0)
    args, config = stn.parse_args(["--preset", "paper", "--set", "batch_size=8", "--steps", "100",
                                   "--loss_weights=1,0,0,0", "--mirror", "false"])
    assert (config.batch_size, config.steps, config.loss_weights, config.mirror) == (8, 100, (1.0, 0, 0, 0), False)
    assert config.optimizer == "sgd" and config.learning_rate == 1e-10
    assert config.theta_lr_mult == (4.0, 8.0) and config.weight_decay == 5e-4 and not config.theta_bias_decay
    with pytest.raises(ValueError, match="not a config field"):
        stn.parse_args(["--set", "batchsize=8"])
    with pytest.raises(ValueError, match="true/false"):
        stn.parse_args(["--mirror", "maybe"])
    with pytest.raises(ValueError, match="preset"):
        stn.parse_args(["--preset", "huge"])
    for flag, value in (("--localiser_norm", "clahe"), ("--localiser", "vgg"), ("--generator", "real"),
                        ("--framing", "middle")):  # named before any data is made
        with pytest.raises(ValueError, match=f"{flag[2:]}: expected one of .* got '{value}'"):
            stn.parse_args([flag, value])
    assert stn.parse_args(["--localiser_norm", "fixed"])[1].localiser_norm == "fixed"


def test_local_device_ids_flag():
    from jface import training as common
    from train import deca, stn

    args, _ = stn.parse_args(["--local_device_ids", "2"])
    assert args.local_device_ids == [2]
    args, _ = deca.parse_args(["--local_device_ids", "0,3"])
    assert args.local_device_ids == [0, 3]
    assert stn.parse_args([])[0].local_device_ids is None
    for bad in ("a", "1,1", "-1", "0,,1"):
        with pytest.raises(ValueError, match="--local_device_ids: expected distinct non-negative integers"):
            common.parse_device_ids(bad)


def test_one_step_late_hands_over_previous_metrics():
    import jax.numpy as jnp

    from jface import training as common

    seen = []
    late = common.OneStepLate(lambda i, m: seen.append((i, m)))
    late.settle()  # nothing pending: nothing handed over
    late.push(0, {"loss": jnp.float32(1.5)})
    assert seen == []  # step 0's metrics wait until step 1 is dispatched
    late.push(1, {"loss": jnp.float32(2.5)})
    assert seen == [(0, {"loss": 1.5})] and isinstance(seen[0][1]["loss"], float)
    late.settle()
    late.settle()
    assert seen == [(0, {"loss": 1.5}), (1, {"loss": 2.5})]


def test_paper_optimizer_is_matconvnet_sgd():
    """v = 0.9 v - (wd_p w + g); w += lr_p v, with lr x4/x8 and wd 0 on the theta bias
    (MatConvNet's cnn_train_dag with dagnn_3dmmasstn_init.m's multipliers)."""
    import jax.numpy as jnp

    from jface.training.stn import make_optimizer
    from train import stn

    config = stn.preset("paper").replace(learning_rate=0.1)
    params = {"conv": {"kernel": jnp.ones(2)}, "theta": {"kernel": jnp.ones(2), "bias": jnp.ones(2)}}
    grads = {"conv": {"kernel": jnp.full(2, 0.5)}, "theta": {"kernel": jnp.full(2, 0.5), "bias": jnp.full(2, 0.5)}}
    opt = make_optimizer(config, params)
    state = opt.init(params)
    updates, state = opt.update(grads, state, params)
    expect = {"conv": -0.1 * (0.5 + 5e-4), "theta_k": -0.4 * (0.5 + 5e-4), "theta_b": -0.8 * 0.5}
    np.testing.assert_allclose(updates["conv"]["kernel"], expect["conv"], rtol=1e-6)
    np.testing.assert_allclose(updates["theta"]["kernel"], expect["theta_k"], rtol=1e-6)
    np.testing.assert_allclose(updates["theta"]["bias"], expect["theta_b"], rtol=1e-6)
    updates2, _ = opt.update(grads, state, params)  # momentum: second step = (1 + 0.9) x first
    np.testing.assert_allclose(updates2["conv"]["kernel"], 1.9 * expect["conv"], rtol=1e-6)


def test_metric_writer_event_files_parse(tmp_path):
    """MetricWriter's event files (tensorboardX) hold the scalars under ``prefix/name`` at their step."""
    from tensorboardX.proto import event_pb2

    from jface import training

    writer = training.MetricWriter(tmp_path)
    writer.scalars(7, {"loss": 1.5}, prefix="train")
    writer.close()
    data = next(tmp_path.glob("events.out.tfevents.*")).read_bytes()
    records, offset = [], 0
    while offset < len(data):  # TFRecord framing: length, its crc, payload, its crc
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        records.append(data[offset + 12:offset + 12 + length])
        offset += 16 + length
    events = [event_pb2.Event.FromString(r) for r in records]
    scalars = [(e.step, v.tag, v.simple_value) for e in events for v in e.summary.value]
    assert scalars == [(7, "train/loss", 1.5)]


def test_metric_writer_without_tensorboardx_says_so_and_writes_nothing(tmp_path, monkeypatch, capsys):
    """A machine without tensorboardX (the GPU images lack it) trains on: one line, no event files."""
    from jface import training

    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails as if not installed
    writer = training.MetricWriter(tmp_path / "tb")
    writer.scalars(7, {"loss": 1.5}, prefix="train")
    writer.close()
    out = capsys.readouterr().out
    assert "tensorboardX is not installed" in out and str(tmp_path / "tb") in out
    assert not writer.enabled and not list(tmp_path.rglob("events.out.tfevents.*"))


# --- a run directory is self-contained ----------------------------------------------------------

def _no_data_generation(monkeypatch):
    from jface.data import synthetic_stn

    def refuse(*args, **kwargs):
        raise AssertionError("loading a run generated training data")

    monkeypatch.setattr(synthetic_stn, "generate", refuse)


def test_run_metadata_is_saved_and_loads_without_data(reference, monkeypatch):
    """Every checkpoint carries the config, the face model and the theta whitening; load_run needs
    nothing else (the data generator is made to raise) and predicts exactly what the trainer's own
    context (whitening from the regenerated training data) predicts with the saved params."""
    import jax
    import jax.numpy as jnp

    from jface.training import checkpoint
    from jface.training import stn as stn_training
    from train import stn

    workdir, _, params = reference
    run = checkpoint.read_run(workdir / "checkpoints")
    config = stn.parse_args([*COMMON, "--workdir", str(workdir), "--export", str(workdir / "params.npz")])[1]
    assert stn_training.config_from_dict(run["config"]) == config
    assert run["face_model"]["model"] == "toy:16" and len(run["face_model"]["sha256"]) == 64
    ctx = stn_training.build(config, with_eval=False)[0]  # this session has x64 on: equal to ~1 ulp
    np.testing.assert_allclose(np.asarray(run["theta_whitening"]["mean"], np.float32), ctx.whitening.mean, rtol=1e-6)

    _no_data_generation(monkeypatch)
    start = time.perf_counter()
    loaded = stn_training.load_run(workdir)
    elapsed = time.perf_counter() - start
    assert loaded.step == STEPS and loaded.config == config and elapsed < 60
    flat = {"/".join(getattr(k, "key", str(k)) for k in key): np.asarray(v)
            for key, v in jax.tree_util.tree_flatten_with_path(loaded.params)[0]}
    _assert_params(flat, params, exact=True)
    images = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    theta = loaded.predict(images)
    assert theta.shape == (2, 6 + 10) and np.all(np.isfinite(theta))
    expected = jax.jit(lambda p, im: stn_training.predict_theta(ctx, p, im))(loaded.params, jnp.asarray(images))
    np.testing.assert_allclose(theta, np.asarray(expected), rtol=1e-5, atol=1e-5)


def test_flatten_weights_loads_a_run_without_data(reference, tmp_path, monkeypatch):
    from jface import flatten
    from jface.data.crops import from_stn_frame
    from jface.data.synthetic_stn import toy_model
    from jface.stn import project

    workdir = reference[0]
    model = toy_model(16)
    folder = tmp_path / "faces" / "alice"
    folder.mkdir(parents=True)
    theta = np.concatenate([[0, 0.2, 0], [112, 110], [25.0], np.zeros(10)])
    aflw = np.asarray(project(model, theta)["points"])[np.asarray(model.landmarks["aflw21"])]
    points = np.repeat(aflw.mean(0, keepdims=True), 68, 0)  # iBUG points without an AFLW twin: the centre
    for k, group in enumerate(flatten.IBUG68_TO_AFLW21):
        points[list(group)] = aflw[k]
    image = np.random.default_rng(1).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    Image.fromarray(image).save(folder / "a.png")
    np.savetxt(folder / "a.txt", from_stn_frame(points))
    _no_data_generation(monkeypatch)
    start = time.perf_counter()
    summary = flatten.run([tmp_path / "faces"], tmp_path / "out", weights=workdir, batch_size=2,
                          log=lambda *_: None)
    elapsed = time.perf_counter() - start
    assert summary["theta_source"] == "weights" and len(summary["images"]) == 1 and elapsed < 120
    with np.load(summary["images"][0]["npz"]) as z:
        assert z["texture"].shape == (16, 16, 3) and z["theta"].shape == (16,)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["theta_source"] == "weights"


def test_old_run_without_metadata_is_a_clear_error(tmp_path, capsys):
    """A run saved before checkpoints carried their metadata: one line naming the directory and
    what is missing, from jface.flatten --weights and train.stn --eval alike."""
    from jface import flatten
    from jface import training as common
    from train import stn

    mesh = common.make_mesh()
    state = common.replicate(common.TrainState(
        step=np.int32(1), params={"theta": {"bias": np.zeros(16, np.float32)}}, opt_state={},
        rng=np.zeros(2, np.uint32)), mesh)
    ckpt = common.Checkpointer(tmp_path / "old" / "checkpoints")
    ckpt.save(1, state, {"step": 1})  # no run item
    ckpt.close()
    faces = tmp_path / "faces"
    faces.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(faces / "a.png")
    np.savetxt(faces / "a.txt", np.random.default_rng(0).uniform(5, 35, (68, 2)))
    for main, argv in ((flatten.main, [str(faces), "-o", str(tmp_path / "o"), "--weights", str(tmp_path / "old")]),
                       (stn.main, ["--eval", str(tmp_path / "old")])):
        assert main(argv) != 0
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert str(tmp_path / "old" / "checkpoints") in err and "run metadata" in err, err


def test_a_run_shorter_than_its_warm_up_gets_a_shorter_warm_up():
    """``--steps 1`` with the default 20 warm-up steps: the schedule warms up over the run instead of
    failing inside optax with a negative decay length."""
    import jax
    import jax.numpy as jnp

    from jface.training import stn as stn_training
    from train import stn as train_stn

    config = train_stn.preset("default").replace(steps=1)
    params = {"theta": {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2)}}
    optimizer = stn_training.make_optimizer(config, params)
    state = optimizer.init(params)
    updates, _ = optimizer.update(jax.tree_util.tree_map(jnp.ones_like, params), state, params)
    assert all(np.isfinite(np.asarray(u)).all() for u in jax.tree_util.tree_leaves(updates))


@pytest.mark.parametrize("generator", ["splat", "photo"])
def test_empty_generated_split_is_a_usage_error_before_any_work(generator, tmp_path, monkeypatch):
    """Zero identities (or images per identity) in either split: one UsageError naming the fields,
    raised before the generator or the data cache is touched (the splat generator used to write an
    empty cache entry and train on nothing)."""
    import dataclasses

    from jface.cli import UsageError
    from jface.training import stn as stn_training
    from train import stn

    monkeypatch.setenv("JFACE_DATA_CACHE", str(tmp_path / "cache"))
    config = dataclasses.replace(stn.preset("tiny"), generator=generator)
    model = stn_training.load_model(config)
    with pytest.raises(UsageError, match=r"num_identities x images_per_identity: expected >= 1 .* train image, got 0"):
        stn_training.make_data(dataclasses.replace(config, num_identities=0), model, split="train")
    with pytest.raises(UsageError, match=r"eval_identities x eval_images_per_identity: .* held-out image, got 0"):
        stn_training.make_data(dataclasses.replace(config, eval_images_per_identity=0), model, split="eval")
    assert not (tmp_path / "cache").exists()  # no cache entry was written


def test_shape_term_on_the_unmirrored_generated_images(tmp_path, monkeypatch):
    """The loss adds shape_weight x the 3D shape loss of the unmirrored images against their
    generated theta; batches without theta (real photographs) get none; the paper preset and runs
    saved before the field existed train without it."""
    import dataclasses

    import jax
    import jax.numpy as jnp

    from jface import stn as stn_ops
    from jface.training import stn as stn_training
    from train import stn

    monkeypatch.setenv("JFACE_CACHE", str(tmp_path / "cache"))
    config = stn.preset("tiny").replace(shape_weight=7.0, workdir=str(tmp_path / "run"))
    ctx, state, loader, _, _ = stn_training.build(config, with_eval=False)
    batch = {k: jnp.asarray(v) for k, v in loader.local_batch(0).items()}
    assert batch["theta"].shape[0] == batch["images"].shape[0] and bool(batch["mirrored"][1])
    loss, (metrics, out) = stn_training.loss_and_outputs(ctx, state.params, batch)
    shapes = jax.vmap(lambda th: stn_ops.project(ctx.model, th)["shape"])
    pred, true = np.asarray(shapes(out["theta"])), np.asarray(shapes(batch["theta"]))
    per_item = np.mean(np.sum((pred - true) ** 2, -1), -1)
    expect = per_item[~np.asarray(batch["mirrored"])].mean()
    assert expect > 0
    np.testing.assert_allclose(metrics["loss_shape"], expect, rtol=1e-5)
    np.testing.assert_allclose(loss, out["loss"] + 7.0 * expect, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-6)
    # no theta in the batch (a photo folder) or weight 0: the original's losses alone
    no_theta = {k: v for k, v in batch.items() if k != "theta"}
    for cfg, b in ((ctx.config, no_theta), (ctx.config.replace(shape_weight=0.0), batch)):
        loss0, (metrics0, out0) = stn_training.loss_and_outputs(dataclasses.replace(ctx, config=cfg), state.params, b)
        assert "loss_shape" not in metrics0
        np.testing.assert_allclose(loss0, out0["loss"], rtol=0)
    # a gradient reaches the localiser through the shape term alone
    grads = jax.grad(lambda p: stn_training.loss_and_outputs(ctx, p, batch)[1][0]["loss_shape"])(state.params)
    assert float(jax.tree_util.tree_reduce(lambda a, x: a + jnp.sum(jnp.abs(x)), grads, 0.0)) > 0
    assert stn.preset("default").shape_weight == 30.0 and stn.preset("paper").shape_weight == 0.0
    assert stn_training.config_from_dict({"steps": 3}).shape_weight == 0.0  # a run saved before the field
    for bad in (-1.0, float("nan"), float("inf")):  # refused before any data is made
        with pytest.raises(stn_training.UsageError, match="shape_weight: expected a finite number >= 0"):
            stn_training.build(config.replace(shape_weight=bad), with_eval=False)
