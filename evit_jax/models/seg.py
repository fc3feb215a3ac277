"""EfficientViT semantic segmentation: backbone + SegHead, and the evaluation resize."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from evit_jax.models.backbone import BackboneConfig, EfficientViTBackbone
from evit_jax.models.cls import check_image_batch
from evit_jax.models.heads import SegHead, SegHeadConfig
from evit_jax.nn.resize import resize

Array = jax.Array


class EfficientViTSeg(nn.Module):
    """`[N, H, W, 3]` normalised images -> logits `[N, H / 8, W / 8, classes]` (float32).

    The output is the head's, before any resize; `resize_logits` brings it to label size the
    way the reference evaluates.
    """

    backbone_cfg: BackboneConfig
    head_cfg: SegHeadConfig
    norm_eps: float = 1e-5
    attn_eps: float = 1e-15
    drop_path: float = 0.0
    drop_path_skip: int = 0
    zero_init_last: bool = False
    dtype: Any = jnp.float32

    def setup(self):
        self.backbone = EfficientViTBackbone(self.backbone_cfg, self.norm_eps, self.attn_eps,
                                             self.drop_path, self.drop_path_skip,
                                             self.zero_init_last, self.dtype)
        self.head = SegHead(self.head_cfg, self.backbone_cfg.act, self.norm_eps, self.dtype)

    def features(self, x: Array, train: bool = False) -> dict[str, Array]:
        check_image_batch(x)
        return self.backbone(x, train)

    def __call__(self, x: Array, train: bool = False) -> Array:
        return self.head(self.features(x, train), train).astype(jnp.float32)


def resize_logits(logits: Array, size: tuple[int, int]) -> Array:
    """Logits `[N, h, w, K]` -> `[N, H, W, K]` by PyTorch-exact bicubic (align_corners=False),
    as the reference evaluates segmentation (then argmax over K)."""
    return resize(logits, tuple(size), mode="bicubic")
