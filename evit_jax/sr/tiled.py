"""Exact tiled inference for the EfficientViT SR models: the same output as one whole-image
call (to float32 rounding), in a fraction of its memory.

Independent overlapping tiles cannot be exact for these models: LiteMLA's attention is global.
But ReLU linear attention sees the rest of the image only through two sums over all tokens,
per head `sum_j k_j v_j^T` `[d, d]` and `sum_j k_j` `[d]`, and sums add over tiles. So the
network runs stage by stage over the whole image, each stage tile by tile:

  1. stem + fold          x windows          -> body `[N, h/2, w/2, C]` (host array)
  2. per EfficientViT block:
     a. q/k/v + multi-scale aggregation per window; accumulate both sums over the tile
        interiors (a mask, so the program's shapes stay fixed)
     b. q again, attention with the global sums, proj, + x, MBConv   -> next body array
  3. tail: body_out + (stem + fold recomputed) -> upsampler, + bicubic  -> output tiles

Every stage is local given the sums, so a tile's output is exact when its window reaches
`halo` feature pixels past it, `halo` >= the stage's receptive radius (the padding artefacts
at a window's cut edge reach no further). Windows have one fixed shape per stage and are
shifted back inside the image at its borders: a window that ends at the image border sees
exactly the zero padding the whole-image run sees, and each stage compiles once.

Memory: two body arrays (`C x h/2 x w/2` float32: in and out of a block) and the output on
the host, plus one window's temporaries on the device, instead of the whole image's largest
activations (the attention's q/k/v, the MBConv's 4x expansion, full-resolution stem
features). Cost: q/k/v are computed twice per block and windows overlap (about 1.3x the
whole-image MACs at tile 256).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from evit_jax.errors import UserError
from evit_jax.models.sr import EfficientViTSR, pixel_shuffle, space_to_depth
from evit_jax.nn.blocks import MBConv, ResidualBlock
from evit_jax.nn.conv import Conv2d, ConvLayer
from evit_jax.nn.resize import resize

Array = jax.Array
_HI = jax.lax.Precision.HIGHEST


def windows(n: int, tile: int, halo: int) -> tuple[int, list[tuple[int, int, int]]]:
    """Tiles of one axis of length `n`: (window length, [(t0, t1, start)]).

    Tile `[t0, t1)` is computed inside window `[start, start + length)`; each side of the
    window either lies `halo` or more beyond the tile or is the image border.
    """
    length = min(n, tile + 2 * halo)
    if length == n:
        return n, [(0, n, 0)]
    return length, [(t0, min(t0 + tile, n), min(max(t0 - halo, 0), n - length))
                    for t0 in range(0, n, tile)]


def _grid(hf: int, wf: int, tile: int, halo: int) -> tuple[tuple[int, int], Iterator]:
    """Window shape and the 2-D tiles: ((t0, t1, s) along rows, the same along columns)."""
    lh, rows = windows(hf, tile, halo)
    lw, cols = windows(wf, tile, halo)
    return (lh, lw), ((r, c) for r in rows for c in cols)


def _held_bytes(compiled: Any) -> int:
    """Arguments + outputs + temporaries of a compiled program (XLA's memory analysis)."""
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)


class TiledSR:
    """`model.apply(variables, lr)` of an `EfficientViTSR`, stage by stage in tiles.

    Args:
      model: an `EfficientViTSR` (any width, depth, scale).
      variables: its variables (`{"params": ...}`).
      tile: tile side in LR pixels (even; the blocks see `tile / 2` feature pixels).
    Call with `[N, h, w, 3]` float in [0, 1] (numpy); returns float32 `[N, s h, s w, 3]`.
    """

    def __init__(self, model: EfficientViTSR, variables: Any, tile: int = 256):
        if not isinstance(model, EfficientViTSR):
            raise TypeError(f"TiledSR runs EfficientViTSR models, not {type(model).__name__}")
        if tile < 2 or tile % 2:
            raise UserError(f"tile must be an even number of LR pixels >= 2, got {tile}")
        self.model, self.tile_f = model, tile // 2
        self.params = jax.tree.map(jnp.asarray, variables["params"])
        cfg = model.backbone_cfg
        r = max(cfg.scales) // 2  # reach of the aggregation convs, feature pixels
        # Receptive radius of each stage in feature pixels (a full-resolution 3x3 conv
        # reaches 1/2): stem 1 full px; q/k/v r; + MBConv's 3x3; body_out 3x3 then two
        # full-resolution 3x3 convs after the unfold (the recomputed stem and the bicubic
        # skip's 2 LR px reach less).
        self.halo = {"stem": 1, "kv": r, "block": r + 1, "tail": 2}
        self._stem = jax.jit(self._stem_fold)
        self._kv = jax.jit(self._kv_sums)
        self._block = jax.jit(self._attend_mlp)
        self._tail = jax.jit(self._tail_fn)

    # ----------------------------------------------------------------- per-window programs
    def _conv(self, p: Any, x: Array, features: int, k: int, act: str | None = None) -> Array:
        """One of the model's biased, norm-free ConvLayers, by its parameters."""
        layer = ConvLayer(features, k, use_bias=True, norm=None, act=act,
                          dtype=self.model.dtype)
        return layer.apply({"params": p}, x)

    def _stem_fold(self, p: Any, x: Array) -> Array:
        """x window `[N, 2a, 2b, 3]` -> the blocks' input `[N, a, b, C]` (float32)."""
        cfg = self.model.backbone_cfg
        shallow = self._conv(p["stem"], x - 0.5, cfg.stem_width, 3)
        return self._conv(p["fold"], space_to_depth(shallow, 2), cfg.width, 1).astype(
            jnp.float32)

    def _qkv(self, p: Any, x: Array) -> Array:
        """LiteMLA's q/k/v with the multi-scale branches, as `LiteMLA.__call__` builds them:
        `[N, a, b, C]` -> float32 `[N, a * b, heads', 3, dim]` (tokens, heads' = heads *
        (1 + len(scales)), q|k|v, d)."""
        cfg, dt = self.model.backbone_cfg, self.model.dtype
        heads = x.shape[-1] // cfg.dim
        total = heads * cfg.dim
        qkv = ConvLayer(3 * total, 1, use_bias=False, norm=None, act=None, dtype=dt).apply(
            {"params": p["qkv"]}, x)
        branches = [qkv]
        for i, k in enumerate(cfg.scales):
            a = Conv2d(3 * total, k, groups=3 * total, dtype=dt).apply(
                {"params": p[f"aggreg_{i}_0"]}, qkv)
            a = Conv2d(3 * total, 1, groups=3 * heads, dtype=dt).apply(
                {"params": p[f"aggreg_{i}_1"]}, a)
            branches.append(a)
        n, a_, b_, c = qkv.shape
        t = jnp.concatenate(branches, -1).astype(jnp.float32)
        return t.reshape(n, a_ * b_, -1, 3, cfg.dim)  # [N, tokens, heads', q|k|v, d]

    def _kv_sums(self, p: Any, x: Array, rows: Array, cols: Array) -> tuple[Array, Array]:
        """Block `p`'s attention sums over the window's interior (mask `rows` x `cols`):
        `sum k v^T` `[N, heads', d, d]` and `sum k` `[N, heads', d]`."""
        t = self._qkv(p["context_module"]["main"], x)
        mask = (rows[:, None] * cols[None, :]).reshape(1, -1, 1, 1)
        k = jax.nn.relu(t[:, :, :, 1]) * mask
        return jnp.einsum("bnhd,bnhe->bhde", k, t[:, :, :, 2], precision=_HI), k.sum(1)

    def _attend_mlp(self, p: Any, kv: Array, ksum: Array, x: Array) -> Array:
        """One EfficientViT block on a window given the global sums: `[N, a, b, C]` ->
        `[N, a, b, C]` float32 (`relu_linear_attention` with the sums passed in)."""
        cfg = self.model.backbone_cfg
        n, a, b, c = x.shape
        q = jax.nn.relu(self._qkv(p["context_module"]["main"], x)[:, :, :, 0])
        num = jnp.einsum("bnhd,bhde->bnhe", q, kv, precision=_HI)
        den = jnp.einsum("bnhd,bhd->bnh", q, ksum, precision=_HI)
        att = (num / (den[..., None] + self.model.attn_eps)).reshape(n, a, b, -1)
        proj = ConvLayer(c, 1, norm=None, act=None, dtype=self.model.dtype).apply(
            {"params": p["context_module"]["main"]["proj"]}, att.astype(self.model.dtype))
        x = proj.astype(jnp.float32) + x.astype(jnp.float32)
        mb = ResidualBlock(MBConv(None, 3, 1, cfg.expand_ratio, use_bias=(True, True, False),
                                  norm=(None, None, None), act=(cfg.act, cfg.act, None),
                                  dtype=self.model.dtype))
        return mb.apply({"params": p["local_module"]}, x)

    def _tail_fn(self, p: Any, body: Array, x: Array) -> Array:
        """body window `[N, a, b, C]`, x window `[N, 2a, 2b, 3]` -> `[N, 2sa, 2sb, 3]`."""
        cfg, s = self.model.backbone_cfg, self.model.head_cfg.scale
        feat = self._conv(p["body_out"], body, cfg.width, 3).astype(jnp.float32)
        feat = feat + self._stem_fold(p, x)
        up = pixel_shuffle(self._conv(p["unfold"], feat, 4 * cfg.stem_width, 1), 2)
        shallow = self._conv(p["stem"], x - 0.5, cfg.stem_width, 3)
        up = self._conv(p["up_conv"], up.astype(jnp.float32) + shallow.astype(jnp.float32),
                        cfg.stem_width, 3, cfg.act)
        out = pixel_shuffle(self._conv(p["to_rgb"], up, 3 * s * s, 3), s).astype(jnp.float32)
        return out + resize(x, (out.shape[1], out.shape[2]), mode="bicubic")

    # ------------------------------------------------------------------------ the driver
    def _map(self, fn, halo: int, shape: tuple[int, int], out: np.ndarray, scale: int,
             feats: list[np.ndarray], args: tuple = ()) -> None:
        """`out[tile] = fn(*args, *windows of feats)` cropped, over all tiles. `feats` are at
        feature resolution times a factor (1: body, 2: LR image), `out` times `scale`."""
        (lh, lw), tiles = _grid(*shape, self.tile_f, halo)
        for (r0, r1, rs), (c0, c1, cs) in tiles:
            wins = [f[:, rs * k:(rs + lh) * k, cs * k:(cs + lw) * k]
                    for f, k in ((f, f.shape[1] // shape[0]) for f in feats)]
            y = np.asarray(fn(*args, *wins))
            out[:, r0 * scale:r1 * scale, c0 * scale:c1 * scale] = \
                y[:, (r0 - rs) * scale:(r1 - rs) * scale, (c0 - cs) * scale:(c1 - cs) * scale]

    def _sums(self, p: Any, body: np.ndarray, shape: tuple[int, int]) -> tuple[Array, Array]:
        """The global attention sums of one block, accumulated in float64 over the tiles."""
        (lh, lw), tiles = _grid(*shape, self.tile_f, self.halo["kv"])
        kv = ksum = 0.0
        for (r0, r1, rs), (c0, c1, cs) in tiles:
            rows = ((np.arange(lh) >= r0 - rs) & (np.arange(lh) < r1 - rs)).astype(np.float32)
            cols = ((np.arange(lw) >= c0 - cs) & (np.arange(lw) < c1 - cs)).astype(np.float32)
            a, b = self._kv(p, body[:, rs:rs + lh, cs:cs + lw], rows, cols)
            kv = kv + np.asarray(a, np.float64)
            ksum = ksum + np.asarray(b, np.float64)
        return jnp.asarray(kv, jnp.float32), jnp.asarray(ksum, jnp.float32)

    def memory_bytes(self, lr_shape: tuple[int, int, int, int]) -> dict[str, int]:
        """What a call on `[N, h, w, 3]` holds at once, from XLA's compiled memory analysis
        (no image is processed): `host` (the two body arrays, the padded input and the
        output) and `device` (the largest stage program's arguments, outputs and
        temporaries, for one window)."""
        n, h, w, _ = lr_shape
        cfg, s = self.model.backbone_cfg, self.model.head_cfg.scale
        shape = ((h + h % 2) // 2, (w + w % 2) // 2)
        f32 = lambda *d: jax.ShapeDtypeStruct(d, jnp.float32)  # noqa: E731
        win = {k: _grid(*shape, self.tile_f, v)[0] for k, v in self.halo.items()}
        p, blk = self.params, self.params["blocks_0"]
        heads = (cfg.width // cfg.dim) * (1 + len(cfg.scales))
        (a, b), (ka, kb), (ba, bb), (ta, tb) = (win[k] for k in ("stem", "kv", "block", "tail"))
        lowered = [
            self._stem.lower(p, f32(n, 2 * a, 2 * b, 3)),
            self._kv.lower(blk, f32(n, ka, kb, cfg.width), f32(ka), f32(kb)),
            self._block.lower(blk, f32(n, heads, cfg.dim, cfg.dim), f32(n, heads, cfg.dim),
                              f32(n, ba, bb, cfg.width)),
            self._tail.lower(p, f32(n, ta, tb, cfg.width), f32(n, 2 * ta, 2 * tb, 3))]
        device = max(_held_bytes(x.compile()) for x in lowered)
        host = 4 * n * (2 * shape[0] * shape[1] * cfg.width + 4 * shape[0] * shape[1] * 3
                        * (1 + s * s))
        return {"host": host, "device": device}

    def __call__(self, lr: np.ndarray) -> np.ndarray:
        lr = np.asarray(lr, np.float32)
        if lr.ndim != 4 or lr.shape[-1] != 3:
            raise UserError(f"expected LR images [N, h, w, 3] in [0, 1], got {lr.shape}")
        cfg, s = self.model.backbone_cfg, self.model.head_cfg.scale
        n, h, w, _ = lr.shape
        # The model's own padding of odd sides (edge replication); the bicubic skip of the
        # padded image, cropped, equals that of the original (its taps clamp at the edge).
        x = np.pad(lr, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        shape = (x.shape[1] // 2, x.shape[2] // 2)
        body = np.empty((n, *shape, cfg.width), np.float32)
        self._map(self._stem, self.halo["stem"], shape, body, 1, [x], (self.params,))
        spare = np.empty_like(body)
        for i in range(cfg.depth):
            p = self.params[f"blocks_{i}"]
            kv, ksum = self._sums(p, body, shape)
            self._map(self._block, self.halo["block"], shape, spare, 1, [body], (p, kv, ksum))
            body, spare = spare, body
        del spare
        out = np.empty((n, x.shape[1] * s, x.shape[2] * s, 3), np.float32)
        self._map(self._tail, self.halo["tail"], shape, out, 2 * s, [body, x], (self.params,))
        return out[:, : s * h, : s * w]
