"""The EfficientViT-SAM image encoder: backbone -> SamNeck -> LayerNorm2d.

The neck is a DAG block like the segmentation head, but every input is brought to the fixed
64 x 64 grid of SAM's image embedding (bicubic, identity where the map is already 64 x 64),
so the embedding size does not depend on the family (L at 512, XL at 1024).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from evit_jax.models.backbone import BackboneConfig, EfficientViTBackbone
from evit_jax.nn import FusedMBConv, LayerNorm, OpSequential, ResidualBlock, UpSample
from evit_jax.nn.conv import ConvLayer

Array = jax.Array


class SamNeck(nn.Module):
    """Backbone features -> `[B, 64, 64, out_dim]` (before the final LayerNorm).

    `input_ops_i`: 1x1 conv C_i -> width (BN, no act) and a bicubic resize to the embedding
    grid; summed; `middle`: `depth` residual FusedMBConv blocks (3x3 conv to width * expand,
    BN, act; 1x1 conv, BN); `output_ops_0`: 1x1 conv with bias to `out_dim`.

    Attributes:
      fid_list: backbone features read, in this order (`input_ops_0`, ...).
      width, depth, expand_ratio: of the middle blocks.
      out_dim: embedding channels.
      grid: embedding size (H = W).
      act: activation (the family's, tanh-GELU).
      norm_eps: eps of every BatchNorm.
    """

    fid_list: tuple[str, ...]
    width: int = 256
    depth: int = 4
    expand_ratio: float = 1
    out_dim: int = 256
    grid: int = 64
    act: str = "gelu"
    norm_eps: float = 1e-6
    dtype: Any = jnp.float32

    def setup(self):
        eps, dt = self.norm_eps, self.dtype
        self.input_ops = [
            OpSequential([ConvLayer(self.width, 1, act=None, norm_eps=eps, dtype=dt),
                          UpSample(size=(self.grid, self.grid), mode="bicubic")])
            for _ in self.fid_list]
        self.middle = OpSequential([
            ResidualBlock(FusedMBConv(self.width, expand_ratio=self.expand_ratio,
                                      act=(self.act, None), norm_eps=eps, dtype=dt))
            for _ in range(self.depth)])
        self.output_ops = [OpSequential([
            ConvLayer(self.out_dim, 1, use_bias=True, norm=None, act=None, dtype=dt)])]

    def __call__(self, feats: dict[str, Array], train: bool = False) -> Array:
        ys = [op(feats[fid], train) for fid, op in zip(self.fid_list, self.input_ops)]
        # The reference sums recursively, y0 + (y1 + (y2 + ...)); same order here.
        x = ys[-1]
        for y in reversed(ys[:-1]):
            x = y + x
        x = self.middle(x, train)
        return self.output_ops[0](x, train)


class SamImageEncoder(nn.Module):
    """`[N, S, S, 3]` normalised, padded images -> embeddings `[N, 64, 64, 256]` (float32).

    Submodules `backbone`, `neck`, `norm` carry the reference's key names
    (`image_encoder.backbone.*`, `image_encoder.neck.*`, `image_encoder.norm.*`).
    """

    backbone_cfg: BackboneConfig
    fid_list: tuple[str, ...]
    neck_width: int = 256
    neck_depth: int = 4
    neck_expand: float = 1
    out_dim: int = 256
    grid: int = 64
    norm_eps: float = 1e-6
    attn_eps: float = 1e-15
    dtype: Any = jnp.float32

    def setup(self):
        self.backbone = EfficientViTBackbone(self.backbone_cfg, self.norm_eps, self.attn_eps,
                                             dtype=self.dtype)
        self.neck = SamNeck(self.fid_list, self.neck_width, self.neck_depth, self.neck_expand,
                            self.out_dim, self.grid, self.backbone_cfg.act, self.norm_eps,
                            self.dtype)
        self.norm = LayerNorm(self.norm_eps, dtype=jnp.float32)

    def __call__(self, x: Array, train: bool = False) -> Array:
        feats = self.backbone(x, train)
        y = self.neck(feats, train).astype(jnp.float32)
        # Materialise the neck's output: XLA:CPU otherwise fuses its last 1x1 conv into the
        # LayerNorm's reductions and recomputes it per reduction (~16% of the encoder's time).
        return self.norm(jax.lax.optimization_barrier(y))
