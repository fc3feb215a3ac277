"""The variables directory, evit-jax's own format for weights: `save_variables` writes one
atomically, `read_config` / `read_weights` read it back. (`evit_jax.load_variables`, the one
loader, reads these and everything else that holds weights.)

Layout (what `evit-convert` writes):

  DIR/variables.safetensors   every array, keyed by its path: `params/backbone/stages_0/...`,
                              `batch_stats/...`
  DIR/config.json             {"format": "evit-jax-variables", "format_version": 1,
                               "evit_jax_version", "model", "num_tensors", "num_params",
                               "metadata": {...}} (e.g. the source checkpoint and its sha256)

Writing goes to a temporary directory beside DIR that is renamed into place at the end, so an
interrupted or failed save leaves neither DIR nor temporary files behind. This module sits
below the converter and the loader (it imports neither), so both may use it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from evit_jax.errors import (
    UserError,
    UserFileExistsError,
    UserFileNotFoundError,
    UserNotADirectoryError,
    user_path,
)

FORMAT = "evit-jax-variables"
FORMAT_VERSION = 1
WEIGHTS_FILE = "variables.safetensors"
CONFIG_FILE = "config.json"


# ------------------------------------------------------------------------------- saving
def _flat(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    flat = flatten_dict(dict(variables), sep="/")
    return {k: np.asarray(v, order="C") for k, v in flat.items()}  # keeps 0-d shapes


def save_variables(variables: Mapping[str, Any], directory: str | os.PathLike, *,
                   model: str | None = None, metadata: dict | None = None,
                   overwrite: bool = False) -> Path:
    """Write `variables` (nested dicts of arrays: numpy or jax) to `directory`, atomically.

    Args:
      variables: e.g. `{"params": ..., "batch_stats": ...}`.
      directory: destination; created with its parents. An existing empty directory is used.
      model: zoo name recorded in config.json (so `create_model(info["model"])` fits).
      metadata: JSON-serialisable facts to keep with the weights (source file, sha256, ...).
      overwrite: replace an existing non-empty `directory` (only once the new one is complete).
    Returns:
      The directory as a `Path`.
    Raises:
      FileExistsError: `directory` exists, is not empty, and `overwrite` is False.
    """
    from safetensors.numpy import save_file

    from evit_jax.version import __version__

    dst = Path(directory)
    if dst.exists() and not dst.is_dir():
        raise UserFileExistsError(f"{dst} exists and is a file, not a directory")
    if dst.is_dir() and any(dst.iterdir()) and not overwrite:
        raise UserFileExistsError(f"{dst} already exists and is not empty; choose another "
                                  "directory or pass overwrite=True (--overwrite)")
    flat = _flat(variables)
    config = {"format": FORMAT, "format_version": FORMAT_VERSION,
              "evit_jax_version": __version__, "model": model,
              "num_tensors": len(flat),
              "num_params": int(sum(v.size for k, v in flat.items() if k.startswith("params/"))),
              "metadata": dict(metadata or {})}
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"  # fail early if not JSON-able
    with user_path(dst, "write"):  # no permission, disk full: one line naming DST
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.parent / f".{dst.name}.tmp-{secrets.token_hex(6)}"
        tmp.mkdir()  # unlike mkdtemp, honours the umask: the result is as readable as any dir
        try:
            save_file(flat, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT,
                                                                "model": model or ""})
            (tmp / CONFIG_FILE).write_text(text)
            for name in (WEIGHTS_FILE, CONFIG_FILE):
                os.chmod(tmp / name, tmp.stat().st_mode & 0o666)  # safetensors writes 0600
                with open(tmp / name, "rb") as f:
                    os.fsync(f.fileno())
            _move_into_place(tmp, dst)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dst


def _move_into_place(tmp: Path, dst: Path) -> None:
    if dst.is_dir() and not any(dst.iterdir()):
        dst.rmdir()
    if not dst.exists():
        os.rename(tmp, dst)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
    os.rename(dst, old / "x")  # keep the old copy until the new one is in place
    try:
        os.rename(tmp, dst)
    except BaseException:
        os.rename(old / "x", dst)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------ reading
def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The config.json of a variables directory (model name, versions, metadata)."""
    d = Path(directory)
    path = d / CONFIG_FILE
    if d.is_file():
        raise UserNotADirectoryError(f"{d} is a file, not a variables directory (load a checkpoint "
                                     "file with load_variables(path, model=NAME))")
    if not d.is_dir():
        raise UserFileNotFoundError(f"{d}: no such directory (convert a checkpoint into it with "
                                    "`evit-convert --model NAME --src FILE --dst DIR`)")
    if not path.is_file():
        raise UserFileNotFoundError(f"{d}: not an evit-jax variables directory (no {CONFIG_FILE}; "
                                    "expected what save_variables / evit-convert write)")
    with user_path(path):
        raw = path.read_bytes()
    try:
        config = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: corrupt ({e}); convert the checkpoint again") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise UserError(f"{path}: not an evit-jax variables config")
    if int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise UserError(f"{d}: written in format version {config['format_version']} by "
                        f"evit-jax {config.get('evit_jax_version')}; this evit-jax reads up "
                        f"to {FORMAT_VERSION}: upgrade evit-jax")
    return config


def read_weights(d: Path) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    weights = d / WEIGHTS_FILE
    if not weights.is_file():
        raise UserError(f"{d}: incomplete variables directory ({WEIGHTS_FILE} is missing); "
                        "convert the checkpoint again")
    import ml_dtypes  # noqa: F401  (lets safetensors read bfloat16 arrays)

    try:
        with user_path(weights):
            flat = load_file(str(weights))
    except SafetensorError as e:
        raise UserError(f"{weights}: corrupt ({e}); convert the checkpoint again") from None
    return unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
