"""EfficientViT-Det: YOLOX's PAFPN neck and decoupled head on an EfficientViT backbone."""

from evit_jax.models.det.blocks import CSPLayer, DWConv, base_conv
from evit_jax.models.det.head import YOLOXHead
from evit_jax.models.det.model import STRIDES, DetConfig, EfficientViTDet, det_parts
from evit_jax.models.det.pafpn import PAFPN

__all__ = ["CSPLayer", "DWConv", "DetConfig", "EfficientViTDet", "PAFPN", "STRIDES",
           "YOLOXHead", "base_conv", "det_parts"]
