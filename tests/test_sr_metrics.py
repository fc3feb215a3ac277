"""MATLAB imresize and the BasicSR PSNR/SSIM, against numbers derived by hand."""

import math

import numpy as np
import pytest

from evit_jax.metrics import gaussian_window, psnr, rgb_to_y, ssim
from evit_jax.sr import imresize

# Cubic (a = -0.5) at the tap distances of a x1/2 antialiased resize (kernel 0.5 * cubic(x/2),
# taps at distances 0.5, 1.5, 2.5, 3.5 on each side), computed by hand from the polynomials:
# cubic(0.25) = 0.8671875, cubic(0.75) = 0.2265625, cubic(1.25) = -0.0703125,
# cubic(1.75) = -0.0234375; they sum to 1 per side, so the normalised weights are half.
HALF_TAPS = np.array([-0.0234375, -0.0703125, 0.2265625, 0.8671875]) / 2
HALF_W = np.concatenate([HALF_TAPS, HALF_TAPS[::-1]])


def test_downscale_half_matches_hand_weights():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (1, 16))
    out = imresize(x, 0.5)
    assert out.shape == (1, 8) and out.dtype == np.float64
    # Output i (1-based) sits at input coordinate 2i - 0.5: taps 2i-4 .. 2i+3 (1-based).
    for i in range(3, 7):  # interior outputs, no mirrored taps
        taps = x[0, 2 * i - 5: 2 * i + 3]
        assert out[0, i - 1] == pytest.approx(float(taps @ HALF_W), abs=1e-10)
    # First output: taps -2..5, mirrored with the edge repeated: -2 -> 3, -1 -> 2, 0 -> 1.
    padded = np.concatenate([x[0, [2, 1, 0]], x[0, :5]])
    assert out[0, 0] == pytest.approx(float(padded @ HALF_W), abs=1e-10)


def test_upscale_two_matches_hand_weights():
    x = np.arange(6, dtype=np.float64)[None, :] ** 2
    out = imresize(x, 2)
    assert out.shape == (2, 12)
    # Output 3 (1-based) sits at 3/2 + 1/4 = 1.75: distances 1.75, 0.75, -0.25, -1.25 from
    # inputs 0..3 (1-based), weights cubic(...) (they already sum to 1).
    w = np.array([-0.0234375, 0.2265625, 0.8671875, -0.0703125])
    padded = np.concatenate([x[0, [0]], x[0, :3]])  # input 0 mirrors to input 1
    assert out[0, 2] == pytest.approx(float(padded @ w), abs=1e-10)
    # Each row of the 2-D result equals the 1-D result (the rows are identical).
    np.testing.assert_allclose(out[0], out[1], atol=1e-12)


def test_identity_constant_and_range():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(imresize(img, 1), img.astype(np.float64))
    const = np.full((12, 10, 3), 77, np.uint8)
    for s in (0.5, 1 / 3, 0.25, 2, 3):
        out = imresize(const, s)
        assert out.shape[:2] == (math.ceil(12 * s - 1e-9), math.ceil(10 * s - 1e-9))
        np.testing.assert_allclose(out, 77.0, atol=1e-9)
    big = imresize(img, 1 / 3)
    assert big.shape == (3, 3, 3)
    assert imresize(img.astype(np.float32) / 255, 0.5).max() < 1.5  # keeps the input's range


def test_imresize_rejects_bad_input():
    with pytest.raises(ValueError, match="H, W"):
        imresize(np.zeros((2, 2, 2, 2)), 0.5)
    with pytest.raises(ValueError, match="scale"):
        imresize(np.zeros((4, 4)), 0)


def test_psnr_hand_computed():
    ref = np.zeros((8, 8, 3), np.uint8)
    assert psnr(ref, ref) == math.inf
    img = ref.astype(np.float64)
    img[..., 0] += 10  # R + 10 -> Y + 10 * 65.481 / 255 everywhere
    dy = 10 * 65.481 / 255
    assert psnr(img, ref) == pytest.approx(10 * math.log10(255 ** 2 / dy ** 2), abs=1e-9)
    # RGB: one channel of three off by 10 -> MSE = 100 / 3.
    assert psnr(img, ref, y_channel=False) == pytest.approx(
        10 * math.log10(255 ** 2 * 3 / 100), abs=1e-9)
    # crop_border: an error confined to the border does not count.
    edge = ref.astype(np.float64)
    edge[0] = 255
    assert psnr(edge, ref, crop_border=1) == math.inf
    assert rgb_to_y(np.array([[[255, 255, 255]]]))[0, 0] == pytest.approx(235.0, abs=1e-3)


def _ssim_direct(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two planes by the formula, window by window (no filtering tricks)."""
    t = np.arange(11) - 5.0
    g1 = np.exp(-t ** 2 / 4.5)
    w = np.outer(g1, g1)
    w /= w.sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for i in range(a.shape[0] - 10):
        for j in range(a.shape[1] - 10):
            pa, pb = a[i:i + 11, j:j + 11], b[i:i + 11, j:j + 11]
            ma, mb = (w * pa).sum(), (w * pb).sum()
            va = (w * (pa - ma) ** 2).sum()
            vb = (w * (pb - mb) ** 2).sum()
            cov = (w * (pa - ma) * (pb - mb)).sum()
            vals.append((2 * ma * mb + c1) * (2 * cov + c2)
                        / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_against_direct_formula():
    rng = np.random.default_rng(2)
    ref = rng.integers(0, 256, (20, 18, 3)).astype(np.float64)
    img = np.clip(ref + rng.normal(0, 20, ref.shape), 0, 255)
    assert ssim(ref, ref) == pytest.approx(1.0, abs=1e-12)
    want = _ssim_direct(rgb_to_y(img[2:-2, 2:-2]), rgb_to_y(ref[2:-2, 2:-2]))
    assert ssim(img, ref, crop_border=2) == pytest.approx(want, abs=1e-10)
    want_rgb = np.mean([_ssim_direct(img[..., c], ref[..., c]) for c in range(3)])
    assert ssim(img, ref, y_channel=False) == pytest.approx(want_rgb, abs=1e-10)
    assert gaussian_window().sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="11x11"):
        ssim(img[:12], ref[:12], crop_border=1)
    with pytest.raises(ValueError, match="shape"):
        psnr(img[:10], ref)
