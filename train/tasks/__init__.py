"""Training tasks as plug-ins: what differs between classification, segmentation, SAM,
distillation, super-resolution (and detection) lives in one module per task; the loop
(`train.trainer`), the state, the input pipeline and the checkpoints name none.

`config.task` names the task: the module `train/tasks/<name>.py`, which defines `TASK`, an
instance of a `Task` subclass. A new task is that one file plus a config (docs/architecture.md,
"Adding a task"); `registered()` lists the files, `get_task(name)` imports the one asked for.
A task module imports what lies below it (the library, `train.input_pipeline`, `train.losses`,
`train.datasets`, `train.sync`, ... and another task it builds on), never the loop.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

from evit_jax.cli import UserError

# (params) -> (loss, (metrics, new batch_stats or None)); traced inside the jitted step.
LossFn = Callable[[Any], tuple[Any, tuple[dict[str, Any], Any]]]


class Task:
    """What a task gives the loop. Override what differs; the defaults fit a task without
    BatchNorm re-estimation, hooks or frozen parameters.

    Everything runs on the host except `loss_fn`, which is traced into the jitted step
    (`train.step.make_train_step`: gradients -> clipping and optimizer -> `trainable` ->
    EMA -> metrics, the same for every task).
    """

    percent_metrics: tuple[str, ...] = ()  # eval metrics that are fractions, plotted as %

    def check_config(self, config: Any) -> None:
        """Raise `UserError` for settings this task cannot train with (before anything is
        built or read)."""

    def make_data(self, config: Any, process_index: int, process_count: int) -> Any:
        """`train.input_pipeline.Data`: this host's train batches (through
        `input_pipeline.train_stream`) and evaluation data (what `evaluator` reads)."""
        raise NotImplementedError

    def build_model(self, config: Any, num_classes: int, train: bool = True) -> Any:
        """The Flax module (`train=False`: the one evaluation runs)."""
        raise NotImplementedError

    def loss_fn(self, config: Any, model: Any, state: Any, batch: dict, key: Any,
                num_classes: int) -> LossFn:
        """The loss of the global `batch` as a function of the parameters. `key` is this
        step's PRNG key; `state` (TrainState) gives the step, BN statistics and EMA. Work that
        does not depend on the parameters (mixing, sampling) goes before the closure."""
        raise NotImplementedError

    def trainable(self, config: Any) -> Callable[[str], bool] | None:
        """Which parameters learn, by path (`a/b/c`); None: all of them."""
        return None

    def batch_hook(self, config: Any, mesh: Any) -> Callable[[dict], dict] | None:
        """A function global batch -> global batch run before every step (e.g. a teacher's
        outputs computed on the devices), or None."""
        return None

    def evaluator(self, config: Any, model: Any, num_classes: int) -> Any:
        """An object whose `run(variables, data.eval_dataset)` returns this host's view of
        the metrics (the same on every host): a dict of floats (and "examples")."""
        raise NotImplementedError

    def eval_variables(self, config: Any, model: Any, variables: Any, process_index: int,
                       process_count: int) -> Any:
        """The variables to evaluate (e.g. with re-estimated BatchNorm statistics)."""
        return variables

    def format_metrics(self, results: dict[str, float]) -> str:
        """One evaluation's metrics as printed during training."""
        return ", ".join(f"{k} {v:.4f}" for k, v in results.items())

    def summary(self, results: dict[str, Any]) -> str:
        """The metrics part of evit-train's closing `Done:` line; `results` is what
        `train_and_evaluate` returns (the final metrics, `step`, `img_per_s`, paths)."""
        return self.format_metrics({k: v for k, v in results.items() if isinstance(v, float)
                                    and k not in ("step", "img_per_s")})


def registered() -> list[str]:
    """The task names: the modules of this package."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def get_task(name: str) -> Task:
    """The task `name` (`config.task`); a `UserError` listing the registered ones if unknown."""
    known = registered()
    if name not in known:
        raise UserError(f"unknown task {name!r} (config.task); registered tasks: "
                        f"{', '.join(known)}")
    return importlib.import_module(f"{__name__}.{name}").TASK
