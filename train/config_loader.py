"""`--config FILE.py[:ARGS]` and `--config.FIELD=VALUE` of evit-train: the config a run trains.

`FILE.py` defines `get_config(arg)` (big_vision style); `ARGS` is its argument string. A file
of the repository's `configs/` (installed as `evit_jax.configs`) is imported under that name,
also when the path does not exist where the command runs (`--config configs/demo.py` works
from any directory once evit-jax is installed); any other file is loaded from its path.
Overrides are parsed by ml_collections' `config_flags` (types from the field, tuples as
`(32, 64)`, `--config.flag` / `--noconfig.flag` for booleans) on the locked config, so a field
that does not exist is an error. Every mistake is a one-line `UserError`.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import re
from typing import Any

import ml_collections as mlc

from evit_jax.cli import UserError

OVERRIDE = re.compile(r"^--?(no)?config\.([^=]+)")


def _package_dir() -> str:
    import evit_jax.configs
    return os.path.dirname(os.path.abspath(evit_jax.configs.__file__))


def _module(path: str) -> Any:
    """The config module of `path`: `evit_jax.configs.<name>` for one of ours."""
    ours = os.path.join(_package_dir(), os.path.basename(path))
    if not os.path.isfile(path):
        if os.path.basename(os.path.dirname(path)) in ("", "configs") and os.path.isfile(ours):
            path = ours
        else:
            raise UserError(f"config file {path!r} not found (the recipes are configs/*.py, "
                            "e.g. --config configs/demo.py)")
    if not path.endswith(".py"):
        raise UserError(f"--config {path!r}: expected a Python file FILE.py[:ARGS]")
    if os.path.isfile(ours) and os.path.samefile(path, ours):
        return importlib.import_module(f"evit_jax.configs.{os.path.basename(path)[:-3]}")
    spec = importlib.util.spec_from_file_location("evit_train_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fields(c: Any, prefix: str = "") -> list[str]:
    out = []
    for k, v in c.items():
        out.append(prefix + k)
        if isinstance(v, mlc.ConfigDict):
            out += _fields(v, f"{prefix}{k}.")
    return out


def _check_field(config: mlc.ConfigDict, path: str, name: str, arg: str) -> None:
    node = config
    for part in re.sub(r"\[\d+\]", "", path).split("."):
        if not isinstance(node, mlc.ConfigDict) or part not in node:
            close = difflib.get_close_matches(path, _fields(config), n=3, cutoff=0.6)
            hint = (f"did you mean {' or '.join('--config.' + c for c in close)}?" if close
                    else "configs/common.py lists every field with its meaning")
            raise UserError(f"{arg}: {name} has no field {path!r}; {hint}")
        node = node[part]


def load(spec: str, overrides: list[str]) -> mlc.ConfigDict:
    """The locked config of `--config spec` with `overrides` (`--config.a.b=v`, `--config.a.b
    v`, `--noconfig.flag`) applied."""
    from absl import flags
    from ml_collections import config_flags

    path, _, arg = spec.partition(":")
    module = _module(path)
    if not hasattr(module, "get_config"):
        raise UserError(f"{path} has no get_config(arg): not a training config")
    try:
        config = module.get_config(arg or None)
    except UserError as e:
        raise UserError(f"--config {spec}: {e}") from None
    for item in overrides:
        m = OVERRIDE.match(item)
        if m:
            _check_field(config, m.group(2), path, item)
    argv = ["evit-train", *overrides]
    fv = flags.FlagValues()
    try:
        config_flags.DEFINE_config_dict("config", config, flag_values=fv, lock_config=True,
                                        sys_argv=argv)
        rest = fv(argv)[1:]
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        raise UserError(str(e) or repr(e)) from None  # a value the field does not take
    if rest:
        raise UserError(f"unexpected arguments {rest} (a boolean field takes "
                        "--config.FIELD=False or --noconfig.FIELD)")
    return fv.config
