"""Save and load variables: `save_variables` writes one directory atomically, and
`load_variables` is the one weight loader (that directory, a training workdir, or a checkpoint
file converted in memory), checking the model the weights record against the one asked for.

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

import dataclasses
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


# ------------------------------------------------------------------------------ loading
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


def load_variables(path: str | os.PathLike, model: str | None = None, *,
                   use_ema: bool | None = None, key: str | None = None) -> dict[str, Any]:
    """The variables of a model, from whatever holds them (the one weight loader).

    Args:
      path: a variables directory (`save_variables` / `evit-convert`), a training workdir
        (`python -m train.main --workdir DIR`: its latest checkpoint), or a checkpoint file
        of the authors or timm (`.pt` / `.pth` / `.bin` / `.safetensors`, read without
        torch and converted in memory).
      model: zoo name the weights are for. Checked against the model a directory records
        (a clear error when they differ); required for a checkpoint file.
      use_ema: training workdir only: the EMA weights (default: when the run kept an EMA).
      key: checkpoint file only: the entry holding the weights (e.g. "ema"; default: found).
    Returns:
      Nested dicts of numpy arrays, e.g. `{"params": {...}, "batch_stats": {...}}`, ready for
      `create_model(model).apply(variables, x)`.
    Raises:
      FileNotFoundError: nothing at `path`, or a directory that holds no weights.
      UserError: `model` disagrees with the recorded one; a corrupt or incomplete directory;
        a checkpoint file without `model`. CheckpointFormatError / CheckpointMismatchError:
        a checkpoint file that cannot be read / does not fit `model`.
    """
    from evit_jax import workdir

    p = Path(path)
    if p.is_file() and p.name in (WEIGHTS_FILE, CONFIG_FILE) \
            and (p.parent / CONFIG_FILE).is_file():
        p = p.parent  # a file of a variables directory: the user means the directory
    if p.is_file():
        return _load_checkpoint_file(p, model, key)
    if not p.exists():
        raise _missing(p)
    if not (p / CONFIG_FILE).exists() and workdir.is_workdir(p):
        recorded = workdir.read_run_config(p).get("model")
        check_model(p, recorded, model)
        variables = workdir.load_inference_variables(p, use_ema=use_ema)
    else:
        recorded = read_config(p).get("model")
        check_model(p, recorded, model)
        variables = _read_weights(p)
    if model and not recorded:
        check_fits(p, variables, model)
    return variables


def recorded_model(path: str | os.PathLike) -> str | None:
    """The zoo name a variables directory or training workdir records (None: a file, or
    nothing recorded). Raises FileNotFoundError when nothing is at `path`."""
    from evit_jax import workdir

    p = Path(path)
    if not p.exists():
        raise _missing(p)
    if (p / CONFIG_FILE).is_file():
        return read_config(p).get("model")
    if workdir.is_workdir(p):
        return workdir.read_run_config(p).get("model")
    return None


def _missing(p: Path) -> UserFileNotFoundError:
    return UserFileNotFoundError(f"{p}: no such file or directory (give a variables directory "
                                 "written by evit-convert, a training workdir, or a checkpoint "
                                 "file .pt/.pth/.bin/.safetensors)")


def same_model(a: str, b: str) -> bool:
    """Whether weights of zoo model `a` fit model `b`: the same entry, or entries that differ
    only in what their checkpoint was evaluated at (`efficientvit-b1` vs `-r224`)."""
    from evit_jax.zoo import model_info

    sa, sb = model_info(a), model_info(b)
    ignore = dict(name="", resolution=(0, 0), crop_pct=0.0, checkpoint=None, paper=None)
    return sa.name == sb.name or (dataclasses.replace(sa, **ignore)
                                  == dataclasses.replace(sb, **ignore))


def check_model(path: str | os.PathLike, recorded: str | None, model: str | None) -> None:
    """Raise a one-line UserError when weights recorded as `recorded` are asked for as
    `model` (nothing to check when either is unknown)."""
    from evit_jax.zoo import model_info

    if not model or not recorded:
        return
    model_info(model)  # an unknown requested name: the zoo's own message (with suggestions)
    try:
        model_info(recorded)
    except ValueError:
        raise UserError(f"{path} holds weights of {recorded!r}, a model this evit-jax does not "
                        f"know; upgrade evit-jax or use the weights of {model!r}") from None
    if not same_model(recorded, model):
        raise UserError(f"{path} holds weights of {recorded!r}, not {model!r}: pass --model "
                        f"{recorded}, or weights of {model}")


def check_fits(path: str | os.PathLike, variables: Mapping[str, Any], model: str) -> None:
    """Raise a one-line UserError unless `variables` have exactly the arrays (paths and
    shapes) of zoo model `model`: the check for weights that record no model name."""
    from evit_jax.zoo import abstract_variables, create_model

    want = flatten_dict(abstract_variables(create_model(model)), sep="/")
    got = flatten_dict(dict(variables), sep="/")
    wrong = [f"missing {k}" for k in want if k not in got]
    wrong += [f"unexpected {k}" for k in got if k not in want]
    wrong += [f"{k} is {tuple(np.shape(got[k]))}, not {tuple(want[k].shape)}" for k in want
              if k in got and tuple(np.shape(got[k])) != tuple(want[k].shape)]
    if wrong:
        raise UserError(f"{path} records no model name and its weights do not fit {model} "
                        f"({len(wrong)} arrays differ, e.g. {wrong[0]}): pass the model they "
                        "were saved from")


def _load_checkpoint_file(p: Path, model: str | None, key: str | None) -> dict[str, Any]:
    from evit_jax.convert.keymap import convert_state_dict
    from evit_jax.convert.readers import load_state_dict

    if not model:
        raise UserError(f"{p} is a checkpoint file: name its model (--model NAME, "
                        "load_variables(path, model=NAME)) to convert it in memory")
    return convert_state_dict(model, load_state_dict(p, key))


def _read_weights(d: Path) -> dict[str, Any]:
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
