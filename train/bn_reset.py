"""Re-estimate BatchNorm statistics before evaluation, as the reference recipe does.

The reference (`reset_bn`) runs a fixed subset of training images (train augmentation, at
the evaluation resolution) through the model with every BatchNorm normalising by the
current batch's statistics, and replaces each running mean / variance by the average over
batches of the batch mean / (biased) variance. Here a method interceptor does the same
without touching the model code: it records each BatchNorm2d input's statistics (`sow`) and
lets the layer normalise with them (layers with a fused inference kernel take their training
path, so that no BatchNorm is skipped).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from evit_jax.nn.norm import BatchNorm2d

from .optim import path_str
from .sync import local_copy, sum_over_hosts


def _record_bn(next_fun, args, kwargs, context):
    if isinstance(context.module, BatchNorm2d) and context.method_name == "__call__":
        x = args[0]
        xf = x.astype(jnp.float32)
        axes = tuple(range(x.ndim - 1))
        mean = xf.mean(axes)
        context.module.sow("intermediates", "bn_stats", (mean, jnp.square(xf - mean).mean(axes)))
        return next_fun(x, True)  # normalise with this batch's statistics
    if hasattr(context.module, "runs_fused") and context.method_name == "__call__":
        # In inference a depthwise conv + BN (ConvLayer) or a whole inverted bottleneck
        # (MBConv) may run as one native kernel that never calls its BatchNorms; their
        # training path calls them (and is the same computation otherwise, no dropout).
        return next_fun(args[0], True)
    return next_fun(*args, **kwargs)


def batch_statistics(model: Any, variables: dict, images: jax.Array) -> dict[str, Any]:
    """{BN path: (mean, biased var)} of one batch `[B, H, W, 3]`."""
    with nn.intercept_methods(_record_bn):
        _, state = model.apply(variables, images, mutable=["batch_stats", "intermediates"])
    flat = jax.tree_util.tree_flatten_with_path(
        state["intermediates"], is_leaf=lambda x: isinstance(x, tuple) and len(x) == 2)[0]
    return {path_str(p).rsplit("/bn_stats", 1)[0]: v for p, v in flat}


def reset_bn(model: Any, variables: dict, batches: Any) -> dict:
    """`variables` with every BatchNorm's running statistics replaced by their average over
    `batches` (this host's share of a fixed set of training images, each batch
    {"image": [B, H, W, 3], ...}; the average is over every host's images)."""
    mesh = Mesh(np.array(jax.local_devices()), ("batch",))
    host_vars = local_copy(variables)
    dev_vars = jax.device_put(host_vars, NamedSharding(mesh, P()))
    stats_fn = jax.jit(lambda v, x: batch_statistics(model, v, x))
    sums: dict[str, list] = {}
    count = 0
    for batch in batches:
        images = batch["image"]
        out = jax.device_get(stats_fn(dev_vars, images))
        w = images.shape[0]
        for k, (m, v) in out.items():
            acc = sums.setdefault(k, [0.0, 0.0])
            acc[0] = acc[0] + w * np.asarray(m, np.float64)
            acc[1] = acc[1] + w * np.asarray(v, np.float64)
        count += w
    keys = sorted(sums)
    packed = np.concatenate([np.concatenate([sums[k][0], sums[k][1]]) for k in keys] + [[count]])
    packed = sum_over_hosts(packed, "bn_stats_done")
    total = max(packed[-1], 1)
    avg, i = {}, 0
    for k in keys:
        c = sums[k][0].shape[0]
        avg[k] = (packed[i:i + c] / total, packed[i + c:i + 2 * c] / total)
        i += 2 * c

    def replace(path, x):
        s = path_str(path)
        bn, leaf = s.rsplit("/", 1)
        return np.asarray(avg[bn][0 if leaf == "mean" else 1], np.float32).reshape(x.shape)

    new_stats = jax.tree_util.tree_map_with_path(replace, host_vars["batch_stats"])
    return {"params": host_vars["params"], "batch_stats": new_stats}
