"""The errors that are the user's to fix, and the helpers that raise them (stdlib only, so
every layer may import this module: `nn`, `models`, the zoo, the library, the apps, the trainer).

`UserError` is input that evit-jax cannot use: an unknown model name, a bad option, a malformed
file, a wrong resolution. Its message says what is wrong and how to fix it. Every `evit-*`
command prints it as one line and exits with status 1 (`evit_jax.cli.run`); anything else that
escapes a command is a bug in evit-jax and keeps its traceback. It derives from `ValueError`,
so `except ValueError` in code written against earlier versions still catches it.

`UserPathError` (and the five kinds below it) is a path the user named that cannot be used:
missing, a file where a directory belongs, already there, no permission, disk full, an
unreadable image. Each is both a `UserError` (one line from the commands) and the matching
`OSError` (so `except FileNotFoundError` / `except OSError` keep working). The library raises
them where it opens a path it was given (`user_path`); an `OSError` from anywhere else is not
the user's input and keeps its traceback.

A training dependency that is not installed is a `MissingDependencyError` naming the extra to
install (`require`): `pip install evit-jax` carries what inference, conversion and export need,
`pip install 'evit-jax[train]'` adds the trainer's (README, Install).
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator
from types import ModuleType


class UserError(ValueError):
    """Input that evit-jax cannot use (bad path, wrong model, malformed file, bad value).

    The message says what is wrong and how to fix it, in one line where possible; the CLIs
    print it without a traceback.
    """


class UserPathError(OSError, UserError):
    """A path the user named cannot be read or written (module docstring)."""


class UserFileNotFoundError(FileNotFoundError, UserPathError):
    """A file or directory the user named does not exist."""


class UserFileExistsError(FileExistsError, UserPathError):
    """An output path the user named is already taken (and overwriting was not asked for)."""


class UserNotADirectoryError(NotADirectoryError, UserPathError):
    """A file where the user's input or output should be a directory."""


class UserIsADirectoryError(IsADirectoryError, UserPathError):
    """A directory where the user's input or output should be a file."""


class UserPermissionError(PermissionError, UserPathError):
    """No permission to read or write a path the user named."""


class MissingDependencyError(ImportError, UserError):
    """An optional dependency (a package of an extra such as `[train]`) is not installed."""


_KINDS: tuple[tuple[type[OSError], type[UserPathError]], ...] = (
    (FileNotFoundError, UserFileNotFoundError), (FileExistsError, UserFileExistsError),
    (NotADirectoryError, UserNotADirectoryError), (IsADirectoryError, UserIsADirectoryError),
    (PermissionError, UserPermissionError))


def path_error(e: OSError, path: str | os.PathLike, doing: str = "read") -> UserPathError:
    """`e` (raised while `doing` something with `path`) as the matching `UserPathError`, its
    message naming the path: `cannot read photo.jpg: No such file or directory`."""
    if isinstance(e, UserPathError):
        return e
    kind = next((user for os_kind, user in _KINDS if isinstance(e, os_kind)), UserPathError)
    reason = e.strerror or str(e) or type(e).__name__
    return kind(f"cannot {doing} {os.fspath(path)}: {reason}")  # the cause stays in __cause__


@contextlib.contextmanager
def user_path(path: str | os.PathLike, doing: str = "read") -> Iterator[None]:
    """Turn an `OSError` raised inside the block into the `UserPathError` of `path`: the
    boundary where the library opens a path the user gave it (an input, an output)."""
    try:
        yield
    except UserPathError:
        raise
    except OSError as e:
        raise path_error(e, path, doing) from e


# What each optional extra installs that evit-jax imports: module (top level) -> pip name.
# `pip install evit-jax` carries inference, conversion and export; `[train]` the trainer's
# packages (tests/test_install.py checks this table against pyproject.toml).
EXTRAS: dict[str, dict[str, str]] = {
    "train": {"tensorflow_datasets": "tensorflow-datasets", "grain": "grain",
              "orbax": "orbax-checkpoint", "tensorboardX": "tensorboardX",
              "matplotlib": "matplotlib", "ml_collections": "ml_collections",
              "absl": "absl-py", "importlib_resources": "importlib_resources"},
}


def missing_dependency(e: ModuleNotFoundError) -> MissingDependencyError | None:
    """`e` as the one-line error naming the extra that installs the missing module, or None
    when no extra declares it (then a missing module is a broken install or a bug)."""
    top = (e.name or "").split(".")[0]
    for extra, modules in EXTRAS.items():
        if top in modules:
            return MissingDependencyError(
                f"{modules[top]} is not installed; it comes with evit-jax's [{extra}] extra: "
                f"pip install 'evit-jax[{extra}]'")
    return None


def require(module: str, extra: str = "train") -> ModuleType:
    """Import `module` (a package of `extra`), or raise the one-line `MissingDependencyError`
    naming `pip install 'evit-jax[extra]'`: `require("grain")`, `require("orbax.checkpoint")`."""
    assert module.split(".")[0] in EXTRAS[extra], f"{module} is not in the [{extra}] extra"
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        error = missing_dependency(e)
        if error is None:
            raise  # the package is there but something it needs is not: pip's report
        raise error from e
