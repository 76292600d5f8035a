"""Generated training data, built once to disk and reused by later runs.

``train.stn`` and ``train.deca`` generate their training and held-out splits (``--data
generated``, the default) from a seeded generator: the same arguments give the same arrays, so a
second run with another ``--workdir``, ``--seed`` or learning rate need not spend minutes making
them again. :func:`cached_call` runs a generator once, writes its arrays to the cache and reads
them back from there whenever the same call comes again.

**What makes an entry.** The key (:func:`call_key`) holds everything that determines the arrays:
the generator's name, a fingerprint of its source and of every jface module it imports
(transitively; editing any of them makes new entries), every argument (numbers, strings,
dataclass configs field by field, and the face model's arrays by their sha256), the listing
(names, sizes, times) of any folder the generator reads (``files``), :data:`DATA_VERSION`, and
what the numbers depend on besides (jax / jaxlib / numpy versions, the jax backend, x64 mode). Its
sha256 names the entry's folder, ``<cache>/generated/<name>-<digest>``.

**On disk.** An entry is a folder of ``<array>.npy`` files, ``manifest.json`` (the key, each
array's shape and dtype, the generation time) and a ``DONE`` marker written last. It is written
into a temporary folder beside it and renamed into place, so a killed run never leaves a half
entry under the real name; an entry whose marker, manifest or an array is missing, truncated or
of the wrong shape is reported and generated again. Arrays are opened with ``np.load(mmap_mode="r")``
(read-only memory maps): a run reads the pages it touches instead of holding the whole split, and
a freshly generated split is read back the same way, so both runs see the very same arrays. A file
lock makes concurrent runs with the same key generate once (the second waits and then reads).

**Where, and opting out.** ``JFACE_DATA_CACHE``:

* unset, empty or ``1``: ``$JFACE_CACHE/generated`` (``~/.cache/jface/generated`` when
  ``JFACE_CACHE`` is unset; :func:`jface.models.defaults.cache.cache_dir`);
* ``0`` (or ``off`` / ``false`` / ``no``): no cache; every run generates in memory as before;
* any other value: the folder to keep the entries in.

Entries are never evicted: delete the ``generated`` folder to free the space (the default
presets' splits take about 0.3 GB for ``train.stn`` and 0.1 GB for ``train.deca``).
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jaxlib
import numpy as np

from jface.models.defaults.cache import cache_dir

__all__ = ["DATA_VERSION", "ENV_VAR", "data_cache_dir", "call_key", "source_fingerprint", "cached_arrays",
           "cached_call"]

DATA_VERSION = 1  # bump to retire every entry when generated data changes in a way the key misses
ENV_VAR = "JFACE_DATA_CACHE"
_FORMAT = 1  # the entry layout (manifest fields, file names)
_DONE = "DONE"
_MANIFEST = "manifest.json"
_OFF = ("0", "off", "false", "no")
_ON = ("", "1", "on", "true", "yes")
_ARRAY_NAME = re.compile(r"^[A-Za-z0-9_]+$")


def data_cache_dir() -> Path | None:
    """The folder of generated-data entries named by ``$JFACE_DATA_CACHE`` (module docstring), or
    None when the cache is off."""
    value = os.environ.get(ENV_VAR, "").strip()
    if value.lower() in _OFF:
        return None
    if value.lower() in _ON:
        return cache_dir() / "generated"
    return Path(value).expanduser()


# --- the key ---------------------------------------------------------------------------------

def _module_file(name: str) -> Path | None:
    module = sys.modules.get(name)
    path = getattr(module, "__file__", None)
    if path is None:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):  # an attribute of a module, not a module
            spec = None
        path = spec.origin if spec is not None else None
    return Path(path) if path and path.endswith(".py") else None


def _jface_imports(name: str, path: Path) -> set:
    """The jface modules that module ``name`` (source ``path``) imports, at any depth of its body."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if is_package else name.split(".")[:-1]
                parts = parts[:len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and not (target.split(".")[0] == "jface" and _module_file(target)):
                target = target.rpartition(".")[0]
            if target:
                found.add(target)
    return found


@functools.cache
def source_fingerprint(module: str) -> str:
    """sha256 (16 hex digits) of the source of ``module`` and of every jface module it imports,
    transitively (file names and contents, in name order)."""
    seen, todo = {}, [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_file(name)
        seen[name] = path
        if path is not None and name.split(".")[0] == "jface":
            todo.extend(_jface_imports(name, path) - seen.keys())
    digest = hashlib.sha256()
    for name in sorted(seen):
        digest.update(name.encode() + b"\0")
        path = seen[name]
        digest.update(path.read_bytes() if path is not None else b"<no source>")
    return digest.hexdigest()[:16]


def _describe(value: Any, where: str) -> Any:
    """A JSON form of one argument that changes whenever the value does: arrays by dtype, shape and
    sha256, dataclasses field by field, containers item by item."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return repr(value)  # exact, and distinguishes 1 from 1.0
    if isinstance(value, (np.generic, np.ndarray, jax.Array)):
        array = np.ascontiguousarray(np.asarray(value))
        if array.dtype == object:
            raise TypeError(f"{where}: an object array cannot key generated data")
        return f"array:{array.dtype.str}:{list(array.shape)}:{hashlib.sha256(array.tobytes()).hexdigest()[:32]}"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {field.name: _describe(getattr(value, field.name), f"{where}.{field.name}")
                  for field in dataclasses.fields(value)}
        return {"dataclass": f"{type(value).__module__}.{type(value).__qualname__}", "fields": fields}
    if isinstance(value, Mapping):
        return {"mapping": {str(k): _describe(v, f"{where}[{k!r}]") for k, v in sorted(value.items(), key=str)}}
    if isinstance(value, (tuple, list)):
        return {type(value).__name__: [_describe(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    raise TypeError(f"{where}: cannot key generated data on a {type(value).__name__} "
                    f"(expected numbers, strings, arrays, dataclasses or containers of them)")


def _listing(path: str) -> Any:
    """Names, sizes and modification times of ``path`` (a file, or every file below a folder)."""
    root = Path(path).expanduser()
    if not root.exists():
        return {"path": str(path), "missing": True}
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    rows = []
    for file in files:
        stat = file.stat()
        rows.append([str(file.relative_to(root)) if file != root else file.name, stat.st_size, stat.st_mtime_ns])
    return {"path": str(root.resolve()), "files": rows}


def call_key(fn: Callable, args: Sequence = (), kwargs: Mapping | None = None, *, files: Sequence = ()) -> dict:
    """What determines ``fn(*args, **kwargs)``'s arrays: the function's name and
    :func:`source_fingerprint`, each argument (dataclasses by field, arrays by sha256) and the
    listing of each path in ``files`` (folders the generator reads, e.g. background photographs)."""
    name = f"{fn.__module__}.{getattr(fn, '__qualname__', repr(fn))}"
    return {
        "function": name,
        "sources": source_fingerprint(fn.__module__),
        "args": [_describe(value, f"{name} argument {i}") for i, value in enumerate(args)],
        "kwargs": {k: _describe(v, f"{name} argument {k}") for k, v in sorted((kwargs or {}).items())},
        "files": [_listing(path) for path in files],
    }


def _environment() -> dict:
    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "numpy": np.__version__,
            "backend": jax.default_backend(), "x64": bool(jax.config.jax_enable_x64)}


# --- entries on disk -------------------------------------------------------------------------

def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()[:48] or "data"


def _read(folder: Path, full_key: Mapping) -> tuple:
    """``(arrays, None)`` of a complete entry that holds ``full_key``'s data, else ``(None, why)``."""
    if not (folder / _DONE).is_file():
        return None, f"no {_DONE} marker"
    try:
        manifest = json.loads((folder / _MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        return None, f"unreadable {_MANIFEST} ({exc})"
    if manifest.get("key") != full_key:
        return None, f"its {_MANIFEST} describes other data"
    arrays = {}
    for name, spec in manifest.get("arrays", {}).items():
        if spec is None:
            arrays[name] = None
            continue
        path = folder / f"{name}.npy"
        try:
            lazy = int(np.prod(spec["shape"])) > 0  # numpy cannot memory-map an empty array
            array = np.load(path, mmap_mode="r" if lazy else None, allow_pickle=False)
            size_ok = not lazy or path.stat().st_size == array.offset + array.nbytes
        except (OSError, ValueError, KeyError) as exc:
            return None, f"{path.name} unreadable ({exc})"
        if list(array.shape) != list(spec["shape"]) or array.dtype.str != spec["dtype"] or not size_ok:
            return None, (f"{path.name} is {array.dtype.str} {list(array.shape)} of {path.stat().st_size} bytes, "
                          f"the manifest says {spec['dtype']} {spec['shape']}")
        arrays[name] = array
    if not arrays:
        return None, f"its {_MANIFEST} lists no arrays"
    return arrays, None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard(folder: Path) -> None:
    """Move ``folder`` aside (one rename, so a reader never sees it half deleted), then delete it."""
    if not folder.exists():
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
    os.replace(folder, trash / folder.name)
    shutil.rmtree(trash, ignore_errors=True)


def _write(folder: Path, arrays: Mapping, manifest: Mapping) -> None:
    """The entry ``folder``, written in a temporary folder beside it and renamed into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would keep the entry from other users of a shared cache
        for name, value in arrays.items():
            if value is not None:
                with open(tmp / f"{name}.npy", "wb") as handle:
                    np.save(handle, value, allow_pickle=False)
                    handle.flush()
                    os.fsync(handle.fileno())
        (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=1))
        _fsync(tmp / _MANIFEST)
        (tmp / _DONE).write_text("")
        _fsync(tmp)
        _discard(folder)
        os.replace(tmp, folder)
        _fsync(folder.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def _lock(folder: Path, name: str, log: Callable[[str], None]):
    """An exclusive ``flock`` on ``.locks/<entry>.lock`` beside ``folder`` while one entry is checked
    and generated; says so when it waits for another process."""
    try:
        import fcntl
    except ImportError:  # not POSIX: the atomic rename still keeps entries whole
        yield
        return
    try:
        (folder.parent / ".locks").mkdir(exist_ok=True)
        handle = open(folder.parent / ".locks" / f"{folder.name}.lock", "a+")
    except OSError:  # a cache folder this user may only read: entries are still read whole or not at all
        yield
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            log(f"data: waiting for another process that is generating {name} into {folder} ...")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _checked(arrays: Mapping, name: str) -> dict:
    out = {}
    for key, value in arrays.items():
        if not _ARRAY_NAME.match(str(key)):
            raise ValueError(f"{name}: array name {key!r} cannot be a file name in the cache")
        out[key] = None if value is None else np.asarray(value)
    return out


def _megabytes(arrays: Mapping) -> float:
    return sum(a.nbytes for a in arrays.values() if a is not None) / 1e6


def cached_arrays(name: str, key: Mapping, generate: Callable[[], Mapping], *,
                  log: Callable[[str], None] = print, directory: str | Path | None = None) -> dict:
    """``generate()``'s dict of numpy arrays (None values allowed), read from the cache entry of
    ``key`` when a complete one exists, else generated, written there and read back (read-only
    memory maps). ``name`` says what the data is in the messages (``"32 training images"``) and
    starts the entry's folder name. ``directory``: the cache folder (default
    :func:`data_cache_dir`); when the cache is off, ``generate()`` is returned as it is.

    A run says ``data: reusing generated NAME from PATH`` or ``data: generating NAME, cached at
    PATH ...``. An entry that cannot be written (a read-only or full disk) is reported, and the
    generated arrays are returned from memory.
    """
    root = Path(directory) if directory is not None else data_cache_dir()
    if root is None:
        return dict(generate())
    full_key = {"format": _FORMAT, "data_version": DATA_VERSION, "environment": _environment(), "call": key}
    full_key = json.loads(json.dumps(full_key, sort_keys=True))  # as the manifest will hold it
    digest = hashlib.sha256(json.dumps(full_key, sort_keys=True).encode()).hexdigest()[:20]
    folder = root / f"{_slug(name)}-{digest}"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log(f"data: cannot create the generated-data cache {root} ({exc}); generating {name} in memory "
            f"({ENV_VAR}=0 turns the cache off)")
        return dict(generate())
    with _lock(folder, name, log):
        if folder.exists():
            arrays, why = _read(folder, full_key)
            if arrays is not None:
                log(f"data: reusing generated {name} from {folder}")
                return arrays
            log(f"data: the cached {name} at {folder} is incomplete or damaged ({why}): generating it again")
        log(f"data: generating {name}, cached at {folder} ...")
        start = time.time()
        arrays = _checked(generate(), name)
        seconds = time.time() - start
        manifest = {"format": _FORMAT, "name": name, "key": full_key, "seconds": round(seconds, 3),
                    "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "arrays": {k: None if v is None else {"shape": list(v.shape), "dtype": v.dtype.str}
                               for k, v in arrays.items()}}
        if any(v is not None and v.dtype == object for v in arrays.values()):
            log(f"data: {name} holds object arrays, which the cache cannot store: kept in memory only")
            return arrays
        try:
            free = shutil.disk_usage(root).free
            if free < 1.1 * _megabytes(arrays) * 1e6:
                raise OSError(f"{free / 1e6:.0f} MB free, {_megabytes(arrays):.0f} MB needed")
            _write(folder, arrays, manifest)
        except OSError as exc:
            log(f"data: could not cache {name} at {folder} ({exc}): using the generated arrays from memory")
            return arrays
        stored, why = _read(folder, full_key)
        if stored is None:
            log(f"data: the cache entry {folder} did not read back ({why}): using the generated arrays from memory")
            return arrays
        return stored


def cached_call(name: str, fn: Callable[..., Mapping], args: Sequence = (), kwargs: Mapping | None = None, *,
                files: Sequence = (), keep: Sequence[str] | None = None,
                log: Callable[[str], None] = print, generate: Callable[[], Mapping] | None = None) -> dict:
    """``fn(*args, **kwargs)`` (a generator returning a dict of numpy arrays) through
    :func:`cached_arrays`, keyed by :func:`call_key` (``files``: paths the generator reads).
    ``keep``: the arrays to store and return (default all), so a caller does not store what it drops.
    ``generate``: makes the same arrays as that call another way (e.g. chunk by chunk with a
    progress bar); the key stays the call's."""
    kwargs = dict(kwargs or {})
    make = generate if generate is not None else (lambda: fn(*args, **kwargs))

    def generate():
        return {k: v for k, v in make().items() if keep is None or k in keep}

    if data_cache_dir() is None:
        return generate()
    key = call_key(fn, args, kwargs, files=files)
    if keep is not None:
        key["keep"] = sorted(keep)
    return cached_arrays(name, key, generate, log=log)
