"""MATLAB's `imresize(img, scale, 'bicubic')`, antialiasing included, in float64 numpy.

This is the degradation of the SR benchmarks: DIV2K's official LR images, BasicSR's and
SwinIR's test sets are made with it. It differs from PIL's, OpenCV's and `jax.image.resize`'s
bicubic in two ways that change PSNR by tenths of a dB: when downscaling the kernel is
stretched by 1/scale (antialiasing), and out-of-range taps are mirrored with the edge sample
repeated (MATLAB's index table `[1..n, n..1]`).

For an output sample i (1-based) of an axis scaled by s, the input coordinate is
`u = i / s + (1 - 1/s) / 2`; the taps are the integers within half a kernel width of u, weighted
by the cubic kernel (a = -0.5), stretched to width 4/s when s < 1, and normalised to sum 1.
Each axis is one matrix product; the axis with the smaller scale goes first, as in MATLAB.
"""

from __future__ import annotations

import math

import numpy as np

from evit_jax.errors import UserError


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's `cubic`), support [-2, 2]."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


def resize_matrix(n_in: int, n_out: int, scale: float, antialias: bool = True) -> np.ndarray:
    """The `[n_out, n_in]` float64 matrix that resizes one axis (rows sum to 1).

    Args:
      n_in, n_out: axis lengths.
      scale: the scale factor (MATLAB uses it, not n_out / n_in, for the coordinates).
      antialias: stretch the kernel when downscaling (MATLAB's default).
    """
    width = 4.0
    kernel = cubic
    if scale < 1 and antialias:
        width = 4.0 / scale
        kernel = lambda x: scale * cubic(scale * x)  # noqa: E731
    i = np.arange(1, n_out + 1, dtype=np.float64)
    u = i / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - width / 2.0)
    taps = math.ceil(width) + 2
    idx = left[:, None] + np.arange(taps)[None, :]          # 1-based input positions
    w = kernel(u[:, None] - idx)
    w = w / w.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(n_in), np.arange(n_in - 1, -1, -1)])
    col = mirror[np.mod(idx.astype(np.int64) - 1, 2 * n_in)]
    m = np.zeros((n_out, n_in), np.float64)
    np.add.at(m, (np.repeat(np.arange(n_out), taps), col.ravel()), w.ravel())
    return m


def output_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """MATLAB's output size: `ceil(size * scale)` per axis."""
    return tuple(int(math.ceil(n * scale - 1e-9)) for n in size)


def imresize(image: np.ndarray, scale: float, antialias: bool = True) -> np.ndarray:
    """Resize `[H, W]` or `[H, W, C]` by `scale` as MATLAB's `imresize(..., 'bicubic')`.

    Args:
      image: uint8 or float array (any range).
      scale: > 0; the output is `[ceil(H * scale), ceil(W * scale), C]`.
      antialias: as MATLAB's 'Antialiasing' option (default true, used when scale < 1).
    Returns:
      float64 in the input's range, not rounded or clipped (bicubic overshoots slightly):
      round and clip to [0, 255] yourself to get MATLAB's uint8 result.
    """
    img = np.asarray(image)
    if img.ndim not in (2, 3):
        raise UserError(f"imresize expects [H, W] or [H, W, C], got shape {img.shape}")
    if not scale > 0:
        raise UserError(f"scale must be > 0, got {scale}")
    if img.dtype == np.bool_ or not (np.issubdtype(img.dtype, np.integer)
                                     or np.issubdtype(img.dtype, np.floating)):
        raise UserError(f"imresize expects a numeric image, got dtype {img.dtype}")
    x = img.astype(np.float64)
    if x.ndim == 2:
        x = x[:, :, None]
    h, w = x.shape[:2]
    oh, ow = output_size((h, w), scale)
    if (oh, ow) == (h, w) and scale == 1:
        return x if img.ndim == 3 else x[:, :, 0]
    # Equal scales on both axes: MATLAB's order is rows (H) first, then columns.
    x = np.einsum("oh,hwc->owc", resize_matrix(h, oh, scale, antialias), x)
    x = np.einsum("ow,hwc->hoc", resize_matrix(w, ow, scale, antialias), x)
    return x if img.ndim == 3 else x[:, :, 0]
