"""Convolution and linear layers: `Conv2d`, `ConvLayer` (conv, norm, act), `LinearLayer`.

Parameter names follow the reference's state dict (`conv`, `norm`, `linear`), so a
checkpoint key maps to a Flax path by rule (see `evit_jax.convert.keymap`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from evit_jax.nn.act import get_act
from evit_jax.nn.depthwise import depthwise_conv2d
from evit_jax.nn.init import TRUNC_NORMAL_002, ZEROS, Init, declare_param
from evit_jax.nn.norm import make_norm

Array = jax.Array


class Conv2d(nn.Module):
    """PyTorch-style `Conv2d` on NHWC: symmetric padding `k // 2`, optional groups.

    Params: `kernel` `[k, k, C_in / groups, C_out]` (HWIO), `bias` `[C_out]`.
    Dispatches to the cheapest exact formulation: a matmul for 1x1 (grouped ones included:
    XLA:CPU's grouped convolutions are slow), `depthwise_conv2d` when groups == C_in ==
    C_out, and `lax.conv_general_dilated` otherwise.
    """

    features: int
    kernel_size: int = 1
    stride: int = 1
    groups: int = 1
    use_bias: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k, g, cin = self.kernel_size, self.groups, x.shape[-1]
        if cin % g or self.features % g:
            raise ValueError(f"channels {cin}->{self.features} not divisible by groups {g}")
        kernel = declare_param(self, "kernel", TRUNC_NORMAL_002,
                               (k, k, cin // g, self.features)).astype(self.dtype)
        x = x.astype(self.dtype)
        # Accumulate in float32 and return float32: under bf16 compute the caller (ConvLayer)
        # rounds once, after norm and activation, instead of after every op.
        f32 = jnp.float32
        if k == 1 and self.stride == 1:
            if g == 1:
                y = jnp.einsum("bhwi,io->bhwo", x, kernel[0, 0], preferred_element_type=f32)
            else:
                xg = x.reshape(*x.shape[:-1], g, cin // g)
                wg = kernel[0, 0].reshape(cin // g, g, self.features // g)
                y = jnp.einsum("bhwgi,igo->bhwgo", xg, wg, preferred_element_type=f32)
                y = y.reshape(*x.shape[:-1], self.features)
        elif g == cin == self.features:
            y = depthwise_conv2d(x, kernel, self.stride, k // 2).astype(f32)
        else:
            p = k // 2
            y = lax.conv_general_dilated(
                x, kernel, (self.stride, self.stride), ((p, p), (p, p)),
                dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=g,
                preferred_element_type=f32)
        if self.use_bias:
            y = y + declare_param(self, "bias", ZEROS, (self.features,))
        return y


class Dense(nn.Module):
    """PyTorch-style `Linear` on the last axis: `[..., C_in]` -> `[..., features]`.

    Params: `kernel` `[C_in, features]`, `bias` `[features]`; float32 accumulation.
    """

    features: int
    use_bias: bool = True
    dtype: Any = jnp.float32
    kernel_init: Init = TRUNC_NORMAL_002

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = declare_param(self, "kernel", self.kernel_init, (x.shape[-1], self.features))
        y = jnp.einsum("...i,io->...o", x.astype(self.dtype), kernel.astype(self.dtype),
                       preferred_element_type=jnp.float32)
        if self.use_bias:
            y = y + declare_param(self, "bias", ZEROS, (self.features,))
        return y.astype(self.dtype)


class ConvLayer(nn.Module):
    """Conv2d -> [norm] -> [act], the reference's `ConvLayer`. `[B, H, W, C_in]` ->
    `[B, H / stride, W / stride, features]`.

    Attributes:
      features: output channels.
      kernel_size, stride, groups, use_bias: of the convolution.
      norm: `bn2d`, `ln2d` or None; `act`: activation name or None.
      norm_eps: eps of the norm (the zoo entry's).
      zero_init_norm: start the norm's scale at 0 (last layer of a residual branch).
    """

    features: int
    kernel_size: int = 3
    stride: int = 1
    groups: int = 1
    use_bias: bool = False
    norm: str | None = "bn2d"
    act: str | None = "relu"
    norm_eps: float = 1e-5
    zero_init_norm: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        x = Conv2d(self.features, self.kernel_size, self.stride, self.groups, self.use_bias,
                   self.dtype, name="conv")(x)
        norm = make_norm(self.norm, self.norm_eps, self.dtype, self.zero_init_norm)
        if norm is not None:
            x = norm(x, train)
        return get_act(self.act)(x).astype(self.dtype)


class LinearLayer(nn.Module):
    """Linear -> [norm] -> [act] on `[B, C]` (the reference's `LinearLayer`).

    Params: `linear/kernel` `[C_in, features]`, `linear/bias`, `norm/*`.
    """

    features: int
    use_bias: bool = True
    norm: str | None = None
    act: str | None = None
    norm_eps: float = 1e-5
    dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        x = x.reshape(x.shape[0], -1)
        if self.dropout > 0:
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = Dense(self.features, self.use_bias, self.dtype, name="linear")(x)
        norm = make_norm(self.norm, self.norm_eps, self.dtype)
        if norm is not None:
            x = norm(x, train)
        return get_act(self.act)(x)
