"""Re-estimate BatchNorm statistics before evaluation, as the reference recipe does.

The reference (`reset_bn`) runs a fixed subset of training images (train augmentation, at
the evaluation resolution) through the model with every BatchNorm normalising by the
current batch's statistics, and replaces each running mean / variance by the average over
batches of the batch mean / (biased) variance. Here a method interceptor does the same
without touching the model code: it records each BatchNorm2d input's statistics (`sow`) and
lets the layer normalise with them.
"""

from __future__ import annotations

import copy
from typing import Any

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from evit_jax.nn.norm import BatchNorm2d

from . import input_pipeline
from .datasets.sources import open_source
from .optim import path_str


def _record_bn(next_fun, args, kwargs, context):
    if isinstance(context.module, BatchNorm2d) and context.method_name == "__call__":
        x = args[0]
        xf = x.astype(jnp.float32)
        axes = tuple(range(x.ndim - 1))
        mean = xf.mean(axes)
        context.module.sow("intermediates", "bn_stats", (mean, jnp.square(xf - mean).mean(axes)))
        return next_fun(x, True)  # normalise with this batch's statistics
    return next_fun(*args, **kwargs)


def batch_statistics(model: Any, variables: dict, images: jax.Array) -> dict[str, Any]:
    """{BN path: (mean, biased var)} of one batch `[B, H, W, 3]`."""
    with nn.intercept_methods(_record_bn):
        _, state = model.apply(variables, images, mutable=["batch_stats", "intermediates"])
    flat = jax.tree_util.tree_flatten_with_path(
        state["intermediates"], is_leaf=lambda x: isinstance(x, tuple) and len(x) == 2)[0]
    return {path_str(p).rsplit("/bn_stats", 1)[0]: v for p, v in flat}


def reset_bn(config: Any, model: Any, variables: dict, pid: int = 0, nproc: int = 1) -> dict:
    """`variables` with every BatchNorm's running statistics re-estimated on
    `config.reset_bn_examples` training images (this host's share of them)."""
    cfg = copy.deepcopy(config)
    with cfg.unlocked():
        cfg.input.train_sizes = (config.input.eval_size,)
        cfg.seed = config.seed + 12345  # a fixed subset, apart from the training stream
    src, decode, _ = open_source(cfg.data, cfg.data.train_split, cfg.task)
    n = min(config.reset_bn_examples, len(src))
    bs = max(config.reset_bn_batch_size // nproc, 1)
    fn = input_pipeline.train_transform(cfg, decode)
    ds = grain.MapDataset.source(src).shuffle(seed=cfg.seed)[:n].map_with_index(fn)
    ds = ds.batch(bs, drop_remainder=False)[pid::nproc]

    from .evaluate import local_copy
    mesh = Mesh(np.array(jax.local_devices()), ("batch",))
    host_vars = local_copy(variables)
    dev_vars = jax.device_put(host_vars, NamedSharding(mesh, P()))
    stats_fn = jax.jit(lambda v, x: batch_statistics(model, v, x))
    sums: dict[str, list] = {}
    count = 0
    for batch in ds:
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
    if nproc > 1:
        from .sync import barrier
        barrier("bn_stats_done")
        packed = np.asarray(multihost_utils.process_allgather(packed)).sum(0)
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
