"""Run a zoo SR model on an image of any size: in one call when it fits in a tile, else
stage by stage in tiles (`evit_jax.sr.tiled`), with the same result to float32 rounding."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from evit_jax.errors import UserError
from evit_jax.sr.tiled import TiledSR

Fn = Callable[[np.ndarray], np.ndarray]


def load_sr(name: str, weights: str | os.PathLike) -> tuple[Any, Any]:
    """(model, variables) of an SR zoo model from a weights dir or training workdir."""
    import evit_jax
    if evit_jax.model_info(name).task != "sr":
        raise UserError(f"{name} is not an SR model; SR models: "
                        f"{', '.join(evit_jax.list_models('efficientvit-sr*'))}")
    variables = evit_jax.load_variables(weights, model=name)  # checks the recorded model
    return evit_jax.create_model(name), variables


def make_upscaler(model: Any, variables: Any) -> Fn:
    """`[N, h, w, 3]` float in [0, 1] -> `[N, s*h, s*w, 3]` float32, jitted per shape."""
    variables = jax.tree.map(jnp.asarray, variables)
    apply = jax.jit(model.apply)
    return lambda x: np.asarray(apply(variables, jnp.asarray(x, jnp.float32)))


def make_sr(model: Any, variables: Any, tile: int | None = 512) -> Fn:
    """`[h, w, 3]` float in [0, 1] -> `[s*h, s*w, 3]` float32.

    Images with both sides <= `tile` LR pixels run in one call; larger ones in tiles of
    `tile` (`TiledSR`: exact, peak memory bounded by two feature maps and one tile's
    temporaries). `tile=None` never tiles.
    """
    whole = make_upscaler(model, variables)
    tiled = TiledSR(model, variables, tile) if tile else None

    def sr(lr: np.ndarray) -> np.ndarray:
        h, w = lr.shape[:2]
        fits = tiled is None or (h <= tile and w <= tile)
        return (whole if fits else tiled)(np.asarray(lr, np.float32)[None])[0]
    return sr
