"""The blocks where the v1 EfficientViT-Base (seed 003) differs from the released B/L design.

- `DownsampleBlock`: every stride-2 block has a shortcut, average pooling then a 1x1 conv
  (the released models have none: `ResidualBlock(..., shortcut=False)`).
- `V1Attention`: plain multi-head ReLU linear attention, no multi-scale aggregation (or, for
  the paper's Fig. 5 ablation, softmax attention), projection normed by LayerNorm.
- `ELABlock`, the "enhanced linear attention" block: `x + attention(x)`, then `x + FFN(x)`
  where the FFN has a depthwise conv in its middle (`ffn="dwconv"`, an MBConv without norm
  inside) or not (`ffn="vanilla"`, the ablation: two 1x1 convs, `PointwiseFFN`).

The paper leaves the norm placement open; ours follows the released attention stages (a norm
after the last conv of each branch, biases instead of norms before it), with LayerNorm where
the paper puts it. docs/v1.md lists every choice.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from evit_jax.nn import MBConv, ResidualBlock, relu_linear_attention, softmax_attention
from evit_jax.nn.conv import ConvLayer

Array = jax.Array


def avg_pool2(x: Array) -> Array:
    """2x2 average pooling, stride 2, on `[B, H, W, C]` -> `[B, ceil(H/2), ceil(W/2), C]`.

    An odd side is padded and the border windows average only their real pixels (PyTorch's
    `AvgPool2d(2, ceil_mode=True)`), so the shortcut meets the stride-2 conv's output size
    (`ceil(H / 2)` with padding k // 2) at any size. Computed in float32.
    """
    b, h, w, c = x.shape
    xf = x.astype(jnp.float32)
    ph, pw = h % 2, w % 2
    if ph or pw:
        xf = jnp.pad(xf, ((0, 0), (0, ph), (0, pw), (0, 0)))
        ones = jnp.pad(jnp.ones((h, w), jnp.float32), ((0, ph), (0, pw)))
        count = ones.reshape((h + ph) // 2, 2, (w + pw) // 2, 2).sum((1, 3))
        total = xf.reshape(b, (h + ph) // 2, 2, (w + pw) // 2, 2, c).sum((2, 4))
        return (total / count[None, :, :, None]).astype(x.dtype)
    return xf.reshape(b, h // 2, 2, w // 2, 2, c).mean((2, 4)).astype(x.dtype)


def _branch_args(norm: str) -> dict[str, tuple]:
    """Biases and norms of a 3-conv branch: BatchNorm stages norm every conv (as the released
    MBConv), LayerNorm stages only the last, with biases before it (as the released
    attention stages' blocks)."""
    if norm == "bn2d":
        return dict(use_bias=(False, False, False), norm=("bn2d",) * 3)
    return dict(use_bias=(True, True, False), norm=(None, None, norm))


class DownsampleBlock(nn.Module):
    """Stride-2 block: `MBConv(x) + conv1x1(avgpool2(x))`; `[B, H, W, C_in]` ->
    `[B, H / 2, W / 2, features]` (float32: the residual stream).

    The MBConv expands to `expand_ratio * features` (the new stage's width, ours: it puts the
    paper's MAC budget where the paper's numbers need it, docs/v1.md), its depthwise conv is
    k x k with stride 2. The shortcut's 1x1 conv has the stage's norm and no activation.
    Keys `main/{inverted,depth,point}_conv`, `shortcut/{conv,norm}`.
    """

    features: int
    kernel_size: int = 5
    expand_ratio: float = 4
    norm: str = "bn2d"
    act: str = "hswish"
    norm_eps: float = 1e-5
    zero_init_last: bool = False
    dtype: Any = jnp.float32

    def setup(self):
        self.main = MBConv(self.features, self.kernel_size, 2,
                           mid_channels=round(self.features * self.expand_ratio),
                           act=(self.act, self.act, None), norm_eps=self.norm_eps,
                           zero_init_last=self.zero_init_last, dtype=self.dtype,
                           **_branch_args(self.norm))
        self.shortcut = ConvLayer(self.features, 1, norm=self.norm, act=None,
                                  norm_eps=self.norm_eps, dtype=self.dtype)

    def __call__(self, x: Array, train: bool = False) -> Array:
        y = self.main(x, train)
        s = self.shortcut(avg_pool2(x), train)
        return y.astype(jnp.float32) + s.astype(jnp.float32)


class V1Attention(nn.Module):
    """`[B, H, W, C]` -> `[B, H, W, C]`: 1x1 conv to per-head [q | k | v] (`qkv`, no bias),
    attention over all tokens in float32, 1x1 conv back to C with a norm (`proj`).

    Attributes:
      heads, dim: attention heads and their key/value dimension.
      kind: "linear" (ReLU linear attention, `nn.attention.relu_linear_attention`) or
        "softmax" (`nn.attention.softmax_attention`).
      eps: the linear attention's eps.
      norm: of `proj` ("ln2d").
    """

    heads: int
    dim: int
    kind: str = "linear"
    eps: float = 1e-15
    norm: str = "ln2d"
    norm_eps: float = 1e-5
    zero_init_last: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        total = self.heads * self.dim
        qkv = ConvLayer(3 * total, 1, use_bias=False, norm=None, act=None, dtype=self.dtype,
                        name="qkv")(x, train)
        if self.kind == "linear":
            out = relu_linear_attention(qkv, self.dim, self.eps)
        elif self.kind == "softmax":
            out = softmax_attention(qkv, self.dim)
        else:
            raise ValueError(f"unknown attention {self.kind!r}: 'linear' or 'softmax'")
        return ConvLayer(x.shape[-1], 1, norm=self.norm, act=None, norm_eps=self.norm_eps,
                         zero_init_norm=self.zero_init_last, dtype=self.dtype,
                         name="proj")(out.astype(self.dtype), train)


class PointwiseFFN(nn.Module):
    """The ablation's "vanilla" FFN: 1x1 conv to `mid_channels` (bias, act) -> 1x1 conv back
    (norm), no depthwise conv. Keys `inverted_conv`, `point_conv` (MBConv's, less one)."""

    mid_channels: int
    act: str = "hswish"
    norm: str = "ln2d"
    norm_eps: float = 1e-5
    zero_init_last: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        y = ConvLayer(self.mid_channels, 1, use_bias=True, norm=None, act=self.act,
                      dtype=self.dtype, name="inverted_conv")(x, train)
        return ConvLayer(x.shape[-1], 1, norm=self.norm, act=None, norm_eps=self.norm_eps,
                         zero_init_norm=self.zero_init_last, dtype=self.dtype,
                         name="point_conv")(y, train)


class ELABlock(nn.Module):
    """Enhanced linear attention block, shape-preserving on `[B, H, W, C]`:
    `x + V1Attention(x)` (`context_module`), then `x + FFN(x)` (`local_module`).

    Attributes:
      heads, dim, attention: of `V1Attention`.
      ffn: "dwconv" (1x1 -> k x k depthwise -> 1x1, the paper's) or "vanilla" (1x1 -> 1x1).
      ffn_mid: the FFN's hidden width.
      kernel_size: of the FFN's depthwise conv.
      drop_path: stochastic depth of the two residual branches (training).
    """

    heads: int
    dim: int
    ffn_mid: int
    attention: str = "linear"
    ffn: str = "dwconv"
    kernel_size: int = 5
    act: str = "hswish"
    norm: str = "ln2d"
    norm_eps: float = 1e-5
    attn_eps: float = 1e-15
    drop_path: tuple[float, float] = (0.0, 0.0)
    zero_init_last: bool = False
    dtype: Any = jnp.float32

    def setup(self):
        # In setup so the branches land under `context_module/main`, `local_module/main`.
        attn = V1Attention(self.heads, self.dim, self.attention, self.attn_eps, self.norm,
                           self.norm_eps, self.zero_init_last, self.dtype)
        if self.ffn == "dwconv":
            ffn = MBConv(None, self.kernel_size, 1, mid_channels=self.ffn_mid,
                         act=(self.act, self.act, None), norm_eps=self.norm_eps,
                         zero_init_last=self.zero_init_last, dtype=self.dtype,
                         **_branch_args(self.norm))
        else:
            ffn = PointwiseFFN(self.ffn_mid, self.act, self.norm, self.norm_eps,
                               self.zero_init_last, self.dtype)
        self.context_module = ResidualBlock(attn, True, self.drop_path[0])
        self.local_module = ResidualBlock(ffn, True, self.drop_path[1])

    def __call__(self, x: Array, train: bool = False) -> Array:
        return self.local_module(self.context_module(x, train), train)
