"""PyTorch-exact `F.interpolate` (bicubic A = -0.75 / bilinear, align_corners=False).

`jax.image.resize` differs (A = -0.5, renormalised borders, antialiasing when shrinking),
which moves EfficientViT's outputs far beyond float32 noise. Both modes are separable and
the shapes are static, so each axis is a small dense interpolation matrix built in numpy at
trace time and applied with one matmul: exact, and fast on every backend.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

_A = -0.75  # PyTorch's cubic convolution coefficient.


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """Weights of the taps at offsets -1, 0, 1, 2 for fractional positions `t`."""
    def near(d):  # |d| <= 1
        return ((_A + 2) * d - (_A + 3)) * d * d + 1

    def far(d):  # 1 < |d| < 2
        return ((_A * d - 5 * _A) * d + 8 * _A) * d - 4 * _A

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], -1)


@functools.lru_cache(maxsize=256)
def interp_matrix(n_in: int, n_out: int, mode: str, scale: float | None = None) -> np.ndarray:
    """`[n_out, n_in]` float64 matrix M with `out = M @ in` along one axis.

    `scale` is the source step per output pixel: `n_in / n_out` for a target size (default),
    `1 / factor` for a scale factor (PyTorch's rule).
    """
    s = n_in / n_out if scale is None else scale
    dst = np.arange(n_out, dtype=np.float64)
    src = (dst + 0.5) * s - 0.5
    m = np.zeros((n_out, n_in), np.float64)
    rows = np.arange(n_out)
    if mode == "bicubic":
        i0 = np.floor(src).astype(np.int64)
        w = _cubic_weights(src - i0)
        for tap in range(4):
            idx = np.clip(i0 - 1 + tap, 0, n_in - 1)
            np.add.at(m, (rows, idx), w[:, tap])
    elif mode == "bilinear":
        src = np.maximum(src, 0.0)
        i0 = np.floor(src).astype(np.int64)
        i1 = np.minimum(i0 + 1, n_in - 1)
        lam = src - i0
        np.add.at(m, (rows, np.minimum(i0, n_in - 1)), 1 - lam)
        np.add.at(m, (rows, i1), lam)
    else:
        raise ValueError(f"unsupported resize mode {mode!r}; use 'bicubic' or 'bilinear'")
    return m


def resize(x: Array, size: tuple[int, int] | None = None, factor: float | None = None,
           mode: str = "bicubic", axes: tuple[int, int] = (1, 2)) -> Array:
    """Resize two spatial axes like `F.interpolate(..., align_corners=False)`.

    Args:
      x: array with spatial axes `axes` (default `[B, H, W, C]`).
      size: target (H, W); or `factor`: out = floor(in * factor).
      mode: `bicubic` or `bilinear`.
    Returns:
      Array of x's dtype; the interpolation itself runs in float32.
    """
    ah, aw = axes
    h, w = x.shape[ah], x.shape[aw]
    if size is None:
        if factor is None:
            raise ValueError("resize needs `size` or `factor`")
        size, scale = (int(h * factor), int(w * factor)), 1.0 / factor
    else:
        scale = None
    if tuple(size) == (h, w):
        return x
    dtype = x.dtype
    y = x.astype(jnp.float32)
    hi = jax.lax.Precision.HIGHEST
    mh = jnp.asarray(interp_matrix(h, size[0], mode, scale), jnp.float32)
    mw = jnp.asarray(interp_matrix(w, size[1], mode, scale), jnp.float32)
    with jax.named_scope("resize"):  # names the matmuls in profiles and MAC counts
        y = jnp.moveaxis(jnp.tensordot(mh, y, axes=((1,), (ah,)), precision=hi), 0, ah)
        y = jnp.moveaxis(jnp.tensordot(mw, y, axes=((1,), (aw,)), precision=hi), 0, aw)
    return y.astype(dtype)


class UpSample(nn.Module):
    """The reference's `UpSampleLayer` on `[B, H, W, C]`: bicubic by default, by a factor or
    to a fixed size (identity when the input already has it)."""

    factor: float = 2
    size: tuple[int, int] | None = None
    mode: str = "bicubic"
    dtype: Any = jnp.float32

    def __call__(self, x: Array, train: bool = False) -> Array:
        del train
        if self.size is None and self.factor == 1:
            return x
        return resize(x, self.size, None if self.size else self.factor, self.mode)
