"""Convolution and linear layers: `Conv2d`, `ConvLayer` (conv, norm, act), `LinearLayer`.

Parameter names follow the reference's state dict (`conv`, `norm`, `linear`), so a
checkpoint key maps to a Flax path by rule (see `evit_jax.convert.keymap`).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from collections.abc import Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from evit_jax.errors import UserError
from evit_jax.nn.act import get_act
from evit_jax.nn.depthwise import (
    ConvAffine,
    conv_bn_act,
    depthwise_conv2d,
    fuses_natively,
    pointwise,
)
from evit_jax.nn.forms import exporting
from evit_jax.nn.init import TRUNC_NORMAL_002, ZEROS, Init, declare_param
from evit_jax.nn.norm import bn_affine, make_norm

Array = jax.Array


class Conv2d(nn.Module):
    """PyTorch-style `Conv2d` on NHWC: symmetric padding `k // 2`, optional groups.

    Params: `kernel` `[k, k, C_in / groups, C_out]` (HWIO), `bias` `[C_out]` (`use_bias`).
    Dispatches to the cheapest exact formulation: a matmul for 1x1 (grouped ones included:
    XLA:CPU's grouped convolutions are slow), `depthwise_conv2d` when groups == C_in ==
    C_out, and `lax.conv_general_dilated` otherwise (and for every convolution under
    `nn.forms.export_forms`).
    """

    features: int
    kernel_size: int = 1
    stride: int = 1
    groups: int = 1
    use_bias: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """`[B, H, W, C_in]` -> `conv(x) + bias` `[B, H', W', features]`, float32.

        Accumulates in float32 and returns float32: under bf16 compute the caller
        (ConvLayer) rounds once, after norm and activation, instead of after every op.
        """
        k, g, cin = self.kernel_size, self.groups, x.shape[-1]
        if cin % g or self.features % g:
            raise ValueError(f"channels {cin}->{self.features} not divisible by groups {g}")
        kernel = declare_param(self, "kernel", TRUNC_NORMAL_002, (k, k, cin // g, self.features))
        y = conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, g)
        if self.use_bias:
            y = y + declare_param(self, "bias", ZEROS, (self.features,))
        return y


def conv2d(x: Array, kernel: Array, stride: int = 1, groups: int = 1) -> Array:
    """The convolution of `Conv2d` (padding `k // 2`): x `[B, H, W, C_in]`, kernel HWIO
    `[k, k, C_in / groups, C_out]` -> `[B, H', W', C_out]`, accumulated in float32."""
    k, g, cin, cout = kernel.shape[0], groups, x.shape[-1], kernel.shape[-1]
    f32 = jnp.float32
    if g == cin == cout and not (k == 1 and stride == 1):
        return depthwise_conv2d(x, kernel, stride, k // 2).astype(f32)
    if k == 1 and stride == 1 and not exporting():
        if g == 1:
            return pointwise(x, kernel)
        xg = x.reshape(*x.shape[:-1], g, cin // g)
        wg = kernel[0, 0].reshape(cin // g, g, cout // g)
        y = jnp.einsum("bhwgi,igo->bhwgo", xg, wg, preferred_element_type=f32)
        return y.reshape(*x.shape[:-1], cout)
    p = k // 2
    return lax.conv_general_dilated(
        x, kernel, (stride, stride), ((p, p), (p, p)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=g,
        preferred_element_type=f32)


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


# ----------------------------------------------------------------------------- folded BN
# Set while a `with_folded_bn` module is initialised or applied: every `bn2d` ConvLayer
# traced meanwhile is a conv with a bias and no norm. A build option of the whole model
# that reaches each layer without threading a flag through every block and head.
_FOLDED_BN: contextvars.ContextVar[bool] = contextvars.ContextVar("evit_folded_bn",
                                                                  default=False)
_FOLDED_CLASSES: dict[type, type] = {}


def bn_folded() -> bool:
    """Whether the module being traced was built with BatchNorm folded (`with_folded_bn`)."""
    return _FOLDED_BN.get()


@contextlib.contextmanager
def _folding() -> Iterator[None]:
    token = _FOLDED_BN.set(True)
    try:
        yield
    finally:
        _FOLDED_BN.reset(token)


def _folded_class(cls: type) -> type:
    if cls not in _FOLDED_CLASSES:
        def entry(method: str) -> Any:
            base = getattr(cls, method)

            @nn.nowrap
            @functools.wraps(base)
            def run(self, *args, **kwargs):
                with _folding():
                    return base(self, *args, **kwargs)
            return run

        body = {m: entry(m) for m in ("init", "init_with_output", "apply", "lazy_init")}
        body["fused_bn"] = True
        body["__doc__"] = f"{cls.__name__} with BatchNorm folded into its convs " \
                          f"(inference only).\n\n{cls.__doc__ or ''}"
        _FOLDED_CLASSES[cls] = type(cls.__name__, (cls,), body)
    return _FOLDED_CLASSES[cls]


def with_folded_bn(module: nn.Module) -> nn.Module:
    """The same architecture with every `bn2d` ConvLayer built as a conv with a bias and no
    norm: the module that `evit_jax.fuse_bn(variables, name)` output fits (the folded
    kernel and bias under `.../conv`). Inference only: `train=True` raises.

    Applies to a top-level module (its `init`/`apply`); `create_model(name, fused_bn=True)`
    calls it.
    """
    if getattr(module, "fused_bn", False) is True:
        return module
    fields = {f.name: getattr(module, f.name) for f in dataclasses.fields(module)
              if f.init and f.name not in ("parent", "name")}
    return _folded_class(type(module))(**fields)


class ConvLayer(nn.Module):
    """Conv2d -> [norm] -> [act], the reference's `ConvLayer`. `[B, H, W, C_in]` ->
    `[B, H / stride, W / stride, features]`.

    In a model built with BatchNorm folded (`with_folded_bn`, `create_model(...,
    fused_bn=True)`) a `bn2d` layer is a conv with a bias and no norm: the variables of
    `evit_jax.fuse_bn`, for inference only. An inference depthwise layer runs as one fused
    conv + BN + act (`depthwise.conv_bn_act`) where the native kernels are in use.

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
        """`[B, H, W, C_in]` -> `act(norm(conv(x)))` `[B, H', W', features]` in `dtype`."""
        folded = self.folds_bn()
        if folded and train:
            raise UserError("this model has BatchNorm folded into its convs (fused_bn=True, "
                            "evit_jax.fuse_bn): inference only; train the model built "
                            "without fused_bn")
        self._check_variables()
        conv = Conv2d(self.features, self.kernel_size, self.stride, self.groups,
                      self.use_bias or folded, self.dtype, name="conv")
        if not train and not self.is_initializing() and self.runs_fused(x.shape[-1]):
            return conv_bn_act(x, self.affine_form(), self.dtype).astype(self.dtype)
        x = conv(x)
        norm = make_norm(None if folded else self.norm, self.norm_eps, self.dtype,
                         self.zero_init_norm)
        if norm is not None:
            x = norm(x, train)
        return get_act(self.act)(x).astype(self.dtype)

    def folds_bn(self) -> bool:
        """Whether this layer's BatchNorm is folded into its conv (a `with_folded_bn` build)."""
        return self.norm == "bn2d" and bn_folded()

    def _check_variables(self) -> None:
        if (self.norm == "bn2d" and not self.folds_bn() and not self.is_initializing()
                and not self.has_variable("params", "norm")):
            raise UserError(f"no BatchNorm variables at {'/'.join(self.scope.path)}: "
                            "variables from evit_jax.fuse_bn need the model built with "
                            "create_model(name, fused_bn=True)")

    def runs_fused(self, cin: int) -> bool:
        """Whether, in inference, this layer runs as one native depthwise conv + BN + act."""
        return (self.groups == cin == self.features and self.kernel_size > 1
                and fuses_natively(self.norm, self.act))

    def affine_form(self) -> ConvAffine:
        """This layer's inference computation as `act((conv(x) + bias) * scale + shift)`,
        read off its variables (BatchNorm as a per-channel affine map)."""
        self._check_variables()
        conv = self.variables["params"]["conv"]
        scale = shift = None
        if self.norm == "bn2d" and not self.folds_bn():
            p, s = self.variables["params"]["norm"], self.variables["batch_stats"]["norm"]
            scale, shift = bn_affine(p["scale"], p["bias"], s["mean"], s["var"], self.norm_eps)
        elif self.norm is not None and not self.folds_bn():
            raise ValueError(f"norm {self.norm!r} has no affine inference form")
        return ConvAffine(conv["kernel"], conv.get("bias"), scale, shift, self.act,
                          self.stride, self.groups)


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
