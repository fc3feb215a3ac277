"""The EfficientViT-SAM image encoder: backbone -> neck (a `FusionBlock`) -> LayerNorm2d.

The neck is the segmentation head's DAG block, but every input is brought to the fixed
64 x 64 grid of SAM's image embedding (bicubic, identity where the map is already 64 x 64),
so the embedding size does not depend on the family (L at 512, XL at 1024).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from evit_jax.models.backbone import EfficientViTBackbone
from evit_jax.models.fusion import FusionBlock
from evit_jax.models.sam.config import SamConfig
from evit_jax.nn import LayerNorm

Array = jax.Array


def sam_neck(cfg: SamConfig, act: str = "gelu") -> FusionBlock:
    """The neck of `cfg`: backbone features -> `[B, 64, 64, 256]` (before the LayerNorm).

    `input_ops_i`: 1x1 conv C_i -> neck_width (BN, no act) and a bicubic resize to the
    embedding grid; summed; `middle`: `neck_depth` residual FusedMBConv blocks (3x3 conv to
    width * neck_expand, BN, act; 1x1 conv, BN); `output_ops_0`: 1x1 conv with bias to the
    embedding channels. `act` is the backbone family's (tanh-GELU).
    """
    g = cfg.decoder.grid
    return FusionBlock(cfg.fid_list, ((g, g),) * len(cfg.fid_list), cfg.neck_width,
                       cfg.neck_depth, "fmbconv", cfg.neck_expand, cfg.decoder.embed_dim,
                       act=act)


class SamImageEncoder(nn.Module):
    """`[N, S, S, 3]` normalised, padded images -> embeddings `[N, 64, 64, 256]` (float32).

    Attributes:
      backbone: the EfficientViT L / XL backbone (`image_encoder.backbone.*`).
      neck: its `FusionBlock` (`sam_neck`; `image_encoder.neck.*`).
      norm_eps: eps of the final LayerNorm2d (`image_encoder.norm.*`).
    """

    backbone: EfficientViTBackbone
    neck: FusionBlock
    norm_eps: float = 1e-6

    def setup(self):
        self.norm = LayerNorm(self.norm_eps, dtype=jnp.float32)

    def __call__(self, x: Array, train: bool = False) -> Array:
        feats = self.backbone(x, train)
        y = self.neck(feats, train).astype(jnp.float32)
        # Materialise the neck's output: XLA:CPU otherwise fuses its last 1x1 conv into the
        # LayerNorm's reductions and recomputes it per reduction (~16% of the encoder's time).
        return self.norm(jax.lax.optimization_barrier(y))
