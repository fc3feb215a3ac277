"""Optimizer of the reference recipe: AdamW with linear warmup + cosine decay, no weight decay
on norm / bias parameters, element-wise gradient clipping.

Matches the reference's PyTorch pieces: the learning rate of update `step` (0-based) is
`lr * (step + 1) / warmup_steps` during warmup, then `min_lr + (lr - min_lr) * (1 + cos(pi *
t)) / 2` with `t` the fraction of the post-warmup steps done; AdamW's decoupled decay is
`p -= lr * wd * p` (optax and torch agree); gradients are clipped element-wise to
`[-grad_clip_value, grad_clip_value]` before the update.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax


def warmup_cosine(lr: float, warmup_steps: int, total_steps: int,
                  min_lr: float = 0.0) -> Callable[[jax.Array], jax.Array]:
    """The learning rate of update `step` (0-based)."""
    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = lr * (step + 1) / max(warmup_steps, 1)
        t = jnp.clip((step - warmup_steps) / max(total_steps - warmup_steps, 1), 0.0, 1.0)
        cos = min_lr + (lr - min_lr) * 0.5 * (1 + jnp.cos(jnp.pi * t))
        return jnp.where(step < warmup_steps, warm, cos)
    return schedule


def path_str(path: tuple) -> str:
    """A pytree key path as `a/b/c` (the form the config regexes match)."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def decay_mask(params: Any, no_decay_keys: Sequence[str]) -> Any:
    """True where weight decay applies: parameters whose path contains none of the keys
    (the reference: any name containing `norm` or `bias` is excluded)."""
    return jax.tree_util.tree_map_with_path(
        lambda p, _: not any(k in path_str(p) for k in no_decay_keys), params)


def make_optimizer(config: Any) -> tuple[optax.GradientTransformation, Callable]:
    """(optax transformation, learning-rate schedule) of a training config."""
    schedule = warmup_cosine(config.lr, config.warmup_steps, config.total_steps, config.min_lr)
    chain = []
    if config.grad_clip_value > 0:
        chain.append(optax.clip(config.grad_clip_value))
    if config.grad_clip_norm > 0:
        chain.append(optax.clip_by_global_norm(config.grad_clip_norm))
    keys = tuple(config.no_decay_keys)
    chain.append(optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                             weight_decay=config.weight_decay,
                             mask=lambda params: decay_mask(params, keys)))
    return optax.chain(*chain), schedule

