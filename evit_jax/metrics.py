"""Image-restoration metrics with BasicSR's (and SwinIR's) definitions: PSNR and SSIM.

Both take `[H, W, 3]` RGB images in [0, 255] (uint8 or float), crop `crop_border` pixels on
each side, and by default compare the luma Y of ITU-R BT.601 as MATLAB's `rgb2ycbcr` computes
it (Y in [16, 235]; not rounded). All arithmetic is float64.
"""

from __future__ import annotations

import math

import numpy as np

from evit_jax.errors import UserError

# MATLAB rgb2ycbcr, Y row, for RGB in [0, 1] -> Y in [16, 235] (x 255 scale).
_Y_WEIGHTS = np.array([65.481, 128.553, 24.966], np.float64)


def rgb_to_y(image: np.ndarray) -> np.ndarray:
    """`[H, W, 3]` RGB in [0, 255] -> `[H, W]` BT.601 luma in [16, 235] (float64)."""
    x = np.asarray(image, np.float64)
    return x @ _Y_WEIGHTS / 255.0 + 16.0


def _prepare(img: np.ndarray, ref: np.ndarray, crop_border: int,
             y_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(img), np.asarray(ref)
    if a.shape != b.shape:
        raise UserError(f"images differ in shape: {a.shape} vs {b.shape} (crop or resize "
                        "the output to the reference's size)")
    if a.ndim != 3 or a.shape[-1] != 3:
        raise UserError(f"expected [H, W, 3] RGB images in [0, 255], got shape {a.shape}")
    if crop_border < 0 or 2 * crop_border >= min(a.shape[:2]):
        raise UserError(f"crop_border={crop_border} leaves nothing of a "
                        f"{a.shape[0]}x{a.shape[1]} image")
    a, b = a.astype(np.float64), b.astype(np.float64)
    if crop_border:
        a = a[crop_border:-crop_border, crop_border:-crop_border]
        b = b[crop_border:-crop_border, crop_border:-crop_border]
    if y_channel:
        return rgb_to_y(a)[..., None], rgb_to_y(b)[..., None]
    return a, b


def psnr(img: np.ndarray, ref: np.ndarray, crop_border: int = 0,
         y_channel: bool = True) -> float:
    """Peak signal-to-noise ratio in dB, peak 255: `10 log10(255^2 / MSE)`; inf if equal.

    Args:
      img, ref: `[H, W, 3]` RGB in [0, 255].
      crop_border: pixels dropped on each side first (the SR convention: the scale).
      y_channel: compare BT.601 Y (default) instead of the three RGB channels.
    """
    a, b = _prepare(img, ref, crop_border, y_channel)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """The normalised 1-D Gaussian of SSIM (OpenCV's `getGaussianKernel(size, sigma)`)."""
    t = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-t * t / (2.0 * sigma * sigma))
    return g / g.sum()


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of `[H, W]` with the outer product g g^T."""
    k = len(g)
    rows = np.lib.stride_tricks.sliding_window_view(x, k, axis=0) @ g     # [H-k+1, W]
    return np.lib.stride_tricks.sliding_window_view(rows, k, axis=1) @ g  # [H-k+1, W-k+1]


def _ssim_plane(a: np.ndarray, b: np.ndarray) -> float:
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    g = gaussian_window()
    mu_a, mu_b = _filter_valid(a, g), _filter_valid(b, g)
    var_a = _filter_valid(a * a, g) - mu_a ** 2
    var_b = _filter_valid(b * b, g) - mu_b ** 2
    cov = _filter_valid(a * b, g) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)
    return float(np.mean(num / den))


def ssim(img: np.ndarray, ref: np.ndarray, crop_border: int = 0,
         y_channel: bool = True) -> float:
    """Structural similarity (Wang et al. 2004) as BasicSR's `calculate_ssim`.

    11x11 Gaussian window (sigma 1.5), 'valid' filtering (no padding), C1 = (0.01 * 255)^2,
    C2 = (0.03 * 255)^2, the map's mean; with `y_channel=False` the mean over RGB channels.
    Images must be at least 11x11 after cropping.
    """
    a, b = _prepare(img, ref, crop_border, y_channel)
    if min(a.shape[:2]) < 11:
        raise UserError(f"SSIM needs at least 11x11 pixels after cropping, got "
                        f"{a.shape[0]}x{a.shape[1]}")
    return float(np.mean([_ssim_plane(a[..., c], b[..., c]) for c in range(a.shape[-1])]))
