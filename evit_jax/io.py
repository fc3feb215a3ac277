"""The one weight loader: `load_variables(path, model)` reads a variables directory
(`evit_jax.vardir`, what `save_variables` / `evit-convert` write), a training workdir, or a
checkpoint file of the authors or timm converted in memory, and checks the model the weights
record against the one asked for; `pretrained(name)` does the same for the published
checkpoint of a zoo name, fetched from the Hugging Face Hub (`evit_jax.hub`).

`save_variables`, `read_config` and the format's names are re-exported from `evit_jax.vardir`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flax.traverse_util import flatten_dict

from evit_jax.errors import UserError, UserFileNotFoundError
from evit_jax.vardir import (
    CONFIG_FILE,
    FORMAT,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    read_config,
    read_weights,
    save_variables,
)

__all__ = ["CONFIG_FILE", "FORMAT", "FORMAT_VERSION", "WEIGHTS_FILE", "check_fits",
           "check_model", "load_variables", "pretrained", "read_config", "recorded_model",
           "same_model", "save_variables"]


def load_variables(path: str | os.PathLike, model: str | None = None, *,
                   use_ema: bool | None = None, key: str | None = None) -> dict[str, Any]:
    """The variables of a model, from whatever holds them (the one weight loader).

    Args:
      path: a variables directory (`save_variables` / `evit-convert`), a training workdir
        (`evit-train --workdir DIR`: its latest checkpoint), or a checkpoint file
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
        variables = read_weights(p)
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


def pretrained(name: str, *, revision: str | None = None,
               cache_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Variables of the authors' (or timm's) checkpoint of zoo model `name`, like timm's
    `pretrained=True`: `create_model(name).apply(evit_jax.pretrained(name), x)`.

    The first call downloads (`evit_jax.hub`) and converts; later calls read the converted
    copy from the cache. `revision` and `cache_dir` go to `huggingface_hub.hf_hub_download`.
    """
    from evit_jax.hub import cache_root, checkpoint_location, content_key, fetch
    from evit_jax.zoo import model_info

    spec = model_info(name)
    path = fetch(name, revision, cache_dir)
    repo, filename = checkpoint_location(name)
    full = spec.name if spec.key_style != "timm" else repo.split("/", 1)[1]
    converted = cache_root() / "pretrained" / f"{full}-{content_key(path)}"
    if (converted / "config.json").is_file():
        try:
            read_config(converted)
            return load_variables(converted, model=spec.name)
        except (OSError, ValueError):  # a damaged cache entry: convert again below
            pass
    variables = load_variables(path, model=name)  # restricted reader + strict conversion
    save_variables(variables, converted, model=spec.name, overwrite=True,
                   metadata={"source_repo": repo, "source_file": filename,
                             "source_revision": revision or "main",
                             "source_snapshot": path.parent.name, "converted_by": "pretrained"})
    return variables
