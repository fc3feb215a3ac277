"""EfficientViT-Base, the first paper's backbone (seed 003, "Enhanced Linear Attention for
High-Resolution Low-Computation Visual Recognition"), and its segmentation head.

No code or weights were ever released: this is reconstructed from the paper's description
(spec section 11.1) and fitted to its parameter and MAC counts; every choice the paper leaves
open is ours and listed in docs/v1.md.

  input stem  conv 3x3/2 (BN, hswish) + residual DSConv 3x3            stage0  stride 2
  stage 1-2   DownsampleBlock (MBConv/2 + avgpool-1x1 shortcut), BN;   stage1  stride 4
              then L_i - 1 residual MBConvs (k5, expand 4, BN)         stage2  stride 8  (P2)
  stage 3-4   DownsampleBlock (LayerNorm), then L_i ELA blocks:        stage3  stride 16 (P3)
              ReLU linear attention (dim 16, 2 * C / 16 heads) +       stage4  stride 32 (P4)
              FFN with a 5x5 depthwise conv (expand 4), LayerNorm

Widths C0..C4 = 16, 24, 48, 96, 192, depths L1..L4 = 2, 3, 5, 2, hard-swish everywhere. The
returned feature dict has the keys and strides of `EfficientViTBackbone`'s.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from evit_jax.errors import UserError
from evit_jax.models.v1_blocks import DownsampleBlock, ELABlock
from evit_jax.nn import DSConv, MBConv, OpSequential, ResidualBlock, UpSample, get_act
from evit_jax.nn.conv import ConvLayer

Array = jax.Array
ATTENTIONS = ("linear", "softmax")
FFNS = ("dwconv", "vanilla")


def make_divisible(v: float, divisor: int = 8) -> int:
    """`v` rounded to a multiple of `divisor`, never more than 10 % below it (MobileNet's
    rule for width multipliers)."""
    n = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return n + divisor if n < 0.9 * v else n


@dataclasses.dataclass(frozen=True)
class V1Config:
    """Architecture of one EfficientViT-Base (a row of the zoo's `BACKBONES`).

    Attributes:
      width_list: C0 (stem) .. C4.
      depth_list: residual DSConvs in the stem (ours: 1), then the paper's L1..L4.
      dim: key/value dimension of the linear attention.
      attn_ratio: heads * dim / width: 2, the paper's 12 / 24 heads at widths 96 / 192.
      expand_ratio: of the MBConvs and FFNs.
      kernel_size: of every depthwise conv but the stem's (3).
      act: hard-swish.
      softmax_dim: key/value dimension of the softmax ablation (Fig. 5: 8).
      softmax_resolution: input side at which the softmax ablation's heads are sized to the
        linear attention's MACs (ImageNet's 224, where the paper compares them).
      family: "v1" (what `ModelSpec.family` reports).
    """

    width_list: tuple[int, ...] = (16, 24, 48, 96, 192)
    depth_list: tuple[int, ...] = (1, 2, 3, 5, 2)
    dim: int = 16
    attn_ratio: int = 2
    expand_ratio: float = 4
    kernel_size: int = 5
    act: str = "hswish"
    softmax_dim: int = 8
    softmax_resolution: int = 224
    family: str = "v1"

    @property
    def num_stages(self) -> int:
        return len(self.width_list)

    def scaled(self, width_mult: float) -> V1Config:
        """Every width times `width_mult`, rounded to a multiple of 8 (`-w1.2`)."""
        return dataclasses.replace(self, width_list=tuple(
            make_divisible(w * width_mult) for w in self.width_list))

    def attention_shape(self, stage: int, attention: str = "linear") -> tuple[int, int]:
        """(heads, dim) of the attention of `stage` (3 or 4).

        Linear: `attn_ratio * width / dim` heads of `dim`. Softmax (the ablation): heads of
        `softmax_dim`, as many as give the same MACs per token (q/k/v and output projections
        plus the token mixing) at `softmax_resolution`, where stage i (stride 2**(i+1)) has
        `(softmax_resolution / 2**(i+1))**2` tokens.
        """
        width = self.width_list[stage]
        total = self.attn_ratio * width
        if attention == "linear":
            return total // self.dim, self.dim
        tokens = (self.softmax_resolution >> (stage + 1)) ** 2
        d = self.softmax_dim
        linear = 4 * width * total + 2 * total * self.dim + total  # per token
        per_head = 4 * width * d + 2 * tokens * d
        return max(1, round(linear / per_head)), d

    def ffn_mid(self, stage: int, ffn: str = "dwconv") -> int:
        """Hidden width of the FFNs of `stage`: `expand_ratio * width`; for the "vanilla"
        ablation (no depthwise conv) widened by the depthwise conv's MACs per token,
        `expand * k**2 / 2`, rounded to a multiple of 8 (the paper: "a larger width to
        similar MACs")."""
        mid = self.expand_ratio * self.width_list[stage]
        if ffn == "vanilla":
            return make_divisible(mid + self.expand_ratio * self.kernel_size ** 2 / 2)
        return round(mid)


def _check_choice(option: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"{option}={value!r} is not one of {', '.join(map(repr, choices))}")


class V1Backbone(nn.Module):
    """EfficientViT-Base on `[B, H, W, 3]` -> {"input", "stage0" .. "stage4", "stage_final"}
    (`stage_i` `[B, H / 2**(i+1), W / 2**(i+1), C_i]`; P2, P3, P4 = stage2, stage3, stage4).

    Attributes:
      cfg: the architecture.
      attention: "linear" (the paper's) or "softmax" (Fig. 5's ablation: `softmax_dim` heads
        sized to the same MACs, `V1Config.attention_shape`).
      ffn: "dwconv" (the paper's enhanced FFN) or "vanilla" (no depthwise conv, a wider
        hidden layer to the same MACs, `V1Config.ffn_mid`).
      norm_eps: eps of every BatchNorm and LayerNorm; attn_eps: the linear attention's.
      drop_path, drop_path_skip: stochastic depth over the identity-residual branches
        (linear in depth after skipping the first `drop_path_skip`), training only.
      zero_init_last: start the last norm of every branch that has a shortcut at 0.
      dtype: compute dtype (params stay float32; attention runs in float32).
    """

    cfg: V1Config
    attention: str = "linear"
    ffn: str = "dwconv"
    norm_eps: float = 1e-5
    attn_eps: float = 1e-15
    drop_path: float = 0.0
    drop_path_skip: int = 0
    zero_init_last: bool = False
    dtype: Any = jnp.float32

    def __post_init__(self):
        _check_choice("attention", self.attention, ATTENTIONS)
        _check_choice("ffn", self.ffn, FFNS)
        super().__post_init__()

    def _drop_rates(self) -> list[float]:
        """Per identity-residual branch (stage order): 0 for the first `drop_path_skip`,
        then p * (i + 1) / n, as `backbone._DropPath` does for the released models."""
        d = self.cfg.depth_list
        n = (d[1] - 1) + (d[2] - 1) + 2 * (d[3] + d[4])
        skip = min(self.drop_path_skip, n)
        return [0.0] * skip + [self.drop_path * (i + 1) / max(n - skip, 1)
                               for i in range(n - skip)]

    def setup(self):
        cfg, eps, dt, act, zl = self.cfg, self.norm_eps, self.dtype, self.cfg.act, \
            self.zero_init_last
        rates = iter(self._drop_rates())
        w, d, k, e = cfg.width_list, cfg.depth_list, cfg.kernel_size, cfg.expand_ratio
        stem = [ConvLayer(w[0], 3, 2, act=act, norm_eps=eps, dtype=dt)]
        stem += [ResidualBlock(DSConv(w[0], 3, act=(act, None), norm_eps=eps,
                                      zero_init_last=zl, dtype=dt)) for _ in range(d[0])]
        self.input_stem = OpSequential(stem)
        stages = []
        for i in range(1, 5):
            norm = "bn2d" if i <= 2 else "ln2d"  # the paper: BN early, LayerNorm in 3-4
            ops = [DownsampleBlock(w[i], k, e, norm, act, eps, zl, dt)]
            if i <= 2:
                ops += [ResidualBlock(MBConv(w[i], k, 1, e, act=(act, act, None), norm_eps=eps,
                                             zero_init_last=zl, dtype=dt), True, next(rates))
                        for _ in range(d[i] - 1)]
            else:
                heads, dim = cfg.attention_shape(i, self.attention)
                ops += [ELABlock(heads, dim, cfg.ffn_mid(i, self.ffn), self.attention,
                                 self.ffn, k, act, norm, eps, self.attn_eps,
                                 (next(rates), next(rates)), zl, dt) for _ in range(d[i])]
            stages.append(OpSequential(ops))
        self.stages = stages

    def __call__(self, x: Array, train: bool = False) -> dict[str, Array]:
        """`[B, H, W, 3]` -> {"input", "stage0", ..., "stage4", "stage_final"}."""
        feats = {"input": x}
        x = x.astype(self.dtype)
        feats["stage0"] = x = self.input_stem(x, train)
        for i, stage in enumerate(self.stages):
            feats[f"stage{i + 1}"] = x = stage(x, train)
        feats["stage_final"] = x
        return feats


@dataclasses.dataclass(frozen=True)
class FastSegHeadConfig:
    """The v1 segmenter's head (ours, after Fast-SCNN's feature fusion and classifier; the
    paper: "fuse P2 and P4, then a light head of a few conv layers").

    Attributes:
      width: channels of the fused map and the classifier.
      num_classes: output classes.
      high, low: the fused features (P2, P4) and `low_factor`, P4's upsampling to P2.
      depth: depthwise-separable convs of the classifier.
    """

    width: int = 128
    num_classes: int = 19
    high: str = "stage2"
    low: str = "stage4"
    low_factor: int = 4
    depth: int = 2


class FastSegHead(nn.Module):
    """Backbone features -> logits `[B, H / 8, W / 8, num_classes]` (compute dtype).

    low (P4): bilinear x4 -> depthwise 3x3 (BN, act) -> 1x1 conv to `width` (BN)
    high (P2): 1x1 conv to `width` (BN);  act(low + high)
    -> `depth` DSConvs (3x3 depthwise, BN, act; 1x1, BN, act) -> 1x1 conv to classes (bias).
    Keys `low_dw`, `low_proj`, `high_proj`, `classifier/op_list_*`.
    """

    cfg: FastSegHeadConfig
    act: str = "hswish"
    norm_eps: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, feats: dict[str, Array], train: bool = False) -> Array:
        cfg, eps, dt, act = self.cfg, self.norm_eps, self.dtype, self.act
        low = UpSample(cfg.low_factor, mode="bilinear")(feats[cfg.low])
        c = low.shape[-1]
        low = ConvLayer(c, 3, groups=c, act=act, norm_eps=eps, dtype=dt, name="low_dw")(low, train)
        low = ConvLayer(cfg.width, 1, act=None, norm_eps=eps, dtype=dt, name="low_proj")(low, train)
        high = ConvLayer(cfg.width, 1, act=None, norm_eps=eps, dtype=dt,
                         name="high_proj")(feats[cfg.high], train)
        x = get_act(act)(low.astype(jnp.float32) + high.astype(jnp.float32)).astype(dt)
        ops = [DSConv(cfg.width, 3, act=(act, act), norm_eps=eps, dtype=dt)
               for _ in range(cfg.depth)]
        ops.append(ConvLayer(cfg.num_classes, 1, use_bias=True, norm=None, act=None, dtype=dt))
        return OpSequential(ops, name="classifier")(x, train)
