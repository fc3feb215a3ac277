"""YOLOX's PAFPN neck (`YOLOPAFPN` without its CSPDarknet): a top-down path, then a
bottom-up one, with CSP blocks at every merge.

Names are the Megvii state dict's `backbone.*` keys other than `backbone.backbone.*` (the
darknet, replaced here by the EfficientViT backbone): `lateral_conv0`, `C3_p4`,
`reduce_conv1`, `C3_p3`, `bu_conv2`, `C3_n3`, `bu_conv1`, `C3_n4`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from evit_jax.models.det.blocks import CSPLayer, base_conv, conv3x3

Array = jax.Array


def upsample_nearest(x: Array, factor: int = 2) -> Array:
    """Nearest-neighbour upsampling `[B, H, W, C]` -> `[B, fH, fW, C]` (`nn.Upsample`)."""
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, factor, w, factor, c))
    return x.reshape(b, h * factor, w * factor, c)


class PAFPN(nn.Module):
    """Features `(P3, P4, P5)` `[B, H/s, W/s, C_i]` at strides (8, 16, 32) ->
    `(N3, N4, N5)` with `widths` channels.

    YOLOX ties its neck's widths to the backbone's (`in_channels * width` for both); here
    the convs take whatever the backbone gives, so a neck wider or narrower than the
    backbone is the same layout (with widths = the backbone's, YOLOX's exactly).

    Attributes:
      widths: output channels (w3, w4, w5); YOLOX: `in_channels * width`.
      depth: Bottlenecks per CSP block; YOLOX: `round(3 * depth)`.
      depthwise: 3x3 convs as `DWConv` (YOLOX-Nano).
      act: activation ("silu" in YOLOX); norm_eps: BatchNorm eps; dtype: compute dtype.
    """

    widths: tuple[int, int, int]
    depth: int = 1
    depthwise: bool = False
    act: str = "silu"
    norm_eps: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, feats: tuple[Array, Array, Array], train: bool = False
                 ) -> tuple[Array, Array, Array]:
        w3, w4, w5 = self.widths
        kw = dict(act=self.act, norm_eps=self.norm_eps, dtype=self.dtype)
        csp = dict(depth=self.depth, shortcut=False, depthwise=self.depthwise, **kw)
        x3, x4, x5 = feats
        # Top-down: P5 -> P4 -> P3.
        lat5 = base_conv(w4, 1, name="lateral_conv0", **kw)(x5, train)
        y = jnp.concatenate([upsample_nearest(lat5), x4], -1)
        y = CSPLayer(w4, name="C3_p4", **csp)(y, train)
        lat4 = base_conv(w3, 1, name="reduce_conv1", **kw)(y, train)
        y = jnp.concatenate([upsample_nearest(lat4), x3], -1)
        out3 = CSPLayer(w3, name="C3_p3", **csp)(y, train)
        # Bottom-up: N3 -> N4 -> N5, merging the top-down laterals.
        y = conv3x3(w3, 2, self.depthwise, name="bu_conv2", **kw)(out3, train)
        out4 = CSPLayer(w4, name="C3_n3", **csp)(jnp.concatenate([y, lat4], -1), train)
        y = conv3x3(w4, 2, self.depthwise, name="bu_conv1", **kw)(out4, train)
        out5 = CSPLayer(w5, name="C3_n4", **csp)(jnp.concatenate([y, lat5], -1), train)
        return out3, out4, out5
