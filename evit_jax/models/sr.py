"""EfficientViT for single-image super-resolution (ours: the papers give no architecture).

  lr [N, h, w, 3] in [0, 1]
   -> stem: 3x3 conv to `stem_width`, full resolution                        (shallow features)
   -> space-to-depth 2x2 (lossless) -> 1x1 conv to `width`                   [N, h/2, w/2, C]
   -> `depth` EfficientViT blocks (LiteMLA global linear attention + MBConv), no norm
   -> 3x3 conv -> + the blocks' input (long skip)
   -> 1x1 conv to 4 * stem_width -> pixel-shuffle 2 -> + stem features        [N, h, w, C0]
   -> 3x3 conv + act -> 3x3 conv to 3 s^2 -> pixel-shuffle s                 [N, sh, sw, 3]
   -> + bicubic(lr) (global skip: the network predicts the missing detail)

Why this shape: the blocks' cost is per token, so running them on 2x2-folded features makes
them 4x cheaper than at full resolution for the same width, and the fold loses nothing (the
4 pixels become channels; the stem's full-resolution features are added back before the
upsampler). LiteMLA's attention is global and linear in the number of tokens, so the
receptive field is the whole image at any size. No BatchNorm, the SR convention since EDSR:
batch statistics of small crops shift the output's colours at test time; LiteMLA's ReLU
attention is invariant to the scale of q and k and needs no norm.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from evit_jax.errors import UserError
from evit_jax.nn.attention import EfficientViTBlock
from evit_jax.nn.conv import ConvLayer
from evit_jax.nn.resize import resize

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class SRBodyConfig:
    """Widths and depth of the SR network (the zoo's `efficientvit-sr*` "backbone").

    Attributes:
      width: channels of the EfficientViT blocks (at half resolution).
      depth: number of EfficientViT blocks.
      stem_width: channels of the full-resolution stem and upsampler.
      dim: LiteMLA per-head dimension (heads = width // dim).
      expand_ratio: MBConv expansion in each block.
      scales: LiteMLA multi-scale aggregation kernels.
      act: activation.
    """

    width: int = 96
    depth: int = 16
    stem_width: int = 48
    dim: int = 16
    expand_ratio: float = 4
    scales: tuple[int, ...] = (5,)
    act: str = "gelu"

    def scaled(self, factor: float) -> SRBodyConfig:
        """Every width times `factor` (w0.75): the heads stay as many, each narrower."""
        heads = self.width // self.dim
        dim = max(1, round(self.dim * factor))
        stem = max(4, round(self.stem_width * factor / 4) * 4)
        return dataclasses.replace(self, width=heads * dim, dim=dim, stem_width=stem)


@dataclasses.dataclass(frozen=True)
class SRHeadConfig:
    """The upsampler: `scale` (2, 3 or 4)."""

    scale: int = 2


def pixel_shuffle(x: Array, r: int) -> Array:
    """`[N, H, W, C * r^2]` -> `[N, rH, rW, C]` (PyTorch's channel order: c, i, j)."""
    n, h, w, c = x.shape
    x = x.reshape(n, h, w, c // (r * r), r, r)
    return x.transpose(0, 1, 4, 2, 5, 3).reshape(n, h * r, w * r, c // (r * r))


def space_to_depth(x: Array, r: int) -> Array:
    """The inverse of `pixel_shuffle`: `[N, rH, rW, C]` -> `[N, H, W, C * r^2]`."""
    n, h, w, c = x.shape
    x = x.reshape(n, h // r, r, w // r, r, c)
    return x.transpose(0, 1, 3, 5, 2, 4).reshape(n, h // r, w // r, c * r * r)


class EfficientViTSR(nn.Module):
    """`[N, h, w, 3]` LR images in [0, 1] -> `[N, s*h, s*w, 3]` (float32, not clipped).

    Any h, w: odd sizes are padded by edge replication to what the 2x2 fold needs and the
    output is cropped back. Fields mirror the other task models (`backbone_cfg` is the body,
    `head_cfg` the upsampler) so that the zoo builds it the same way.
    """

    backbone_cfg: SRBodyConfig
    head_cfg: SRHeadConfig
    norm_eps: float = 1e-5   # unused (no norm); kept for the zoo's uniform signature
    attn_eps: float = 1e-15
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise UserError(f"expected LR images [N, h, w, 3] (NHWC) in [0, 1], got shape "
                            f"{x.shape}")
        cfg, s = self.backbone_cfg, self.head_cfg.scale
        n, h, w, _ = x.shape
        x = x.astype(jnp.float32)
        ph, pw = h % 2, w % 2
        xp = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge") if ph or pw else x
        conv = lambda f, k, act, name: ConvLayer(  # noqa: E731
            f, k, use_bias=True, norm=None, act=act, dtype=self.dtype, name=name)
        shallow = conv(cfg.stem_width, 3, None, "stem")(xp - 0.5, train)
        feat = conv(cfg.width, 1, None, "fold")(space_to_depth(shallow, 2), train)
        body = feat
        for i in range(cfg.depth):
            body = EfficientViTBlock(cfg.dim, cfg.expand_ratio, cfg.scales, self.attn_eps,
                                     cfg.act, norm=None, dtype=self.dtype,
                                     name=f"blocks_{i}")(body, train)
        feat = conv(cfg.width, 3, None, "body_out")(body, train).astype(jnp.float32) + feat
        up = pixel_shuffle(conv(4 * cfg.stem_width, 1, None, "unfold")(feat, train), 2)
        up = up.astype(jnp.float32) + shallow.astype(jnp.float32)
        up = conv(cfg.stem_width, 3, cfg.act, "up_conv")(up, train)
        out = pixel_shuffle(conv(3 * s * s, 3, None, "to_rgb")(up, train), s)
        out = out.astype(jnp.float32)[:, : s * h, : s * w]
        return out + resize(x, (s * h, s * w), mode="bicubic")
