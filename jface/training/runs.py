"""What loading a trained run needs, for both trainers: the run metadata's keys, the face model it was
trained on, its config, and the one-line summary of a landmark evaluation."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from typing import Any

from jface.training.checkpoint import RunFormatError

__all__ = ["require_run_keys", "check_face_model", "config_from_dict", "format_landmark_report"]


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
    """One line of a landmark evaluation's means (:mod:`jface.training.landmark_eval`)."""
    def num(value):
        return "n/a" if value is None else f"{value:.4f}"
    return (f"landmark NME (outer-eye-corner distance) on {report['images']} images of {source} "
            f"({report['images_scored']} scored): model {num(report['nme'])}, {baseline} baseline "
            f"{num(report['baseline_nme'])}")
