"""`FusionBlock`: the reference's DAG block, which fuses several backbone features into one map.

Both the segmentation head (`heads.seg_head`) and the EfficientViT-SAM neck
(`models.sam.neck.sam_neck`) are one: each input feature goes through a 1x1 conv to `width`
(BN, no act) and is resized to a common grid; the maps are summed; residual MBConv /
FusedMBConv blocks (`middle`) and 1x1 convs (`output_ops_0`) follow. Submodule names
reproduce the reference's state-dict keys (`input_ops_i`, `middle.op_list_j`,
`output_ops.0.op_list_k`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from evit_jax.nn import FusedMBConv, MBConv, OpSequential, ResidualBlock, UpSample
from evit_jax.nn.conv import ConvLayer

Array = jax.Array


class FusionBlock(nn.Module):
    """Backbone features {fid: `[B, h_i, w_i, C_i]`} -> `[B, H, W, out_dim]` (compute dtype).

    Attributes:
      fid_list: the features read, in this order (`input_ops_0`, `input_ops_1`, ...).
      resize: per input, how it reaches the common grid: an integer upsampling factor
        (1: the conv alone, as the reference builds it) or a fixed `(H, W)` size (a resize
        op is always built; it is the identity where the map has that size already).
      width: channels of the sum and of the middle blocks.
      depth: residual middle blocks; middle_op: "mbconv" or "fmbconv"; expand_ratio: theirs.
      out_dim: channels of the last 1x1 conv (with bias, no norm).
      final_expand: if set, a 1x1 conv to width * final_expand (BN, act) before it.
      act: the activation (the backbone family's); norm_eps: of every BatchNorm.
      dtype: compute dtype.
    """

    fid_list: tuple[str, ...]
    resize: tuple[int | tuple[int, int], ...]
    width: int
    depth: int
    middle_op: str
    expand_ratio: float
    out_dim: int
    final_expand: float | None = None
    act: str = "hswish"
    norm_eps: float = 1e-5
    dtype: Any = jnp.float32

    def setup(self):
        eps, dt, act, w = self.norm_eps, self.dtype, self.act, self.width
        if len(self.resize) != len(self.fid_list):
            raise ValueError(f"one resize per input: {len(self.resize)} for {self.fid_list}")
        inputs = []
        for r in self.resize:
            conv = ConvLayer(w, 1, act=None, norm_eps=eps, dtype=dt)
            if isinstance(r, int):
                inputs.append(conv if r == 1 else OpSequential([conv, UpSample(r)]))
            else:
                inputs.append(OpSequential([conv, UpSample(size=tuple(r), mode="bicubic")]))
        self.input_ops = inputs
        middle = []
        for _ in range(self.depth):
            if self.middle_op == "mbconv":
                block = MBConv(w, expand_ratio=self.expand_ratio, act=(act, act, None),
                               norm_eps=eps, dtype=dt)
            elif self.middle_op == "fmbconv":
                block = FusedMBConv(w, expand_ratio=self.expand_ratio, act=(act, None),
                                    norm_eps=eps, dtype=dt)
            else:
                raise ValueError(f"unknown middle op {self.middle_op!r}")
            middle.append(ResidualBlock(block))
        self.middle = OpSequential(middle)
        out = []
        if self.final_expand is not None:
            out.append(ConvLayer(round(w * self.final_expand), 1, act=act, norm_eps=eps,
                                 dtype=dt))
        out.append(ConvLayer(self.out_dim, 1, use_bias=True, norm=None, act=None, dtype=dt))
        self.output_ops = [OpSequential(out)]

    def __call__(self, feats: dict[str, Array], train: bool = False) -> Array:
        ys = [op(feats[fid], train) for fid, op in zip(self.fid_list, self.input_ops)]
        # The reference sums recursively: y0 + (y1 + (y2 + ...)); the same order here.
        x = ys[-1]
        for y in reversed(ys[:-1]):
            x = y + x
        x = self.middle(x, train)
        return self.output_ops[0](x, train)
