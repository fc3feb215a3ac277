"""Depthwise 2-D convolution: the one swappable op EfficientViT leans on.

Every MBConv, DSConv and the multi-scale aggregation of LiteMLA run a depthwise conv, and
XLA:CPU's grouped convolution (`feature_group_count=C`) is ~20x slower than PyTorch's for it.
All callers go through `depthwise_conv2d`, so a faster formulation reaches inference and
training alike. Implementations are selected by name (`set_depthwise_impl`, or the
`EVIT_DEPTHWISE` environment variable); each must match `lax` forward and gradient.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
DepthwiseFn = Callable[[Array, Array, int, int], Array]


def depthwise_lax(x: Array, kernel: Array, stride: int, padding: int) -> Array:
    """XLA's grouped convolution. x `[B, H, W, C]`, kernel `[k, k, 1, C]`."""
    return lax.conv_general_dilated(
        x, kernel, window_strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x.shape[-1])


def depthwise_shift_add(x: Array, kernel: Array, stride: int, padding: int) -> Array:
    """Sum of k*k shifted, per-channel-scaled slices of the padded input (fuses well)."""
    kh, kw = kernel.shape[:2]
    b, h, w, c = x.shape
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    ho = (h + 2 * padding - kh) // stride + 1
    wo = (w + 2 * padding - kw) // stride + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            tap = lax.slice(xp, (0, i, j, 0),
                            (b, i + (ho - 1) * stride + 1, j + (wo - 1) * stride + 1, c),
                            (1, stride, stride, 1))
            term = tap * kernel[i, j, 0]
            out = term if out is None else out + term
    return out


IMPLS: dict[str, DepthwiseFn] = {"lax": depthwise_lax, "shift_add": depthwise_shift_add}
_impl: str | None = os.environ.get("EVIT_DEPTHWISE") or None


def set_depthwise_impl(name: str | None) -> None:
    """Choose the implementation for functions traced from now on (None: per backend)."""
    global _impl
    if name is not None and name not in IMPLS:
        raise ValueError(f"unknown depthwise implementation {name!r}; known: {sorted(IMPLS)}")
    _impl = name


def default_impl() -> str:
    if _impl is not None:
        return _impl
    return "shift_add" if jax.default_backend() == "cpu" else "lax"


def depthwise_conv2d(x: Array, kernel: Array, stride: int = 1, padding: int | None = None,
                     impl: str | None = None) -> Array:
    """Depthwise conv with symmetric zero padding, as PyTorch's `Conv2d(groups=C)`.

    Args:
      x: `[B, H, W, C]`.
      kernel: `[k, k, 1, C]` (Flax HWIO layout with `feature_group_count=C`).
      stride: spatial stride.
      padding: pixels of zero padding on every side (default `k // 2`).
      impl: implementation name (default: `set_depthwise_impl` / per backend).
    Returns:
      `[B, H', W', C]`.
    """
    if kernel.shape[2] != 1 or kernel.shape[3] != x.shape[-1]:
        raise ValueError(f"depthwise kernel {kernel.shape} does not fit input {x.shape}")
    if padding is None:
        padding = kernel.shape[0] // 2
    return IMPLS[impl or default_impl()](x, kernel, stride, padding)
