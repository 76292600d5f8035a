"""jface.training.train_loop on a toy regression: checkpoints, bit-identical resume, the NaN guard."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jface import training


class _Loader:
    """Deterministic batches indexed by a counter: its state is the counter."""

    def __init__(self, poison_at=None):
        self.index = 0
        self.poison_at = poison_at

    def __next__(self):
        rng = np.random.default_rng(self.index)
        x = rng.normal(size=(4, 3)).astype(np.float32)
        y = x @ np.array([1.0, -2.0, 0.5], np.float32)
        if self.poison_at is not None and self.index == self.poison_at:
            y[:] = np.nan
        self.index += 1
        return {"x": x, "y": y}

    def get_state(self):
        return {"index": self.index}

    def set_state(self, state):
        self.index = int(state["index"])


OPT = optax.adam(0.1)


def _step(state, batch):
    def loss_fn(w):
        return jnp.mean((batch["x"] @ w - batch["y"]) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = OPT.update(grads, state.opt_state, state.params)
    new = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state)
    return new, {"loss": loss}


def _run(directory, steps, loader, *, every=4):
    mesh = training.make_mesh()
    params = np.zeros(3, np.float32)
    host = training.TrainState(step=np.zeros((), np.int32), params=params, opt_state=OPT.init(params),
                               rng=np.zeros(2, np.uint32))
    host = jax.tree_util.tree_map(np.asarray, host)
    state = training.replicate(host, mesh)
    ckpt = training.Checkpointer(directory, max_to_keep=3)
    restored = ckpt.restore(state)
    last = None
    if restored is not None:
        state, data_state, last = restored
        loader.set_state(data_state)
    step_fn = jax.jit(functools.partial(_step))
    try:
        state, step = training.train_loop(state, step_fn, loader, mesh, ckpt, steps=steps, checkpoint_every=every,
                                          log_every=1, desc="toy", run={"what": "toy"}, last_saved=last,
                                          log=lambda _: None)
    finally:
        ckpt.close()
    return jax.device_get(state.params), step


def test_resume_continues_bit_identically(tmp_path):
    straight, step = _run(tmp_path / "a", 10, _Loader())
    assert step == 10
    _run(tmp_path / "b", 6, _Loader())  # an interrupted run: stops at 6 (checkpoint at 4 and at its end)
    resumed, step = _run(tmp_path / "b", 10, _Loader())
    assert step == 10
    np.testing.assert_array_equal(resumed, straight)
    assert training.checkpoint.read_run(tmp_path / "b") == {"what": "toy"}
    truth = np.array([1.0, -2.0, 0.5])
    assert np.linalg.norm(straight - truth) < 0.7 * np.linalg.norm(truth)  # it learns (from w = 0)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(training.NonFiniteLossError, match="the last good checkpoint is step 4"):
        _run(tmp_path / "c", 10, _Loader(poison_at=5))
    assert training.Checkpointer(tmp_path / "c").all_steps() == [4]


def test_compilation_cache_folder_and_switch(tmp_path, monkeypatch):
    previous = jax.config.jax_compilation_cache_dir
    try:
        monkeypatch.setenv("JFACE_COMPILATION_CACHE", "0")
        assert training.enable_compilation_cache(tmp_path / "xla") is None
        monkeypatch.delenv("JFACE_COMPILATION_CACHE")
        monkeypatch.setenv("JFACE_CACHE", str(tmp_path))
        assert training.enable_compilation_cache() == tmp_path / "xla"
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla") and (tmp_path / "xla").is_dir()
    finally:
        jax.config.update("jax_compilation_cache_dir", previous)
