"""Normalisation layers with the reference's semantics.

The zoo sets one eps for every norm of a model (the reference's `set_norm_eps`), so each
layer takes `eps` explicitly instead of relying on a layer default. Statistics are computed
in float32 whatever the compute dtype.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from evit_jax.nn.init import ONES, ZEROS, declare_param, declare_stat

Array = jax.Array


def bn_affine(scale: Array, bias: Array, mean: Array, var: Array,
              eps: float) -> tuple[Array, Array]:
    """Inference BatchNorm as one multiply-add `y = x * a + b`; returns `(a, b)`, `[C]` each."""
    a = scale * jax.lax.rsqrt(var + eps)
    return a, bias - mean * a


class BatchNorm2d(nn.Module):
    """BatchNorm over the channel (last) axis, PyTorch semantics.

    Params `scale`, `bias` `[C]`; running `mean`, `var` `[C]` in `batch_stats`. In training
    the batch statistics are taken over every axis but the last (under `jit` with a sharded
    batch this is the global batch: synchronised BN for free), and the running variance is
    updated with the unbiased estimate, as PyTorch does (momentum 0.1).

    Attributes:
      eps: added to the variance.
      momentum: PyTorch-style momentum (weight of the new batch statistic).
      zero_init: start `scale` at 0 ("last gamma" of a residual branch).
    """

    eps: float = 1e-5
    momentum: float = 0.1
    zero_init: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        c = x.shape[-1]
        scale = declare_param(self, "scale", ZEROS if self.zero_init else ONES, (c,))
        bias = declare_param(self, "bias", ZEROS, (c,))
        ra_mean = declare_stat(self, "mean", ZEROS, (c,))
        ra_var = declare_stat(self, "var", ONES, (c,))
        if train:
            axes = tuple(range(x.ndim - 1))
            xf = x.astype(jnp.float32)
            mean = xf.mean(axes)
            var = jnp.square(xf - mean).mean(axes)
            if not self.is_initializing():
                n = x.size // c
                m = self.momentum
                ra_mean.value = (1 - m) * ra_mean.value + m * mean
                ra_var.value = (1 - m) * ra_var.value + m * var * (n / max(n - 1, 1))
        else:
            mean, var = ra_mean.value, ra_var.value
        # One multiply-add per element: y = x * a + b.
        a, b = bn_affine(scale, bias, mean, var, self.eps)
        # Computed in float32, returned in the input's dtype (float32 from a conv).
        return (x.astype(jnp.float32) * a + b).astype(x.dtype)


class LayerNorm(nn.Module):
    """LayerNorm over the last axis; variance from centred values, as PyTorch.

    Serves as `ln` on `[B, C]` and as `ln2d` on `[B, H, W, C]` (NHWC puts the channel axis
    last, so the reference's LayerNorm2d is an ordinary LayerNorm here). Params `scale`,
    `bias` `[C]`; `zero_init` starts `scale` at 0 ("last gamma" of a residual branch).
    """

    eps: float = 1e-5
    dtype: Any = jnp.float32
    zero_init: bool = False

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        del train
        c = x.shape[-1]
        scale = declare_param(self, "scale", ZEROS if self.zero_init else ONES, (c,))
        bias = declare_param(self, "bias", ZEROS, (c,))
        xf = x.astype(jnp.float32)
        u = xf.mean(-1, keepdims=True)
        d = xf - u
        y = d * jax.lax.rsqrt(jnp.square(d).mean(-1, keepdims=True) + self.eps)
        return (y * scale + bias).astype(x.dtype)


def make_norm(kind: str | None, eps: float, dtype: Any, zero_init: bool = False,
              name: str = "norm") -> nn.Module | None:
    """The norm layer called `kind` by the reference (`bn2d`, `ln`, `ln2d`), or None."""
    if kind is None:
        return None
    if kind == "bn2d":
        return BatchNorm2d(eps=eps, zero_init=zero_init, dtype=dtype, name=name)
    if kind in ("ln", "ln2d"):
        return LayerNorm(eps=eps, dtype=dtype, zero_init=zero_init, name=name)
    raise ValueError(f"unknown norm {kind!r}; known: bn2d, ln, ln2d")
