"""jface.training.checkpoint: self-contained runs, resume that falls back past damaged steps, and
the workdir lock."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from jface import training
from jface.training.checkpoint import (
    CheckpointError,
    CheckpointLayoutError,
    RunFormatError,
    WorkdirBusyError,
    WorkdirLock,
    read_run,
    restore_params,
)


def _state(value):
    return training.TrainState(step=np.asarray(value, np.int32),
                               params={"dense": {"kernel": np.full((3, 2), value, np.float32)}},
                               opt_state={"mu": np.zeros(2, np.float32)}, rng=np.zeros(2, np.uint32))


def _write(directory, steps, *, run=True):
    ckpt = training.Checkpointer(directory, max_to_keep=5)
    for step in steps:
        ckpt.save(step, _state(step), {"epoch": step}, run={"config": {"lr": 0.1}, "step": step} if run else None)
    ckpt.close()


def test_run_metadata_and_params_load_without_a_template(tmp_path):
    _write(tmp_path / "ckpt", [3, 6])
    assert read_run(tmp_path / "ckpt") == {"config": {"lr": 0.1}, "step": 6}
    params, step = restore_params(tmp_path / "ckpt")
    assert step == 6
    np.testing.assert_array_equal(params["dense"]["kernel"], np.full((3, 2), 6, np.float32))


def test_a_run_saved_without_metadata_names_what_is_missing(tmp_path):
    _write(tmp_path / "ckpt", [2], run=False)
    with pytest.raises(RunFormatError, match="no run metadata"):
        read_run(tmp_path / "ckpt")
    with pytest.raises(FileNotFoundError, match="no such run"):
        read_run(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="got a file"):
        read_run(tmp_path / "file")


def _restore(directory):
    ckpt = training.Checkpointer(directory, max_to_keep=5)
    try:
        return ckpt.restore(jax.tree_util.tree_map(np.asarray, _state(0)))
    finally:
        ckpt.close()


def test_truncated_array_file_falls_back_to_the_previous_step(tmp_path, capsys):
    _write(tmp_path / "ckpt", [3, 6])
    data_files = [p for p in (tmp_path / "ckpt" / "6" / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert data_files  # orbax's OCDBT data files
    for path in data_files:  # truncated, as a full disk or an interrupted copy leaves them
        path.write_bytes(path.read_bytes()[:5])
    state, data_state, step = _restore(tmp_path / "ckpt")
    assert step == 3 and data_state == {"epoch": 3}
    np.testing.assert_array_equal(state.params["dense"]["kernel"], np.full((3, 2), 3, np.float32))
    err = capsys.readouterr().err
    assert "step 6" in err and "damaged" in err and "falling back to step 3" in err
    moved = list((tmp_path / "ckpt.damaged").iterdir())
    assert len(moved) == 1 and moved[0].name.startswith("6_")  # kept, not deleted
    assert not (tmp_path / "ckpt" / "6").exists()


def test_hollow_latest_checkpoint_falls_back(tmp_path, capsys):
    """What two concurrent runs once left: a step directory holding only its commit marker."""
    _write(tmp_path / "ckpt", [9])
    hollow = tmp_path / "ckpt" / "12"
    hollow.mkdir()
    (hollow / "commit_success.txt").write_text("Checkpoint successfully committed")
    (hollow / "_CHECKPOINT_METADATA").write_text((tmp_path / "ckpt" / "9" / "_CHECKPOINT_METADATA").read_text())
    _, _, step = _restore(tmp_path / "ckpt")
    assert step == 9
    assert "step 12" in capsys.readouterr().err


def test_every_step_damaged_is_an_error(tmp_path):
    _write(tmp_path / "ckpt", [4])
    for path in (tmp_path / "ckpt" / "4" / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="every checkpoint step is damaged"):
        _restore(tmp_path / "ckpt")


def test_a_state_of_another_layout_is_named_and_left_in_place(tmp_path, capsys):
    """An intact step saved with other networks or optimiser state is not damage: the error names
    the arrays and the config fields that differ, and no step is moved aside."""
    _write(tmp_path / "ckpt", [3, 6])
    other = training.TrainState(
        step=np.asarray(0, np.int32),
        params={"dense": {"kernel": np.zeros((4, 2), np.float32), "bias": np.zeros(2, np.float32)}},
        opt_state={"mu": np.zeros(2, np.float32)}, rng=np.zeros(2, np.uint32))
    ckpt = training.Checkpointer(tmp_path / "ckpt", max_to_keep=5)
    try:
        with pytest.raises(CheckpointLayoutError) as info:
            ckpt.restore(other, config={"lr": 0.5, "workdir": "elsewhere"})
    finally:
        ckpt.close()
    message = str(info.value)
    assert str(tmp_path / "ckpt") in message and "step 6" in message
    assert "params/dense/bias" in message and "params/dense/kernel (3, 2) (run: (4, 2))" in message
    assert "differs in lr: saved 0.1, now 0.5. It" in message  # workdir and steps are not settings
    assert "damaged" not in capsys.readouterr().err
    assert not (tmp_path / "ckpt.damaged").exists()
    assert sorted(int(p.name) for p in (tmp_path / "ckpt").iterdir() if p.name.isdigit()) == [3, 6]
    state, _, step = _restore(tmp_path / "ckpt")  # the run's own layout still resumes
    assert step == 6
    # a damaged step of the same layout is still damage: truncated, it is moved aside as before
    for path in (tmp_path / "ckpt" / "6" / "state").rglob("*"):
        if path.is_file() and path.parent.name == "d":
            path.write_bytes(path.read_bytes()[:5])
    assert _restore(tmp_path / "ckpt")[2] == 3
    assert len(list((tmp_path / "ckpt.damaged").iterdir())) == 1


def test_write_config_keeps_a_differing_previous_file(tmp_path):
    from jface.training.runs import write_config

    write_config(tmp_path, {"lr": 0.1})
    write_config(tmp_path, {"lr": 0.1})  # the same settings: nothing kept aside
    assert not (tmp_path / "config.previous.json").exists()
    write_config(tmp_path, {"lr": 0.2})
    assert json.loads((tmp_path / "config.json").read_text()) == {"lr": 0.2}
    assert json.loads((tmp_path / "config.previous.json").read_text()) == {"lr": 0.1}


def test_workdir_lock_refuses_a_second_run_and_recognises_a_stale_lock(tmp_path, capsys):
    with WorkdirLock(tmp_path / "run"):
        with pytest.raises(WorkdirBusyError, match="in use by another run"):
            WorkdirLock(tmp_path / "run").acquire()
    # released: the next run takes it silently
    with WorkdirLock(tmp_path / "run"):
        pass
    assert "stale" not in capsys.readouterr().err
    # a killed holder leaves its record but no kernel lock
    (tmp_path / "run" / ".lock").write_text(json.dumps({"pid": 999999, "host": "h"}))
    with WorkdirLock(tmp_path / "run"):
        pass
    assert "stale lock" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="got a file"):
        WorkdirLock(tmp_path / "file").acquire()


def test_workdir_lock_across_processes(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from jface.training.checkpoint import WorkdirLock
        with WorkdirLock({str(tmp_path / 'run')!r}):
            print('locked', flush=True)
            sys.stdin.readline()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(WorkdirBusyError, match=f"pid.*{holder.pid}"):
            WorkdirLock(tmp_path / "run").acquire()
    finally:
        holder.communicate("\n", timeout=60)
    with WorkdirLock(tmp_path / "run"):
        pass


def test_train_stn_refuses_a_busy_workdir(tmp_path, capsys):
    from train import stn

    with WorkdirLock(tmp_path / "run"):
        code = stn.main(["--preset", "tiny", "--workdir", str(tmp_path / "run"), "--eval_at_end", "false"])
    assert code == 2
    assert "in use by another run" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_unknown_flag_suggests_the_field(capsys):
    from train import stn

    assert stn.main(["--stpes", "10"]) == 2
    assert "did you mean --steps?" in capsys.readouterr().err
