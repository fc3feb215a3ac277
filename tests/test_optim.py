"""Optimizer pieces against the reference's formulas."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from evit_jax.configs.common import base_config
from evit_jax.train.optim import decay_mask, make_optimizer, path_str, warmup_cosine
from ml_collections import ConfigDict


def _reference_lr(step, lr, warmup, total):
    # CosineLRwithWarmup of the reference with warmup_lr 0, one decay period.
    if step < warmup:
        return lr * (step + 1) / warmup
    return 0.5 * lr * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def test_schedule_matches_reference():
    sched = warmup_cosine(2e-3, 20, 320)
    for s in (0, 1, 19, 20, 21, 100, 319):
        assert abs(float(sched(s)) - _reference_lr(s, 2e-3, 20, 320)) < 1e-9


def test_no_weight_decay_on_norm_and_bias():
    params = {"stem": {"conv": {"kernel": jnp.ones((3, 3, 3, 8))},
                       "norm": {"scale": jnp.ones(8), "bias": jnp.zeros(8)}},
              "head": {"linear": {"kernel": jnp.ones((8, 4)), "bias": jnp.zeros(4)}}}
    mask = {path_str(p): v for p, v in
            jax.tree_util.tree_flatten_with_path(decay_mask(params, ("norm", "bias")))[0]}
    assert mask == {"stem/conv/kernel": True, "stem/norm/scale": False, "stem/norm/bias": False,
                    "head/linear/kernel": True, "head/linear/bias": False}


def test_adamw_step_matches_torch_formula():
    c = base_config()
    c.update(dict(lr=0.1, warmup_steps=1, total_steps=10, weight_decay=0.5,
                  grad_clip_value=2.0))
    tx, _ = make_optimizer(c)
    p = {"w": jnp.array([1.0, -2.0]), "norm": {"scale": jnp.array([3.0])}}
    g = {"w": jnp.array([5.0, -0.5]), "norm": {"scale": jnp.array([0.25])}}
    upd, _ = tx.update(g, tx.init(p), p)
    new = optax.apply_updates(p, upd)
    # torch AdamW, first step: p *= 1 - lr * wd; p -= lr * m_hat / (sqrt(v_hat) + eps), with
    # m_hat = g, v_hat = g^2 after bias correction; gradients clipped to [-2, 2] first.
    gc = np.clip([5.0, -0.5], -2, 2)
    want_w = np.array([1.0, -2.0]) * (1 - 0.1 * 0.5) - 0.1 * gc / (np.abs(gc) + 1e-8)
    np.testing.assert_allclose(new["w"], want_w, rtol=1e-6)
    np.testing.assert_allclose(new["norm"]["scale"], [3.0 - 0.1], rtol=1e-6)  # no decay
    assert isinstance(c, ConfigDict)
