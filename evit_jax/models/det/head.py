"""YOLOX's decoupled, anchor-free head: per level a 1x1 stem, then two branches of two 3x3
convs each, one for class logits and one for box offsets + objectness.

Names are the Megvii state dict's `head.*` keys: `stems_i`, `cls_convs_i_j`,
`reg_convs_i_j`, `cls_preds_i`, `reg_preds_i`, `obj_preds_i` (i = level, j = conv).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from evit_jax.models.det.blocks import base_conv, conv3x3
from evit_jax.nn.conv import conv2d
from evit_jax.nn.init import TRUNC_NORMAL_002, Init, declare_param

Array = jax.Array

# YOLOX starts the class and objectness logits at the bias of a 1 % prior probability, so
# the first steps are not swamped by the loss of the ~8000 background points per image.
PRIOR_PROB = 0.01


class PredConv(nn.Module):
    """1x1 conv with a bias (`nn.Conv2d(c, features, 1)`), the bias starting at `bias_init`.
    `[B, H, W, C]` -> `[B, H, W, features]` float32. Params `kernel`, `bias`."""

    features: int
    bias_init: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = declare_param(self, "kernel", TRUNC_NORMAL_002,
                               (1, 1, x.shape[-1], self.features))
        bias = declare_param(self, "bias", Init("constant", value=self.bias_init),
                             (self.features,))
        # Conv2d's arithmetic (a matmul for 1x1, a Conv node under export forms).
        return conv2d(x.astype(self.dtype), kernel.astype(self.dtype)) + bias


class YOLOXHead(nn.Module):
    """Neck outputs `(N3, N4, N5)` -> raw per-level predictions `[B, H/s, W/s, 5 + classes]`
    (float32): box offsets (dx, dy, log w, log h) in stride units, objectness logit,
    class logits, in YOLOX's channel order. `evit_jax.det.decode` makes boxes of them.

    Attributes:
      num_classes: classes (80 for COCO).
      width: channels of the stems and branches (YOLOX: `256 * width`).
      depthwise: 3x3 convs as `DWConv` (YOLOX-Nano).
      act, norm_eps, dtype: as the neck's.
    """

    num_classes: int
    width: int
    depthwise: bool = False
    act: str = "silu"
    norm_eps: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, feats: tuple[Array, ...], train: bool = False) -> tuple[Array, ...]:
        kw = dict(act=self.act, norm_eps=self.norm_eps, dtype=self.dtype)
        prior = -math.log((1 - PRIOR_PROB) / PRIOR_PROB)
        outs = []
        for i, x in enumerate(feats):
            x = base_conv(self.width, 1, name=f"stems_{i}", **kw)(x, train)
            c, r = x, x
            for j in range(2):
                c = conv3x3(self.width, 1, self.depthwise, name=f"cls_convs_{i}_{j}", **kw)(
                    c, train)
            for j in range(2):
                r = conv3x3(self.width, 1, self.depthwise, name=f"reg_convs_{i}_{j}", **kw)(
                    r, train)
            cls = PredConv(self.num_classes, prior, self.dtype, name=f"cls_preds_{i}")(c)
            reg = PredConv(4, 0.0, self.dtype, name=f"reg_preds_{i}")(r)
            obj = PredConv(1, prior, self.dtype, name=f"obj_preds_{i}")(r)
            outs.append(jnp.concatenate([reg, obj, cls], -1).astype(jnp.float32))
        return tuple(outs)
