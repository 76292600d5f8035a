"""jface.data.generated_cache: generated splits written once to disk, reused by later runs with the
same key, regenerated when the key changes or an entry is damaged, off with JFACE_DATA_CACHE=0."""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time

import numpy as np
import pytest

from jface.data import generated_cache
from jface.data.generated_cache import cached_arrays, cached_call, call_key, data_cache_dir
from jface.training import deca as deca_training
from jface.training import stn as stn_training
from train import deca as train_deca
from train import stn as train_stn


@dataclasses.dataclass(frozen=True)
class FakeConfig:
    count: int = 3
    scale: float = 1.5
    look: tuple = ("a", 2)


CALLS = []


def fake_generator(model, config: FakeConfig, *, seed: int) -> dict:
    """A stand-in generator: deterministic in its arguments, records each call."""
    CALLS.append(seed)
    rng = np.random.default_rng(seed)
    images = (rng.uniform(0, 255, (config.count, 8, 8, 3)) * config.scale).clip(0, 255).astype(np.uint8)
    return {"images": images, "labels": rng.normal(size=(config.count, 21, 3)).astype(np.float32),
            "identity": np.arange(config.count, dtype=np.int64) + int(model["offset"][0]), "unused": None}


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    """A fresh cache folder for one test (JFACE_DATA_CACHE), and the log lines it printed."""
    monkeypatch.setenv("JFACE_DATA_CACHE", str(tmp_path / "data-cache"))
    CALLS.clear()
    lines = []
    return tmp_path / "data-cache", lines


def _call(lines, *, seed=0, config=FakeConfig(), model=None, files=()):
    model = {"offset": np.array([0, 1])} if model is None else model
    return cached_call("3 fake images", fake_generator, (model, config), dict(seed=seed), files=files,
                       log=lines.append)


def _entry(root):
    entries = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(entries) == 1, entries
    return entries[0]


def test_second_call_reads_the_cache_lazily(cache):
    root, lines = cache
    first = _call(lines)
    second = _call(lines)
    assert CALLS == [0], "the second call must read the cache, not generate"
    assert lines[0].startswith("data: generating 3 fake images, cached at ") and "reusing" in lines[1]
    entry = _entry(root)
    assert str(entry) in lines[0] and lines[1] == f"data: reusing generated 3 fake images from {entry}"
    expected = fake_generator({"offset": np.array([0, 1])}, FakeConfig(), seed=0)
    for arrays in (first, second):  # the first run reads back what it wrote: both see the same arrays
        assert list(arrays) == list(expected)
        assert arrays["unused"] is None
        for name in ("images", "labels", "identity"):
            assert isinstance(arrays[name], np.memmap) and not arrays[name].flags.writeable, name
            assert arrays[name].dtype == expected[name].dtype
            np.testing.assert_array_equal(arrays[name], expected[name])
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["arrays"]["images"] == {"shape": [3, 8, 8, 3], "dtype": "|u1"}
    assert manifest["key"]["call"]["function"].endswith("test_generated_cache.fake_generator")
    assert (entry / "DONE").is_file() and not [p for p in root.iterdir() if ".tmp-" in p.name]


def test_a_different_key_regenerates(cache, tmp_path):
    root, lines = cache
    backgrounds = tmp_path / "backgrounds"
    backgrounds.mkdir()
    (backgrounds / "a.png").write_bytes(b"x")
    variants = [dict(), dict(seed=1), dict(config=FakeConfig(count=4)), dict(config=FakeConfig(scale=1.25)),
                dict(config=FakeConfig(look=("b", 2))), dict(model={"offset": np.array([0, 2])}),
                dict(model={"offset": np.array([0.0, 1.0])}), dict(files=[str(backgrounds)])]
    for variant in variants:
        _call(lines, **variant)
    (backgrounds / "b.png").write_bytes(b"y")  # a folder the generator reads changed
    _call(lines, files=[str(backgrounds)])
    assert len(CALLS) == len(variants) + 1
    folders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(folders) == len(variants) + 1
    for variant in variants:  # and each of them is reused afterwards
        _call(lines, **variant)
    assert len(CALLS) == len(variants) + 1
    with pytest.raises(TypeError, match="cannot key generated data on a function"):
        call_key(fake_generator, (lambda: 0,))


def _missing_marker(entry):
    (entry / "DONE").unlink()


def _truncated_array(entry):
    path = entry / "images.npy"
    path.write_bytes(path.read_bytes()[:-10])


def _missing_array(entry):
    (entry / "labels.npy").unlink()


def _garbled_manifest(entry):
    (entry / "manifest.json").write_text("{not json")


def _other_shape(entry):
    np.save(entry / "identity.npy", np.arange(5, dtype=np.int64))


@pytest.mark.parametrize("damage", [_missing_marker, _truncated_array, _missing_array, _garbled_manifest,
                                    _other_shape])
def test_a_damaged_entry_is_regenerated_not_trusted(cache, damage):
    root, lines = cache
    _call(lines)
    damage(_entry(root))
    arrays = _call(lines)
    assert CALLS == [0, 0], f"{damage.__name__}: the damaged entry was trusted"
    assert "incomplete or damaged" in lines[1] and "generating it again" in lines[1], lines
    np.testing.assert_array_equal(arrays["images"], fake_generator({"offset": np.array([0, 1])}, FakeConfig(),
                                                                   seed=0)["images"])
    _call(lines)
    assert CALLS == [0, 0, 0] and lines[-1].startswith("data: reusing generated")


def test_a_failed_generation_or_write_leaves_no_entry(cache, monkeypatch):
    root, lines = cache

    def broken(model, config, *, seed):
        raise RuntimeError("killed mid-way")

    with pytest.raises(RuntimeError, match="killed mid-way"):
        cached_call("broken", broken, ({"offset": np.array([0])}, FakeConfig()), dict(seed=0), log=lines.append)
    # a write that dies after the first file (a killed run): nothing half-written under a real name
    real_save, saved = np.save, []

    def dying_save(handle, value, **kwargs):
        if saved:
            raise KeyboardInterrupt
        saved.append(1)
        real_save(handle, value, **kwargs)

    monkeypatch.setattr(generated_cache.np, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        _call(lines)
    monkeypatch.setattr(generated_cache.np, "save", real_save)
    assert [p.name for p in root.iterdir() if p.name != ".locks"] == []
    _call(lines)
    _call(lines)
    assert CALLS == [0, 0] and lines[-1].startswith("data: reusing generated")


def test_opt_out_and_where_the_cache_lives(tmp_path, monkeypatch):
    monkeypatch.setenv("JFACE_CACHE", str(tmp_path / "jface-cache"))
    for value in ("0", "off", "False", "no"):
        monkeypatch.setenv("JFACE_DATA_CACHE", value)
        assert data_cache_dir() is None
    CALLS.clear()
    lines = []
    first, second = _call(lines), _call(lines)
    assert CALLS == [0, 0] and lines == []
    assert type(first["images"]) is np.ndarray and first["images"].flags.writeable
    np.testing.assert_array_equal(first["images"], second["images"])
    assert not (tmp_path / "jface-cache" / "generated").exists()
    for value in ("", "1", "yes"):
        monkeypatch.setenv("JFACE_DATA_CACHE", value)
        assert data_cache_dir() == tmp_path / "jface-cache" / "generated"
    monkeypatch.delenv("JFACE_DATA_CACHE")
    assert data_cache_dir() == tmp_path / "jface-cache" / "generated"
    monkeypatch.setenv("JFACE_DATA_CACHE", str(tmp_path / "elsewhere"))
    assert data_cache_dir() == tmp_path / "elsewhere"
    # an unusable cache folder is reported and the data comes from memory
    (tmp_path / "a-file").write_text("")
    lines = []
    arrays = cached_arrays("3 fake images", {"k": 1}, lambda: {"x": np.ones(3)}, log=lines.append,
                           directory=tmp_path / "a-file" / "cache")
    assert "cannot create the generated-data cache" in lines[0] and type(arrays["x"]) is np.ndarray


def test_train_stn_make_data_is_cached_with_the_same_arrays(cache, monkeypatch):
    """train.stn's tiny preset: the held-out split generated, then read from the cache, equals the
    uncached generation; another seed is another entry."""
    root, lines = cache
    monkeypatch.setattr(stn_training, "_log", lines.append)
    config = train_stn.preset("tiny")
    model = stn_training.load_model(config)
    cached = stn_training.make_data(config, model, split="eval")
    again = stn_training.make_data(config, model, split="eval")
    assert lines[0].startswith("data: generating 8 held-out images (splat, 64 px), cached at ")
    assert lines[1].startswith("data: reusing generated 8 held-out images (splat, 64 px) from ")
    monkeypatch.setenv("JFACE_DATA_CACHE", "0")
    plain = stn_training.make_data(config, model, split="eval")
    assert list(cached) == list(plain)
    for name, value in plain.items():
        assert isinstance(again[name], np.memmap) and again[name].dtype == value.dtype, name
        np.testing.assert_array_equal(again[name], value)
        np.testing.assert_array_equal(cached[name], value)
    # labels only (theta_prior) are not cached
    monkeypatch.setenv("JFACE_DATA_CACHE", str(root))
    labels = stn_training.make_data(config, model, split="eval", render_images=False)
    assert labels["images"] is None and len(lines) == 2
    np.testing.assert_array_equal(labels["theta"], plain["theta"])


def test_train_deca_make_data_keys_on_what_generates_the_split(cache, monkeypatch):
    """train.deca: the split's generator arguments key the entry; a learning rate or workdir does not."""
    root, lines = cache
    monkeypatch.setattr(deca_training, "_log", lines.append)
    calls = []

    def generate_split(config, model, split, ids, per_id, seed, syn):
        calls.append((split, ids, per_id, seed))
        return {"images": np.full((ids * per_id, 4, 4, 3), seed % 256, np.uint8)}

    monkeypatch.setattr(deca_training, "_generate_split", generate_split)
    config = train_deca.preset("tiny")
    model = deca_training.load_model(config)
    first = deca_training.make_data(config, model, split="train")
    deca_training.make_data(config.replace(learning_rate=0.5, workdir="elsewhere", seed=3), model, split="train")
    deca_training.make_data(config, model, split="eval")
    deca_training.make_data(config.replace(data_seed=7), model, split="train")
    deca_training.make_data(config.replace(image_size=128), model, split="train")
    # the look and the ablated ingredients (the generator's config) key it too
    deca_training.make_data(config.replace(look="photo"), model, split="train")
    deca_training.make_data(config.replace(look="photo", ablate="camera"), model, split="train")
    assert calls == [("train", 6, 2, 0), ("eval", 2, 2, 1_000_003), ("train", 6, 2, 7), ("train", 6, 2, 0),
                     ("train", 6, 2, 0), ("train", 6, 2, 0)]
    assert lines[1].startswith("data: reusing generated 12 training faces (plain, 224 px) from ")
    assert isinstance(first["images"], np.memmap) and first["images"].shape == (12, 4, 4, 3)
    assert len([p for p in root.iterdir() if not p.name.startswith(".")]) == 6


def test_a_second_process_waits_for_the_first_then_reuses(cache):
    """Two runs starting with the same key generate once: the second waits on the entry's lock."""
    fcntl = pytest.importorskip("fcntl")
    root, lines = cache
    _call(lines)  # the entry the other process will write, kept aside for now
    entry = _entry(root)
    os.replace(entry, root / ".aside")
    CALLS.clear()
    with open(root / ".locks" / f"{entry.name}.lock", "a+") as handle:  # another process generating
        fcntl.flock(handle, fcntl.LOCK_EX)
        waiting = []
        thread = threading.Thread(target=lambda: waiting.append(_call(lines)))
        thread.start()
        deadline = time.time() + 10
        while not any("waiting for another process" in line for line in lines) and time.time() < deadline:
            time.sleep(0.01)
        assert any(line.startswith("data: waiting for another process that is generating 3 fake images")
                   for line in lines), lines
        assert not waiting
        os.replace(root / ".aside", entry)  # the other process's last step: its entry renamed into place
        fcntl.flock(handle, fcntl.LOCK_UN)
    thread.join(10)
    assert waiting and lines[-1] == f"data: reusing generated 3 fake images from {entry}"
    assert CALLS == [], "the waiting run generated the data again"
