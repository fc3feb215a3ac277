"""Mask losses of the EfficientViT-SAM recipe (spec section 7.3), per predicted mask.

`point_loss`: PointRend-style uncertainty sampling as the authors train (from SAM-HQ): draw
`oversample * P` uniform points, keep the `importance * P` whose logits are closest to 0 and
add `(1 - importance) * P` fresh uniform ones; at those points the logits and the
ground-truth mask are read by bilinear interpolation (`grid_sample`, align_corners False,
zeros outside); loss = 20 * BCE + dice (dice with +1 smoothing). The authors upsample the
low-res logits to the image size first and sample there; we sample the low-res logits
directly at the same positions (both are bilinear readings of the same map; the difference
is a second interpolation, small against the loss).

`full_loss` (`sam.loss_points = 0`): the same 20 * BCE + dice over every low-res pixel against
the ground truth area-averaged to the low-res grid (no sampling; cheaper on small maps).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array
BCE_WEIGHT = 20.0


def bilinear_sample(img: Array, pts: Array) -> Array:
    """Read `img` `[H, W]` at points `[P, 2]` (XY in [0, 1] of the whole map) -> `[P]`, as
    PyTorch's `grid_sample(align_corners=False, padding_mode="zeros")`."""
    h, w = img.shape
    pad = jnp.pad(img, 1)  # zeros outside: index i of img is i + 1 here
    x = pts[:, 0] * w - 0.5
    y = pts[:, 1] * h - 0.5
    x0, y0 = jnp.floor(x), jnp.floor(y)
    fx, fy = x - x0, y - y0
    xi = jnp.clip(x0.astype(jnp.int32) + 1, 0, w + 1)
    yi = jnp.clip(y0.astype(jnp.int32) + 1, 0, h + 1)
    xj, yj = jnp.minimum(xi + 1, w + 1), jnp.minimum(yi + 1, h + 1)
    return ((1 - fy) * ((1 - fx) * pad[yi, xi] + fx * pad[yi, xj])
            + fy * ((1 - fx) * pad[yj, xi] + fx * pad[yj, xj]))


def bce_dice(logits: Array, target: Array) -> Array:
    """20 * mean sigmoid BCE + dice of logits / targets `[P]` (targets in [0, 1])."""
    bce = jnp.mean(jnp.maximum(logits, 0) - logits * target
                   + jnp.log1p(jnp.exp(-jnp.abs(logits))))
    p = jax.nn.sigmoid(logits)
    dice = 1 - (2 * jnp.sum(p * target) + 1) / (jnp.sum(p) + jnp.sum(target) + 1)
    return BCE_WEIGHT * bce + dice


def sample_points(key: Array, logits: Array, num: int, oversample: float,
                  importance: float) -> Array:
    """`[num, 2]` points in [0, 1]^2: the most uncertain (|logit| smallest) of
    `oversample * num` uniform draws, then uniform ones (no gradient through the choice)."""
    k1, k2 = jax.random.split(key)
    n_over, n_imp = int(num * oversample), int(importance * num)
    cand = jax.random.uniform(k1, (n_over, 2))
    unc = -jnp.abs(bilinear_sample(jax.lax.stop_gradient(logits), cand))
    _, idx = jax.lax.top_k(unc, n_imp)
    return jnp.concatenate([cand[idx], jax.random.uniform(k2, (num - n_imp, 2))], 0)


def point_loss(key: Array, logits: Array, target: Array, num: int = 112 * 112,
               oversample: float = 3.0, importance: float = 0.75) -> Array:
    """Loss of low-res logits `[L, L]` against a 0/1 mask `[S, S]` (same square frame) on
    uncertainty-sampled points."""
    pts = sample_points(key, logits, num, oversample, importance)
    return bce_dice(bilinear_sample(logits, pts), bilinear_sample(target, pts))


def low_res_target(target: Array, size: int) -> Array:
    """0/1 mask `[S, S]` -> soft mask `[size, size]` (area average, antialiased resize)."""
    if target.shape[0] == size:
        return target
    return jax.image.resize(target, (size, size), "linear", antialias=True)


def full_loss(logits: Array, target_low: Array) -> Array:
    """Loss over every low-res pixel: logits and soft target `[L, L]`."""
    return bce_dice(logits.reshape(-1), target_low.reshape(-1))


def mask_iou(logits: Array, target_low: Array) -> Array:
    """IoU in [0, 1] of `logits > 0` with `target_low >= 0.5` (`[L, L]`); 0 when both are
    empty. The IoU head's regression target."""
    pred, gt = logits > 0, target_low >= 0.5
    inter = jnp.sum(pred & gt)
    union = jnp.sum(pred | gt)
    return jnp.where(union > 0, inter / jnp.maximum(union, 1), 0.0).astype(jnp.float32)
