"""segment-anything's mask decoder in Flax, NHWC.

Output tokens (one IoU token, 1 + 3 mask tokens) and the prompt tokens run through the
two-way transformer against the image embedding; the image tokens are upscaled 4x by two
stride-2 transposed convolutions, and each mask token, through its own MLP, gives the
weights of a dot product with the upscaled map: one 256 x 256 logit map per mask token.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from evit_jax.models.sam.config import SamDecoderConfig
from evit_jax.models.sam.prompt_encoder import Embedding
from evit_jax.models.sam.transformer import TwoWayTransformer
from evit_jax.nn import LayerNorm
from evit_jax.nn.conv import Dense
from evit_jax.nn.init import TRUNC_NORMAL_002, ZEROS, declare_param

Array = jax.Array


class ConvTranspose2x2(nn.Module):
    """`nn.ConvTranspose2d(C_in, features, kernel_size=2, stride=2)` on NHWC:
    `[B, H, W, C_in]` -> `[B, 2H, 2W, features]`.

    With kernel = stride the output pixels do not overlap:
    `out[2i + a, 2j + c, o] = sum_ci x[i, j, ci] * kernel[a, c, o, ci] + bias[o]`, one einsum.
    Params `kernel` `[2, 2, features, C_in]` (the layout of Flax's
    `ConvTranspose(transpose_kernel=True)`, i.e. the torch weight `(C_in, C_out, 2, 2)`
    transposed by (2, 3, 1, 0)), `bias` `[features]`.

    `shuffle=False` leaves the output unshuffled, `[..., 2, 2, features]` (`[..., a, c, o]`
    for any leading dims): per-pixel ops after it (norm, activation, a product over
    channels) commute with the shuffle, so a chain of these can shuffle once at its end, on
    its smallest tensor (`MaskDecoder` shuffles its K-channel masks; `unshuffled_to_image`
    gives the image layout).
    """

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, shuffle: bool = True) -> Array:
        c = x.shape[-1]
        kernel = declare_param(self, "kernel", TRUNC_NORMAL_002, (2, 2, self.features, c))
        bias = declare_param(self, "bias", ZEROS, (self.features,))
        y = jnp.einsum("...i,acoi->...aco", x.astype(self.dtype), kernel.astype(self.dtype),
                       preferred_element_type=jnp.float32) + bias  # float32
        if not shuffle:
            return y
        b, h, w = x.shape[:3]
        return jnp.swapaxes(y, 2, 3).reshape(b, 2 * h, 2 * w, self.features)


def unshuffled_to_image(y: Array) -> Array:
    """Two unshuffled 2x upscalings `[B, h, w, a1, c1, a2, c2, C]` -> the image layout
    `[B, 4h, 4w, C]` (row 4i + 2 a1 + a2, column 4j + 2 c1 + c2): what the decoder's
    upscaled map is, for inspecting it; the decoder itself shuffles only its masks."""
    b, h, w = y.shape[:3]
    return jnp.transpose(y, (0, 1, 3, 5, 2, 4, 6, 7)).reshape(b, 4 * h, 4 * w, y.shape[-1])


class MLP(nn.Module):
    """`num_layers` Dense layers (`layers_i`) with ReLU between them."""

    hidden_dim: int
    output_dim: int
    num_layers: int
    dtype: Any = jnp.float32

    def setup(self):
        sizes = [self.hidden_dim] * (self.num_layers - 1) + [self.output_dim]
        self.layers = [Dense(n, dtype=self.dtype) for n in sizes]

    def __call__(self, x: Array) -> Array:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < self.num_layers - 1:
                x = jax.nn.relu(x)
        return x


class MaskDecoder(nn.Module):
    """Image embedding + prompt tokens -> low-res mask logits and predicted IoUs.

    Attributes:
      cfg: the decoder's settings: `embed_dim` channels (256); `num_multimask_outputs`
        masks of the multimask output (3; there is one more mask token for the single-mask
        output); `iou_head_depth`, `iou_head_hidden_dim` of the IoU MLP; the two-way
        transformer's `transformer_depth`, `transformer_heads`, `transformer_mlp_dim`,
        `attention_downsample_rate`.
      norm_eps: eps of the transformer's LayerNorms (the zoo's; the upscaler's LayerNorm2d
        keeps segment-anything's 1e-6).
    """

    cfg: SamDecoderConfig = SamDecoderConfig()
    norm_eps: float = 1e-6
    dtype: Any = jnp.float32

    @property
    def num_mask_tokens(self) -> int:
        return self.cfg.num_multimask_outputs + 1

    def setup(self):
        cfg, dt = self.cfg, self.dtype
        d = cfg.embed_dim
        self.transformer = TwoWayTransformer(cfg.transformer_depth, d, cfg.transformer_heads,
                                             cfg.transformer_mlp_dim,
                                             cfg.attention_downsample_rate, self.norm_eps, dt)
        self.iou_token = Embedding(1, d)
        self.mask_tokens = Embedding(self.num_mask_tokens, d)
        # Names follow the reference's nn.Sequential indices (GELUs at 2 and 4).
        self.output_upscaling_0 = ConvTranspose2x2(d // 4, dt)
        self.output_upscaling_1 = LayerNorm(1e-6)
        self.output_upscaling_3 = ConvTranspose2x2(d // 8, dt)
        self.output_hypernetworks_mlps = [MLP(d, d // 8, 3, dt)
                                          for _ in range(self.num_mask_tokens)]
        self.iou_prediction_head = MLP(cfg.iou_head_hidden_dim, self.num_mask_tokens,
                                       cfg.iou_head_depth, dt)

    def __call__(self, image_embeddings: Array, image_pe: Array, sparse: Array, dense_: Array,
                 token_mask: Array | None = None) -> tuple[Array, Array]:
        """All mask tokens' outputs; the caller picks the single (0) or multimask (1:) ones.

        Args:
          image_embeddings: `[1 or B, h, w, C]` (one image shared by B prompts, or one each).
          image_pe: `[h, w, C]` dense position encoding.
          sparse: prompt tokens `[B, N, C]`.
          dense_: dense prompt embedding `[1 or B, h, w, C]`.
          token_mask: `[B, N]`, False for padding tokens.
        Returns:
          (mask logits `[B, num_mask_tokens, 4h, 4w]`, IoU predictions
          `[B, num_mask_tokens]`), float32.
        """
        b, n, d = sparse.shape
        gelu = lambda x: jax.nn.gelu(x, approximate=False)  # segment-anything: exact GELU
        out_tokens = jnp.concatenate([self.iou_token.table(), self.mask_tokens.table()], 0)
        # lax.concatenate, not jnp's: jax2onnx replaces jnp.concatenate by its own, which
        # gives `5 + P` tokens the static length 5 when P is symbolic (a dynamic-P export).
        tokens = jax.lax.concatenate(
            [jnp.broadcast_to(out_tokens[None], (b,) + out_tokens.shape),
             sparse.astype(out_tokens.dtype)], 1)
        if token_mask is not None:
            token_mask = jax.lax.concatenate(
                [jnp.ones((b, out_tokens.shape[0]), bool), token_mask.astype(bool)], 1)
        src = image_embeddings + dense_  # stays batch 1 when the B prompts share both
        hs, keys = self.transformer(src, image_pe[None], tokens, token_mask)
        iou_out = hs[:, 0]
        mask_out = hs[:, 1:1 + self.num_mask_tokens]

        x = keys.reshape((b,) + src.shape[1:])                              # [B, h, w, C]
        # Both 2x upscalings stay unshuffled ([B, h, w, a1, c1, a2, c2, C/8]); the pixel
        # shuffle is done once, on the K-channel masks instead of the 64- and 32-channel maps
        # (on 64 prompts the two shuffles and the channel-major copy for the product were a
        # third of the decoder's time).
        x = gelu(self.output_upscaling_1(self.output_upscaling_0(x, shuffle=False)))
        x = gelu(self.output_upscaling_3(x, shuffle=False).astype(jnp.float32))
        hyper = jnp.stack([mlp(mask_out[:, i])
                           for i, mlp in enumerate(self.output_hypernetworks_mlps)], axis=1)
        masks = jnp.einsum("bkc,bhwaxeyc->bkhaewxy", hyper.astype(jnp.float32), x)
        h, w = src.shape[1:3]
        masks = masks.reshape(b, hyper.shape[1], 4 * h, 4 * w)  # row 4i+2a+e, column 4j+2x+y
        iou = self.iou_prediction_head(iou_out)
        return masks, iou.astype(jnp.float32)
