"""Convolutional blocks of EfficientViT: DSConv, MBConv, FusedMBConv, ResBlock, and the
containers `ResidualBlock` and `OpSequential` whose names shape the parameter tree.

Per-sub-layer options (`use_bias`, `norm`, `act`) are tuples with one entry per conv, as in
the reference. The "fewer norm" variant of a block is just other tuples (see
`fewer_norm_args`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from evit_jax.nn.conv import ConvLayer
from evit_jax.nn.depthwise import fuses_natively, inverted_bottleneck

Array = jax.Array


def fewer_norm_args(n_convs: int, norm: str, fewer_norm: bool) -> tuple[tuple, tuple]:
    """(use_bias, norm) tuples: all convs normed and bias-free, or, with `fewer_norm`, all
    but the last conv without norm and with bias (the last keeps its norm)."""
    if fewer_norm:
        return (True,) * (n_convs - 1) + (False,), (None,) * (n_convs - 1) + (norm,)
    return (False,) * n_convs, (norm,) * n_convs


class DSConv(nn.Module):
    """Depthwise k x k conv (stride s) -> pointwise 1x1. Keys `depth_conv`, `point_conv`."""

    features: int
    kernel_size: int = 3
    stride: int = 1
    use_bias: tuple[bool, bool] = (False, False)
    norm: tuple[str | None, str | None] = ("bn2d", "bn2d")
    act: tuple[str | None, str | None] = ("relu6", None)
    norm_eps: float = 1e-5
    zero_init_last: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        c = x.shape[-1]
        x = ConvLayer(c, self.kernel_size, self.stride, c, self.use_bias[0], self.norm[0],
                      self.act[0], self.norm_eps, dtype=self.dtype, name="depth_conv")(x, train)
        return ConvLayer(self.features, 1, 1, 1, self.use_bias[1], self.norm[1], self.act[1],
                         self.norm_eps, self.zero_init_last, self.dtype,
                         name="point_conv")(x, train)


class MBConv(nn.Module):
    """Inverted bottleneck: 1x1 expand -> depthwise k x k (stride s) -> 1x1 project.
    Keys `inverted_conv`, `depth_conv`, `point_conv`; `mid = round(C_in * expand_ratio)`."""

    features: int | None  # None: as many as the input
    kernel_size: int = 3
    stride: int = 1
    expand_ratio: float = 6
    mid_channels: int | None = None
    use_bias: tuple[bool, bool, bool] = (False, False, False)
    norm: tuple = ("bn2d", "bn2d", "bn2d")
    act: tuple = ("relu6", "relu6", None)
    norm_eps: float = 1e-5
    zero_init_last: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        out = self.features or x.shape[-1]
        mid = self.mid_channels or round(x.shape[-1] * self.expand_ratio)
        inverted = ConvLayer(mid, 1, 1, 1, self.use_bias[0], self.norm[0], self.act[0],
                             self.norm_eps, dtype=self.dtype, name="inverted_conv")
        depth = ConvLayer(mid, self.kernel_size, self.stride, mid, self.use_bias[1],
                          self.norm[1], self.act[1], self.norm_eps, dtype=self.dtype,
                          name="depth_conv")
        point = ConvLayer(out, 1, 1, 1, self.use_bias[2], self.norm[2], self.act[2],
                          self.norm_eps, self.zero_init_last, self.dtype, name="point_conv")
        if not train and not self.is_initializing() and self.runs_fused():
            # Inference on the native kernels: one functional path (see its docstring).
            return inverted_bottleneck(x, inverted.affine_form(), depth.affine_form(),
                                       point.affine_form(), self.dtype)
        return point(depth(inverted(x, train), train), train)

    def runs_fused(self) -> bool:
        """Whether inference runs as `depthwise.inverted_bottleneck` (native kernels)."""
        return (self.kernel_size > 1 and fuses_natively(self.norm[1], self.act[1])
                and fuses_natively(self.norm[0], self.act[0])
                and self.norm[2] in ("bn2d", None))


class FusedMBConv(nn.Module):
    """Dense k x k conv (stride s) to `mid` -> 1x1 project. Keys `spatial_conv`, `point_conv`."""

    features: int | None  # None: as many as the input
    kernel_size: int = 3
    stride: int = 1
    expand_ratio: float = 6
    mid_channels: int | None = None
    use_bias: tuple[bool, bool] = (False, False)
    norm: tuple = ("bn2d", "bn2d")
    act: tuple = ("relu6", None)
    norm_eps: float = 1e-5
    zero_init_last: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        mid = self.mid_channels or round(x.shape[-1] * self.expand_ratio)
        x = ConvLayer(mid, self.kernel_size, self.stride, 1, self.use_bias[0], self.norm[0],
                      self.act[0], self.norm_eps, dtype=self.dtype, name="spatial_conv")(x, train)
        return ConvLayer(self.features, 1, 1, 1, self.use_bias[1], self.norm[1], self.act[1],
                         self.norm_eps, self.zero_init_last, self.dtype,
                         name="point_conv")(x, train)


class ResBlock(nn.Module):
    """Two dense k x k convs (the first with stride s). Keys `conv1`, `conv2`."""

    features: int
    kernel_size: int = 3
    stride: int = 1
    expand_ratio: float = 1
    mid_channels: int | None = None
    use_bias: tuple[bool, bool] = (False, False)
    norm: tuple = ("bn2d", "bn2d")
    act: tuple = ("relu6", None)
    norm_eps: float = 1e-5
    zero_init_last: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        mid = self.mid_channels or round(x.shape[-1] * self.expand_ratio)
        x = ConvLayer(mid, self.kernel_size, self.stride, 1, self.use_bias[0], self.norm[0],
                      self.act[0], self.norm_eps, dtype=self.dtype, name="conv1")(x, train)
        return ConvLayer(self.features, self.kernel_size, 1, 1, self.use_bias[1], self.norm[1],
                         self.act[1], self.norm_eps, self.zero_init_last, self.dtype,
                         name="conv2")(x, train)


class ResidualBlock(nn.Module):
    """`main(x) + x` (`shortcut=True`) or just `main(x)`; the branch lives under `main`.

    With `drop_path > 0` the branch is dropped per sample in training (stochastic depth,
    rng stream `dropout`) and the kept ones are scaled by 1 / keep-probability.
    """

    main: nn.Module
    shortcut: bool = True
    drop_path: float = 0.0

    def __call__(self, x: Array, train: bool = False) -> Array:
        y = self.main(x, train)
        if not self.shortcut:
            return y
        if train and self.drop_path > 0:
            keep = 1.0 - self.drop_path
            mask = jax.random.bernoulli(self.make_rng("dropout"), keep,
                                        (x.shape[0],) + (1,) * (x.ndim - 1))
            y = jnp.where(mask, y / keep, 0).astype(y.dtype)
        # The residual stream stays float32 under bf16 compute: adding a small branch to a
        # large stream is where bf16 rounding hurts most (the convs cast their input anyway).
        return y.astype(jnp.float32) + x.astype(jnp.float32)


class OpSequential(nn.Module):
    """Applies `op_list` in order; children are named `op_list_0`, `op_list_1`, ..."""

    op_list: Sequence[nn.Module]

    def __call__(self, x: Array, train: bool = False) -> Array:
        for op in self.op_list:
            x = op(x, train)
        return x
