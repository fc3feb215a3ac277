"""Classification and segmentation heads, as the reference builds them."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from evit_jax.nn import FusedMBConv, MBConv, OpSequential, ResidualBlock, UpSample
from evit_jax.nn.conv import ConvLayer, LinearLayer

Array = jax.Array


class GlobalAvgPool(nn.Module):
    """Mean over H, W: `[B, H, W, C]` -> `[B, C]` (computed in float32)."""

    def __call__(self, x: Array, train: bool = False) -> Array:
        return x.astype(jnp.float32).mean((1, 2)).astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class ClsHeadConfig:
    """`op_list_0` 1x1 conv C->W0 (BN, act) -> pool -> `op_list_2` Linear W0->W1 (no bias,
    LayerNorm, act) -> `op_list_3` Linear W1->classes."""

    width_list: tuple[int, int]
    num_classes: int = 1000
    dropout: float = 0.0


class ClsHead(nn.Module):
    """`[B, H, W, C]` (`stage_final`) -> logits `[B, num_classes]`."""

    cfg: ClsHeadConfig
    act: str = "hswish"
    norm_eps: float = 1e-5
    dtype: Any = jnp.float32

    def setup(self):
        w0, w1 = self.cfg.width_list
        eps, dt = self.norm_eps, self.dtype
        self.op_list = [
            ConvLayer(w0, 1, act=self.act, norm_eps=eps, dtype=dt),
            GlobalAvgPool(),
            LinearLayer(w1, use_bias=False, norm="ln", act=self.act, norm_eps=eps, dtype=dt),
            LinearLayer(self.cfg.num_classes, use_bias=True, dropout=self.cfg.dropout, dtype=dt),
        ]

    def __call__(self, x: Array, train: bool = False) -> Array:
        for op in self.op_list:
            x = op(x, train)
        return x


@dataclasses.dataclass(frozen=True)
class SegHeadConfig:
    """The reference's `SegHead` (a DAG block) for one zoo entry.

    Inputs `fid_list` (this order; `input_ops_i`), each a 1x1 conv to `head_width` (BN, no
    act) upsampled (bicubic) by stride / head_stride; summed; `head_depth` residual MBConv /
    FusedMBConv blocks (`middle`); [1x1 conv to head_width * final_expand (BN, act)] and a
    1x1 conv with bias to `num_classes` (`output_ops_0`).
    """

    in_channel_list: tuple[int, ...]
    head_width: int
    head_depth: int
    expand_ratio: float
    middle_op: str  # "mbconv" | "fmbconv"
    final_expand: float | None
    num_classes: int
    fid_list: tuple[str, ...] = ("stage4", "stage3", "stage2")
    stride_list: tuple[int, ...] = (32, 16, 8)
    head_stride: int = 8
    dropout: float = 0.0


class SegHead(nn.Module):
    """Backbone features -> logits `[B, H / 8, W / 8, num_classes]` (no resize to input)."""

    cfg: SegHeadConfig
    act: str = "hswish"
    norm_eps: float = 1e-5
    dtype: Any = jnp.float32

    def setup(self):
        cfg, eps, dt, act = self.cfg, self.norm_eps, self.dtype, self.act
        inputs = []
        for stride in cfg.stride_list:
            factor = stride // cfg.head_stride
            conv = ConvLayer(cfg.head_width, 1, act=None, norm_eps=eps, dtype=dt)
            inputs.append(conv if factor == 1 else OpSequential([conv, UpSample(factor)]))
        self.input_ops = inputs
        middle = []
        for _ in range(cfg.head_depth):
            if cfg.middle_op == "mbconv":
                block = MBConv(cfg.head_width, expand_ratio=cfg.expand_ratio,
                               act=(act, act, None), norm_eps=eps, dtype=dt)
            elif cfg.middle_op == "fmbconv":
                block = FusedMBConv(cfg.head_width, expand_ratio=cfg.expand_ratio,
                                    act=(act, None), norm_eps=eps, dtype=dt)
            else:
                raise ValueError(f"unknown middle op {cfg.middle_op!r}")
            middle.append(ResidualBlock(block))
        self.middle = OpSequential(middle)
        out = []
        if cfg.final_expand is not None:
            out.append(ConvLayer(round(cfg.head_width * cfg.final_expand), 1, act=act,
                                 norm_eps=eps, dtype=dt))
        out.append(ConvLayer(cfg.num_classes, 1, use_bias=True, norm=None, act=None, dtype=dt))
        self.output_ops = [OpSequential(out)]

    def __call__(self, feats: dict[str, Array], train: bool = False) -> Array:
        ys = [op(feats[fid], train) for fid, op in zip(self.cfg.fid_list, self.input_ops)]
        # The reference sums recursively: y0 + (y1 + (y2 + ...)).
        x = ys[-1]
        for y in reversed(ys[:-1]):
            x = y + x
        x = self.middle(x, train)
        return self.output_ops[0](x, train)
