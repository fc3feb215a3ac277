"""LR/HR pairs as the SR benchmarks make them: mod-crop, MATLAB degradation, uint8 rounding,
file pairing, and the PSNR/SSIM-Y scores of an output next to bicubic's."""

from __future__ import annotations

import os

import numpy as np

from evit_jax.errors import UserError, UserFileNotFoundError
from evit_jax.metrics import psnr, ssim
from evit_jax.sr.imresize import imresize

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Float image in [0, 255] -> uint8 as MATLAB's `uint8()` (round half up, clip)."""
    return np.clip(np.floor(np.asarray(x, np.float64) + 0.5), 0, 255).astype(np.uint8)


def mod_crop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop `[H, W, ...]` to multiples of `scale` (bottom / right), as BasicSR's `mod_crop`."""
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


def degrade(hr: np.ndarray, scale: int) -> np.ndarray:
    """uint8 HR `[H, W, 3]` (sides multiples of `scale`) -> uint8 LR `[H/s, W/s, 3]`: MATLAB
    bicubic downscaling, rounded as the LR files of DIV2K / BasicSR's test sets."""
    return to_uint8(imresize(hr, 1.0 / scale))


def bicubic_upscale(lr: np.ndarray, scale: int) -> np.ndarray:
    """uint8 LR -> uint8 MATLAB-bicubic upscaling: the baseline every SR paper reports."""
    return to_uint8(imresize(lr, scale))


def check_pair(hr: np.ndarray, lr: np.ndarray, scale: int) -> None:
    """Raise unless `lr` is `hr` (mod-cropped) downscaled by `scale`, shape-wise."""
    if lr.shape[0] * scale != hr.shape[0] or lr.shape[1] * scale != hr.shape[1]:
        raise UserError(f"LR {lr.shape[0]}x{lr.shape[1]} x {scale} != HR "
                        f"{hr.shape[0]}x{hr.shape[1]} (HR cropped to a multiple of {scale}): "
                        f"wrong scale, or mismatched LR/HR folders?")


def list_images(d: str | os.PathLike) -> list[str]:
    """Sorted image files of folder `d`."""
    d = os.fspath(d)
    if not os.path.isdir(d):
        raise UserFileNotFoundError(f"image folder {d!r} does not exist")
    files = sorted(os.path.join(d, f) for f in os.listdir(d)
                   if f.lower().endswith(IMAGE_EXTS))
    if not files:
        raise UserFileNotFoundError(f"no images ({', '.join(IMAGE_EXTS)}) in {d!r}")
    return files


def pair_lr_files(hr_files: list[str], lr_dir: str | os.PathLike, scale: int) -> list[str]:
    """The LR file of each HR file in `lr_dir`: the same stem, or stem + `x{scale}` (DIV2K)."""
    by_stem = {os.path.splitext(os.path.basename(f))[0]: f for f in list_images(lr_dir)}
    out = []
    for f in hr_files:
        stem = os.path.splitext(os.path.basename(f))[0]
        lr = by_stem.get(stem) or by_stem.get(f"{stem}x{scale}")
        if lr is None:
            raise UserFileNotFoundError(f"no LR image for {f} in {lr_dir} (expected {stem}.* or "
                                        f"{stem}x{scale}.*)")
        out.append(lr)
    return out


def score(sr: np.ndarray, hr: np.ndarray, lr: np.ndarray, scale: int) -> dict[str, float]:
    """PSNR-Y / SSIM-Y of a uint8 output and of bicubic, `crop_border = scale`."""
    bic = bicubic_upscale(lr, scale)
    return {"psnr_y": psnr(sr, hr, scale), "ssim_y": ssim(sr, hr, scale),
            "bicubic_psnr_y": psnr(bic, hr, scale), "bicubic_ssim_y": ssim(bic, hr, scale)}
