"""What the hosts of a multi-host run share: barriers that tolerate slow hosts, host copies.

On CPU, JAX's cross-process collectives run on gloo, which gives up when a peer is more than
~30 s late; a host that is still compiling (tens of seconds on a busy CPU) is that late. So
before the first run of every newly compiled program, and before each host-side exchange,
the hosts meet at a barrier of JAX's coordination service, which waits as long as needed.
Orbax is told to use the same kind of barrier. Single-process runs skip all of this.
"""

from __future__ import annotations

import itertools
from typing import Any

import jax
import numpy as np

TIMEOUT_MS = 60 * 60 * 1000  # compiling a big model on a busy host can take many minutes
_counter = itertools.count()


def barrier(name: str) -> None:
    """Wait until every process got here (no-op with one process)."""
    if jax.process_count() == 1:
        return
    from jax._src import distributed  # the coordination-service client JAX created
    client = distributed.global_state.client
    if client is None:
        raise RuntimeError("several JAX processes but no jax.distributed client")
    client.wait_at_barrier(f"evit_{name}_{next(_counter)}", TIMEOUT_MS)


def use_distributed_barriers_in_orbax() -> None:
    """Make orbax's host syncs coordination-service barriers (they wait; gloo's give up)."""
    if jax.process_count() == 1:
        return
    import orbax.checkpoint  # noqa: F401 - defines the flag
    from absl import flags
    flags.FLAGS.experimental_orbax_use_distributed_barrier = True


def local_copy(tree: Any) -> Any:
    """Host numpy copy of (possibly multi-host) arrays."""
    from jax.experimental import multihost_utils

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if x.is_fully_replicated:
                return np.asarray(x.addressable_data(0))
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)
    return jax.tree.map(one, tree)


def sum_over_hosts(values: np.ndarray, name: str) -> np.ndarray:
    """`values` summed over the hosts (after a barrier: hosts finish their shares of an
    evaluation at different times); `values` itself with one host."""
    if jax.process_count() == 1:
        return values
    from jax.experimental import multihost_utils
    barrier(name)
    return np.asarray(multihost_utils.process_allgather(values)).sum(0)


class Compiled:
    """`jax.jit` wrapper that compiles each new input shape ahead of time, then syncs the
    hosts, so that no host reaches the program's collectives while another still compiles."""

    def __init__(self, jitted, name: str):
        self.jitted, self.name, self.cache = jitted, name, {}

    def __call__(self, *args):
        key = jax.tree.map(lambda x: (getattr(x, "shape", None), str(getattr(x, "dtype", ""))),
                           args)
        key = str(key)
        fn = self.cache.get(key)
        if fn is None:
            fn = self.cache[key] = self.jitted.lower(*args).compile()
            barrier(f"{self.name}_compiled")
        return fn(*args)
