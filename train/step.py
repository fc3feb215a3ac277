"""The one training step of every task: the task's loss -> gradients -> the optimizer (its
clipping first, `train.optim`) -> the parameters the task trains -> the EMA -> metrics.

The task supplies only `Task.loss_fn` (and `Task.trainable`); the step is jitted once over
the global batch by the loop, the state donated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .optim import path_str
from .state import TrainState


def ema_update(config: Any, ema: Any, step: jax.Array, params: Any, batch_stats: Any) -> Any:
    """The EMA after update `step` (counted 1..): decay `ema_decay * (1 - exp(-step /
    ema_warmup_steps))`, the reference's warm-up, over {"params", "batch_stats"}."""
    d = config.ema_decay * (1 - jnp.exp(-step / config.ema_warmup_steps))
    new = {"params": params, "batch_stats": batch_stats}
    return jax.tree.map(lambda e, v: e - (1 - d) * (e - v), ema, new)


def grad_norm(grads: Any) -> jax.Array:
    return jnp.sqrt(sum(jnp.vdot(g, g) for g in jax.tree.leaves(grads)))


def make_train_step(task: Any, config: Any, model: Any, tx: Any, schedule: Callable,
                    num_classes: int) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """The (state, global batch) -> (state, metrics) function to jit.

    Metrics: the loss, the task's own (`loss_fn`'s aux), `lr` (of this update) and
    `grad_norm` (before clipping)."""
    trainable = task.trainable(config)

    def step_fn(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        loss_fn = task.loss_fn(config, model, state, batch, key, num_classes)
        (loss, (mets, bstats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        bstats = state.batch_stats if bstats is None else bstats
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        if trainable is not None:  # frozen parameters do not move (no weight decay either)
            updates = jax.tree_util.tree_map_with_path(
                lambda p, u: u if trainable(path_str(p)) else jnp.zeros_like(u), updates)
        params = jax.tree.map(lambda p, u: p + u, state.params, updates)
        step = state.step + 1
        ema = state.ema
        if ema is not None:
            ema = ema_update(config, ema, step, params, bstats)
        out = {"loss": loss, **mets, "lr": schedule(state.step), "grad_norm": grad_norm(grads)}
        return state.replace(step=step, params=params, batch_stats=bstats, opt_state=opt_state,
                             ema=ema), out

    return step_fn
