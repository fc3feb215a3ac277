"""Train state, its sharding over the device mesh, and initialisation (fresh or fine-tuning).

The mesh has axes ("data", "model"). The batch is split over "data"; parameters are
replicated, except that with a "model" axis larger than 1 the output-channel axis of the
big kernels is split over it (XLA inserts the collectives), which is how larger models fit.
"""

from __future__ import annotations

import re
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from evit_jax.cli import UserError
from evit_jax.zoo import init_variables

from .optim import path_str


@flax.struct.dataclass
class TrainState:
    """Everything a step changes. `ema` is {"params", "batch_stats"} or None; `rng` is a raw
    uint32 key (per-step keys are folded in from `step`)."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    ema: Any
    rng: jax.Array

    def variables(self, ema: bool = True) -> dict[str, Any]:
        """Inference variables (the EMA ones when present and asked for)."""
        if ema and self.ema is not None:
            return self.ema
        return {"params": self.params, "batch_stats": self.batch_stats}


def make_mesh(model_parallel: int = 1) -> Mesh:
    devs = np.array(jax.devices())
    if len(devs) % model_parallel:
        raise UserError(f"{len(devs)} devices cannot be split into model groups of "
                        f"{model_parallel} (config.model_parallel)")
    return Mesh(devs.reshape(-1, model_parallel), ("data", "model"))


def leaf_sharding(mesh: Mesh, x: Any, min_size: int = 2**18) -> NamedSharding:
    """Replicated, or split on the last axis over "model" for big divisible kernels."""
    m = mesh.shape["model"]
    shape = getattr(x, "shape", ())
    if m > 1 and len(shape) >= 2 and shape[-1] % m == 0 and np.prod(shape) >= min_size:
        return NamedSharding(mesh, P(*([None] * (len(shape) - 1)), "model"))
    return NamedSharding(mesh, P())


def merge_pretrained(fresh: dict, loaded: dict, include: str = "",
                     exclude: tuple[str, ...] = ()) -> tuple[dict, list[str]]:
    """Take every loaded leaf whose path matches `include` (all if empty) into `fresh`;
    leaves matching `exclude` are left fresh when their shapes differ. Raises listing every
    mismatch otherwise. Returns (merged, report lines)."""
    flat_f = {path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(fresh)[0]}
    flat_l = {path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(loaded)[0]}
    inc = re.compile(include) if include else None
    excl = [re.compile(e) for e in exclude]
    wanted = lambda k: inc is None or bool(inc.search(k))
    excluded = lambda k: any(e.search(k) for e in excl)
    errors, kept_fresh, taken = [], [], {}
    for k, v in flat_f.items():
        if not wanted(k):
            continue
        if k not in flat_l:
            (kept_fresh if excluded(k) else errors).append(f"missing in checkpoint: {k}")
        elif np.shape(flat_l[k]) != np.shape(v):
            msg = f"shape {np.shape(flat_l[k])} in checkpoint vs {np.shape(v)} in model: {k}"
            (kept_fresh if excluded(k) else errors).append(msg)
        else:
            taken[k] = flat_l[k]
    unused = [k for k in flat_l if wanted(k) and k not in flat_f]
    errors += [f"not in the model: {k}" for k in unused if not excluded(k)]
    if errors:
        raise UserError("pretrained weights do not fit the model (use config.init_exclude / "
                         "init_include to leave parts fresh):\n  " + "\n  ".join(errors))
    merged = jax.tree_util.tree_map_with_path(
        lambda p, v: jnp.asarray(taken.get(path_str(p), v), v.dtype), fresh)
    return merged, [f"loaded {len(taken)} arrays"] + [f"left fresh: {m}" for m in kept_fresh]


def load_pretrained(path: str, model: str | None = None) -> dict:
    """{"params", "batch_stats"} to start from: anything `evit_jax.load_variables` reads (a
    training workdir, converted weights, a checkpoint file). A checkpoint file is converted
    as `model` (the config's); for another architecture convert it first (evit-convert)."""
    import os

    import evit_jax
    return evit_jax.load_variables(path, model=model if os.path.isfile(path) else None)


def place(tree: Any, sharding: Any) -> Any:
    """Global arrays from host numpy values that every host holds in full."""
    def put(a, sh):
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, sh, lambda idx: a[idx])
    return jax.tree.map(put, tree, sharding)


def init_state(config: Any, model: Any, tx: Any, mesh: Mesh) -> tuple[TrainState, Any]:
    """(fresh state placed on the mesh, its sharding tree). With `config.init_from`, the
    parameters and BN statistics come from there (see `merge_pretrained`)."""
    key = jax.random.PRNGKey(config.seed)
    # Host-side numpy init (evit_jax.zoo): every host computes the same values.
    variables = init_variables(model, jax.random.fold_in(key, 1))
    variables.setdefault("batch_stats", {})  # models without BatchNorm (SR) have none

    def fresh(v: dict) -> TrainState:
        params, bstats = v["params"], v.get("batch_stats", {})
        ema = {"params": params, "batch_stats": bstats} if config.ema_decay > 0 else None
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=bstats,
                          opt_state=tx.init(params), ema=ema,
                          rng=jax.random.key_data(jax.random.fold_in(key, 2)))

    abstract = jax.eval_shape(fresh, variables)
    sharding = jax.tree.map(lambda x: leaf_sharding(mesh, x), abstract)
    placed = place(variables, {"params": sharding.params, "batch_stats": sharding.batch_stats})
    state = jax.jit(fresh, out_shardings=sharding)(placed)
    if config.init_from:
        loaded = load_pretrained(config.init_from, config.model)
        fresh_vars = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
        merged, report = merge_pretrained(fresh_vars, loaded, config.init_include,
                                          tuple(config.init_exclude))
        if jax.process_index() == 0:
            print(f"init_from {config.init_from}: " + "; ".join(report), flush=True)

        def with_weights(s: TrainState, v: dict) -> TrainState:
            ema = v if s.ema is not None else None
            return s.replace(params=v["params"], batch_stats=v["batch_stats"],
                             opt_state=tx.init(v["params"]), ema=ema)
        state = jax.jit(with_weights, out_shardings=sharding)(state, merged)
    return state, sharding
