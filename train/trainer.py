"""`train_and_evaluate(config, workdir)`: the training loop, on one host or many.

One jitted step over the global batch (data parallel on the mesh's "data" axis; BatchNorm
statistics are therefore over the global batch, i.e. synchronised), the state donated.
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
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from . import bn_reset, input_pipeline, losses, metrics, sam_task, sr_task, sync
from .checkpoint import RUN_CONFIG, Checkpoints, SigtermFlag, write_json_atomic
from .evaluate import Evaluator
from .optim import make_optimizer
from .state import TrainState, build_model, init_state, make_mesh


class Preempted(Exception):
    """Training stopped on SIGTERM / preemption after saving a checkpoint at `step`; rerun the
    same command to resume (`evit-train` exits with status 143 = 128 + SIGTERM)."""

    def __init__(self, step: int, checkpoint: str):
        self.step, self.checkpoint = step, checkpoint
        super().__init__(f"stopped at step {step} on request; checkpoint saved in {checkpoint}: "
                         "rerun the same command to resume")


def make_train_step(config: Any, model: Any, tx: Any, schedule: Any, num_classes: int):
    """The (state, batch) -> (state, metrics) function to jit."""
    task, warmup = config.task, config.warmup_steps
    if task == "sr":
        return sr_task.make_train_step(config, model, tx, schedule)
    if task in sam_task.TASKS:
        return sam_task.make_train_step(config, model, tx, schedule)
    post_warmup = max(config.total_steps - warmup, 1)

    def step_fn(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        k_mix, k_drop = jax.random.split(key)
        images, labels = batch["image"], batch["label"]
        if task == "cls":
            targets = losses.smooth_one_hot(labels, num_classes, config.label_smoothing)
            images, targets = losses.mix(k_mix, images, targets, config.mixup_alpha,
                                         config.cutmix_alpha)

        def loss_fn(params):
            logits, mut = model.apply({"params": params, "batch_stats": state.batch_stats},
                                      images, train=True, mutable=["batch_stats"],
                                      rngs={"dropout": k_drop})
            if task == "seg":
                loss, acc = losses.seg_loss(logits, labels, config.input.ignore_index)
                return loss, (acc, mut["batch_stats"])
            loss = losses.cls_loss(logits, targets, config.loss)
            if config.mesa_ratio > 0 and state.ema is not None:
                # MESA: also fit the EMA model's sigmoid outputs, once training is far enough.
                progress = jnp.maximum(state.step - warmup, 0) / post_warmup
                ema_logits = jax.lax.stop_gradient(model.apply(state.ema, images))
                mesa = losses.cls_loss(logits, jax.nn.sigmoid(ema_logits), "bce")
                loss = loss + jnp.where(progress >= config.mesa_start,
                                        config.mesa_ratio * mesa, 0.0)
            acc = (logits.argmax(-1) == labels).mean()
            return loss, (acc, mut["batch_stats"])

        (loss, (acc, bstats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = jax.tree.map(lambda p, u: p + u, state.params, updates)
        step = state.step + 1
        ema = state.ema
        if ema is not None:  # the reference: decay * (1 - exp(-step / warmup)), step counted 1..
            d = config.ema_decay * (1 - jnp.exp(-step / config.ema_warmup_steps))
            new = {"params": params, "batch_stats": bstats}
            ema = jax.tree.map(lambda e, v: e - (1 - d) * (e - v), ema, new)
        out = {"loss": loss, "top1": acc, "lr": schedule(state.step),
               "grad_norm": jnp.sqrt(sum(jnp.vdot(g, g) for g in jax.tree.leaves(grads)))}
        return state.replace(step=step, params=params, batch_stats=bstats, opt_state=opt_state,
                             ema=ema), out

    return step_fn


def _setup_cache(config: Any) -> None:
    if config.compilation_cache and not jax.config.jax_compilation_cache_dir:
        cache = os.environ.get("EVIT_XLA_CACHE") or os.path.join(
            os.path.expanduser("~"), ".cache", "evit_jax", "xla")
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)


def train_and_evaluate(config: mlc.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train `config` in `workdir` (resuming if it holds checkpoints), evaluate, and return
    the final evaluation results ({"step", "top1", "top5"}, {"step", "miou"}, or for SR
    {"step", "psnr_y", "ssim_y", "bicubic_psnr_y", "bicubic_ssim_y"})."""
    _setup_cache(config)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    pid, nproc = jax.process_index(), jax.process_count()
    mesh = make_mesh(config.model_parallel)
    data = input_pipeline.make_data(config, pid, nproc)
    num_classes = config.num_classes or data.num_classes
    if data.num_classes and num_classes != data.num_classes:
        raise ValueError(f"config.num_classes={config.num_classes} but {config.data.name} has "
                         f"{data.num_classes} classes")
    model = build_model(config, num_classes)
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
    step_fn = sync.Compiled(jax.jit(make_train_step(config, model, tx, schedule, num_classes),
                                    in_shardings=(sharding, batch_sharding),
                                    out_shardings=(sharding, None), donate_argnums=(0,)),
                            "train_step")
    if config.task in sam_task.TASKS:
        evaluator = sam_task.make_evaluator(config, build_model(config, num_classes, False))
    elif config.task == "sr":
        evaluator = sr_task.SREvaluator(build_model(config, num_classes, train=False),
                                        sr_task.scale_of(config))
    else:
        evaluator = Evaluator(build_model(config, num_classes, train=False), config.task,
                              num_classes, config.eval_batch_size, config.input.ignore_index)

    def evaluate(step: int) -> dict:
        variables = state.variables()
        if config.reset_bn_examples > 0:
            variables = bn_reset.reset_bn(config, evaluator.model, variables, pid, nproc)
        res = evaluator.run(variables, data.eval_dataset)
        res = {k: v for k, v in res.items() if k != "examples"}
        writer.write(step, "eval", res)
        result = {"step": step, **res}
        if pid == 0:
            write_json_atomic(os.path.join(workdir, "eval_results.json"), result)
        fmt = (lambda v: f"{v:.4f}") if config.task in ("sr",) + sam_task.TASKS \
            else (lambda v: f"{100 * v:.2f}%")
        progress.write(f"eval @ step {step}: " + ", ".join(f"{k} {fmt(v)}"
                                                           for k, v in res.items()))
        return result

    prepare = sam_task.batch_hook(config, mesh)  # None, or the distillation teacher
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
    plot = metrics.plot_curves(workdir) if pid == 0 else None
    result["img_per_s"] = float(np.median(rates)) if rates else math.nan
    result["checkpoint"] = f"{ckpt.directory}/{step}"
    result["plot"] = plot
    return result
