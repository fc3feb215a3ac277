"""Run an SR model on an image of any size, in overlapping tiles when it is large.

Tiles are all the same size (the last ones are shifted back inside the image), so one
compiled program serves every tile. Where tiles overlap, their outputs are blended with
weights that are 0 within a quarter of the overlap from a tile's inner edge and rise
linearly to 1 across the next half: a pixel never takes its value from near a tile's cut
edge, and there is no visible seam. For any model whose receptive field reaches at most
`overlap / 4` LR pixels the result is exactly the untiled one; EfficientViT's attention is
global, so its tiled output differs slightly (docs/sr.md gives the measured difference).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Fn = Callable[[np.ndarray], np.ndarray]


def _starts(n: int, tile: int, step: int) -> list[int]:
    if n <= tile:
        return [0]
    starts = list(range(0, n - tile, step)) + [n - tile]
    return sorted(set(starts))


def _ramp(n: int, lo_inner: bool, hi_inner: bool, overlap: int, s: int) -> np.ndarray:
    """Blend weights `[n * s]` along one axis of a tile's output (inner edges ramp)."""
    d = np.arange(n * s, dtype=np.float64) / s + 0.5 / s   # distance from the low edge, LR px
    w = np.ones(n * s)
    q = overlap / 4.0
    ramp = lambda dist: np.clip((dist - q) / max(overlap / 2.0, 1e-9), 0.0, 1.0)  # noqa: E731
    if lo_inner:
        w = np.minimum(w, ramp(d))
    if hi_inner:
        w = np.minimum(w, ramp(n - d))
    return w


def tiled_upscale(fn: Fn, lr: np.ndarray, scale: int, tile: int | None = 256,
                  overlap: int = 32) -> np.ndarray:
    """`fn` over `[h, w, 3]` float, in tiles of `tile` x `tile` LR pixels overlapping by
    `overlap`; `fn` maps `[1, th, tw, 3]` -> `[1, s*th, s*tw, 3]`. Returns float32
    `[s*h, s*w, 3]`. `tile=None` (or an image that fits in one tile) runs `fn` once."""
    h, w = lr.shape[:2]
    if tile is None or (h <= tile and w <= tile):
        return np.asarray(fn(lr[None]))[0].astype(np.float32)
    if overlap < 4 or overlap >= tile:
        raise ValueError(f"overlap must be in [4, tile={tile}), got {overlap}")
    th, tw = min(tile, h), min(tile, w)
    out = np.zeros((h * scale, w * scale, lr.shape[2]), np.float64)
    weight = np.zeros((h * scale, w * scale, 1), np.float64)
    ys, xs = _starts(h, th, th - overlap), _starts(w, tw, tw - overlap)
    for y in ys:
        wy = _ramp(th, y > 0, y + th < h, overlap, scale)
        for x in xs:
            wx = _ramp(tw, x > 0, x + tw < w, overlap, scale)
            part = np.asarray(fn(lr[None, y:y + th, x:x + tw]))[0].astype(np.float64)
            wgt = (wy[:, None] * wx[None, :])[..., None]
            out[y * scale:(y + th) * scale, x * scale:(x + tw) * scale] += part * wgt
            weight[y * scale:(y + th) * scale, x * scale:(x + tw) * scale] += wgt
    return (out / weight).astype(np.float32)


def load_sr(name: str, weights: str | os.PathLike) -> tuple[Any, Any]:
    """(model, variables) of an SR zoo model from a weights dir or training workdir."""
    import evit_jax
    if evit_jax.model_info(name).task != "sr":
        raise ValueError(f"{name} is not an SR model; SR models: "
                         f"{', '.join(evit_jax.list_models('efficientvit-sr*'))}")
    variables = evit_jax.load_variables(weights, model=name)  # checks the recorded model
    return evit_jax.create_model(name), variables


def make_upscaler(model: Any, variables: Any) -> Fn:
    """`[1, h, w, 3]` float in [0, 1] -> `[1, s*h, s*w, 3]` float32, jitted per shape."""
    variables = jax.tree.map(jnp.asarray, variables)
    apply = jax.jit(model.apply)
    return lambda x: np.asarray(apply(variables, jnp.asarray(x, jnp.float32)))
