"""Parameter initialisers that work both inside Flax (jax) and on the host (numpy).

Compiling a model's `init` means compiling one random-number program per parameter, and
XLA:CPU takes ~0.3-0.5 s for each: about a minute for EfficientViT-B0, longer for the large
models. So every parameter in evit_jax is declared through `declare_param` / `declare_stat`
with an `Init` spec: under `model.init` it runs in jax as usual, and `evit_jax.init_variables`
instead records the specs while tracing shapes (`jax.eval_shape`, ~1 s) and fills each leaf
with numpy, seeded by (seed, parameter path): deterministic and compile-free.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Init:
    """An initialiser by kind: `zeros`, `ones`, `constant` (value), `normal` (std),
    `trunc_normal` (std; truncated at +-2 std), `uniform` (low, high)."""

    kind: str
    std: float = 1.0
    value: float = 0.0
    low: float = 0.0
    high: float = 1.0

    def __call__(self, key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32):
        if self.kind == "zeros":
            return jnp.zeros(shape, dtype)
        if self.kind == "ones":
            return jnp.ones(shape, dtype)
        if self.kind == "constant":
            return jnp.full(shape, self.value, dtype)
        if self.kind == "normal":
            return self.std * jax.random.normal(key, shape, dtype)
        if self.kind == "trunc_normal":
            return self.std * jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype)
        if self.kind == "uniform":
            return jax.random.uniform(key, shape, dtype, self.low, self.high)
        raise ValueError(f"unknown initialiser kind {self.kind!r}")

    def numpy(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        if self.kind in ("zeros", "ones", "constant"):
            fill = {"zeros": 0.0, "ones": 1.0}.get(self.kind, self.value)
            return np.full(shape, fill, np.float32)
        if self.kind == "normal":
            return (self.std * rng.standard_normal(shape)).astype(np.float32)
        if self.kind == "trunc_normal":
            x = rng.standard_normal(math.prod(shape))
            bad = np.abs(x) > 2.0
            while bad.any():  # resample the tails
                x[bad] = rng.standard_normal(int(bad.sum()))
                bad = np.abs(x) > 2.0
            return (self.std * x).reshape(shape).astype(np.float32)
        if self.kind == "uniform":
            return rng.uniform(self.low, self.high, shape).astype(np.float32)
        raise ValueError(f"unknown initialiser kind {self.kind!r}")


ZEROS, ONES = Init("zeros"), Init("ones")
# The reference trainer's init of conv and linear weights (biases 0, norms 1 / 0).
TRUNC_NORMAL_002 = Init("trunc_normal", std=0.02)

_recorder: contextvars.ContextVar[dict[Path, Init] | None] = contextvars.ContextVar(
    "evit_init_recorder", default=None)


@contextlib.contextmanager
def recording() -> Iterator[dict[Path, Init]]:
    """Collect `{("params" | "batch_stats", *module_path, name): Init}` of declared leaves."""
    specs: dict[Path, Init] = {}
    token = _recorder.set(specs)
    try:
        yield specs
    finally:
        _recorder.reset(token)


def _record(collection: str, module: nn.Module, name: str, init: Init) -> None:
    specs = _recorder.get()
    if specs is not None:
        specs[(collection, *module.scope.path, name)] = init


def declare_param(module: nn.Module, name: str, init: Init, shape: tuple[int, ...]) -> jax.Array:
    """`module.param(name, init, shape, float32)`, with the spec recorded for host init."""
    _record("params", module, name, init)
    return module.param(name, init, shape, jnp.float32)


def declare_stat(module: nn.Module, name: str, init: Init, shape: tuple[int, ...]):
    """A float32 `batch_stats` variable (e.g. BN running mean), recorded for host init."""
    _record("batch_stats", module, name, init)
    return module.variable("batch_stats", name, lambda: init(None, shape, jnp.float32))
