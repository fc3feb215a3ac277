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
from evit_jax.nn.depthwise import NATIVE_ACTS, default_impl, depthwise_conv2d
from evit_jax.nn.init import TRUNC_NORMAL_002, ZEROS, Init, declare_param
from evit_jax.nn.norm import bn_affine, make_norm

Array = jax.Array


class Conv2d(nn.Module):
    """PyTorch-style `Conv2d` on NHWC: symmetric padding `k // 2`, optional groups.

    Params: `kernel` `[k, k, C_in / groups, C_out]` (HWIO), `bias` `[C_out]`.
    Dispatches to the cheapest exact formulation: a matmul for 1x1 (grouped ones included:
    XLA:CPU's grouped convolutions are slow), `depthwise_conv2d` when groups == C_in ==
    C_out, and `lax.conv_general_dilated` otherwise.

    A `bias` in the variables is used even when `use_bias` is False: that is how
    BatchNorm-folded variables (`evit_jax.fuse_bn`) carry the folded shift.
    """

    features: int
    kernel_size: int = 1
    stride: int = 1
    groups: int = 1
    use_bias: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, scale: Array | None = None, shift: Array | None = None,
                 act: str | None = None, prologue: tuple | None = None,
                 raw: bool = False) -> Array | tuple[Array, Array | None]:
        """`[B, H, W, C_in]` -> `act((conv(x) + bias) * scale + shift)` (each part optional).

        `scale`/`shift` `[C_out]` are an inference BatchNorm folded into the kernel on the
        fly; with them and `act`, a depthwise conv runs as one fused kernel where it can.
        `prologue` (depthwise only) is passed to `depthwise_conv2d`. `raw=True` returns
        `(conv(x), bias)` without adding the bias (for a consumer that applies it itself).
        """
        k, g, cin = self.kernel_size, self.groups, x.shape[-1]
        if cin % g or self.features % g:
            raise ValueError(f"channels {cin}->{self.features} not divisible by groups {g}")
        kernel = declare_param(self, "kernel", TRUNC_NORMAL_002, (k, k, cin // g, self.features))
        bias = None
        if self.use_bias or self.has_variable("params", "bias"):
            bias = declare_param(self, "bias", ZEROS, (self.features,))
        if scale is not None:  # fold: (conv(x, K) + c) * a + b == conv(x, K * a) + (c * a + b)
            kernel = kernel * scale
            bias = shift if bias is None else bias * scale + shift
        kernel = kernel.astype(self.dtype)
        x = x.astype(self.dtype)
        # Accumulate in float32 and return float32: under bf16 compute the caller (ConvLayer)
        # rounds once, after norm and activation, instead of after every op.
        f32 = jnp.float32
        if g == cin == self.features and not (k == 1 and self.stride == 1):
            if raw:
                return depthwise_conv2d(x, kernel, self.stride, k // 2).astype(f32), bias
            y = depthwise_conv2d(x, kernel, self.stride, k // 2, bias=bias, act=act,
                                 prologue=prologue)
            return y.astype(f32)
        if prologue is not None:
            raise ValueError("a prologue is only fused into depthwise convolutions")
        if k == 1 and self.stride == 1:
            if g == 1:
                y = jnp.einsum("bhwi,io->bhwo", x, kernel[0, 0], preferred_element_type=f32)
            else:
                xg = x.reshape(*x.shape[:-1], g, cin // g)
                wg = kernel[0, 0].reshape(cin // g, g, self.features // g)
                y = jnp.einsum("bhwgi,igo->bhwgo", xg, wg, preferred_element_type=f32)
                y = y.reshape(*x.shape[:-1], self.features)
        else:
            p = k // 2
            y = lax.conv_general_dilated(
                x, kernel, (self.stride, self.stride), ((p, p), (p, p)),
                dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=g,
                preferred_element_type=f32)
        if raw:
            return y, bias
        if bias is not None:
            y = y + bias
        return get_act(act)(y)


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
    def __call__(self, x: Array, train: bool = False, prologue: tuple | None = None,
                 defer: bool = False) -> Array | tuple:
        """`[B, H, W, C_in]` -> `[B, H', W', features]`.

        Inference-only options for the fused inverted bottleneck (see `MBConv`):
        `defer=True` returns `(z, scale, shift, act)` with z the bare convolution, leaving
        `act(z * scale + shift)` (bias, BatchNorm and activation) to the consumer;
        `prologue=(scale, shift, act)` is such a deferred epilogue of the layer before,
        applied by this (depthwise) layer as it reads its input.
        """
        conv = Conv2d(self.features, self.kernel_size, self.stride, self.groups, self.use_bias,
                      self.dtype, name="conv")
        folded = (self.norm == "bn2d" and not self.is_initializing()
                  and "norm" not in self.variables.get("params", {}))  # by fuse_bn
        if folded and train:
            raise ValueError("these variables have BatchNorm folded into the convs "
                             "(evit_jax.fuse_bn): inference only; train with the unfolded "
                             "variables")
        affine = None  # inference BatchNorm as (a, b), read off the variables
        if not train and self.norm == "bn2d" and not folded and not self.is_initializing():
            p = self.variables["params"]["norm"]
            s = self.variables["batch_stats"]["norm"]
            affine = bn_affine(p["scale"], p["bias"], s["mean"], s["var"], self.norm_eps)
        if defer:
            if train or self.norm not in ("bn2d", None):
                raise ValueError("defer=True is for inference with bn2d or no norm")
            z, bias = conv(x, raw=True)
            a, b = affine if affine is not None else (jnp.ones((self.features,)), 0.0)
            b = b if bias is None else bias * a + b
            return z, a, jnp.broadcast_to(b, (self.features,)), self.act
        if folded or self.norm is None:
            return conv(x, act=self.act, prologue=prologue).astype(self.dtype)
        if affine is not None and (prologue is not None or self.fuses_epilogue(x.shape[-1])):
            # Inference depthwise conv: fold BN on the fly so that conv, BN and the
            # activation run as one pass of the native kernel.
            a, b = affine
            return conv(x, scale=a, shift=b, act=self.act, prologue=prologue).astype(self.dtype)
        if prologue is not None:
            raise ValueError("a prologue needs an inference depthwise ConvLayer")
        x = conv(x)
        x = make_norm(self.norm, self.norm_eps, self.dtype, self.zero_init_norm)(x, train)
        return get_act(self.act)(x).astype(self.dtype)

    def fuses_epilogue(self, cin: int) -> bool:
        """Whether, in inference, this layer runs as one native depthwise kernel."""
        return (self.groups == cin == self.features and self.kernel_size > 1
                and default_impl() == "native" and self.norm in ("bn2d", None)
                and self.act in NATIVE_ACTS)


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
