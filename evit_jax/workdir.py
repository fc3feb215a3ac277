"""A training workdir as the library reads it: its layout and its inference variables.

`evit-train --workdir DIR` writes

  DIR/run_config.json            {"model", "num_classes", "task", "ema", "config"}
  DIR/checkpoints/<step>/params  {"params", "batch_stats"} of the trained model (orbax)
  DIR/checkpoints/<step>/ema     the same for the EMA model, when the run kept one

The trainer (train/checkpoint.py) writes and resumes these with the full train state; this
module only reads the weights back, so `evit_jax.load_variables(DIR)` works without the
training code. orbax (of the `[train]` extra) is imported only when a workdir is read.
"""

from __future__ import annotations

import json
import os
from typing import Any

from evit_jax.errors import UserError, UserFileNotFoundError, require

# The run's config, model name and class count (not `config.json`: that name marks a
# directory of converted variables).
RUN_CONFIG = "run_config.json"


class CheckpointError(UserError):
    """A checkpoint that cannot be restored (corrupted, or from another config)."""


SAM_TASKS = ("sam", "sam_distill")  # the trainer's SAM tasks (train/tasks/sam*.py)


def checkpoint_dir(workdir: str | os.PathLike) -> str:
    return os.path.abspath(os.path.join(workdir, "checkpoints"))


def is_workdir(path: str | os.PathLike) -> bool:
    return os.path.isdir(checkpoint_dir(path))


def read_run_config(workdir: str | os.PathLike) -> dict[str, Any]:
    """The run_config.json of a training workdir ({} when there is none)."""
    path = os.path.join(workdir, RUN_CONFIG)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            run = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: corrupt ({e}); restore it or pass the model name") from None
    return run if isinstance(run, dict) else {}


def load_inference_variables(workdir: str | os.PathLike, step: int | None = None,
                             use_ema: bool | None = None) -> dict[str, Any]:
    """`{"params", "batch_stats"}` (numpy) of a training workdir's checkpoint, for
    `create_model(...).apply(variables, x)`.

    Args:
      workdir: the `--workdir` of a training run.
      step: which checkpoint (default: the latest).
      use_ema: the EMA weights (default: when the run kept an EMA, as its evaluation did).
    """
    logging = require("absl.logging")  # orbax and absl come with [train] (the trainer wrote DIR)

    directory = checkpoint_dir(workdir)
    if not os.path.isdir(directory):
        raise UserFileNotFoundError(f"{workdir}: not a training workdir (no checkpoints/)")
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)  # orbax warns about read-only use and step metadata
    try:
        return _load_item(directory, step, use_ema)
    finally:
        logging.set_verbosity(verbosity)


def _load_item(directory: str, step: int | None, use_ema: bool | None) -> dict[str, Any]:
    import numpy as np
    from jax import tree

    ocp = require("orbax.checkpoint")

    if step is None:
        with ocp.CheckpointManager(directory, item_names=("params", "ema", "opt", "data"),
                                   options=ocp.CheckpointManagerOptions(read_only=True)) as m:
            step = m.latest_step()
    if step is None:
        raise UserFileNotFoundError(f"no finished checkpoint in {directory} (train longer, or "
                                    "wait for the first save)")
    path = os.path.join(directory, str(step))
    has_ema = os.path.isdir(os.path.join(path, "ema"))
    item = "ema" if (has_ema if use_ema is None else use_ema) else "params"
    if not os.path.isdir(os.path.join(path, item)):
        raise UserFileNotFoundError(f"checkpoint {path} holds no {item!r} weights"
                                    + (" (the run kept no EMA)" if item == "ema" else ""))
    try:
        with ocp.PyTreeCheckpointer() as ckptr:
            meta = ckptr.metadata(os.path.join(path, item)).item_metadata.tree
            restore = tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
            out = ckptr.restore(os.path.join(path, item),
                                args=ocp.args.PyTreeRestore(restore_args=restore))
    except Exception as e:  # noqa: BLE001 - orbax raises many types; name the checkpoint
        raise CheckpointError(f"cannot read {item!r} of checkpoint {path}: {e}") from e
    return {"params": out["params"], "batch_stats": out.get("batch_stats", {})}


def model_from_run(name: str, run: dict[str, Any]) -> Any:
    """The module a training run used, from its run_config.json dict (`read_run_config`):
    a SAM run's reduced encoder size / grid (`config.input.encoder_size`,
    `config.sam.grid`), else the zoo model itself."""
    from evit_jax.zoo import sam_model

    cfg = run.get("config", {}) if run.get("task") in SAM_TASKS else {}
    size = int(cfg.get("input", {}).get("encoder_size", 0) or 0)
    grid = int(cfg.get("sam", {}).get("grid", 0) or 0)
    return sam_model(name, size, grid)
