"""The picture and prompts of the SAM pipeline cases of `evit_jax.bench.compare`.

Imported by both timing workers (the reference's venv too), so numpy only, and no random
generator: both sides must get the same bytes whatever their numpy version.

Parts (`NAME:PART:HxW:BATCH`): `set_image` (encode one picture; BATCH 1), `boxes`
(decode BATCH box prompts in one call: our `predict_batch`, the authors' `predict_torch`),
`amg` (the automatic mask generator with BATCH x BATCH points).
"""

from __future__ import annotations

import numpy as np

PARTS = ("set_image", "boxes", "amg")


def picture(h: int, w: int) -> np.ndarray:
    """`[h, w, 3]` uint8: a smooth background with a few flat shapes (things to segment)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([90 + 60 * np.sin(x / 37.0), 110 + 50 * np.cos(y / 29.0),
                    100 + 40 * np.sin((x + y) / 53.0)], axis=-1)
    shapes = [(0.30, 0.25, 0.12, (230, 40, 40)), (0.65, 0.60, 0.18, (30, 200, 60)),
              (0.25, 0.75, 0.10, (40, 60, 230)), (0.75, 0.20, 0.08, (240, 220, 30))]
    for cy, cx, r, color in shapes:
        inside = (y - cy * h) ** 2 + (x - cx * w) ** 2 < (r * min(h, w)) ** 2
        img[inside] = color
    img[int(0.55 * h):int(0.85 * h), int(0.08 * w):int(0.30 * w)] = (200, 200, 200)
    return np.clip(img, 0, 255).astype(np.uint8)


def boxes(h: int, w: int, n: int) -> np.ndarray:
    """`[n, 4]` float32 XYXY boxes in pixels, spread over the picture (clipped to it)."""
    i = np.arange(n, dtype=np.float64)
    cx, cy = (0.15 + 0.7 * ((i * 0.618) % 1.0)) * w, (0.15 + 0.7 * ((i * 0.382) % 1.0)) * h
    half = (0.05 + 0.15 * ((i * 0.271) % 1.0))[:, None] * np.array([w, h])
    xyxy = np.concatenate([np.stack([cx, cy], 1) - half, np.stack([cx, cy], 1) + half], 1)
    return np.clip(xyxy, 0, [w, h, w, h]).astype(np.float32)
