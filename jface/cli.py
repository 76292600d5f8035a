"""What every ``python -m`` command of jface shares: a user's mistake is one line on stderr naming
the input and what was expected, and exit status 2; a traceback means a bug.

* :class:`ArgumentParser`: ``argparse`` whose errors are that one line (no usage block), with a
  "did you mean --steps?" for a mistyped flag and a mistyped sub-command.
* :class:`UsageError`: raised by a command for a mistake found after parsing (an output path that is
  a file, a model without the landmark set the command needs, ...).
* :func:`run`: calls a command's body and turns the user errors it names, :class:`UsageError` and
  the environment's write errors (read-only or full disk, no permission) into that one line.
* :func:`check_output_dir` / :func:`check_output_file`: an output path that cannot be written is
  refused before any work is done.

Standard library only (the base layer), so every command can use it.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import os
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["ArgumentParser", "UsageError", "EXIT_USAGE", "run", "one_line", "close_option", "check_output_dir",
           "check_output_file", "WRITE_ERRNOS"]

EXIT_USAGE = 2  # argparse's status for a usage error; every jface command uses it for a user's mistake

#: ``OSError`` numbers that are the machine's state, not a bug: a read-only or full disk, no permission.
WRITE_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT})


class UsageError(ValueError):
    """A mistake in a command's input found after parsing; the message names the input."""


def close_option(token: str, options: Iterable[str]) -> str | None:
    """The option of ``options`` closest to ``token`` (``--stpes`` -> ``--steps``), or None."""
    name = token.split("=", 1)[0]
    matches = difflib.get_close_matches(name, [o for o in options if o.startswith("--")], n=1, cutoff=0.6)
    return matches[0] if matches else None


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with one-line errors (``prog: message``; exit status 2) and a
    "did you mean" for unknown flags. Sub-parsers made by :meth:`add_subparsers` are of this class
    too. ``--help`` is unchanged."""

    def _all_options(self) -> list:
        options = list(self._option_string_actions)
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    options += list(sub._option_string_actions)
        return options

    def error(self, message: str):
        hint = ""
        if message.startswith("unrecognized arguments:"):
            unknown = [t for t in message.split(":", 1)[1].split() if t.startswith("-")]
            guesses = [(t, close_option(t, self._all_options())) for t in unknown]
            hint = "".join(f"; did you mean {g} (for {t})?" for t, g in guesses if g)
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:
            options = re.findall(r"'([^']*)'", choice.group(2))
            close = difflib.get_close_matches(choice.group(1), options, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
        print(f"{self.prog}: {message}{hint} (see {self.prog} --help)", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_USAGE)


def one_line(err: BaseException) -> str:
    """An exception as one line: an ``OSError`` as ``file: reason``, others their first line."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror[0].lower()}{err.strerror[1:]}"
    text = str(err).strip()
    if isinstance(err, KeyError) and len(err.args) == 1:
        text = str(err.args[0])
    return text.splitlines()[0] if text else type(err).__name__


def run(prog: str, body: Callable[[], int | None], user_errors: tuple = ()) -> int:
    """``body()``'s exit status; :class:`UsageError`, the exceptions in ``user_errors`` and the
    machine's refusals (:data:`WRITE_ERRNOS`: no permission, a read-only or full disk) print
    ``prog: one line`` and give :data:`EXIT_USAGE`. Anything else propagates (a traceback: a bug)."""
    try:
        return int(body() or 0)
    except (UsageError, *user_errors) as err:
        print(f"{prog}: {one_line(err)}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except OSError as err:
        if err.errno not in WRITE_ERRNOS:
            raise
        print(f"{prog}: {one_line(err)}", file=sys.stderr, flush=True)
        return EXIT_USAGE


def _file_on_the_way(path: Path) -> Path | None:
    """The first existing ancestor of ``path`` (``path`` included) when it is not a folder."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None


def check_output_dir(path, flag: str, *, create: bool = True) -> Path:
    """``path`` as an output folder, created if missing (unless ``create`` is off); a
    :class:`UsageError` naming ``flag`` when it, or a folder above it, is a file, or when it cannot be
    created or written."""
    path = Path(os.fspath(path))
    blocker = _file_on_the_way(path)
    if blocker is not None:
        where = "it is a file" if blocker == path else f"{blocker} is a file"
        raise UsageError(f"{flag} {path}: expected a folder, but {where}")
    if not create:
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not os.access(existing, os.W_OK):
            where = "the folder" if existing == path else f"the folder {existing} it would be made in"
            raise UsageError(f"{flag} {path}: {where} is not writable")
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"{flag} {path}: cannot create the folder ({one_line(err)})") from None
    if not os.access(path, os.W_OK):
        raise UsageError(f"{flag} {path}: the folder is not writable")
    return path


def check_output_file(path, flag: str) -> Path:
    """``path`` as an output file (its folder created if missing); a :class:`UsageError` naming
    ``flag`` when it is a folder, or its folder cannot be made or written."""
    path = Path(os.fspath(path))
    if path.is_dir():
        raise UsageError(f"{flag} {path}: expected a file name, but it is a folder")
    blocker = _file_on_the_way(path.parent)
    if blocker is not None:
        raise UsageError(f"{flag} {path}: its folder {blocker} is a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"{flag} {path}: cannot create its folder ({one_line(err)})") from None
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"{flag} {path}: not writable")
    return path
