"""What every evit-jax console script shares: the user-error class, the runner, small helpers.

Every `evit-*` command is `run(prog, parser, main)`: it parses the arguments, calls
`main(args)` and turns the outcome into an exit status, the same way for every command:

  0    success (`main` returned None or 0)
  1    a user error: one line on stderr, `prog: error: <what is wrong and how to fix it>`
  2    a bad command line (argparse's own message and usage)
  130  interrupted (Ctrl-C); nothing half-written is left behind
  143  (evit-train only) stopped on SIGTERM / preemption after saving a checkpoint

A user error is any `UserError` (the converter's `CheckpointFormatError` /
`CheckpointMismatchError` derive from it), an `OSError` (missing file, permission, disk full,
unreadable image), or a `ValueError` raised while checking inputs. Anything else is a bug in
evit-jax and keeps its traceback; `EVIT_TRACEBACK=1` shows the traceback of user errors too.
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

EXIT_OK, EXIT_USER_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UserError(ValueError):
    """Input that evit-jax cannot use (bad path, wrong model, malformed file, bad value).

    The message says what is wrong and how to fix it, in one line where possible; the CLIs
    print it without a traceback.
    """


# Exceptions that are the user's to fix, reported as one line by `run`.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, OSError, ValueError)


def one_line(e: BaseException, limit: int = 16000) -> str:
    """The message of `e` on one line (newlines folded), at most `limit` characters (enough
    for a key-mismatch report, which lists up to 40 keys of each kind)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run(prog: str, parser: argparse.ArgumentParser, main: Callable[[argparse.Namespace], Any],
        argv: Sequence[str] | None = None) -> int:
    """Parse `argv`, call `main(args)`, and return the exit status (module docstring)."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a bad command line (2), already printed
        return int(e.code or 0) if not isinstance(e.code, str) else EXIT_USAGE
    try:
        status = main(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
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
    a crash never leaves half a file. `data`: text, bytes, or `write(tmp_path)`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
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
