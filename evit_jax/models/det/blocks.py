"""YOLOX's building blocks on NHWC: `BaseConv` (conv, BatchNorm, act), `DWConv`, the CSP
`Bottleneck` and `CSPLayer` (YOLOv5's C3).

A YOLOX `BaseConv` is our `ConvLayer` (bias-free conv, `bn2d`, activation; padding k // 2),
so BatchNorm folding (`evit_jax.fuse_bn`), the folded-BN build and the native fused
depthwise kernels apply to the detector as to the rest of the zoo. Submodule names are the
Megvii state dict's (`conv1`, `conv2`, `conv3`, `m_0`, `dconv`, `pconv`); the one rename is
YOLOX's `bn` -> our `norm` (`evit_jax.convert.keymap` maps it).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from evit_jax.nn.conv import ConvLayer

Array = jax.Array


def base_conv(features: int, kernel_size: int = 1, stride: int = 1, groups: int = 1,
              act: str = "silu", norm_eps: float = 1e-5, dtype: Any = jnp.float32,
              name: str | None = None) -> ConvLayer:
    """YOLOX's `BaseConv(c_in, features, kernel_size, stride, groups)`: conv -> BN -> act."""
    return ConvLayer(features, kernel_size, stride, groups, False, "bn2d", act, norm_eps,
                     dtype=dtype, name=name)


class DWConv(nn.Module):
    """Depthwise k x k conv (BN, act; stride s) -> pointwise 1x1 conv (BN, act): YOLOX's
    `DWConv`. `[B, H, W, C]` -> `[B, H / s, W / s, features]`. Keys `dconv`, `pconv`."""

    features: int
    kernel_size: int = 3
    stride: int = 1
    act: str = "silu"
    norm_eps: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        c = x.shape[-1]
        x = base_conv(c, self.kernel_size, self.stride, c, self.act, self.norm_eps,
                      self.dtype, name="dconv")(x, train)
        return base_conv(self.features, 1, 1, 1, self.act, self.norm_eps, self.dtype,
                         name="pconv")(x, train)


def conv3x3(features: int, stride: int, depthwise: bool, act: str, norm_eps: float,
            dtype: Any, name: str | None = None) -> nn.Module:
    """The 3x3 conv of the PAFPN and head: a `DWConv` when `depthwise` (YOLOX-Nano), else a
    full `BaseConv`."""
    if depthwise:
        return DWConv(features, 3, stride, act, norm_eps, dtype, name=name)
    return base_conv(features, 3, stride, 1, act, norm_eps, dtype, name=name)


class Bottleneck(nn.Module):
    """1x1 conv to `features * expansion` -> 3x3 conv to `features` (+ the input when
    `shortcut` and the widths agree). Keys `conv1`, `conv2`."""

    features: int
    shortcut: bool = True
    expansion: float = 0.5
    depthwise: bool = False
    act: str = "silu"
    norm_eps: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        hidden = int(self.features * self.expansion)
        y = base_conv(hidden, 1, act=self.act, norm_eps=self.norm_eps, dtype=self.dtype,
                      name="conv1")(x, train)
        y = conv3x3(self.features, 1, self.depthwise, self.act, self.norm_eps, self.dtype,
                    name="conv2")(y, train)
        return y + x if self.shortcut and x.shape[-1] == self.features else y


class CSPLayer(nn.Module):
    """CSP block (YOLOv5's C3): two 1x1 convs to `features * expansion`; `depth`
    Bottlenecks (expansion 1) on the first; concatenated with the second; a 1x1 conv to
    `features`. `[B, H, W, C_in]` -> `[B, H, W, features]`. Keys `conv1..3`, `m_i`."""

    features: int
    depth: int = 1
    shortcut: bool = True
    expansion: float = 0.5
    depthwise: bool = False
    act: str = "silu"
    norm_eps: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        hidden = int(self.features * self.expansion)
        kw = dict(act=self.act, norm_eps=self.norm_eps, dtype=self.dtype)
        x1 = base_conv(hidden, 1, name="conv1", **kw)(x, train)
        x2 = base_conv(hidden, 1, name="conv2", **kw)(x, train)
        for i in range(self.depth):
            x1 = Bottleneck(hidden, self.shortcut, 1.0, self.depthwise, name=f"m_{i}",
                            **kw)(x1, train)
        return base_conv(self.features, 1, name="conv3", **kw)(
            jnp.concatenate([x1, x2], -1), train)
