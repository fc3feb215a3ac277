"""Every depthwise implementation against XLA's grouped convolution (`lax`), forward and
both gradients: kernel sizes 3 and 5, strides 1 and 2, odd sizes, channel counts off the
kernels' vector widths, the fused bias + activation epilogue, and bf16 inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evit_jax import native
from evit_jax.nn.act import get_act
from evit_jax.nn.depthwise import (
    IMPLS,
    default_impl,
    depthwise_conv2d,
    depthwise_impl,
    pointwise,
    set_depthwise_impl,
)
from tests.helpers import rel_l2

NEEDS_NATIVE = pytest.mark.skipif(not native.available(),
                                  reason=f"native kernels not built: {native.why_unavailable()}")
IMPL_PARAMS = ["shift_add", pytest.param("native", marks=NEEDS_NATIVE)]
# (batch, H, W, C): odd sizes; C = 13 (scalar tail), 40 (32-wide + 8-wide), 64 (32-wide);
# the last one is large enough to be split across threads.
SHAPES = [(1, 7, 9, 13), (2, 11, 6, 40), (2, 33, 17, 64)]


def _data(shape, k, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=shape).astype(np.float32))
    w = jnp.asarray(rng.normal(size=(k, k, 1, shape[-1])).astype(np.float32) / k)
    return x, w


@pytest.mark.parametrize("impl", IMPL_PARAMS)
@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_gradients_match_lax(impl, k, stride, shape):
    x, w = _data(shape, k)
    ref_fn = lambda x, w: IMPLS["lax"](x, w, stride, k // 2)
    fn = jax.jit(lambda x, w: depthwise_conv2d(x, w, stride, impl=impl))
    y_ref, vjp_ref = jax.vjp(ref_fn, x, w)
    y, vjp = jax.vjp(fn, x, w)
    assert y.shape == y_ref.shape and y.dtype == jnp.float32
    assert rel_l2(y, y_ref) < 1e-6
    g = jnp.asarray(np.random.default_rng(1).normal(size=y.shape).astype(np.float32))
    for got, want in zip(vjp(g), vjp_ref(g)):
        assert got.shape == want.shape
        assert rel_l2(got, want) < 1e-5


@pytest.mark.parametrize("impl", IMPL_PARAMS)
@pytest.mark.parametrize("act", [None, "relu", "relu6", "hswish", "gelu"])
def test_fused_bias_activation(impl, act):
    x, w = _data((2, 9, 10, 40), 3, seed=2)
    bias = jnp.asarray(np.random.default_rng(3).normal(size=(40,)).astype(np.float32))

    def ref_fn(x, w, b):
        return get_act(act)(IMPLS["lax"](x, w, 1, 1) + b)

    fn = jax.jit(lambda x, w, b: depthwise_conv2d(x, w, 1, impl=impl, bias=b, act=act))
    y_ref, vjp_ref = jax.vjp(ref_fn, x, w, bias)
    y, vjp = jax.vjp(fn, x, w, bias)
    assert rel_l2(y, y_ref) < 1e-6
    g = jnp.asarray(np.random.default_rng(4).normal(size=y.shape).astype(np.float32))
    for got, want in zip(vjp(g), vjp_ref(g)):
        assert rel_l2(got, want) < 1e-5


@pytest.mark.parametrize("impl", IMPL_PARAMS)
@pytest.mark.parametrize("in_act,stride", [("hswish", 1), ("gelu", 2), (None, 1), ("silu", 2)])
def test_prologue(impl, in_act, stride):
    # act(conv(in_act(x * a + s)) + bias): the BatchNorm + activation of the layer before,
    # applied on read (silu is not a native activation: it runs in JAX first).
    x, w = _data((2, 10, 9, 48), 3, seed=6)
    rng = np.random.default_rng(7)
    a, s, bias = (jnp.asarray(rng.normal(size=(48,)).astype(np.float32)) for _ in range(3))

    def ref_fn(x, w, b, a, s):
        u = get_act(in_act)(x * a + s)
        return get_act("relu6")(IMPLS["lax"](u, w, stride, 1) + b)

    fn = jax.jit(lambda x, w, b, a, s: depthwise_conv2d(
        x, w, stride, impl=impl, bias=b, act="relu6", prologue=(a, s, in_act)))
    y_ref, vjp_ref = jax.vjp(ref_fn, x, w, bias, a, s)
    y, vjp = jax.vjp(fn, x, w, bias, a, s)
    assert rel_l2(y, y_ref) < 1e-6
    g = jnp.asarray(rng.normal(size=y.shape).astype(np.float32))
    for got, want in zip(vjp(g), vjp_ref(g)):
        assert rel_l2(got, want) < 1e-5


@NEEDS_NATIVE
def test_native_takes_bfloat16_and_returns_its_dtype():
    x, w = _data((1, 8, 8, 32), 5, seed=5)
    y = depthwise_conv2d(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), 1, impl="native")
    assert y.dtype == jnp.bfloat16
    ref = IMPLS["lax"](x.astype(jnp.bfloat16).astype(jnp.float32),
                       w.astype(jnp.bfloat16).astype(jnp.float32), 1, 2)
    assert rel_l2(y.astype(jnp.float32), ref) < 1e-2


def test_impl_selection_and_errors():
    assert default_impl() in IMPLS
    with depthwise_impl("lax"):
        assert default_impl() == "lax"
    with pytest.raises(ValueError, match="unknown depthwise implementation"):
        set_depthwise_impl("nope")
    x, w = _data((1, 4, 4, 8), 3)
    with pytest.raises(ValueError, match="does not fit"):
        depthwise_conv2d(x, w[..., :4])


@pytest.mark.parametrize("cin,cout", [(16, 48), (48, 16)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_pointwise_gradients_match_autodiff(cin, cout, dtype):
    """The CPU 1x1 convolution's own VJP (weight gradient as a contiguous matmul) gives
    autodiff's gradients of the plain einsum, whichever operand it transposes."""
    kx, kw, kr = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (2, 9, 7, cin)).astype(dtype)
    w = (jax.random.normal(kw, (1, 1, cin, cout)) * cin ** -0.5).astype(dtype)
    r = jax.random.normal(kr, (2, 9, 7, cout))

    def plain(x, w):
        return jnp.einsum("bhwi,io->bhwo", x, w[0, 0], preferred_element_type=jnp.float32)

    got = jax.jit(jax.grad(lambda x, w: (pointwise(x, w) * r).sum(), (0, 1)))(x, w)
    want = jax.jit(jax.grad(lambda x, w: (plain(x, w) * r).sum(), (0, 1)))(x, w)
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    for g, e in zip(got, want):
        assert g.dtype == e.dtype and g.shape == e.shape
        assert rel_l2(np.asarray(g, np.float32), np.asarray(e, np.float32)) < tol
    np.testing.assert_array_equal(pointwise(x, w), plain(x, w))
