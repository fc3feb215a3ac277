"""Orbax checkpoints of a training run, preemption handling, and the inference loader.

Layout: `WORKDIR/checkpoints/<step>/{params, ema, opt, data}`: `params` = {"params",
"batch_stats"} of the trained model, `ema` = the same for the EMA model (when configured),
`opt` = {"step", "opt_state", "rng"}, `data` = the grain iterator state of every host. Saves
are asynchronous (training goes on while they are written) and atomic (an interrupted save
never becomes a "latest" checkpoint); the last `keep` are kept.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

ITEMS = ("params", "ema", "opt", "data")
# The run's config, model name and class count (not `config.json`: that name marks a
# directory of converted variables for `evit_jax.load_variables`).
RUN_CONFIG = "run_config.json"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be restored (corrupted, or from another config)."""


def checkpoint_dir(workdir: str) -> str:
    return os.path.abspath(os.path.join(workdir, "checkpoints"))


class Checkpoints:
    """The `CheckpointManager` of a workdir."""

    def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
        self.directory = checkpoint_dir(workdir)
        self.manager = ocp.CheckpointManager(
            self.directory, item_names=ITEMS,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
                cleanup_tmp_directories=True))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_iter: Any) -> None:
        import grain
        items = dict(params=ocp.args.StandardSave(
                         {"params": state.params, "batch_stats": state.batch_stats}),
                     opt=ocp.args.StandardSave(
                         {"step": state.step, "opt_state": state.opt_state, "rng": state.rng}),
                     data=grain.checkpoint.CheckpointSave(data_iter))
        if state.ema is not None:
            items["ema"] = ocp.args.StandardSave(state.ema)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(self, step: int, abstract_state: Any, data_iter: Any) -> Any:
        """The state saved at `step` (laid out like `abstract_state`); `data_iter` is
        positioned where that step left it. Raises CheckpointError naming the checkpoint."""
        import grain
        a = abstract_state
        items = dict(params=ocp.args.StandardRestore(
                         {"params": a.params, "batch_stats": a.batch_stats}),
                     opt=ocp.args.StandardRestore(
                         {"step": a.step, "opt_state": a.opt_state, "rng": a.rng}),
                     data=grain.checkpoint.CheckpointRestore(data_iter))
        if a.ema is not None:
            items["ema"] = ocp.args.StandardRestore(a.ema)
        path = os.path.join(self.directory, str(step))
        try:
            r = self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # noqa: BLE001 - re-raised with the checkpoint named
            others = [s for s in self.manager.all_steps() if s != step]
            msg = str(e).strip().splitlines()
            raise CheckpointError(
                f"cannot restore checkpoint {path}: {type(e).__name__}: "
                f"{msg[0] if msg else ''}\nIt is corrupted or was written by a different "
                f"config (model, num_classes, optimizer, EMA). Nothing was deleted. To resume "
                f"from an earlier checkpoint {sorted(others) or ''}, move {path} out of the "
                f"way; to start afresh, use a new --workdir.") from e
        return a.replace(params=r.params["params"], batch_stats=r.params["batch_stats"],
                         step=r.opt["step"], opt_state=r.opt["opt_state"], rng=r.opt["rng"],
                         ema=r.ema if a.ema is not None else None)

    def reached_preemption(self, step: int) -> bool:
        """True on every host at the same step once the cluster announced a preemption
        (multi-host runs, through jax.distributed)."""
        return self.manager.reached_preemption(step)

    def close(self) -> None:
        """Wait for pending saves (required before exit) and release the manager; idempotent."""
        if self.manager is not None:
            self.manager.wait_until_finished()
            self.manager.close()
            self.manager = None


class SigtermFlag:
    """Turns SIGTERM into a flag the loop polls (it saves and exits at a step boundary).

    Installed for single-process runs only: multi-host runs get the same through
    `Checkpoints.reached_preemption`, which JAX's coordination service keeps in sync.
    """

    def __init__(self):
        self.raised = False
        self._old = None
        if jax.process_count() == 1:
            self._old = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self.raised = True

    def restore(self) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def write_json_atomic(path: str, obj: Any) -> None:
    """Write JSON through a temporary file and a rename: readers never see half a file."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def is_workdir(path: str) -> bool:
    return os.path.isdir(checkpoint_dir(path))


def load_inference_variables(workdir: str, step: int | None = None,
                             use_ema: bool | None = None) -> dict[str, Any]:
    """`{"params", "batch_stats"}` (numpy) of a training workdir's checkpoint, for
    `create_model(...).apply(variables, x)`.

    Args:
      workdir: the `--workdir` of a training run.
      step: which checkpoint (default: the latest).
      use_ema: the EMA weights (default: when the run kept an EMA, as its evaluation did).
    """
    directory = checkpoint_dir(workdir)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{workdir!r} is not a training workdir (no checkpoints/)")
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)  # orbax warns about read-only use and step metadata
    try:
        return _load_item(directory, step, use_ema)
    finally:
        logging.set_verbosity(verbosity)


def _load_item(directory: str, step: int | None, use_ema: bool | None) -> dict[str, Any]:
    if step is None:
        with ocp.CheckpointManager(directory, item_names=ITEMS,
                                   options=ocp.CheckpointManagerOptions(read_only=True)) as m:
            step = m.latest_step()
    if step is None:
        raise FileNotFoundError(f"no finished checkpoint in {directory}")
    path = os.path.join(directory, str(step))
    has_ema = os.path.isdir(os.path.join(path, "ema"))
    item = "ema" if (has_ema if use_ema is None else use_ema) else "params"
    if not os.path.isdir(os.path.join(path, item)):
        raise FileNotFoundError(f"checkpoint {path} holds no {item!r} weights")
    try:
        with ocp.PyTreeCheckpointer() as ckptr:
            tree = ckptr.metadata(os.path.join(path, item)).item_metadata.tree
            restore = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
            out = ckptr.restore(os.path.join(path, item),
                                args=ocp.args.PyTreeRestore(restore_args=restore))
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"cannot read {item!r} of checkpoint {path}: {e}") from e
    return {"params": out["params"], "batch_stats": out.get("batch_stats", {})}
