"""What every backbone + head model shares: its two parts and the input checks."""

from __future__ import annotations

import flax.linen as nn
import jax

from evit_jax.errors import UserError
from evit_jax.models.backbone import EfficientViTBackbone

Array = jax.Array


def check_image_batch(x: Array, multiple: int = 32) -> None:
    """Raise a clear error for input that the models cannot take."""
    if x.ndim != 4 or x.shape[-1] != 3:
        hint = " (it looks NCHW: transpose to NHWC with x.transpose(0, 2, 3, 1))" \
            if x.ndim == 4 and x.shape[1] == 3 else ""
        raise UserError(f"expected images [N, H, W, 3] (NHWC), got shape {x.shape}{hint}")
    h, w = x.shape[1:3]
    if h % multiple or w % multiple:
        raise UserError(f"image size {h}x{w} must be a multiple of {multiple}: resize or pad "
                        f"to e.g. {-(-h // multiple) * multiple}x{-(-w // multiple) * multiple}")


class BackboneHeadModel(nn.Module):
    """Base of the task models: a backbone and a head, built by the zoo and handed over
    (`create_model` routes the options to the parts that declare them).

    Attributes:
      backbone: an `EfficientViTBackbone` (its submodules are `params/backbone/...`).
      head: the task head (`params/head/...`), on the backbone's feature dict.
    """

    backbone: EfficientViTBackbone
    head: nn.Module

    @property
    def norm_eps(self) -> float:
        """The backbone's BatchNorm eps (what `evit_jax.fuse_bn(variables, model)` folds with)."""
        return self.backbone.norm_eps

    def features(self, x: Array, train: bool = False) -> dict[str, Array]:
        """`[N, H, W, 3]` -> the backbone's {"stage0", ..., "stage_final"} features."""
        check_image_batch(x)
        return self.backbone(x, train)
