"""EfficientViT image classifier: backbone + classification head."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from evit_jax.models.backbone import BackboneConfig, EfficientViTBackbone
from evit_jax.models.heads import ClsHead, ClsHeadConfig

Array = jax.Array


def check_image_batch(x: Array, multiple: int = 32) -> None:
    """Raise a clear error for input that the models cannot take."""
    if x.ndim != 4 or x.shape[-1] != 3:
        hint = " (it looks NCHW: transpose to NHWC with x.transpose(0, 2, 3, 1))" \
            if x.ndim == 4 and x.shape[1] == 3 else ""
        raise ValueError(f"expected images [N, H, W, 3] (NHWC), got shape {x.shape}{hint}")
    h, w = x.shape[1:3]
    if h % multiple or w % multiple:
        raise ValueError(f"image size {h}x{w} must be a multiple of {multiple}: resize or pad "
                         f"to e.g. {-(-h // multiple) * multiple}x{-(-w // multiple) * multiple}")


class EfficientViTCls(nn.Module):
    """`[N, H, W, 3]` normalised images -> logits `[N, num_classes]` (float32).

    `method="features"` returns the backbone's stage dict instead. Inference mode unless
    `train=True` (then pass `mutable=["batch_stats"]` and a `dropout` rng if drop_path > 0).
    """

    backbone_cfg: BackboneConfig
    head_cfg: ClsHeadConfig
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
        self.head = ClsHead(self.head_cfg, self.backbone_cfg.act, self.norm_eps, self.dtype)

    def features(self, x: Array, train: bool = False) -> dict[str, Array]:
        check_image_batch(x)
        return self.backbone(x, train)

    def __call__(self, x: Array, train: bool = False) -> Array:
        feats = self.features(x, train)
        return self.head(feats["stage_final"], train).astype(jnp.float32)
