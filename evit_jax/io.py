"""Save and load converted variables: one directory, written atomically.

Layout of a variables directory (what `evit-convert` writes):

  DIR/variables.safetensors   every array, keyed by its path: `params/backbone/stages_0/...`,
                              `batch_stats/...`
  DIR/config.json             {"format": "evit-jax-variables", "format_version": 1,
                               "evit_jax_version", "model", "num_tensors", "num_params",
                               "metadata": {...}} (e.g. the source checkpoint and its sha256)

Writing goes to a temporary directory beside DIR that is renamed into place at the end, so an
interrupted or failed save leaves neither DIR nor temporary files behind.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

FORMAT = "evit-jax-variables"
FORMAT_VERSION = 1
WEIGHTS_FILE = "variables.safetensors"
CONFIG_FILE = "config.json"

# --------------------------------------------------------------------- extension point
# Directories that are not written by `save_variables` but hold variables all the same, most
# importantly a training workdir (orbax checkpoints written by train/). The training code
# registers `(detect, load)`: `detect(dir) -> bool`, `load(dir) -> variables`; `load_variables`
# tries them, in order, on any directory without a config.json.
WORKDIR_LOADERS: list[tuple[Callable[[Path], bool], Callable[[Path], dict[str, Any]]]] = []


def register_workdir_loader(detect: Callable[[Path], bool],
                            load: Callable[[Path], dict[str, Any]]) -> None:
    """Teach `load_variables` another directory layout (e.g. a training workdir)."""
    WORKDIR_LOADERS.append((detect, load))


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

    import evit_jax

    dst = Path(directory)
    if dst.exists() and not dst.is_dir():
        raise FileExistsError(f"{dst} exists and is a file, not a directory")
    if dst.is_dir() and any(dst.iterdir()) and not overwrite:
        raise FileExistsError(f"{dst} already exists and is not empty; choose another "
                              "directory or pass overwrite=True (--overwrite)")
    flat = _flat(variables)
    config = {"format": FORMAT, "format_version": FORMAT_VERSION,
              "evit_jax_version": evit_jax.__version__, "model": model,
              "num_tensors": len(flat),
              "num_params": int(sum(v.size for k, v in flat.items() if k.startswith("params/"))),
              "metadata": dict(metadata or {})}
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"  # fail early if not JSON-able
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


# ------------------------------------------------------------------------------ loading
def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The config.json of a variables directory (model name, versions, metadata)."""
    d = Path(directory)
    path = d / CONFIG_FILE
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: no such directory (convert a checkpoint into it with "
                                "`evit-convert --model NAME --src FILE --dst DIR`)")
    if not path.is_file():
        raise FileNotFoundError(f"{d}: not an evit-jax variables directory (no {CONFIG_FILE}; "
                                "expected what save_variables / evit-convert write)")
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: corrupt ({e}); convert the checkpoint again") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"{path}: not an evit-jax variables config")
    if int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{d}: written in format version {config['format_version']} by "
                         f"evit-jax {config.get('evit_jax_version')}; this evit-jax reads up "
                         f"to {FORMAT_VERSION}: upgrade evit-jax")
    return config


def load_variables(directory: str | os.PathLike) -> dict[str, Any]:
    """Read variables written by `save_variables` (or a registered workdir layout).

    Returns:
      Nested dicts of numpy arrays, e.g. `{"params": {...}, "batch_stats": {...}}`, ready for
      `create_model(name).apply(variables, x)`.
    Raises:
      FileNotFoundError: no directory, or not a variables directory.
      ValueError: a corrupt or incomplete directory (names the file).
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    d = Path(directory)
    if d.is_dir() and not (d / CONFIG_FILE).exists():
        for detect, load in WORKDIR_LOADERS:
            if detect(d):
                return load(d)
    read_config(d)
    weights = d / WEIGHTS_FILE
    if not weights.is_file():
        raise ValueError(f"{d}: incomplete variables directory ({WEIGHTS_FILE} is missing); "
                         "convert the checkpoint again")
    import ml_dtypes  # noqa: F401  (lets safetensors read bfloat16 arrays)

    try:
        flat = load_file(str(weights))
    except SafetensorError as e:
        raise ValueError(f"{weights}: corrupt ({e}); convert the checkpoint again") from None
    return unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
