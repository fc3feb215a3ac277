"""Orbax checkpoints of a training run (save, resume) and preemption handling.

Layout: `WORKDIR/checkpoints/<step>/{params, ema, opt, data}`: `params` = {"params",
"batch_stats"} of the trained model, `ema` = the same for the EMA model (when configured),
`opt` = {"step", "opt_state", "rng"}, `data` = the grain iterator state of every host. Saves
are asynchronous (training goes on while they are written) and atomic (an interrupted save
never becomes a "latest" checkpoint); the last `keep` are kept. Reading the weights back for
inference is the library's (`evit_jax.workdir`, through `evit_jax.load_variables`).
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import jax
import orbax.checkpoint as ocp

from evit_jax.cli import write_atomic
from evit_jax.workdir import (  # noqa: F401  (the workdir layout and reader live in the library)
    RUN_CONFIG,
    CheckpointError,
    checkpoint_dir,
    is_workdir,
    load_inference_variables,
)

ITEMS = ("params", "ema", "opt", "data")


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
    write_atomic(path, json.dumps(obj, indent=1))
