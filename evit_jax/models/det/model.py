"""EfficientViT-Det: an EfficientViT backbone, YOLOX's PAFPN neck and decoupled head.

The backbone's `stage2`, `stage3`, `stage4` features (strides 8, 16, 32; the paper's P2, P3,
P4) feed the neck, as YOLOX feeds its darknet's `dark3..5`. The parameter tree is
`backbone/...` (the EfficientViT backbone, the classifiers' names), `neck/...` (YOLOX's
`backbone.*` PAFPN keys) and `head/...` (YOLOX's `head.*` keys).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax

from evit_jax.models.base import check_image_batch
from evit_jax.models.det.head import YOLOXHead
from evit_jax.models.det.pafpn import PAFPN

Array = jax.Array

STRIDES = (8, 16, 32)


@dataclasses.dataclass(frozen=True)
class DetConfig:
    """The neck and head of one detector (the zoo entry's `head`).

    Attributes:
      in_channels: widths of the backbone features read (informational: convs infer them).
      neck_widths: PAFPN output widths at strides 8 / 16 / 32 (YOLOX: `in_channels * width`).
      neck_depth: Bottlenecks per CSP block (YOLOX: `round(3 * depth)`).
      head_width: stem and branch width of the head (YOLOX: `256 * width`).
      num_classes: 80 for COCO.
      depthwise: the neck's and head's 3x3 convs as depthwise + pointwise (YOLOX-Nano).
      act: activation of the neck and head ("silu", YOLOX's).
      in_features: the backbone features read, finest first.
      strides: their strides.
    """

    in_channels: tuple[int, int, int]
    neck_widths: tuple[int, int, int]
    neck_depth: int
    head_width: int
    num_classes: int = 80
    depthwise: bool = False
    act: str = "silu"
    in_features: tuple[str, str, str] = ("stage2", "stage3", "stage4")
    strides: tuple[int, int, int] = STRIDES

    @classmethod
    def yolox(cls, in_channels: tuple[int, int, int], width: float = 1.0,
              depth: float = 1.0, **kw: Any) -> DetConfig:
        """YOLOX's own sizing rule: neck widths = `in_channels` (already scaled by
        `width`), head width = `256 * width`, `round(3 * depth)` Bottlenecks."""
        return cls(tuple(in_channels), tuple(in_channels), round(3 * depth), int(256 * width),
                   **kw)


class EfficientViTDet(nn.Module):
    """`[N, H, W, 3]` normalised images (H, W multiples of 32) -> raw head outputs, one per
    stride (8, 16, 32): `[N, H/s, W/s, 5 + classes]` float32 (box offsets, objectness logit,
    class logits; `evit_jax.det.decode` makes boxes of them, `evit_jax.det.yolox_loss`
    trains them).

    Attributes:
      backbone: an EfficientViT backbone (any with `stage2..4` at strides 8, 16, 32).
      neck: a `PAFPN`.
      head: a `YOLOXHead`.
      in_features: the backbone features the neck reads.
    """

    backbone: nn.Module
    neck: PAFPN
    head: YOLOXHead
    in_features: tuple[str, str, str] = ("stage2", "stage3", "stage4")

    @property
    def norm_eps(self) -> float:
        """The BatchNorm eps (`evit_jax.fuse_bn(variables, model)` folds with it); the zoo
        gives the neck and head the backbone's."""
        return self.backbone.norm_eps

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    @property
    def strides(self) -> tuple[int, ...]:
        return STRIDES

    def features(self, x: Array, train: bool = False) -> dict[str, Array]:
        """`[N, H, W, 3]` -> the backbone's feature dict."""
        check_image_batch(x)
        return self.backbone(x, train)

    def __call__(self, x: Array, train: bool = False) -> tuple[Array, Array, Array]:
        feats = self.features(x, train)
        pyramid = self.neck(tuple(feats[k] for k in self.in_features), train)
        return self.head(pyramid, train)


def det_parts(cfg: DetConfig, act: str | None = None) -> tuple[PAFPN, YOLOXHead]:
    """The neck and head modules of `cfg` (`act` overrides the config's)."""
    a = act or cfg.act
    return (PAFPN(cfg.neck_widths, cfg.neck_depth, cfg.depthwise, a),
            YOLOXHead(cfg.num_classes, cfg.head_width, cfg.depthwise, a))


