"""``python -m jface.bench NAME [args...]``: dispatch to ``jface.bench.NAME.main(args)``."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import jface.bench


def available() -> list:
    return sorted(m.name for m in pkgutil.iter_modules(jface.bench.__path__) if not m.name.startswith("_"))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    names = available()
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m jface.bench NAME [args...]\n\nbenchmarks: " + ", ".join(names))
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in names:
        print(f"jface.bench: unknown benchmark {name!r}; available: {', '.join(names)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"jface.bench.{name}")
    result = module.main(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
