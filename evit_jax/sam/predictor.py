"""`SamPredictor`: segment-anything's predictor API over EfficientViT-SAM, numpy in and out.

`set_image` preprocesses on the host (PIL, exactly as the reference) and runs the jitted
encoder once. `predict` / `predict_batch` run the prompt encoder and mask decoder for the
whole batch of prompts in one compiled call, then the post-processing to the original size
in a second, small one. The decoder's shapes do not depend on the image, and prompt rows are
padded to bucketed shapes, so new image sizes, numbers of clicks or boxes reuse compiled
code (only the post-processing compiles per image size, in well under a second).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from evit_jax.errors import UserError
from evit_jax.models.sam import EfficientViTSam
from evit_jax.sam import prompts as P
from evit_jax.sam.transforms import (
    ResizeLongestSide,
    check_image,
    postprocess_matrices,
    preprocess,
    preprocess_shape,
)

Array = jax.Array
MASK_THRESHOLD = 0.0  # logits above it are inside the mask


@functools.partial(jax.jit, static_argnames=("model",))
def encode(model: nn.Module, variables: Any, images: Array) -> Array:
    """Jitted `encode_image`: `[N, S, S, 3]` -> `[N, 64, 64, 256]`."""
    return model.apply(variables, images, method="encode_image")


def upscale(low_res: Array, mh: Array, mw: Array) -> Array:
    """Low-res logits `[..., 256, 256]` -> `[..., H, W]` with per-axis maps `[H, 256]`,
    `[W, 256]` (see `transforms.postprocess_matrices`)."""
    hi = jax.lax.Precision.HIGHEST
    if mh.shape[0] <= mw.shape[0]:  # resize the shorter output axis first: fewer FLOPs
        y = jnp.einsum("hi,...ij->...hj", mh, low_res, precision=hi)
        return jnp.einsum("...hj,wj->...hw", y, mw, precision=hi)
    y = jnp.einsum("...ij,wj->...iw", low_res, mw, precision=hi)
    return jnp.einsum("hi,...iw->...hw", mh, y, precision=hi)


@functools.partial(jax.jit, static_argnames=("decoder", "multimask"))
def decode_low_res(decoder: nn.Module, variables: Any, features: Array, coords: Array,
                   labels: Array, mask_input: Array | None, has_mask: Array | None,
                   multimask: bool) -> tuple[Array, Array]:
    """The decoder for a batch of B prompts, one compiled call: low-res logits
    `[B, C, 256, 256]` and IoUs `[B, C]` (C = 3 with `multimask`, else 1).

    `decoder` is a `SamPromptDecoder` (`model.prompt_decoder()`), the same for every zoo
    model, and nothing here depends on the image size, so one compilation per prompt-shape
    bucket serves every model and image.
    """
    low, iou = decoder.apply(variables, features, coords, labels, mask_input, has_mask)
    sl = slice(1, None) if multimask else slice(0, 1)
    return low[:, sl], iou[:, sl]


@functools.partial(jax.jit, static_argnames=("return_logits",))
def postprocess(low_res: Array, mh: Array, mw: Array, return_logits: bool) -> Array:
    """Low-res logits `[B, C, 256, 256]` -> masks `[B, C, H, W]` at the original size (bool,
    or logits). Compiled per image size; cheap."""
    masks = upscale(low_res, mh, mw)
    return masks if return_logits else masks > MASK_THRESHOLD


class SamPredictor:
    """Segment an image from clicks, boxes and mask prompts, as segment-anything's
    `SamPredictor` (numpy arrays in original-image pixels in, numpy arrays out).

    Args:
      model: an EfficientViT-SAM module (`evit_jax.create_model("efficientvit-sam-l0")`).
      variables: its variables (`evit_jax.convert_state_dict(name, state_dict)`).
      max_batch: prompts per compiled decoder call in `predict_batch` (larger batches run
        in chunks of this size).
    """

    def __init__(self, model: nn.Module, variables: Any, max_batch: int = 64):
        if not isinstance(model, EfficientViTSam):
            raise TypeError("SamPredictor needs an EfficientViT-SAM model, e.g. "
                            "evit_jax.create_model('efficientvit-sam-l0')")
        self.model = model
        self.variables = jax.device_put(variables)
        self.decoder = model.prompt_decoder()
        self.decoder_variables = model.decoder_variables(self.variables)
        self.max_batch = int(max_batch)
        self.transform = ResizeLongestSide(self.model.prompt_size)
        self.reset_image()

    # ------------------------------------------------------------------------------- image
    def reset_image(self) -> None:
        """Forget the current image."""
        self.is_image_set = False
        self.features: Array | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None
        self._maps: tuple[Array, Array] | None = None

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Encode `image` (uint8 `[H, W, 3]`) once; later `predict` calls reuse it.

        Args:
          image: uint8 `[H, W, 3]`, RGB (or BGR with `image_format="BGR"`).
          image_format: "RGB" or "BGR".
        """
        if image_format not in ("RGB", "BGR"):
            raise UserError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        check_image(image)
        if image_format == "BGR":
            image = image[..., ::-1]
        self.reset_image()
        h, w = image.shape[:2]
        self.original_size = (h, w)
        self.input_size = preprocess_shape(h, w, self.model.prompt_size)
        x = preprocess(np.ascontiguousarray(image), self.model.encoder_size)
        self.features = encode(self.model, self.variables, x)
        mh, mw = postprocess_matrices(self.model.low_res_size, self.model.prompt_size,
                                      self.input_size, self.original_size)
        self._maps = (jnp.asarray(mh), jnp.asarray(mw))
        self.is_image_set = True

    def get_image_embedding(self) -> Array:
        """The image embedding `[1, 64, 64, 256]` (NHWC)."""
        self._require_image()
        return self.features

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError("no image is set: call predictor.set_image(image) before "
                               "predicting masks")

    # ----------------------------------------------------------------------------- predict
    def predict(self, point_coords: np.ndarray | None = None,
                point_labels: np.ndarray | None = None, box: np.ndarray | None = None,
                mask_input: np.ndarray | None = None, multimask_output: bool = True,
                return_logits: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for one prompt on the current image.

        Args:
          point_coords: `[N, 2]` XY clicks in original-image pixels, or None.
          point_labels: `[N]`: 1 foreground, 0 background (-1: an ignored point).
          box: `[4]` XYXY box in original-image pixels, or None.
          mask_input: `[1, 256, 256]` low-res logits of an earlier prediction, or None.
          multimask_output: three masks (for ambiguous prompts such as one click) instead
            of one.
          return_logits: return mask logits instead of booleans.
        Returns:
          masks `[C, H, W]` (bool, or float32 logits), IoU predictions `[C]`, low-res logits
          `[C, 256, 256]`; C = 3 with `multimask_output`, else 1.
        """
        self._require_image()
        if point_coords is None and point_labels is not None:
            raise UserError("point_labels were given without point_coords")
        if point_coords is not None:
            point_coords, point_labels = (a[None] for a in P.check_points(
                point_coords, point_labels, self.original_size))
        if box is not None:
            box = P.check_boxes(box, self.original_size)[None]
        if mask_input is not None:
            mask_input = P.check_masks(mask_input, 1, self.model.low_res_size)
        masks, iou, low = self._run(1, point_coords, point_labels, box, mask_input,
                                    multimask_output, return_logits)
        return masks[0], iou[0], low[0]

    def predict_batch(self, points: np.ndarray | None = None,
                      point_labels: np.ndarray | None = None, boxes: np.ndarray | None = None,
                      mask_input: np.ndarray | None = None, multimask_output: bool = True,
                      return_logits: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for B prompts at once (e.g. every box of an image): one compiled call per
        `max_batch` prompts.

        Args:
          points: `[B, N, 2]` XY clicks per prompt, or None.
          point_labels: `[B, N]`; None means every click is foreground.
          boxes: `[B, 4]` XYXY boxes, or None.
          mask_input: `[B, 1, 256, 256]` (or `[B, 256, 256]`) low-res logits, or None.
          multimask_output, return_logits: as in `predict`.
        Returns:
          masks `[B, C, H, W]`, IoU predictions `[B, C]`, low-res logits `[B, C, 256, 256]`.
        """
        self._require_image()
        sizes = {len(a) for a in (points, boxes, mask_input) if a is not None}
        if not sizes:
            raise UserError("predict_batch needs points, boxes or mask_input")
        if len(sizes) > 1:
            raise UserError(f"points, boxes and mask_input must have the same batch size, "
                            f"got {sorted(sizes)}")
        n = sizes.pop()
        if n == 0:  # no prompts (e.g. a detector found no boxes): empty results, no decode
            c, (h, w), low = (3 if multimask_output else 1), self.original_size, \
                self.model.low_res_size
            return (np.zeros((0, c, h, w), np.float32 if return_logits else bool),
                    np.zeros((0, c), np.float32), np.zeros((0, c, low, low), np.float32))
        if points is None and point_labels is not None:
            raise UserError("point_labels were given without points")
        if points is not None:
            if point_labels is None:
                point_labels = np.ones(np.shape(points)[:-1], np.int32)
            points, point_labels = P.check_points(points, point_labels, self.original_size,
                                                  batched=True)
        if boxes is not None:
            boxes = P.check_boxes(boxes, self.original_size, batched=True)
        if mask_input is not None:
            mask_input = P.check_masks(mask_input, n, self.model.low_res_size, batched=True)
        return self._run(n, points, point_labels, boxes, mask_input, multimask_output,
                         return_logits)

    def _run(self, n: int, coords, labels, boxes, mask_input, multimask: bool,
             return_logits: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """n checked prompts in original pixels, batch-first -> numpy outputs."""
        if coords is not None:
            coords = self.transform.apply_coords(coords, self.original_size)
        if boxes is not None:
            boxes = self.transform.apply_boxes(boxes, self.original_size)
        tok_c, tok_l = P.prompt_tokens(coords, labels, boxes, n)
        tokens = P.bucket(tok_l.shape[1], 2)
        outs = []
        for start in range(0, n, self.max_batch):
            stop = min(n, start + self.max_batch)
            rows = P.bucket(stop - start)
            c, lab = P.pad_tokens(tok_c[start:stop], tok_l[start:stop], tokens, rows)
            m = has = None
            if mask_input is not None:
                m = np.zeros((rows,) + mask_input.shape[1:], np.float32)
                m[:stop - start] = mask_input[start:stop]
                has = np.arange(rows) < stop - start
            low, iou = decode_low_res(self.decoder, self.decoder_variables, self.features, c,
                                      lab, m, has, multimask)
            masks = postprocess(low, *self._maps, return_logits)
            outs.append([np.asarray(o)[:stop - start] for o in (masks, iou, low)])
        return tuple(np.concatenate(parts) if len(parts) > 1 else parts[0]
                     for parts in zip(*outs))
