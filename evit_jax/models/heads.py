"""Classification and segmentation heads, as the reference builds them."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from evit_jax.models.fusion import FusionBlock
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
    """The reference's `SegHead` (a DAG block, here a `FusionBlock`) for one zoo entry.

    Inputs `fid_list` (this order; `input_ops_i`), each a 1x1 conv to `head_width` (BN, no
    act) upsampled (bicubic) by stride / head_stride; summed; `head_depth` residual MBConv /
    FusedMBConv blocks (`middle`); [1x1 conv to head_width * final_expand (BN, act)] and a
    1x1 conv with bias to `num_classes` (`output_ops_0`). `in_channel_list` records the
    input widths (the convs infer them).
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


def seg_head(cfg: SegHeadConfig, act: str = "hswish") -> FusionBlock:
    """The segmentation head of `cfg`: backbone features -> logits `[B, H / 8, W / 8,
    num_classes]` (no resize to the input). `act` is the backbone family's."""
    return FusionBlock(cfg.fid_list, tuple(s // cfg.head_stride for s in cfg.stride_list),
                       cfg.head_width, cfg.head_depth, cfg.middle_op, cfg.expand_ratio,
                       cfg.num_classes, cfg.final_expand, act)
