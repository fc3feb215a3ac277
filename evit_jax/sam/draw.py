"""Draw masks, their outlines and the prompts over an image (PIL, numpy)."""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw


def palette(n: int) -> np.ndarray:
    """n distinct, saturated uint8 RGB colours (golden-ratio hues)."""
    hues = (np.arange(n) * 0.618033988749895 + 0.08) % 1.0
    return np.array([[round(255 * c) for c in colorsys.hsv_to_rgb(h, 0.85, 1.0)]
                     for h in hues], np.uint8).reshape(n, 3)


def outline(mask: np.ndarray, width: int = 2) -> np.ndarray:
    """Pixels of `mask` within `width` pixels of its border (4-neighbourhood)."""
    inner = mask.copy()
    for _ in range(width):
        shrunk = inner.copy()
        shrunk[1:] &= inner[:-1]
        shrunk[:-1] &= inner[1:]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        inner = shrunk
    return mask & ~inner


def overlay(image: np.ndarray, masks: list[np.ndarray] | np.ndarray, alpha: float = 0.45,
            points: np.ndarray | None = None, labels: np.ndarray | None = None,
            boxes: np.ndarray | None = None, colors: np.ndarray | None = None) -> Image.Image:
    """The image with each mask tinted and outlined in its colour, clicks drawn as discs
    (green foreground, red background) and boxes as rectangles.

    Args:
      image: uint8 `[H, W, 3]`.
      masks: boolean `[N, H, W]`; drawn largest first, so small masks stay visible.
      points: `[P, 2]` XY pixels; labels `[P]` (1 foreground, 0 background).
      boxes: `[B, 4]` XYXY pixels.
    """
    out = image.astype(np.float32).copy()
    masks = [np.asarray(m, bool) for m in masks]
    colors = palette(len(masks)) if colors is None else np.asarray(colors, np.uint8)
    order = sorted(range(len(masks)), key=lambda i: -int(masks[i].sum()))
    for i in order:
        m = masks[i]
        out[m] = (1 - alpha) * out[m] + alpha * colors[i]
    for i in order:
        out[outline(masks[i])] = colors[i]
    img = Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    r = max(4, round(min(image.shape[:2]) / 90))
    for b in [] if boxes is None else np.asarray(boxes).reshape(-1, 4):
        draw.rectangle([float(v) for v in b], outline=(255, 255, 255), width=max(2, r // 2))
    if points is not None:
        labels = np.ones(len(points), int) if labels is None else np.asarray(labels)
        for (x, y), lab in zip(np.asarray(points, float), labels):
            fill = (40, 220, 60) if lab == 1 else (235, 40, 40)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill, outline=(255, 255, 255),
                         width=max(1, r // 3))
    return img
