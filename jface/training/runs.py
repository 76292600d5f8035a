"""What loading a trained run needs, for both trainers: the run metadata's keys, the face model it was
trained on, its config, the one-line summary of a landmark evaluation, and whether a run is already
finished (read from its folder alone, before any data is made)."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jface.training.checkpoint import RunFormatError, WorkdirBusyError
from jface.training.metrics import NOISE_STANDARD_ERRORS, compare, verdict_text

__all__ = ["require_run_keys", "check_face_model", "config_from_dict", "format_landmark_report", "newest_step",
           "read_metrics", "write_metrics", "METRICS_FILE", "refuse_busy_workdir"]

METRICS_FILE = "metrics.json"  # a run's held-out metrics, written when it finishes


def newest_step(checkpoints) -> int | None:
    """The newest step saved in a ``checkpoints`` folder, from its listing alone (no orbax, nothing
    written): step folders that hold a ``state`` item; orbax's temporary folders and hollow steps do
    not count. None when there is none (or no folder)."""
    folder = Path(checkpoints)
    if not folder.is_dir():
        return None
    steps = [int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / "state").is_dir()]
    return max(steps) if steps else None


def refuse_busy_workdir(workdir) -> None:
    """Raise :class:`~jface.training.checkpoint.WorkdirBusyError` at once when a live run holds
    ``workdir``'s lock (:class:`~jface.training.checkpoint.WorkdirLock`), so a second start is told
    before it makes any data; nothing is written (the lock itself is taken later, as before)."""
    path = Path(workdir) / ".lock"
    try:
        handle = open(path)
    except OSError:  # no lock file (a new run) or unreadable: the real lock decides later
        return
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            holder = handle.read().strip() or "unknown"
            raise WorkdirBusyError(f"--workdir {workdir} is in use by another run ({holder}); wait for it to "
                                   f"finish or pass another --workdir") from None
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def read_metrics(workdir) -> dict | None:
    """The metrics a finished run wrote (``workdir/metrics.json``), or None when it has none or it
    cannot be read."""
    path = Path(workdir) / METRICS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_metrics(workdir, metrics: Mapping[str, Any]) -> Path:
    """Write ``workdir/metrics.json`` (atomically: a reader never sees half a file)."""
    path = Path(workdir) / METRICS_FILE
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(metrics, indent=1))
    partial.replace(path)
    return path


def write_config(workdir, config: Mapping[str, Any]) -> Path:
    """Write ``workdir/config.json`` (atomically). A differing file already there (a run resumed
    with other settings) is kept as ``config.previous.json``, not overwritten."""
    path = Path(workdir) / "config.json"
    text = json.dumps(dict(config), indent=1)
    try:
        old = path.read_text()
    except OSError:
        old = None
    if old is not None and old != text:
        path.replace(path.with_name("config.previous.json"))
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)
    return path


def require_run_keys(run: Mapping[str, Any], keys, directory, trainer: str) -> None:
    """Raise :class:`RunFormatError` naming the keys of ``keys`` that the run metadata lacks."""
    missing = [k for k in keys if k not in run]
    if missing:
        raise RunFormatError(f"{directory}: the run metadata lacks {missing} (expected a {trainer} run)")


def check_face_model(recorded: Mapping[str, Any], current: Mapping[str, Any], model_name: str, directory, *,
                     generated: bool) -> None:
    """The face model loaded now must be the one the run recorded: a model file with another sha256,
    or another version of the default generator, is an error; for a ``generated`` model, the same
    generator version with other array bytes (floating-point noise of another machine) only a warning."""
    if recorded.get("generator_version") != current.get("generator_version"):
        raise RunFormatError(
            f"{directory}: trained on face model {recorded.get('model')!r} generator version "
            f"{recorded.get('generator_version')}, this jface has version {current.get('generator_version')}")
    if recorded.get("sha256") == current["sha256"]:
        return
    message = (f"{directory}: the face model {model_name!r} differs from the one the run was trained on "
               f"(sha256 {current['sha256'][:12]} here, {str(recorded.get('sha256'))[:12]} in the run)")
    if not generated:
        raise RunFormatError(message)
    print(f"warning: {message}", file=sys.stderr)


def config_from_dict(config_cls, values: Mapping[str, Any], *, source: str, trainer: str):
    """A ``config_cls`` dataclass from its ``dataclasses.asdict`` / JSON form (lists back to tuples).
    Fields the dict lacks keep their defaults; names that are not fields raise, naming ``source``."""
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise RunFormatError(f"{source}: not {trainer} config fields: {unknown}")
    return config_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def format_landmark_report(report: Mapping[str, Any], source: str, *, baseline: str) -> str:
    """One line of a landmark evaluation's means (:mod:`jface.training.landmark_eval`), with the
    verdict of the per-image NME against the baseline's (:func:`jface.training.metrics.compare`)."""
    def num(value):
        return "n/a" if value is None else f"{value:.4f}"
    rows = report.get("per_image") or []
    judged = compare([r.get("nme") for r in rows], [r.get("baseline_nme") for r in rows])
    return (f"landmark NME (outer-eye-corner distance) on {report['images']} images of {source} "
            f"({report['images_scored']} scored): model {num(report['nme'])}, {baseline} baseline "
            f"{num(report['baseline_nme'])}: {verdict_text(judged)} (lower is better; noise = "
            f"{NOISE_STANDARD_ERRORS:g} standard errors of the mean per-image difference)")
