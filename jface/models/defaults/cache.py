"""The asset cache of the default models: its folder, the generators' fingerprint, atomic writes
and the generation lock (shared by :mod:`~jface.models.defaults.stn_default` and
:mod:`~jface.models.defaults.flame_default`)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["cache_dir", "generator_fingerprint", "atomic_savez", "generation_lock"]

_HERE = Path(__file__).resolve().parent
# Files of this package that generate nothing: editing them does not rebuild the cached models.
_NOT_GENERATORS = ("cli.py",)


def cache_dir() -> Path:
    """The asset cache folder: ``$JFACE_CACHE`` if set, else ``~/.cache/jface`` (created)."""
    root = os.environ.get("JFACE_CACHE")
    path = Path(root).expanduser() if root else Path.home() / ".cache" / "jface"
    path.mkdir(parents=True, exist_ok=True)
    return path


def generator_fingerprint(extra_modules=()) -> str:
    """Hash of the generator sources: this package plus ``extra_modules`` (file names in
    ``jface/models``, e.g. the UV tools and landmark tables the generator calls)."""
    h = hashlib.sha256()
    files = sorted(_HERE.glob("*.py"))
    models = _HERE.parent
    files += [models / name for name in extra_modules]
    for f in files:
        if f.name in _NOT_GENERATORS:
            continue
        h.update(f.name.encode())
        h.update(f.read_bytes() if f.exists() else b"<missing>")
    return h.hexdigest()[:16]


def atomic_savez(path: Path, arrays: dict) -> None:
    """``np.savez`` to a temporary file beside ``path``, then renamed onto it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def generation_lock(target: Path):
    """Hold an exclusive lock (``<target>.lock``, POSIX ``flock``) while checking / generating
    ``target``, so that parallel processes (pytest-xdist workers) generate it once."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: atomic writes still keep the files consistent
        yield
        return
    with open(target.parent / (target.name + ".lock"), "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
