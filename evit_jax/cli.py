"""What every evit-jax console script shares: the runner, the user-error class, small helpers.

Every `evit-*` command is `run(prog, parser, main)`: it parses the arguments, calls
`main(args)` and turns the outcome into an exit status, the same way for every command:

  0    success (`main` returned None or 0)
  1    a user error: one line on stderr, `prog: error: <what is wrong and how to fix it>`
  2    a bad command line (argparse's own message and usage)
  130  interrupted (Ctrl-C); nothing half-written is left behind
  143  (evit-train only) stopped on SIGTERM / preemption after saving a checkpoint

A user error is a `UserError` (`evit_jax.errors`, re-exported here), and only that: the
converter's `CheckpointFormatError` / `CheckpointMismatchError`, a missing `[train]`
dependency (`MissingDependencyError`) and the path errors derive from it. Anything else that
escapes `main` (a `ValueError`, `KeyError`, `OSError` ...) is a bug in evit-jax and keeps its
traceback (exit status 1, Python's own report). `EVIT_TRACEBACK=1` shows the traceback of user
errors too. One more case is the user's to fix: a `ModuleNotFoundError` for a package that an
extra declares (`evit_jax.errors.EXTRAS`: grain, tensorflow-datasets, ... of `[train]`) is
reported as the one line `... pip install 'evit-jax[train]'`, wherever the import happens
(library code asks first with `evit_jax.errors.require`); any other missing module is a broken
install or a bug and keeps its traceback.

Input and output paths. The user's files fail in ordinary ways (missing, a directory where a
file belongs, no permission, disk full, an image PIL cannot read). The library turns these
into `UserPathError`s at the boundary, where it opens a path it was given: `load_variables`,
`save_variables`, the checkpoint readers, `write_atomic`, `read_image`, the dataset readers
(each inside `evit_jax.errors.user_path(path)`). A `UserPathError` is a `UserError` and also
the matching `OSError` (`FileNotFoundError`, `PermissionError`, ...), so library callers keep
catching what they caught before, and its message names the path: `cannot read x.png: No such
file or directory`. An `OSError` raised anywhere else is not about the user's input and keeps
its traceback.

Flags are kebab-case (`--data-dir`, `--batch-size`) in every command but evit-train, whose
absl flags name the config's fields (`--config.data.num_workers`).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from evit_jax.errors import UserError, missing_dependency, user_path

__all__ = ["EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "EXIT_USER_ERROR", "USER_ERRORS",
           "UserError", "one_line", "parse_resolution", "run", "write_atomic"]

EXIT_OK, EXIT_USER_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

# What `run` reports as one line: the project's user errors, nothing else (module docstring).
USER_ERRORS: tuple[type[BaseException], ...] = (UserError,)


def one_line(e: BaseException, limit: int = 16000) -> str:
    """The message of `e` on one line (newlines folded), at most `limit` characters (a cap
    for messages that embed foreign text; a key-mismatch report is ~750 characters and
    writes its full key lists to a file)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run(prog: str, parser: argparse.ArgumentParser, main: Callable[[argparse.Namespace], Any],
        argv: Sequence[str] | None = None) -> int:
    """Parse `argv`, call `main(args)`, and return the exit status (module docstring)."""
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help (0) or a bad command line (2), already printed
            return int(e.code or 0) if not isinstance(e.code, str) else EXIT_USAGE
        status = main(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ModuleNotFoundError as e:  # a package of an extra ([train]) that is not installed
        error = missing_dependency(e)
        if error is None:
            raise  # not an optional dependency: a broken install or a bug
        if os.environ.get("EVIT_TRACEBACK"):
            raise error from e
        print(f"{prog}: error: {one_line(error)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except USER_ERRORS as e:
        if os.environ.get("EVIT_TRACEBACK"):
            raise
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    return int(status or 0)


def parse_resolution(text: str) -> tuple[int, int]:
    """`224` -> (224, 224); `512x1024` -> (512, 1024) (an argparse `type=`)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(
            f"resolution must look like 224 or 512x1024, got {text!r}")
    return parts[0], parts[1]


def write_atomic(path: str | os.PathLike, data: str | bytes | Callable[[str], Any]) -> Path:
    """Write `path` through a temporary file in the same directory, renamed into place, so
    a crash never leaves half a file. `data`: text, bytes, or `write(tmp_path)`.

    A path that cannot be written (no permission, a file where a directory belongs, disk
    full) raises the `UserPathError` naming `path`.
    """
    path = Path(path)
    with user_path(path, "write"):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
    try:
        with user_path(path, "write"):
            if callable(data):
                data(tmp)
            else:
                with open(tmp, "wb") as f:
                    f.write(data.encode() if isinstance(data, str) else data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# argparse takes a value that starts with "-" for an option unless it is a plain number
# ("-5", "-0.5"): "-5,10,100,100" and "-1e-3" would need "--box=-5,...". This accepts any
# number or comma-separated list of numbers (a command with an option spelled like a number,
# "-1", would make argparse treat them as options again).
_NUMBERS = re.compile(r"^-\.?\d[\d._eE+-]*(,\s*[-+]?\.?\d[\d._eE+-]*)*$")


def allow_negative_numbers(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Let option values be negative numbers or comma-separated lists that start with one
    (`--box -5,10,100,100`, `--thresh -1e-3`), as they are without the "-". Returns `parser`."""
    parser._negative_number_matcher = _NUMBERS  # what argparse asks "is this a number?"
    return parser


def write_report(name: str, text: str) -> Path | None:
    """Keep `text` (a long list or log that a one-line error points to) in this user's own
    folder under the temporary directory, as `name` with a content hash before the suffix (the
    same report again reuses the file); returns the path, or None where it cannot be written
    (a report must never hide the error it belongs to)."""
    import hashlib

    uid = os.getuid() if hasattr(os, "getuid") else None
    folder = Path(tempfile.gettempdir()) / f"evit-jax-{uid if uid is not None else 'user'}"
    stem, dot, suffix = re.sub(r"[^A-Za-z0-9_.-]", "_", name).rpartition(".")
    digest = hashlib.sha1(text.encode()).hexdigest()[:10]
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        if uid is not None and folder.stat().st_uid != uid:  # someone else's: not there
            return None
        return write_atomic(folder / (f"{stem}-{digest}.{suffix}" if dot else
                                      f"{suffix}-{digest}"), text)
    except OSError:
        return None
