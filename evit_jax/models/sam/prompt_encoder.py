"""segment-anything's prompt encoder in Flax, NHWC.

Sparse prompts (clicks and box corners) become one token each: a random-Fourier encoding of
the position plus a learned embedding of the token's kind. Padding tokens (label `PAD`) let
a batch hold prompts with different numbers of clicks under one compiled shape; the
decoder masks them out of attention, so they change nothing.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from evit_jax.nn import LayerNorm
from evit_jax.nn.conv import Conv2d
from evit_jax.nn.init import TRUNC_NORMAL_002, ZEROS, Init, declare_param

Array = jax.Array

# Token labels. -1..1 are segment-anything's point labels; box corners are tokens too.
NOT_A_POINT, NEGATIVE, POSITIVE, BOX_TOP_LEFT, BOX_BOTTOM_RIGHT = -1, 0, 1, 2, 3
PAD = -2  # no token: zero embedding, masked out of attention


class Embedding(nn.Module):
    """A learned table `embedding` `[num, features]` (PyTorch's `nn.Embedding`, N(0, 1) init);
    modules read rows of `.table()` directly."""

    num: int
    features: int

    @nn.compact
    def table(self) -> Array:
        return declare_param(self, "embedding", Init("normal", std=1.0),
                             (self.num, self.features))


class PositionEmbeddingRandom(nn.Module):
    """Random-Fourier position encoding: `[..., 2]` coords in [0, 1] -> `[..., 2F]`.

    The Gaussian matrix `positional_encoding_gaussian_matrix` `[2, F]` is a buffer in the
    reference (fixed at construction, never trained). Here it is a parameter, so a whole
    checkpoint is one `params` tree, and the forward pass stops its gradient: an optimiser
    sees a zero gradient (exclude it from weight decay when training).
    """

    num_pos_feats: int = 128

    @nn.compact
    def __call__(self, coords: Array) -> Array:
        g = declare_param(self, "positional_encoding_gaussian_matrix", Init("normal", std=1.0),
                          (2, self.num_pos_feats))
        g = jax.lax.stop_gradient(g)
        c = 2 * coords.astype(jnp.float32) - 1
        c = jnp.matmul(c, g, precision=jax.lax.Precision.HIGHEST)
        c = 2 * np.pi * c
        return jnp.concatenate([jnp.sin(c), jnp.cos(c)], axis=-1)


class PatchConv(nn.Module):
    """Conv k x k with stride k and no padding (non-overlapping patches), NHWC.

    Params `kernel` `[k, k, C_in, C_out]` (HWIO), `bias` `[C_out]`.
    """

    features: int
    patch: int = 2

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k, (b, h, w, c) = self.patch, x.shape
        kernel = declare_param(self, "kernel", TRUNC_NORMAL_002, (k, k, c, self.features))
        bias = declare_param(self, "bias", ZEROS, (self.features,))
        x = x.reshape(b, h // k, k, w // k, k, c)
        y = jnp.einsum("bhawci,acio->bhwo", x, kernel, precision=jax.lax.Precision.HIGHEST)
        return y + bias


class PromptEncoder(nn.Module):
    """Points, boxes and low-res masks -> sparse tokens and a dense embedding.

    Attributes:
      embed_dim: token / embedding channels (256).
      grid: image-embedding size (64).
      frame: side of the prompt coordinate frame (1024: prompts are given in the frame of
        the image resized to a longest side of 1024, whatever the encoder resolution).
      mask_in_chans: hidden channels of the mask downscaler (16).
    """

    embed_dim: int = 256
    grid: int = 64
    frame: int = 1024
    mask_in_chans: int = 16

    def setup(self):
        d, c = self.embed_dim, self.mask_in_chans
        self.pe_layer = PositionEmbeddingRandom(d // 2)
        self.point_embeddings = [Embedding(1, d) for _ in range(4)]
        self.not_a_point_embed = Embedding(1, d)
        self.no_mask_embed = Embedding(1, d)
        # Names follow the reference's nn.Sequential indices (GELUs at 2 and 5).
        self.mask_downscaling_0 = PatchConv(c // 4)
        self.mask_downscaling_1 = LayerNorm(1e-6)  # segment-anything's LayerNorm2d eps
        self.mask_downscaling_3 = PatchConv(c)
        self.mask_downscaling_4 = LayerNorm(1e-6)
        self.mask_downscaling_6 = Conv2d(d, 1, use_bias=True)

    def dense_pe(self) -> Array:
        """Position encoding of the embedding grid's cell centres: `[grid, grid, embed_dim]`."""
        t = (jnp.arange(self.grid, dtype=jnp.float32) + 0.5) / self.grid
        xy = jnp.stack(jnp.meshgrid(t, t, indexing="xy"), axis=-1)  # [y, x] -> (x, y)
        return self.pe_layer(xy)

    def embed_points(self, coords: Array, labels: Array) -> Array:
        """Sparse tokens `[B, N, embed_dim]` of coords `[B, N, 2]` (XY in the prompt frame,
        pixel corners; the +0.5 to pixel centres is applied here) and labels `[B, N]`."""
        pe = self.pe_layer((coords.astype(jnp.float32) + 0.5) / self.frame)
        labels = labels.astype(jnp.int32)
        pe = jnp.where((labels == NOT_A_POINT)[..., None] | (labels == PAD)[..., None], 0.0, pe)
        # Row i of the table is the embedding added for label i - 1 (PAD -> zeros).
        table = jnp.concatenate(
            [self.not_a_point_embed.table()] + [e.table() for e in self.point_embeddings]
            + [jnp.zeros((1, self.embed_dim), jnp.float32)], axis=0)
        idx = jnp.where(labels == PAD, table.shape[0] - 1, labels + 1)
        return pe + jnp.take(table, idx, axis=0)

    def embed_masks(self, masks: Array) -> Array:
        """Low-res mask logits `[B, 4 * grid, 4 * grid]` -> `[B, grid, grid, embed_dim]`."""
        gelu = lambda x: jax.nn.gelu(x, approximate=False)  # segment-anything: exact GELU
        x = masks.astype(jnp.float32)[..., None]
        x = gelu(self.mask_downscaling_1(self.mask_downscaling_0(x)))
        x = gelu(self.mask_downscaling_4(self.mask_downscaling_3(x)))
        return self.mask_downscaling_6(x)

    def no_mask_dense(self) -> Array:
        """The dense embedding used without a mask prompt, `[1, 1, 1, embed_dim]`."""
        return self.no_mask_embed.table().reshape(1, 1, 1, self.embed_dim)

    def __call__(self, coords: Array, labels: Array, masks: Array | None = None,
                 has_mask: Array | None = None) -> tuple[Array, Array]:
        """(sparse `[B, N, D]`, dense `[B or 1, grid, grid, D]`).

        Without `masks` the dense embedding is `no_mask_embed` everywhere (batch 1, it
        broadcasts); with them, prompts whose `has_mask` is False still get `no_mask_embed`.
        """
        sparse = self.embed_points(coords, labels)
        dense = jnp.broadcast_to(self.no_mask_dense(), (1, self.grid, self.grid, self.embed_dim))
        if masks is not None:
            m = self.embed_masks(masks)
            if has_mask is not None:
                m = jnp.where(has_mask[:, None, None, None], m, dense)
            dense = m
        return sparse, dense
