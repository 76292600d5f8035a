"""One error style for every command (jface.cli): a user's mistake -- an unknown flag, a bad preset, a
missing, unreadable or refused file, an output path or workdir that cannot be used, a disk that refuses
a checkpoint -- is one line on stderr naming the input, exit status 2, no traceback. Called as
``main(argv)`` in this process (argparse's own exits as ``SystemExit(2)``), nothing trained."""

from __future__ import annotations

import os
import stat

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jface import cli, training
from jface.flatten import main as flatten_main
from jface.models import save_model
from jface.models.__main__ import main as models_main
from jface.stn.demo import main as demo_main
from jface.stn.toy import toy_grid_model
from jface.training.loop import CheckpointWriteError, save_checkpoint
from jface.weights.__main__ import main as weights_main
from train import deca as train_deca
from train import stn as train_stn

ROOT = os.geteuid() == 0  # root ignores file permissions: the chmod cases need another user
MAINS = {"train.stn": train_stn.main, "train.deca": train_deca.main, "stn.demo": demo_main,
         "models": models_main, "weights": weights_main, "flatten": flatten_main}


@pytest.fixture()
def files(tmp_path, monkeypatch):
    """Inputs for the cases: a plain file, a folder, a refused pickle, a model without landmarks."""
    monkeypatch.setenv("JFACE_COMPILATION_CACHE", "0")  # main() would switch it on for this process
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "a_folder").mkdir()
    # a pickle that asks for os.system: refused by the restricted unpickler, nothing executed
    (tmp_path / "evil.pkl").write_bytes(b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00idq\x01\x85q\x02Rq\x03.")
    model = toy_grid_model(8)
    save_model(model.replace(landmarks={}), tmp_path / "no_landmarks.npz")
    (tmp_path / "locked.mat").write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 200)
    (tmp_path / "locked.mat").chmod(0)
    (tmp_path / "faces").mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "faces" / "a.png")
    np.savetxt(tmp_path / "faces" / "a.txt", np.random.default_rng(0).uniform(5, 35, (68, 2)))
    (tmp_path / "read_only").mkdir()
    (tmp_path / "read_only").chmod(stat.S_IRUSR | stat.S_IXUSR)
    yield tmp_path
    (tmp_path / "read_only").chmod(stat.S_IRWXU)


CASES = [
    # (id, command, argv, text the line must hold)
    ("stn-unknown-flag", "train.stn", ["--stpes", "10"], "did you mean --steps?"),
    ("stn-unknown-program-flag", "train.stn", ["--evl", "runs/x"], "did you mean --eval?"),
    ("deca-unknown-flag", "train.deca", ["--pretrain_stpes", "3"], "did you mean --pretrain_steps?"),
    ("demo-unknown-flag", "stn.demo", ["-o", "out", "--max-stpes", "3"], "did you mean --max-steps"),
    ("models-unknown-flag", "models", ["convert", "x.pkl", "-o", "y.npz", "--landmark-embeding", "z"],
     "did you mean --landmark-embedding"),
    ("models-unknown-command", "models", ["prepare-stm"], "did you mean 'prepare-stn'?"),
    ("weights-unknown-flag", "weights", ["convert", "deca", "a.tar", "-o", "b.npz", "--outptu", "c"],
     "did you mean --output"),
    ("stn-bad-preset", "train.stn", ["--preset", "nonsense"], "nonsense"),
    ("deca-bad-preset", "train.deca", ["--preset", "nonsense"], "nonsense"),
    ("stn-bad-value", "train.stn", ["--steps", "many"], "--steps"),
    ("demo-missing-data", "stn.demo", ["--data", "missing.mat", "-o", "out"], "missing.mat: no such file"),
    ("demo-data-is-folder", "stn.demo", ["--data", "a_folder", "-o", "out"], "a_folder"),
    ("demo-unreadable-data", "stn.demo", ["--data", "locked.mat", "-o", "out"], "locked.mat"),
    ("demo-out-is-file", "stn.demo", ["-o", "a_file"], "-o a_file: expected a folder, but it is a file"),
    ("demo-model-without-aflw21", "stn.demo", ["--model", "no_landmarks.npz", "-o", "out"],
     "python -m jface.models add-landmarks no_landmarks.npz --landmarks aflw21=Landmarks21_8.anl"),
    ("flatten-model-without-aflw21", "flatten", ["faces", "-o", "flat", "--fit-landmarks", "--model",
                                                 "no_landmarks.npz"], "add-landmarks no_landmarks.npz"),
    ("stn-missing-model", "train.stn", ["--model", "/nonexistent.npz", "--workdir", "run"],
     "/nonexistent.npz: no such file"),
    ("stn-model-without-aflw21", "train.stn", ["--preset", "tiny", "--model", "no_landmarks.npz", "--workdir", "run"],
     "add-landmarks no_landmarks.npz"),
    ("stn-eval-missing", "train.stn", ["--eval", "/nonexistent"], "/nonexistent"),
    ("stn-eval-file", "train.stn", ["--eval", "a_file"], "a_file"),
    ("stn-workdir-is-file", "train.stn", ["--workdir", "a_file"], "--workdir a_file: expected a folder"),
    ("stn-workdir-read-only", "train.stn", ["--workdir", "read_only"], "read_only: the folder is not writable"),
    ("deca-workdir-is-file", "train.deca", ["--workdir", "a_file/run"], "a_file is a file"),
    ("deca-eval-missing", "train.deca", ["--eval", "/nonexistent"], "/nonexistent"),
    ("deca-missing-model", "train.deca", ["--preset", "tiny", "--model", "/nonexistent.pkl", "--workdir", "run"],
     "/nonexistent.pkl: no such file"),
    ("deca-refused-model", "train.deca", ["--preset", "tiny", "--model", "evil.pkl", "--workdir", "run"],
     "evil.pkl"),
    ("models-missing-file", "models", ["info", "missing.pkl"], "missing.pkl: no such file"),
    ("models-output-is-folder", "models", ["prepare-stn", "--bfm", "b.mat", "--expression", "e.mat", "--uv",
                                           "u.mat", "--map", "m.mat", "-o", "a_folder"],
     "-o a_folder: expected a file name, but it is a folder"),
    ("models-add-landmarks-missing", "models", ["add-landmarks", "no_landmarks.npz", "--landmarks",
                                                "aflw21=missing.anl"], "missing.anl"),
    ("weights-missing-file", "weights", ["convert", "deca", "missing.tar", "-o", "w.npz"],
     "missing.tar: no such file"),
    ("weights-output-in-a-file", "weights", ["convert", "deca", "evil.pkl", "-o", "a_file/w.npz"],
     "its folder a_file is a file"),
]


@pytest.mark.parametrize("command,argv,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_mistake_is_one_line_exit_2(files, capsys, command, argv, expected):
    if ROOT and any(name in argv for name in ("locked.mat", "read_only")):
        pytest.skip("running as root: file permissions are not enforced")
    try:
        code = MAINS[command](argv)
    except SystemExit as stop:  # argparse's exits
        code = stop.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert expected in err, err


def test_a_failed_start_writes_nothing(files, capsys):
    assert train_stn.main(["--model", "/nonexistent.npz", "--workdir", "new_run"]) == 2
    assert not (files / "new_run").exists()
    capsys.readouterr()


# --- a disk that refuses a checkpoint -------------------------------------------------------------

OPT = optax.sgd(0.1)


def _step(state, batch):
    grads = jax.grad(lambda w: jnp.mean((batch["x"] @ w - batch["y"]) ** 2))(state.params)
    updates, opt_state = OPT.update(grads, state.opt_state, state.params)
    return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                         opt_state=opt_state), {"loss": jnp.float32(0)}


class _Loader:
    def __init__(self):
        self.index = 0

    def __next__(self):
        self.index += 1
        return {"x": np.ones((2, 3), np.float32), "y": np.ones(2, np.float32)}

    def get_state(self):
        return {"index": self.index}

    def set_state(self, state):
        self.index = state["index"]


def _state(mesh):
    params = np.zeros(3, np.float32)
    host = training.TrainState(step=np.zeros((), np.int32), params=params, opt_state=OPT.init(params),
                               rng=np.zeros(2, np.uint32))
    return training.replicate(jax.tree_util.tree_map(np.asarray, host), mesh)


def _train(directory, steps, *, every=2):
    mesh = training.make_mesh()
    ckpt = training.Checkpointer(directory, max_to_keep=3)
    try:
        return training.train_loop(_state(mesh), jax.jit(_step), _Loader(), mesh, ckpt, steps=steps,
                                   checkpoint_every=every, log_every=1, desc="toy", log=lambda _: None)
    finally:
        ckpt.close()


def _tmp_folders(directory):
    return [p.name for p in directory.rglob("*") if "orbax-checkpoint-tmp" in p.name]


def test_full_disk_while_checkpointing_is_one_error_and_leaves_no_tmp(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    directory = tmp_path / "ck"
    mesh = training.make_mesh()
    ckpt = training.Checkpointer(directory)
    state = _state(mesh)
    save_checkpoint(ckpt, 2, state, {"index": 2})

    def full(self, path, *args, **kwargs):
        (path / "partial.bin").write_bytes(b"half")
        raise ValueError("RESOURCE_EXHAUSTED: Error writing local file: No space left on device [injected]")

    for name in ("save", "async_save"):
        if hasattr(ocp.handlers.JsonCheckpointHandler, name):
            monkeypatch.setattr(ocp.handlers.JsonCheckpointHandler, name, full)
    with pytest.raises(CheckpointWriteError) as err:
        save_checkpoint(ckpt, 4, state, {"index": 4}, previous=2)
    monkeypatch.undo()
    ckpt.close()
    message = str(err.value)
    assert "\n" not in message and str(directory) in message and "step 4" in message
    assert "RESOURCE_EXHAUSTED" in message and "the checkpoint of step 2 is intact" in message
    assert _tmp_folders(directory) == []
    assert training.Checkpointer(directory).all_steps() == [2]


@pytest.mark.skipif(ROOT, reason="running as root: file permissions are not enforced")
def test_read_only_checkpoint_folder_is_one_error(tmp_path):
    directory = tmp_path / "ck"
    ckpt = training.Checkpointer(directory)
    state = _state(training.make_mesh())
    save_checkpoint(ckpt, 2, state, {"index": 2})
    directory.chmod(stat.S_IRUSR | stat.S_IXUSR)  # the disk turns read-only mid-run
    try:
        with pytest.raises(CheckpointWriteError, match="cannot write the checkpoint of step 4") as err:
            save_checkpoint(ckpt, 4, state, {"index": 4}, previous=2)
        assert "\n" not in str(err.value) and "step 2 is intact" in str(err.value)
    finally:
        directory.chmod(stat.S_IRWXU)
        ckpt.close()
    assert _tmp_folders(directory) == []
    assert training.Checkpointer(directory).all_steps() == [2]


def test_train_loop_raises_the_one_line_error(tmp_path, monkeypatch):
    import orbax.checkpoint as ocp

    def full(self, path, *args, **kwargs):
        raise OSError(28, "No space left on device", str(path))

    for name in ("save", "async_save"):
        if hasattr(ocp.handlers.JsonCheckpointHandler, name):
            monkeypatch.setattr(ocp.handlers.JsonCheckpointHandler, name, full)
    with pytest.raises(CheckpointWriteError, match="no earlier checkpoint was written"):
        _train(tmp_path / "ck", 2)
    assert _tmp_folders(tmp_path / "ck") == []


def test_cli_one_line_helpers(tmp_path):
    err = OSError(13, "Permission denied", str(tmp_path / "x"))
    assert cli.one_line(err) == f"{tmp_path / 'x'}: permission denied"
    assert cli.close_option("--stpes", ["--steps", "--seed"]) == "--steps"
    assert cli.run("prog", lambda: 0) == 0

    def full():
        raise OSError(28, "No space left on device", "out.npz")

    assert cli.run("prog", full) == 2

    def bug():
        raise KeyError("a bug")

    with pytest.raises(KeyError):  # a bug keeps its traceback
        cli.run("prog", bug)
