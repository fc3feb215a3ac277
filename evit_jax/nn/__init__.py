"""Layers of EfficientViT in Flax linen, NHWC."""

from evit_jax.nn.act import get_act
from evit_jax.nn.attention import (
    EfficientViTBlock,
    LiteMLA,
    relu_linear_attention,
    softmax_attention,
)
from evit_jax.nn.blocks import (
                                DSConv,
                                FusedMBConv,
                                MBConv,
                                OpSequential,
                                ResBlock,
                                ResidualBlock,
                                fewer_norm_args,
)
from evit_jax.nn.conv import Conv2d, ConvLayer, LinearLayer
from evit_jax.nn.depthwise import depthwise_conv2d, set_depthwise_impl
from evit_jax.nn.norm import BatchNorm2d, LayerNorm, make_norm
from evit_jax.nn.resize import UpSample, resize

__all__ = [
    "BatchNorm2d", "Conv2d", "ConvLayer", "DSConv", "EfficientViTBlock", "FusedMBConv",
    "LayerNorm", "LinearLayer", "LiteMLA", "MBConv", "OpSequential", "ResBlock",
    "ResidualBlock", "UpSample", "depthwise_conv2d", "fewer_norm_args", "get_act",
    "make_norm", "relu_linear_attention", "resize", "set_depthwise_impl", "softmax_attention",
]
