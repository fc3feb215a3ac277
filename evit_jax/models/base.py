"""What every backbone + head model shares: its fields, the backbone, input checks."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from evit_jax.models.backbone import BackboneConfig, EfficientViTBackbone

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


class BackboneHeadModel(nn.Module):
    """Base of the task models: an EfficientViT backbone (`backbone`) and a head (`head`).

    Subclasses build `self.head` in `setup` after calling `super().setup()`.

    Attributes:
      backbone_cfg, head_cfg: the zoo entry's architecture.
      norm_eps: eps of every norm; attn_eps: LiteMLA's.
      drop_path, drop_path_skip: stochastic depth (training).
      zero_init_last: start each residual branch's last BN at 0 (training from scratch).
      dtype: compute dtype (params are float32).
    """

    backbone_cfg: BackboneConfig
    head_cfg: Any
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

    def features(self, x: Array, train: bool = False) -> dict[str, Array]:
        """`[N, H, W, 3]` -> the backbone's {"stage0", ..., "stage_final"} features."""
        check_image_batch(x)
        return self.backbone(x, train)
