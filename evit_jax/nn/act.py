"""Activations by the reference's names (`relu`, `relu6`, `hswish`, `gelu`, `silu`)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from evit_jax.nn.forms import exporting

Array = jax.Array


def _relu6(x: Array) -> Array:
    return jnp.clip(x, 0, 6)


def _hswish(x: Array) -> Array:
    if exporting():
        # jax2onnx replaces `jax.nn.hard_swish` while tracing with one HardSwish node,
        # which ONNX Runtime fuses into the preceding Conv; it rounds as x * (r / 6).
        return jax.nn.hard_swish(x)
    # x * relu6(x + 3) / 6, rounded as the reference's Hardswish.
    return x * jnp.clip(x + 3, 0, 6) / 6


def _gelu_tanh(x: Array) -> Array:
    # EfficientViT's "gelu" is PyTorch's GELU(approximate="tanh").
    return jax.nn.gelu(x, approximate=True)


def _gelu_exact(x: Array) -> Array:
    # segment-anything's prompt encoder / mask decoder use the exact (erf) GELU.
    return jax.nn.gelu(x, approximate=False)


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": jax.nn.relu,
    "relu6": _relu6,
    "hswish": _hswish,
    "gelu": _gelu_tanh,
    "gelu_exact": _gelu_exact,
    "silu": jax.nn.silu,
}


def get_act(name: str | None) -> Callable[[Array], Array]:
    """The activation called `name`; `None` is the identity."""
    if name is None:
        return lambda x: x
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}") from None
