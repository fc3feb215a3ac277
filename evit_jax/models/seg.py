"""EfficientViT semantic segmentation: backbone + fusion head, and the evaluation resize."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from evit_jax.models.base import BackboneHeadModel
from evit_jax.nn.resize import resize

Array = jax.Array


class EfficientViTSeg(BackboneHeadModel):
    """`[N, H, W, 3]` normalised images -> logits `[N, H / 8, W / 8, classes]` (float32).

    The output is the head's, before any resize; `resize_logits` brings it to label size the
    way the reference evaluates. `head` is a `FusionBlock` (`heads.seg_head`).
    """

    def __call__(self, x: Array, train: bool = False) -> Array:
        return self.head(self.features(x, train), train).astype(jnp.float32)


def resize_logits(logits: Array, size: tuple[int, int]) -> Array:
    """Logits `[N, h, w, K]` -> `[N, H, W, K]` by PyTorch-exact bicubic (align_corners=False),
    as the reference evaluates segmentation (then argmax over K)."""
    return resize(logits, tuple(size), mode="bicubic")
