"""Depthwise 2-D convolution: the one swappable op EfficientViT leans on.

Every MBConv, DSConv and the multi-scale aggregation of LiteMLA run a depthwise conv, and
XLA:CPU's grouped convolution (`feature_group_count=C`) is ~20x slower than PyTorch's for it.
All callers go through `depthwise_conv2d`, so a faster formulation reaches inference and
training alike. Implementations, selected by name (`set_depthwise_impl`, or the
`EVIT_DEPTHWISE` environment variable), all match `lax` forward and gradient:

- `lax`: XLA's grouped convolution (the default off CPU).
- `shift_add`: k*k shifted, per-channel-scaled slices summed; pure JAX, fuses well.
- `native`: the C++ kernels of `evit_jax.native` (XLA:CPU custom calls, float32 math, with
  their own backward pass); the CPU default when the library is built.
- `portable`: `shift_add` on CPU and `lax` elsewhere, picked at lowering time (`jax.export`).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from evit_jax import native
from evit_jax.nn.act import get_act

Array = jax.Array
DepthwiseFn = Callable[[Array, Array, int, int], Array]
# Activations the native forward applies in its epilogue (the kernel's `act` codes).
NATIVE_ACTS = {None: 0, "relu": 1, "relu6": 2, "hswish": 3, "gelu": 4}


def depthwise_lax(x: Array, kernel: Array, stride: int, padding: int) -> Array:
    """XLA's grouped convolution. x `[B, H, W, C]`, kernel `[k, k, 1, C]`."""
    return lax.conv_general_dilated(
        x, kernel, window_strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x.shape[-1])


def depthwise_shift_add(x: Array, kernel: Array, stride: int, padding: int) -> Array:
    """Sum of k*k shifted, per-channel-scaled slices of the padded input (fuses well)."""
    kh, kw = kernel.shape[:2]
    b, h, w, c = x.shape
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    ho = (h + 2 * padding - kh) // stride + 1
    wo = (w + 2 * padding - kw) // stride + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            tap = lax.slice(xp, (0, i, j, 0),
                            (b, i + (ho - 1) * stride + 1, j + (wo - 1) * stride + 1, c),
                            (1, stride, stride, 1))
            term = tap * kernel[i, j, 0]
            out = term if out is None else out + term
    return out


def depthwise_portable(x: Array, kernel: Array, stride: int, padding: int) -> Array:
    """`shift_add` on CPU, `lax` elsewhere, chosen when the program is lowered: for
    `jax.export` artifacts, which may not contain the native custom calls."""
    return lax.platform_dependent(
        x, kernel, cpu=lambda x, k: depthwise_shift_add(x, k, stride, padding),
        default=lambda x, k: depthwise_lax(x, k, stride, padding))


# ----------------------------------------------------------------------------- native (FFI)
def _out_size(n: int, k: int, stride: int, padding: int) -> int:
    return (n + 2 * padding - k) // stride + 1


def _ffi_fwd(x, kernel, bias, in_scale, in_shift, stride, padding, act, in_act):
    b, h, w, c = x.shape
    k = kernel.shape[0]
    out = jax.ShapeDtypeStruct((b, _out_size(h, k, stride, padding),
                                _out_size(w, k, stride, padding), c), jnp.float32)
    return jax.ffi.ffi_call("evit_dw_fwd", out, vmap_method="sequential")(
        x, kernel.reshape(k, k, c), bias, in_scale, in_shift, stride=np.int64(stride),
        pad=np.int64(padding), act=np.int64(NATIVE_ACTS[act]),
        in_act=np.int64(-1 if in_act is False else NATIVE_ACTS[in_act]))


def _prologue(x, in_scale, in_shift, in_act):
    return get_act(in_act)(x * in_scale + in_shift)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
def _native(x, kernel, bias, in_scale, in_shift, stride, padding, act, in_act):
    return _ffi_fwd(x, kernel, bias, in_scale, in_shift, stride, padding, act, in_act)


def _native_fwd(x, kernel, bias, in_scale, in_shift, stride, padding, act, in_act):
    y = _ffi_fwd(x, kernel, bias, in_scale, in_shift, stride, padding, act, in_act)
    return y, (x, kernel, bias, in_scale, in_shift)


def _native_bwd(stride, padding, act, in_act, res, g):
    # Intermediate values are recomputed rather than kept alive; the pure-JAX prologue and
    # activation supply their own derivatives.
    x, kernel, bias, in_scale, in_shift = res
    one, zero = jnp.ones_like(bias), jnp.zeros_like(bias)
    u, pro_vjp = x, None
    if in_act is not False:
        u, pro_vjp = jax.vjp(lambda x, a, b: _prologue(x, a, b, in_act), x, in_scale, in_shift)
    if act is not None:
        z = _ffi_fwd(u, kernel, bias, one, zero, stride, padding, None, False)
        g = jax.vjp(get_act(act), z)[1](g)[0]
    k, c = kernel.shape[0], x.shape[-1]
    du = jax.ffi.ffi_call("evit_dw_bwd_input", jax.ShapeDtypeStruct(x.shape, jnp.float32),
                          vmap_method="sequential")(
        g, kernel.reshape(k, k, c), stride=np.int64(stride), pad=np.int64(padding))
    dk = jax.ffi.ffi_call("evit_dw_bwd_kernel", jax.ShapeDtypeStruct((k, k, 1, c), jnp.float32),
                          vmap_method="sequential")(
        u, g, stride=np.int64(stride), pad=np.int64(padding))
    if pro_vjp is None:
        return du, dk, g.sum((0, 1, 2)), zero, zero
    dx, da, db = pro_vjp(du)
    return dx, dk, g.sum((0, 1, 2)), da, db


_native.defvjp(_native_fwd, _native_bwd)


def depthwise_native(x: Array, kernel: Array, stride: int, padding: int,
                     bias: Array | None = None, act: str | None = None,
                     prologue: tuple[Array, Array, str | None] | None = None) -> Array:
    """The C++ kernel, computed in float32 (x's dtype in and out).

    Computes `act(conv(p(x)) + bias)` in one pass, with `p(x) = in_act(x * in_scale +
    in_shift)` for `prologue=(in_scale, in_shift, in_act)` (the BatchNorm and activation
    of the layer before, so that its output is never written to memory) and `p(x) = x`
    otherwise; `act` and `in_act` must be in `NATIVE_ACTS`.
    """
    if not native.available():
        raise RuntimeError(f"native depthwise kernel unavailable: {native.why_unavailable()}")
    if kernel.shape[0] > 32:
        raise ValueError(f"native depthwise supports kernels up to 32, got {kernel.shape[0]}")
    f32, c = jnp.float32, x.shape[-1]
    b = jnp.zeros((c,), f32) if bias is None else bias.astype(f32)
    if prologue is None:
        a, s, in_act = jnp.ones((c,), f32), jnp.zeros((c,), f32), False
    else:
        a, s, in_act = prologue
        a, s = jnp.broadcast_to(a, (c,)).astype(f32), jnp.broadcast_to(s, (c,)).astype(f32)
    y = _native(x.astype(f32), kernel.astype(f32), b, a, s, stride, padding, act, in_act)
    return y.astype(x.dtype)


IMPLS: dict[str, DepthwiseFn] = {"lax": depthwise_lax, "shift_add": depthwise_shift_add,
                                 "native": depthwise_native, "portable": depthwise_portable}
_impl: str | None = os.environ.get("EVIT_DEPTHWISE") or None


def set_depthwise_impl(name: str | None) -> None:
    """Choose the implementation for functions traced from now on (None: per backend)."""
    global _impl
    if name is not None and name not in IMPLS:
        raise ValueError(f"unknown depthwise implementation {name!r}; known: {sorted(IMPLS)}")
    _impl = name


@contextlib.contextmanager
def depthwise_impl(name: str | None) -> Iterator[None]:
    """`with depthwise_impl("lax"): ...` traces the block with that implementation."""
    global _impl
    old = _impl
    set_depthwise_impl(name)
    try:
        yield
    finally:
        _impl = old


def default_impl() -> str:
    """`set_depthwise_impl`'s choice, else `native` (CPU, library built), `shift_add` (CPU),
    `lax` (GPU/TPU, whose convolution libraries handle depthwise well)."""
    if _impl is not None:
        return _impl
    if jax.default_backend() != "cpu":
        return "lax"
    return "native" if native.available() else "shift_add"


def depthwise_conv2d(x: Array, kernel: Array, stride: int = 1, padding: int | None = None,
                     impl: str | None = None, bias: Array | None = None,
                     act: str | None = None,
                     prologue: tuple[Array, Array, str | None] | None = None) -> Array:
    """Depthwise conv with symmetric zero padding, as PyTorch's `Conv2d(groups=C)`, then
    optionally `act(y + bias)` (fused into the kernel where the implementation can).

    Args:
      x: `[B, H, W, C]`.
      kernel: `[k, k, 1, C]` (Flax HWIO layout with `feature_group_count=C`).
      stride: spatial stride.
      padding: pixels of zero padding on every side (default `k // 2`).
      impl: implementation name (default: `set_depthwise_impl` / per backend).
      bias: `[C]` added after the convolution.
      act: activation name (`evit_jax.nn.act`) applied last.
      prologue: `(scale, shift, act)` applied to x first, `act(x * scale + shift)`: the
        inference BatchNorm and activation of the layer before (fused on read by `native`).
    Returns:
      `[B, H', W', C]`.
    """
    if kernel.ndim != 4 or kernel.shape[2] != 1 or kernel.shape[3] != x.shape[-1]:
        raise ValueError(f"depthwise kernel {kernel.shape} does not fit input {x.shape}")
    if padding is None:
        padding = kernel.shape[0] // 2
    impl = impl or default_impl()
    if prologue is not None and (impl != "native" or prologue[2] not in NATIVE_ACTS):
        x = _prologue(x, *prologue).astype(x.dtype)
        prologue = None
    if impl == "native":  # bias and the activations it knows run in the kernel's epilogue
        fused = act if act in NATIVE_ACTS else None
        y = depthwise_native(x, kernel, stride, padding, bias, fused, prologue)
        return y if fused == act else get_act(act)(y)
    y = IMPLS[impl](x, kernel, stride, padding)
    if bias is not None:
        y = y + bias.astype(y.dtype)
    return get_act(act)(y)


# ------------------------------------------------------------------ fused inference entries
class ConvAffine(NamedTuple):
    """One inference conv layer as `act((conv(x, kernel) + bias) * scale + shift)`: a
    `ConvLayer` with its BatchNorm read as a per-channel affine map (None: absent).

    kernel: HWIO `[k, k, C_in / groups, C_out]`; bias, scale, shift: `[C_out]`.
    """

    kernel: Array
    bias: Array | None
    scale: Array | None
    shift: Array | None
    act: str | None
    stride: int = 1
    groups: int = 1


def pointwise(x: Array, kernel: Array) -> Array:
    """1x1 convolution as a matmul: x `[B, H, W, C_in]`, kernel `[1, 1, C_in, C_out]` ->
    `[B, H, W, C_out]` accumulated and returned in float32.

    On CPU its gradient is `_pointwise_cpu`'s (same values, a cheaper layout)."""
    if jax.default_backend() == "cpu":
        return _pointwise_cpu(x, kernel[0, 0])
    return jnp.einsum("bhwi,io->bhwo", x, kernel[0, 0], preferred_element_type=jnp.float32)


@jax.custom_vjp
def _pointwise_cpu(x: Array, w: Array) -> Array:
    """`pointwise` with the weight gradient `x^T g` as a plain `[I, M] x [M, O]` matmul.

    Left to itself, XLA:CPU computes `dot(x, g)` contracted over the M = B*H*W rows of
    both by writing g (or the BatchNorm backward that produces it) transposed, one strided
    pass over the largest tensor of the layer; in B1's training step those copies were a
    quarter of the kernel time. Here the operand with fewer channels is transposed
    explicitly (behind an optimization barrier, so XLA does not fold the transpose back
    into the dot) and the matmul runs in its contiguous form.
    """
    return jnp.einsum("bhwi,io->bhwo", x, w, preferred_element_type=jnp.float32)


def _pointwise_cpu_fwd(x: Array, w: Array) -> tuple[Array, tuple[Array, Array]]:
    return _pointwise_cpu(x, w), (x, w)


def _pointwise_cpu_bwd(res: tuple[Array, Array], g: Array) -> tuple[Array, Array]:
    x, w = res
    f32 = jnp.float32
    g = g.astype(f32)
    dx = jnp.einsum("bhwo,io->bhwi", g, w.astype(f32)).astype(x.dtype)
    x2, g2 = x.reshape(-1, x.shape[-1]).astype(f32), g.reshape(-1, g.shape[-1])
    if x2.shape[1] <= g2.shape[1]:
        dw = jnp.dot(jax.lax.optimization_barrier(x2.T), g2)                    # [I, O]
    else:
        dw = jnp.dot(jax.lax.optimization_barrier(g2.T), x2).T                  # [I, O]
    return dx, dw.astype(w.dtype)


_pointwise_cpu.defvjp(_pointwise_cpu_fwd, _pointwise_cpu_bwd)


def fuses_natively(norm: str | None, act: str | None) -> bool:
    """Whether an inference conv with this norm and activation has a fused native path:
    the native kernels are the depthwise implementation, the norm is an affine map
    (`bn2d`, or none) and the activation is one the kernel applies."""
    return default_impl() == "native" and norm in ("bn2d", None) and act in NATIVE_ACTS


def _epilogue(layer: ConvAffine) -> tuple[Array | None, Array | None]:
    """(scale, shift) of `(y + bias) * scale + shift` as `y * a + b`: (None, bias) if no BN."""
    if layer.scale is None:
        return None, layer.bias
    shift = layer.shift if layer.bias is None else layer.bias * layer.scale + layer.shift
    return layer.scale, shift


def conv_bn_act(x: Array, layer: ConvAffine, dtype: Any = jnp.float32,
                prologue: tuple[Array, Array, str | None] | None = None) -> Array:
    """An inference depthwise ConvLayer in one pass: the BatchNorm folded into the kernel
    and bias on the fly (`(conv(x, K) + c) * a + b == conv(x, K * a) + (c * a + b)`), bias
    and activation in the kernel's epilogue (native) or after it.

    x `[B, H, W, C]` -> `[B, H', W', C]` float32; `dtype`: the compute dtype the input and
    folded kernel are rounded to; `prologue` as in `depthwise_conv2d`.
    """
    a, b = _epilogue(layer)
    kernel = layer.kernel if a is None else layer.kernel * a
    k = kernel.shape[0]
    y = depthwise_conv2d(x.astype(dtype), kernel.astype(dtype), layer.stride, k // 2,
                         bias=b, act=layer.act, prologue=prologue)
    return y.astype(jnp.float32)


def inverted_bottleneck(x: Array, expand: ConvAffine, depth: ConvAffine, project: ConvAffine,
                        dtype: Any = jnp.float32) -> Array:
    """MBConv's inference path on the native kernels: 1x1 expand -> depthwise -> 1x1 project.

    The expansion's bias, BatchNorm and activation are deferred into the depthwise kernel's
    prologue (applied as it reads), the depthwise conv runs with its BatchNorm folded and
    its activation fused (`conv_bn_act`), so the widest tensor of the block is written once
    (by the 1x1 matmul) instead of three times; the projection is a matmul whose affine
    epilogue and activation XLA fuses.

    x `[B, H, W, C_in]` -> `[B, H / s, W / s, C_out]` in `dtype`.
    """
    z = pointwise(x.astype(dtype), expand.kernel.astype(dtype))
    a, b = _epilogue(expand)
    c = z.shape[-1]
    a = jnp.ones((c,), jnp.float32) if a is None else a
    b = jnp.zeros((c,), jnp.float32) if b is None else b
    y = conv_bn_act(z, depth, dtype, prologue=(a, b, expand.act)).astype(dtype)
    y = pointwise(y, project.kernel.astype(dtype))
    if project.bias is not None:  # the same order of ops as Conv2d + BatchNorm2d
        y = y + project.bias
    if project.scale is not None:
        y = y * project.scale + project.shift
    return get_act(project.act)(y).astype(dtype)
