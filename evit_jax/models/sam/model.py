"""EfficientViT-SAM: the EfficientViT image encoder with segment-anything's prompt encoder
and mask decoder (`create_model("efficientvit-sam-l0")` ... `"-xl1"`).

Three entry points, all through `model.apply(variables, ..., method=...)`:
  `encode_image`   preprocessed images `[N, S, S, 3]` -> embeddings `[N, 64, 64, 256]`;
  `predict_masks`  embeddings + prompts -> low-res logits of every mask token and IoUs;
  `__call__`       both at once (images only: the embeddings), used by `init`.
The predictor (`evit_jax.sam.SamPredictor`) wraps them with preprocessing and
post-processing, numpy in and out.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from evit_jax.errors import UserError
from evit_jax.models.base import check_image_batch
from evit_jax.models.sam.mask_decoder import MaskDecoder
from evit_jax.models.sam.neck import SamImageEncoder
from evit_jax.models.sam.prompt_encoder import PAD, PromptEncoder

Array = jax.Array


def _predict_masks(prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder,
                   image_embeddings: Array, point_coords: Array, point_labels: Array,
                   mask_input: Array | None, has_mask: Array | None) -> tuple[Array, Array]:
    sparse, dense = prompt_encoder(point_coords, point_labels, mask_input, has_mask)
    return mask_decoder(image_embeddings, prompt_encoder.dense_pe(), sparse, dense,
                        point_labels != PAD)


class SamPromptDecoder(nn.Module):
    """The prompt encoder and mask decoder without the image encoder (`predict_masks` of
    `EfficientViTSam`). Every zoo entry has the same one, so the predictor compiles it once
    for all models; its variables are the `prompt_encoder` and `mask_decoder` subtrees
    (`EfficientViTSam.decoder_variables`)."""

    prompt_encoder: PromptEncoder
    mask_decoder: MaskDecoder

    def __call__(self, image_embeddings: Array, point_coords: Array, point_labels: Array,
                 mask_input: Array | None = None, has_mask: Array | None = None
                 ) -> tuple[Array, Array]:
        """See `EfficientViTSam.predict_masks`."""
        return _predict_masks(self.prompt_encoder, self.mask_decoder, image_embeddings,
                              point_coords, point_labels, mask_input, has_mask)


class EfficientViTSam(nn.Module):
    """EfficientViT-SAM from its parts, as segment-anything's `Sam(image_encoder,
    prompt_encoder, mask_decoder)`; the zoo builds them (`create_model`).

    Attributes:
      image_encoder: backbone + neck + LayerNorm (`SamImageEncoder`).
      prompt_encoder: clicks, boxes and mask prompts -> tokens (`PromptEncoder`).
      mask_decoder: tokens against the embedding -> masks and IoUs (`MaskDecoder`).
      encoder_size: side S of the images `encode_image` takes (512 for L, 1024 for XL).
    """

    image_encoder: SamImageEncoder
    prompt_encoder: PromptEncoder
    mask_decoder: MaskDecoder
    encoder_size: int

    @property
    def prompt_size(self) -> int:
        """Side of the frame prompts are given in (1024, whatever the encoder size)."""
        return self.prompt_encoder.frame

    @property
    def low_res_size(self) -> int:
        """Side of the low-res mask logits and mask prompts (4x the embedding grid: 256)."""
        return 4 * self.prompt_encoder.grid

    @property
    def norm_eps(self) -> float:
        """The encoder's BatchNorm eps (what `evit_jax.fuse_bn(variables, model)` folds with)."""
        return self.image_encoder.backbone.norm_eps

    def encode_image(self, images: Array, train: bool = False) -> Array:
        """Preprocessed images `[N, S, S, 3]` (S = `encoder_size`; see
        `evit_jax.sam.transforms.preprocess`) -> embeddings `[N, 64, 64, 256]`, float32."""
        s = self.encoder_size
        check_image_batch(images)
        if images.shape[1:3] != (s, s):
            raise UserError(
               f"encode_image expects images of {s}x{s} (this model's encoder size), got "
               f"{images.shape[1]}x{images.shape[2]}; preprocess with "
               f"evit_jax.sam.transforms.preprocess(image, {s}) (resize the longest side to "
               f"{s}, normalise, zero-pad bottom/right)")
        return self.image_encoder(images, train)

    def predict_masks(self, image_embeddings: Array, point_coords: Array, point_labels: Array,
                      mask_input: Array | None = None, has_mask: Array | None = None
                      ) -> tuple[Array, Array]:
        """Decode a batch of B prompts against one image (or B images).

        Args:
          image_embeddings: `[1 or B, 64, 64, 256]`.
          point_coords: `[B, N, 2]` XY in the 1024 prompt frame; box corners are tokens too.
          point_labels: `[B, N]`: 1 foreground, 0 background, -1 not-a-point, 2 / 3 box
            top-left / bottom-right, `PAD` (-2) no token (padding, masked out).
          mask_input: optional low-res mask logits `[B, 256, 256]`.
          has_mask: optional `[B]` bool: which prompts use their `mask_input`.
        Returns:
          (low-res logits `[B, 4, 256, 256]`, IoU predictions `[B, 4]`), float32. Token 0
          is the single-mask output, tokens 1..3 the multimask output.
        """
        return _predict_masks(self.prompt_encoder, self.mask_decoder, image_embeddings,
                              point_coords, point_labels, mask_input, has_mask)

    def __call__(self, images: Array, point_coords: Array | None = None,
                 point_labels: Array | None = None, mask_input: Array | None = None,
                 train: bool = False) -> Array | tuple[Array, Array]:
        """Images `[N, H, W, 3]` -> embeddings; with prompts (one image, or one prompt per
        image) -> `predict_masks`'s output. Unlike `encode_image`, any size that is a
        multiple of 32 (64 for XL) is taken (the neck resizes to the 64 x 64 grid), so
        `init` is cheap; only the encoder size matches pretrained weights."""
        check_image_batch(images, 64 if self.image_encoder.backbone.cfg.num_stages > 5 else 32)
        emb = self.image_encoder(images, train)
        if point_coords is None:
            return emb
        if point_labels is None:
            raise UserError("point_labels are required with point_coords")
        return self.predict_masks(emb, point_coords, point_labels, mask_input)

    def prompt_decoder(self) -> SamPromptDecoder:
        """The prompt encoder + mask decoder as a module of its own (unbound)."""
        return SamPromptDecoder(self.prompt_encoder.clone(parent=None),
                                self.mask_decoder.clone(parent=None), parent=None)

    @staticmethod
    def decoder_variables(variables: dict[str, Any]) -> dict[str, Any]:
        """The variables of `prompt_decoder()`: the `prompt_encoder` and `mask_decoder`
        parameter subtrees."""
        params = variables["params"]
        return {"params": {k: params[k] for k in ("prompt_encoder", "mask_decoder")}}

    def example_inputs(self) -> tuple[Array, ...]:
        """Inputs that reach every parameter (`init_variables`): a 64 x 64 image, one click
        plus segment-anything's padding point, and a mask prompt."""
        n = self.low_res_size
        return (jnp.zeros((1, 64, 64, 3), jnp.float32), jnp.zeros((1, 2, 2), jnp.float32),
                jnp.array([[1, -1]], jnp.int32), jnp.zeros((1, n, n), jnp.float32))
