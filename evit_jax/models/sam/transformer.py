"""segment-anything's two-way transformer (mask decoder core) in Flax.

Tokens (IoU token, mask tokens, prompt tokens) and image tokens (the 64 x 64 embedding)
attend to each other in both directions. An optional token mask removes padding tokens
from every attention where tokens are the keys, which makes padding exact: a padded prompt
gives the same result as the unpadded one.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from evit_jax.errors import UserError
from evit_jax.nn import LayerNorm
from evit_jax.nn.conv import Dense

Array = jax.Array


def dense(features: int, dtype: Any) -> Dense:
    """A Linear with bias (float32 accumulation), as segment-anything's `nn.Linear`."""
    return Dense(features, dtype=dtype)


class Attention(nn.Module):
    """Multi-head attention with projections to `embedding_dim / downsample_rate` channels.

    Params `q_proj`, `k_proj`, `v_proj`, `out_proj` (Dense with bias).
    """

    embedding_dim: int
    num_heads: int
    downsample_rate: int = 1
    dtype: Any = jnp.float32

    def setup(self):
        internal = self.embedding_dim // self.downsample_rate
        if internal % self.num_heads:
            raise ValueError(f"{self.num_heads} heads do not divide {internal} channels")
        self.q_proj = dense(internal, self.dtype)
        self.k_proj = dense(internal, self.dtype)
        self.v_proj = dense(internal, self.dtype)
        self.out_proj = dense(self.embedding_dim, self.dtype)

    def __call__(self, q: Array, k: Array, v: Array, key_mask: Array | None = None) -> Array:
        """q `[Bq, Nq, C]`, k and v `[Bk, Nk, C]`, key_mask `[B, Nk]` (True = attend) ->
        `[B, Nq, C]`. Bq or Bk may be 1 and broadcast: B prompts attending to one shared
        image project the image once instead of B times."""
        h = self.num_heads

        def heads(x):
            return x.reshape(*x.shape[:-1], h, x.shape[-1] // h)

        q, k, v = heads(self.q_proj(q)), heads(self.k_proj(k)), heads(self.v_proj(v))
        if q.shape[0] == k.shape[0]:
            logits = jnp.einsum("bqhd,bkhd->bhqk", q, k)
        elif k.shape[0] == 1:
            logits = jnp.einsum("bqhd,khd->bhqk", q, k[0])
        else:
            logits = jnp.einsum("qhd,bkhd->bhqk", q[0], k)
        logits = logits.astype(jnp.float32) / math.sqrt(q.shape[-1])
        if key_mask is not None:
            logits = jnp.where(key_mask[:, None, None, :], logits, -jnp.inf)
        attn = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        if v.shape[0] == 1 and attn.shape[0] > 1:
            out = jnp.einsum("bhqk,khd->bqhd", attn, v[0])
        else:
            out = jnp.einsum("bhqk,bkhd->bqhd", attn, v)
        return self.out_proj(out.reshape(*out.shape[:-2], -1))


class MLPBlock(nn.Module):
    """`lin1` -> ReLU -> `lin2` on the last axis."""

    embedding_dim: int
    mlp_dim: int
    dtype: Any = jnp.float32

    def setup(self):
        self.lin1 = dense(self.mlp_dim, self.dtype)
        self.lin2 = dense(self.embedding_dim, self.dtype)

    def __call__(self, x: Array) -> Array:
        return self.lin2(jax.nn.relu(self.lin1(x)))


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token->image attention, MLP, image->token attention, each
    followed by a LayerNorm (`norm1`..`norm4`). The first block's self-attention uses no
    position encoding and has no residual (`skip_first_layer_pe`), as in segment-anything."""

    embedding_dim: int
    num_heads: int
    mlp_dim: int = 2048
    attention_downsample_rate: int = 2
    skip_first_layer_pe: bool = False
    norm_eps: float = 1e-6
    dtype: Any = jnp.float32

    def setup(self):
        d, h, r, dt = self.embedding_dim, self.num_heads, self.attention_downsample_rate, self.dtype
        self.self_attn = Attention(d, h, 1, dt)
        self.cross_attn_token_to_image = Attention(d, h, r, dt)
        self.mlp = MLPBlock(d, self.mlp_dim, dt)
        self.cross_attn_image_to_token = Attention(d, h, r, dt)
        self.norm1, self.norm2, self.norm3, self.norm4 = (
            LayerNorm(self.norm_eps, dtype=jnp.float32) for _ in range(4))

    def __call__(self, queries: Array, keys: Array, query_pe: Array, key_pe: Array,
                 token_mask: Array | None = None) -> tuple[Array, Array]:
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries, token_mask)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries, token_mask)
        queries = self.norm1(queries)

        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))

        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries, token_mask))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """`depth` two-way blocks (`layers_i`), then a final token->image attention
    (`final_attn_token_to_image`) and `norm_final_attn`."""

    depth: int = 2
    embedding_dim: int = 256
    num_heads: int = 8
    mlp_dim: int = 2048
    attention_downsample_rate: int = 2
    norm_eps: float = 1e-6
    dtype: Any = jnp.float32

    def setup(self):
        d, h, r = self.embedding_dim, self.num_heads, self.attention_downsample_rate
        self.layers = [TwoWayAttentionBlock(d, h, self.mlp_dim, r, i == 0, self.norm_eps,
                                            self.dtype) for i in range(self.depth)]
        self.final_attn_token_to_image = Attention(d, h, r, self.dtype)
        self.norm_final_attn = LayerNorm(self.norm_eps, dtype=jnp.float32)

    def __call__(self, image: Array, image_pe: Array, tokens: Array,
                 token_mask: Array | None = None) -> tuple[Array, Array]:
        """image `[1 or B, H, W, C]`, image_pe `[1, H, W, C]`, tokens `[B, N, C]`,
        token_mask `[B, N]` -> (tokens `[B, N, C]`, image tokens `[B, H * W, C]`).

        A batch-1 image is shared by the B prompts: the first block projects it once (its
        image tokens only become prompt-specific after that block)."""
        b, hh, ww, c = image.shape
        keys = image.reshape(b, hh * ww, c)
        if b != tokens.shape[0] and b != 1:
            raise UserError(f"{b} images for {tokens.shape[0]} prompts: give 1 or one each")
        key_pe = image_pe.reshape(image_pe.shape[0], hh * ww, c)
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe, token_mask)
        q, k = queries + tokens, keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys
