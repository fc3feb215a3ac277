"""On-device pieces of the training step: soft targets, mixup / cutmix, the losses.

All run inside the jitted step on the global batch, with keys derived from the step, so a
run gives the same numbers whatever the number of hosts and devices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from evit_jax.nn.resize import resize

Array = jax.Array
CLS_LOSSES = ("bce", "ce")


def smooth_one_hot(labels: Array, num_classes: int, smoothing: float) -> Array:
    """`[B]` int -> `[B, K]`: `onehot * (1 - s) + s / K` (the reference's label smoothing)."""
    return jax.nn.one_hot(labels, num_classes) * (1.0 - smoothing) + smoothing / num_classes


def _cutmix_boxes(key: Array, lam: Array, b: int, h: int, w: int) -> tuple[Array, Array]:
    """One box per sample with side ratio sqrt(1 - lam) around a uniform centre, clipped to
    the image. Returns the pixel mask `[B, H, W, 1]` (1 inside) and each sample's share of
    the pasted area `[B]`."""
    kx, ky = jax.random.split(key)
    cut = jnp.sqrt(1.0 - lam)
    cx = jax.random.uniform(kx, (b,), minval=0, maxval=w)
    cy = jax.random.uniform(ky, (b,), minval=0, maxval=h)
    x1 = jnp.floor(jnp.clip(cx - w * cut / 2, 0, w))
    x2 = jnp.floor(jnp.clip(cx + w * cut / 2, 0, w))
    y1 = jnp.floor(jnp.clip(cy - h * cut / 2, 0, h))
    y2 = jnp.floor(jnp.clip(cy + h * cut / 2, 0, h))
    ys, xs = jnp.arange(h)[None, :, None], jnp.arange(w)[None, None, :]
    inside = ((ys >= y1[:, None, None]) & (ys < y2[:, None, None])
              & (xs >= x1[:, None, None]) & (xs < x2[:, None, None]))
    return inside[..., None], (x2 - x1) * (y2 - y1) / (h * w)


def mix(key: Array, images: Array, targets: Array, mixup_alpha: float,
        cutmix_alpha: float) -> tuple[Array, Array]:
    """Mixup or cutmix (equal chance when both are on) with the batch in shuffled order.

    images `[B, H, W, C]`, soft targets `[B, K]`. lam ~ Beta(alpha, alpha) is shared by the
    batch; cutmix re-weights each sample's target by the area really pasted.
    """
    ops = [(a, kind) for a, kind in ((mixup_alpha, "mixup"), (cutmix_alpha, "cutmix")) if a > 0]
    if not ops:
        return images, targets
    k_op, k_lam, k_perm, k_box = jax.random.split(key, 4)
    b, h, w, _ = images.shape
    perm = jax.random.permutation(k_perm, b)
    other_x, other_t = images[perm], targets[perm]

    def mixup(alpha):
        lam = jax.random.beta(k_lam, alpha, alpha)
        return (lam * images + (1 - lam) * other_x).astype(images.dtype), \
            lam * targets + (1 - lam) * other_t

    def cutmix(alpha):
        lam = jax.random.beta(k_lam, alpha, alpha)
        inside, area = _cutmix_boxes(k_box, lam, b, h, w)
        keep = (1.0 - area)[:, None]
        return jnp.where(inside, other_x, images), keep * targets + (1 - keep) * other_t

    branches = [lambda a=a, kind=kind: (mixup if kind == "mixup" else cutmix)(a)
                for a, kind in ops]
    if len(branches) == 1:
        return branches[0]()
    return jax.lax.switch(jax.random.randint(k_op, (), 0, len(branches)), branches)


def cls_loss(logits: Array, targets: Array, kind: str) -> Array:
    """Mean BCE-with-logits over all B x K entries (the reference) or soft cross-entropy."""
    if kind == "bce":
        return optax.sigmoid_binary_cross_entropy(logits, targets).mean()
    if kind == "ce":
        return optax.softmax_cross_entropy(logits, targets).mean()
    raise ValueError(f"unknown loss {kind!r}; use one of {CLS_LOSSES}")


def seg_loss(logits: Array, labels: Array, ignore: int = 255) -> tuple[Array, Array]:
    """Cross-entropy of stride-8 logits `[B, h, w, K]` bilinearly upsampled to the labels
    `[B, H, W]`, averaged over the pixels that are not `ignore`. Returns (loss, pixel acc)."""
    logits = resize(logits, labels.shape[1:3], mode="bilinear")
    valid = labels != ignore
    safe = jnp.where(valid, labels, 0)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, safe)
    n = jnp.maximum(valid.sum(), 1)
    acc = ((logits.argmax(-1) == labels) & valid).sum() / n
    return jnp.where(valid, ce, 0.0).sum() / n, acc
