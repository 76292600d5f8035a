"""Command-line overrides of a dataclass config: ``--set key=value`` and ``--key value``."""

from __future__ import annotations

import dataclasses
import difflib

__all__ = ["parse_value", "apply_overrides", "override_pairs"]


def parse_value(field, text: str):
    """``text`` -> a value of the field's default type (bool, int, float, tuple of the element type)."""
    default = field.default
    if isinstance(default, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"--{field.name}: expected true/false, got {text!r}")
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    if isinstance(default, tuple):
        element = type(default[0]) if default else float
        return tuple(element(v) for v in text.split(",") if v)
    return text


def apply_overrides(config, pairs, *, flags=()):
    """``pairs`` of (field name, text) -> a new dataclass config; unknown names raise naming the field
    and the closest field or program flag (``flags``: the program's own ``--flag`` names)."""
    fields = {f.name: f for f in dataclasses.fields(config)}
    updates = {}
    for name, text in pairs:
        if name not in fields:
            candidates = list(fields) + [f[2:] for f in flags if f.startswith("--")]
            close = difflib.get_close_matches(name, candidates, n=1)
            hint = f"did you mean --{close[0]}?" if close else f"(fields: {', '.join(sorted(fields))})"
            raise ValueError(f"--{name}: not a config field or flag; {hint}")
        try:
            updates[name] = parse_value(fields[name], text)
        except ValueError as err:
            if str(err).startswith(f"--{name}:"):
                raise
            raise ValueError(f"--{name}: expected a value like {fields[name].default!r}, got {text!r}") from None
    return dataclasses.replace(config, **updates)


def override_pairs(set_items, rest):
    """``--set KEY=VALUE`` items and the remaining ``--key value`` / ``--key=value`` tokens -> pairs."""
    pairs = []
    for item in set_items:
        if "=" not in item:
            raise ValueError(f"--set: expected KEY=VALUE, got {item!r}")
        pairs.append(tuple(item.split("=", 1)))
    i = 0
    while i < len(rest):
        token = rest[i]
        if not token.startswith("--"):
            raise ValueError(f"unexpected argument {token!r}")
        if "=" in token:
            pairs.append(tuple(token[2:].split("=", 1)))
            i += 1
        else:
            if i + 1 >= len(rest):
                raise ValueError(f"{token}: missing value")
            pairs.append((token[2:], rest[i + 1]))
            i += 2
    return pairs
