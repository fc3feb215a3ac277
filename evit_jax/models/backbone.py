"""EfficientViT backbones: the B family and the L/XL ("large") family.

Both return a dict of named features, `stage0` ... `stage4` (`stage5` for XL) and
`stage_final`, `[B, H / 2**(i+1), W / 2**(i+1), width_i]`, so heads (and users) pick the
ones they need. Submodule names reproduce the reference's state-dict prefixes: B has
`input_stem` + `stages_0..3`, L/XL have `stages_0..N`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from evit_jax.errors import UserError
from evit_jax.nn import (
    DSConv,
    EfficientViTBlock,
    FusedMBConv,
    MBConv,
    OpSequential,
    ResBlock,
    ResidualBlock,
    fewer_norm_args,
)
from evit_jax.nn.conv import ConvLayer

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
    """Architecture of one backbone (one row of the zoo's table).

    Attributes:
      family: "b" (EfficientViTBackbone) or "l" (EfficientViTLargeBackbone; L and XL).
      width_list, depth_list: per stage.
      dim: per-head dim of LiteMLA.
      act: family activation ("hswish" for B, "gelu" = tanh-GELU for L/XL).
      expand_ratio: B's MBConv expansion.
      block_list, expand_list, fewer_norm_list: L/XL per-stage block type ("res", "fmb",
        "mb", "att", "att@3"), expansion and fewer-norm flag.
    """

    family: str
    width_list: tuple[int, ...]
    depth_list: tuple[int, ...]
    dim: int = 32
    act: str = "hswish"
    expand_ratio: float = 4
    block_list: tuple[str, ...] = ("res", "fmb", "fmb", "mb", "att")
    expand_list: tuple[float, ...] = (1, 4, 4, 4, 6)
    fewer_norm_list: tuple[bool, ...] = (False, False, False, True, True)

    @property
    def num_stages(self) -> int:
        return len(self.width_list)


def _local_block(kind: str, features: int, stride: int, expand: float, act: str,
                 fewer_norm: bool, eps: float, zero_init_last: bool, dtype: Any) -> nn.Module:
    n = {"ds": 2, "res": 2, "fmb": 2, "mb": 3}[kind]
    bias, norm = fewer_norm_args(n, "bn2d", fewer_norm)
    acts = (act,) * (n - 1) + (None,)
    kw = dict(features=features, stride=stride, use_bias=bias, norm=norm, act=acts,
              norm_eps=eps, zero_init_last=zero_init_last, dtype=dtype)
    if kind == "ds":
        return DSConv(**kw)
    if kind == "res":
        return ResBlock(expand_ratio=expand, **kw)
    if kind == "fmb":
        return FusedMBConv(expand_ratio=expand, **kw)
    return MBConv(expand_ratio=expand, **kw)


class _DropPath:
    """Linearly growing stochastic-depth rates over the identity-residual blocks.

    The reference applies p_i = p * (i + 1) / n to the n blocks left after skipping the first
    `skip` (both halves of an EfficientViTBlock count), in `backbone.stages` order.
    """

    def __init__(self, cfg: BackboneConfig, rate: float, skip: int):
        n = self._count(cfg)
        self.rates = [0.0] * min(skip, n) + [rate * (i + 1) / max(n - skip, 1)
                                             for i in range(max(n - skip, 0))]
        self.i = 0

    @staticmethod
    def _count(cfg: BackboneConfig) -> int:
        if cfg.family == "b":  # input_stem is not part of `stages`
            return sum(cfg.depth_list[1:3]) - 2 + 2 * sum(cfg.depth_list[3:])
        return sum(2 * d if b.startswith("att") else d
                   for b, d in zip(cfg.block_list[1:], cfg.depth_list[1:]))

    def next(self) -> float:
        r = self.rates[self.i] if self.i < len(self.rates) else 0.0
        self.i += 1
        return r


class EfficientViTBackbone(nn.Module):
    """EfficientViT-B0..B3 / L0..L3 / XL0..XL1 backbone on `[B, H, W, 3]` (H, W multiples
    of 32; 64 for XL).

    Attributes:
      cfg: the architecture.
      norm_eps: eps of every BatchNorm (zoo entry: 1e-5 B, 1e-7 L, 1e-6 SAM).
      attn_eps: LiteMLA eps (1e-15 official, 1e-5 timm).
      drop_path, drop_path_skip: stochastic depth (training).
      zero_init_last: start the last BN of each residual branch at 0 (training from scratch).
      dtype: compute dtype (params stay float32; attention runs in float32).
      multi_scale, global_attention: False removes LiteMLA's multi-scale aggregation / its
        global attention (seed 000 Table 3's ablations; `nn.attention.LiteMLA`).
    """

    cfg: BackboneConfig
    norm_eps: float = 1e-5
    attn_eps: float = 1e-15
    drop_path: float = 0.0
    drop_path_skip: int = 0
    zero_init_last: bool = False
    dtype: Any = jnp.float32
    multi_scale: bool = True
    global_attention: bool = True

    def __post_init__(self):
        for option in ("multi_scale", "global_attention"):
            if not isinstance(getattr(self, option), bool):
                raise UserError(f"{option} must be True or False, got "
                                f"{getattr(self, option)!r}")
        super().__post_init__()

    def setup(self):
        cfg, eps, dt = self.cfg, self.norm_eps, self.dtype
        dp = _DropPath(cfg, self.drop_path, self.drop_path_skip)
        zl = self.zero_init_last

        def block(kind, features, stride, expand, fewer_norm=False):
            # "Last gamma = 0" only where a shortcut carries the signal past the branch.
            return _local_block(kind, features, stride, expand, cfg.act, fewer_norm, eps,
                                zl and stride == 1, dt)

        def evit(expand, scales):
            return EfficientViTBlock(cfg.dim, expand, scales if self.multi_scale else (),
                                     self.attn_eps, cfg.act, "bn2d", eps,
                                     (dp.next(), dp.next()), zl, dt, self.global_attention)

        stem_conv = ConvLayer(cfg.width_list[0], 3, 2, act=cfg.act, norm_eps=eps, dtype=dt)
        stages = []
        if cfg.family == "b":
            w0 = cfg.width_list[0]
            stem = [stem_conv] + [ResidualBlock(block("ds", w0, 1, 1))
                                  for _ in range(cfg.depth_list[0])]
            for w, d in zip(cfg.width_list[1:3], cfg.depth_list[1:3]):
                ops = [ResidualBlock(block("mb", w, 2, cfg.expand_ratio), shortcut=False)]
                ops += [ResidualBlock(block("mb", w, 1, cfg.expand_ratio), drop_path=dp.next())
                        for _ in range(d - 1)]
                stages.append(OpSequential(ops))
            for w, d in zip(cfg.width_list[3:], cfg.depth_list[3:]):
                ops = [ResidualBlock(block("mb", w, 2, cfg.expand_ratio, True), shortcut=False)]
                ops += [evit(cfg.expand_ratio, (5,)) for _ in range(d)]
                stages.append(OpSequential(ops))
            self.input_stem = OpSequential(stem)
        elif cfg.family == "l":
            w0, kinds = cfg.width_list[0], cfg.block_list
            stem = [stem_conv] + [
                ResidualBlock(block(kinds[0], w0, 1, cfg.expand_list[0], cfg.fewer_norm_list[0]))
                for _ in range(cfg.depth_list[0])]
            stages.append(OpSequential(stem))
            for i in range(1, cfg.num_stages):
                w, d, kind = cfg.width_list[i], cfg.depth_list[i], kinds[i]
                fn, e = cfg.fewer_norm_list[i], cfg.expand_list[i]
                down = kind if kind in ("mb", "fmb") else "mb"
                ops = [ResidualBlock(block(down, w, 2, e * 4, fn), shortcut=False)]
                for _ in range(d):
                    if kind.startswith("att"):
                        ops.append(evit(e, (3,) if kind == "att@3" else (5,)))
                    else:
                        ops.append(ResidualBlock(block(kind, w, 1, e, fn), drop_path=dp.next()))
                stages.append(OpSequential(ops))
        else:
            raise ValueError(f"unknown backbone family {cfg.family!r}")
        self.stages = stages

    def __call__(self, x: Array, train: bool = False) -> dict[str, Array]:
        """`[B, H, W, 3]` -> {"input", "stage0", ..., "stage_final"}."""
        feats = {"input": x}
        x = x.astype(self.dtype)
        offset = 0
        if self.cfg.family == "b":
            feats["stage0"] = x = self.input_stem(x, train)
            offset = 1
        for i, stage in enumerate(self.stages):
            feats[f"stage{i + offset}"] = x = stage(x, train)
        feats["stage_final"] = x
        return feats
