"""`train_and_evaluate(config, workdir)`: the training loop, on one host or many, for every
task (`train.tasks`: what differs between tasks is there, never here).

One jitted step (`train.step`) over the global batch (data parallel on the mesh's "data"
axis; BatchNorm statistics are therefore over the global batch, i.e. synchronised), the
state donated.
Checkpoints every `checkpoint_every_steps` and on SIGTERM / preemption; a rerun with the same
workdir resumes from the latest checkpoint, data stream and RNG included, and continues
exactly as an uninterrupted run would.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import jax
import ml_collections as mlc
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from evit_jax.cli import UserError

from . import metrics, sync
from .checkpoint import RUN_CONFIG, Checkpoints, SigtermFlag, write_json_atomic
from .optim import make_optimizer
from .state import init_state, make_mesh
from .step import make_train_step
from .tasks import get_task


class Preempted(Exception):
    """Training stopped on SIGTERM / preemption after saving a checkpoint at `step`; rerun the
    same command to resume (`evit-train` exits with status 143 = 128 + SIGTERM)."""

    def __init__(self, step: int, checkpoint: str):
        self.step, self.checkpoint = step, checkpoint
        super().__init__(f"stopped at step {step} on request; checkpoint saved in {checkpoint}: "
                         "rerun the same command to resume")


def _setup_cache(config: Any) -> None:
    if config.compilation_cache and not jax.config.jax_compilation_cache_dir:
        cache = os.environ.get("EVIT_XLA_CACHE") or os.path.join(
            os.path.expanduser("~"), ".cache", "evit_jax", "xla")
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)


def train_and_evaluate(config: mlc.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train `config` in `workdir` (resuming if it holds checkpoints), evaluate, and return
    the final evaluation results: `{"step", **metrics}` (the metrics of the task's
    evaluator, as in eval_results.json) plus `img_per_s`, `checkpoint` and `plot`."""
    task = get_task(config.task)
    task.check_config(config)
    _setup_cache(config)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    pid, nproc = jax.process_index(), jax.process_count()
    mesh = make_mesh(config.model_parallel)
    data = task.make_data(config, pid, nproc)
    num_classes = config.num_classes or data.num_classes
    if data.num_classes and num_classes != data.num_classes:
        raise UserError(f"config.num_classes={config.num_classes} but {config.data.name} has "
                        f"{data.num_classes} classes: set --config.num_classes="
                        f"{data.num_classes} (or 0: the dataset's)")
    model = task.build_model(config, num_classes)
    tx, schedule = make_optimizer(config)
    state, sharding = init_state(config, model, tx, mesh)

    sync.use_distributed_barriers_in_orbax()
    sync.barrier("state_ready")
    ckpt = Checkpoints(workdir, keep=config.keep_checkpoints)
    start = ckpt.latest_step() or 0
    if start:
        state = ckpt.restore(start, state, data.train)
        state = jax.device_put(state, sharding)
    if pid == 0:
        write_json_atomic(os.path.join(workdir, RUN_CONFIG), {
            "model": config.model, "num_classes": num_classes, "task": config.task,
            "ema": config.ema_decay > 0, "config": config.to_dict()})
    writer = metrics.MetricWriter(workdir, resume_step=start)
    progress = metrics.Progress(config.total_steps, start, config.progress_bar)
    if start:
        progress.write(f"resumed from {ckpt.directory}/{start}")

    batch_sharding = NamedSharding(mesh, P("data"))
    step_fn = sync.Compiled(
        jax.jit(make_train_step(task, config, model, tx, schedule, num_classes),
                in_shardings=(sharding, batch_sharding), out_shardings=(sharding, None),
                donate_argnums=(0,)),
        "train_step")
    eval_model = task.build_model(config, num_classes, train=False)
    evaluator = task.evaluator(config, eval_model, num_classes)

    def evaluate(step: int) -> dict:
        variables = task.eval_variables(config, eval_model, state.variables(), pid, nproc)
        res = evaluator.run(variables, data.eval_dataset)
        res = {k: v for k, v in res.items() if k != "examples"}
        writer.write(step, "eval", res)
        result = {"step": step, **res}
        if pid == 0:
            write_json_atomic(os.path.join(workdir, "eval_results.json"), result)
        progress.write(f"eval @ step {step}: {task.format_metrics(res)}")
        return result

    prepare = task.batch_hook(config, mesh)  # None, or e.g. a distillation teacher
    stop = SigtermFlag()
    step, pending, t_log, seen, rates = start, [], time.time(), 0, []
    result = None
    try:
        while step < config.total_steps:
            local = next(data.train)
            batch = {k: jax.make_array_from_process_local_data(batch_sharding, np.asarray(v))
                     for k, v in local.items()}
            if prepare is not None:
                batch = prepare(batch)
            state, out = step_fn(state, batch)
            step += 1
            seen += config.batch_size
            pending.append(out)
            progress.update(1)
            if step % config.log_every_steps == 0 or step == config.total_steps:
                vals = {k: float(np.mean([jax.device_get(o[k]) for o in pending]))
                        for k in pending[0]}
                dt = time.time() - t_log
                vals["img_per_s"] = seen / dt
                if step - start > len(pending):  # the first interval includes compilation
                    rates.append(vals["img_per_s"])
                writer.write(step, "train", vals)
                progress.update(0, loss=vals["loss"], lr=vals["lr"],
                                img_s=round(vals["img_per_s"], 1))
                pending, t_log, seen = [], time.time(), 0
            preempt = stop.raised or ckpt.reached_preemption(step)
            if step % config.checkpoint_every_steps == 0 or step == config.total_steps or preempt:
                ckpt.save(step, state, data.train)
            if preempt:
                ckpt.close()
                raise Preempted(step, f"{ckpt.directory}/{step}")
            if config.eval_every_steps and step % config.eval_every_steps == 0 \
                    and step < config.total_steps:
                evaluate(step)
        progress.close()
        result = evaluate(step)
    finally:
        stop.restore()
        ckpt.close()
        writer.close()
    plot = metrics.plot_curves(workdir, task.percent_metrics) if pid == 0 else None
    result["img_per_s"] = float(np.median(rates)) if rates else math.nan
    result["checkpoint"] = f"{ckpt.directory}/{step}"
    result["plot"] = plot
    return result
