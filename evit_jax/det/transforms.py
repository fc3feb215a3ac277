"""The detector's input: YOLOX's letterbox, then ImageNet normalisation.

A detector's input is `normalize(letterbox(image, size))`: the RGB uint8 image resized to
fit `size` keeping its aspect ratio (PIL bilinear), placed at the top left of a canvas filled
with 114 (YOLOX's padding value), then scaled to [0, 1] and normalised with the ImageNet
mean / std, as the EfficientViT backbones were trained. (YOLOX itself feeds BGR 0-255
unnormalised; our backbones were pretrained normalised, so the detectors take what they do.)
`DetPredictor` and the trainer's evaluation both go through `preprocess`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from evit_jax.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PAD_VALUE = 114


def check_image(image: Any) -> np.ndarray:
    """The image as a uint8 `[H, W, 3]` numpy array; a one-line error for anything else."""
    if not isinstance(image, np.ndarray):
        raise UserError(f"expected a numpy uint8 image [H, W, 3], got {type(image).__name__}; "
                        "use np.asarray(PIL.Image.open(path).convert('RGB'))")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (1, 4)):
        raise UserError(f"image shape {image.shape} is not RGB: convert it first, e.g. "
                        "np.asarray(PIL.Image.fromarray(image).convert('RGB'))")
    if image.ndim == 3 and image.shape[0] == 3 and image.shape[-1] != 3:
        raise UserError(f"image shape {image.shape} looks channels-first; pass HWC: "
                        "image.transpose(1, 2, 0)")
    if image.ndim != 3 or image.shape[-1] != 3:
        raise UserError(f"expected an image [H, W, 3], got shape {image.shape}")
    if image.dtype != np.uint8:
        hint = " (floats in [0, 1]: (image * 255).round().astype(np.uint8))" \
            if image.dtype.kind == "f" else ""
        raise UserError(f"expected a uint8 image, got {image.dtype}{hint}")
    if min(image.shape[:2]) < 1:
        raise UserError(f"empty image of shape {image.shape}")
    return image


def input_size(size: int | Sequence[int]) -> tuple[int, int]:
    """An input size `S` or `(H, W)` as (H, W), checked to be positive multiples of 32."""
    h, w = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if h < 32 or w < 32 or h % 32 or w % 32:
        raise UserError(f"the detector's input size must be multiples of 32, got {h}x{w} "
                        "(e.g. 416, 512, 640)")
    return int(h), int(w)


def letterbox(image: np.ndarray, size: int | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize `image` (uint8 `[H, W, 3]`) to fit `size` keeping its aspect ratio and pad it
    at the bottom / right with 114 (YOLOX's `preproc`, in RGB and with PIL's bilinear).

    Returns:
      the canvas, uint8 `[h, w, 3]`, and the scale (sy, sx) float64 `[2]` the image was
      resized by on each axis (rounding the size makes them differ slightly): a point (x, y)
      of the image is at (x * sx, y * sy) on the canvas.
    """
    image = check_image(image)
    h, w = input_size(size)
    ih, iw = image.shape[:2]
    r = min(h / ih, w / iw)
    nh, nw = max(1, min(h, int(ih * r))), max(1, min(w, int(iw * r)))
    if (nh, nw) != (ih, iw):
        image = np.asarray(Image.fromarray(image).resize((nw, nh), Image.Resampling.BILINEAR))
    out = np.full((h, w, 3), PAD_VALUE, np.uint8)
    out[:nh, :nw] = image
    return out, np.array([nh / ih, nw / iw], np.float64)


def normalize(images: Any) -> Any:
    """uint8 images `[..., 3]` (numpy or jax) -> float32 (x / 255 - mean) / std."""
    mean = np.asarray(IMAGENET_MEAN, np.float32)
    std = np.asarray(IMAGENET_STD, np.float32)
    return (images.astype(np.float32) / np.float32(255) - mean) / std


def preprocess(images: Sequence[np.ndarray], size: int | Sequence[int]
               ) -> tuple[np.ndarray, np.ndarray]:
    """Letterbox every image to one batch.

    Returns:
      uint8 `[N, h, w, 3]` (the model's input after `normalize`), and the scales `[N, 2]`
      (sy, sx) that `to_original` divides by.
    """
    boxed = [letterbox(im, size) for im in images]
    return np.stack([b[0] for b in boxed]), np.stack([b[1] for b in boxed])


def to_original(boxes: np.ndarray, scale: np.ndarray, image_hw: Sequence[int]) -> np.ndarray:
    """xyxy boxes `[..., 4]` on the letterbox canvas -> pixels of the original image
    (divided by the resize scale of each axis, clipped to the image), float32."""
    sy, sx = np.asarray(scale, np.float64)
    out = np.asarray(boxes, np.float64) / np.array([sx, sy, sx, sy])
    h, w = image_hw
    out[..., 0::2] = out[..., 0::2].clip(0, w)
    out[..., 1::2] = out[..., 1::2].clip(0, h)
    return out.astype(np.float32)
