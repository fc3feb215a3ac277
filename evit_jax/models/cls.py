"""EfficientViT image classifier: backbone + classification head."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from evit_jax.models.base import BackboneHeadModel

Array = jax.Array


class EfficientViTCls(BackboneHeadModel):
    """`[N, H, W, 3]` normalised images -> logits `[N, num_classes]` (float32).

    `method="features"` returns the backbone's stage dict instead. Inference mode unless
    `train=True` (then pass `mutable=["batch_stats"]` and a `dropout` rng if drop_path > 0).
    `head` is a `ClsHead` on `stage_final`.
    """

    def __call__(self, x: Array, train: bool = False) -> Array:
        feats = self.features(x, train)
        return self.head(feats["stage_final"], train).astype(jnp.float32)
