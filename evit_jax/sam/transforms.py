"""Host-side transforms of EfficientViT-SAM, exactly as the reference predictor does them.

Preprocessing: resize the uint8 image so its longest side is the encoder size S with PIL's
(antialiased) bilinear filter, scale to [0, 1], normalise with the ImageNet mean / std, and
zero-pad bottom / right to S x S. Any other resampler moves the embedding far beyond float32
noise, so this runs in numpy + PIL, outside XLA.

Prompts and masks live in a fixed 1024 frame (the image resized to a longest side of 1024),
whatever S is: `input_size` is the image's size in that frame, prompts are scaled into it,
and mask logits are mapped back from it to the original size.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from evit_jax.errors import UserError

PIXEL_MEAN = np.array([123.675, 116.28, 103.53], np.float64) / 255
PIXEL_STD = np.array([58.395, 57.12, 57.375], np.float64) / 255


def preprocess_shape(h: int, w: int, long_side: int) -> tuple[int, int]:
    """(H, W) after scaling the longest side to `long_side` (rounded half up; at least 1, so a
    1x5000 strip stays one row high instead of vanishing)."""
    scale = long_side * 1.0 / max(h, w)
    return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))


def check_image(image: np.ndarray) -> None:
    """Raise a clear error unless `image` is a uint8 `[H, W, 3]` array."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a numpy uint8 image [H, W, 3], got {type(image).__name__}; "
                        "use np.asarray(PIL.Image.open(path).convert('RGB'))")
    if image.ndim == 3 and image.shape[0] == 3 and image.shape[-1] != 3:
        raise UserError(f"image shape {image.shape} looks channels-first; pass HWC: "
                        "image.transpose(1, 2, 0)")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 1):
        raise UserError(f"image shape {image.shape} is single-channel; SAM takes RGB: "
                        "np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=-1)")
    if image.ndim == 3 and image.shape[-1] == 4:
        raise UserError(f"image shape {image.shape} has 4 channels (RGBA?); pass image[..., :3]")
    if image.ndim != 3 or image.shape[-1] != 3:
        raise UserError(f"expected an image [H, W, 3], got shape {image.shape}")
    if image.dtype != np.uint8:
        hint = " (floats in [0, 1]: (image * 255).round().astype(np.uint8))" \
            if image.dtype.kind == "f" else ""
        raise UserError(f"expected a uint8 image, got {image.dtype}{hint}")
    if min(image.shape[:2]) < 1:
        raise UserError(f"empty image of shape {image.shape}")


def preprocess(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 `[H, W, 3]` RGB -> float32 `[1, size, size, 3]` encoder input (NHWC)."""
    check_image(image)
    h, w = image.shape[:2]
    if max(h, w) != size:
        nh, nw = preprocess_shape(h, w, size)
        image = np.asarray(Image.fromarray(image).resize((nw, nh), Image.Resampling.BILINEAR))
    x = image.astype(np.float32) / np.float32(255)
    x = (x - PIXEL_MEAN.astype(np.float32)) / PIXEL_STD.astype(np.float32)
    out = np.zeros((1, size, size, 3), np.float32)
    out[0, :x.shape[0], :x.shape[1]] = x
    return out


class ResizeLongestSide:
    """Maps prompts from original-image pixels into the prompt frame (longest side
    `target_length`), like segment-anything's class of this name (numpy only)."""

    def __init__(self, target_length: int = 1024):
        self.target_length = target_length

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        """XY coords `[..., 2]` in original pixels -> float64 coords in the frame."""
        old_h, old_w = original_size
        new_h, new_w = preprocess_shape(old_h, old_w, self.target_length)
        out = np.array(coords, dtype=np.float64, copy=True)
        out[..., 0] *= new_w / old_w
        out[..., 1] *= new_h / old_h
        return out

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        """XYXY boxes `[..., 4]` -> `[..., 4]` in the frame."""
        boxes = np.asarray(boxes)
        return self.apply_coords(boxes.reshape(*boxes.shape[:-1], 2, 2),
                                 original_size).reshape(boxes.shape)


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """float64 `[n_out, n_in]` matrix of PyTorch's CPU bilinear resize (align_corners=False)
    along one axis, with the source positions and weights rounded to float32 as PyTorch
    computes them: scale = float32(n_in / n_out), src = fma((dst + 0.5), scale, -0.5). For a
    ratio like 768 -> 480 the float32 scale is off by ~1e-7, which moves far pixels by ~1e-4 px
    (a few 1e-6 of relative error in the logits if computed exactly instead)."""
    f32 = np.float32
    scale = f32(n_in) / f32(n_out)
    dst = np.arange(n_out, dtype=f32) + f32(0.5)
    # One rounding of the exact (dst + 0.5) * scale - 0.5, as a fused multiply-add does.
    src = (dst.astype(np.float64) * np.float64(scale) - 0.5).astype(f32)
    src = np.maximum(src, f32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    lam = np.clip(src - i0.astype(f32), f32(0), f32(1))
    i1 = np.minimum(i0 + 1, n_in - 1)
    m = np.zeros((n_out, n_in), np.float64)
    rows = np.arange(n_out)
    np.add.at(m, (rows, i0), (f32(1) - lam).astype(np.float64))
    np.add.at(m, (rows, i1), lam.astype(np.float64))
    return m


def postprocess_matrices(low_res: int, frame: int, input_size: tuple[int, int],
                         original_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per-axis linear maps (float32 `[H, low_res]`, `[W, low_res]`) that take low-res logits
    to the original image size the way the reference does it in three steps: bilinear to
    `frame` x `frame`, crop to `input_size`, bilinear to `original_size` (PyTorch's
    `align_corners=False` rule each time). Composed in float64, applied as two matmuls."""
    mats = []
    for n_in, n_orig in zip(input_size, original_size):
        up = bilinear_matrix(low_res, frame)[:n_in]           # [n_in, low_res]
        down = bilinear_matrix(n_in, n_orig)                   # [n_orig, n_in]
        mats.append((down @ up).astype(np.float32))
    return mats[0], mats[1]
