"""Paired LR/HR data for super-resolution: sources, the degradation, the per-example transforms.

`data.name` (the LR images are made from HR with MATLAB-exact bicubic, `evit_jax.sr.imresize`,
rounded to uint8 like the LR files of the benchmarks, unless given):

- `evit_sr_demo`: the embedded demo set (procedural scenes with sharp edges and fine
  textures, rendered deterministically on first use; 96 train / 8 validation, 128x128;
  `evit_sr_demo/tiny`: 12 / 2 at 64x64, for tests);
- `images:/root`: a folder of HR images (`/root/<split>/` if that folder exists, else `/root`
  itself, e.g. BSD100's or FFHQ's images); with `data.lr_dir` the LR images come from there
  (same layout; `0001.png` matches `0001.png` or `0001x2.png`, DIV2K's naming);
- any tfds name with `hr` / `lr` image features, read with `tfds.data_source`, e.g.
  `div2k/bicubic_x2` (splits `train`, `validation`).

Training examples (streamed by `train.input_pipeline.train_stream`, the SR task's data): a
random HR patch (at LR-aligned offsets) + its LR patch, one of the 8 flips / rotations,
`{"lr": float32 [p/s, p/s, 3], "hr": float32 [p, p, 3]}` in [0, 1].
Evaluation: whole images, HR cropped to a multiple of the scale (BasicSR's `mod_crop`),
`{"lr": uint8 [h, w, 3], "hr": uint8 [s*h, s*w, 3]}`.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from evit_jax.cli import UserError
from evit_jax.data import shapes
from evit_jax.sr.pairs import check_pair, degrade, list_images, mod_crop, pair_lr_files

from .sources import FileSource, _rgb, tfds_source

DEMO_SIZES = {"default": {"train": (96, 128), "validation": (8, 128)},  # (images, side)
              "tiny": {"train": (12, 64), "validation": (2, 64)}}
_SS = 4  # the demo renders at 4x and downsamples: anti-aliased edges, as a camera's


def degrade_window(hr: np.ndarray, top: int, left: int, size: int, scale: int) -> np.ndarray:
    """The LR patch that `degrade(hr)` has at HR window (top, left, size), without resizing
    the whole image: the window plus a margin of the antialiasing kernel's reach is resized
    (offsets and margin multiples of the scale, so the sample grids coincide) and the margin
    cut off. `hr` must be cropped to a multiple of the scale."""
    m = scale * math.ceil((2 * scale + 2) / scale)  # > half the kernel's width of 4s
    t0, l0 = max(top - m, 0), max(left - m, 0)
    t1, l1 = min(top + size + m, hr.shape[0]), min(left + size + m, hr.shape[1])
    lr = degrade(hr[t0:t1, l0:l1], scale)
    r, c, n = (top - t0) // scale, (left - l0) // scale, size // scale
    return lr[r:r + n, c:c + n]


# ------------------------------------------------------------------------------- the demo set
def _fine_texture(rng: np.random.Generator, big: int) -> np.ndarray:
    """`[big, big, 3]` float texture with detail near the LR Nyquist limit: fine stripes or
    checks (periods of 3-12 output pixels) half the time, else the shapes set's texture."""
    if rng.random() < 0.5:
        return shapes.texture(rng, big)
    c0, c1 = rng.random(3), rng.random(3)
    yy, xx = np.mgrid[0:big, 0:big].astype(np.float32) / _SS  # in output pixels
    a, period = rng.uniform(0, np.pi), rng.uniform(3, 12)
    u = (xx * np.cos(a) + yy * np.sin(a)) / period
    v = (-xx * np.sin(a) + yy * np.cos(a)) / period
    if rng.random() < 0.5:
        t = (np.floor(u) % 2).astype(np.float32)
    else:
        t = ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)
    return c0 + (c1 - c0) * t[..., None]


def render_demo(rng: np.random.Generator, size: int) -> np.ndarray:
    """One demo HR image `[size, size, 3]` uint8: a textured background (the shapes set's
    value noise, stripes, checks, gradients) with 3-6 outlined, textured shapes and thin
    strokes; no blur and no noise, so there is detail for SR to restore."""
    big = size * _SS
    img = shapes.to_image(_fine_texture(rng, big), big)
    draw = ImageDraw.Draw(img)
    shapes.clutter(draw, rng, big, int(rng.integers(2, 6)))
    for _ in range(int(rng.integers(3, 7))):
        kind = shapes.CLASSES[int(rng.integers(len(shapes.CLASSES)))]
        radius = rng.uniform(0.08, 0.3) * big
        centre = rng.uniform(0, big, 2)
        angle = rng.uniform(0, 2 * np.pi)
        mask = Image.new("L", (big, big), 0)
        md = ImageDraw.Draw(mask)
        polys = [[tuple(p) for p in shapes.rotate(poly, angle) * radius + centre]
                 for poly in shapes.outline(kind, rng)]
        for k, pts in enumerate(polys):
            md.polygon(pts, fill=255 if k == 0 else 0)
        fill = shapes.to_image(_fine_texture(rng, big), big)
        img = Image.composite(fill, img, mask)
        draw = ImageDraw.Draw(img)
        if rng.random() < 0.7:
            col = tuple(int(v) for v in rng.integers(0, 256, 3))
            draw.line(polys[0] + polys[0][:1], fill=col, width=int(rng.integers(1, 4)) * _SS,
                      joint="curve")
    return np.asarray(img.resize((size, size), Image.LANCZOS))


@functools.lru_cache(maxsize=4)
def demo_images(split: str, variant: str = "default", seed: int = 0) -> tuple[np.ndarray, ...]:
    """The embedded demo split (deterministic: image i depends only on (seed, split, i))."""
    sizes = DEMO_SIZES[variant]
    if split not in sizes:
        raise UserError(f"evit_sr_demo has splits {sorted(sizes)}, not {split!r}")
    n, size = sizes[split]
    return tuple(render_demo(np.random.default_rng([seed, 7, len(split), i]), size)
                 for i in range(n))


class ArraySource:
    """In-memory images as a grain random-access source."""

    def __init__(self, images: tuple[np.ndarray, ...]):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.images[i]


# ---------------------------------------------------------------------------------- sources
def _image_dir(root: str, split: str) -> str:
    d = os.path.join(root, split)
    return d if os.path.isdir(d) else root


def open_sr_source(data: Any, split: str, scale: int
                   ) -> tuple[Any, Callable[[Any], tuple[np.ndarray, np.ndarray | None]]]:
    """(source, decode): `decode(source[i])` -> (HR uint8 `[H, W, 3]`, LR uint8 or None)."""
    name = data.name
    if name.split("/")[0] == "evit_sr_demo":
        variant = name.split("/")[1] if "/" in name else "default"
        if variant not in DEMO_SIZES:
            raise UserError(f"evit_sr_demo variants: {sorted(DEMO_SIZES)}, not {variant!r}")
        return ArraySource(demo_images(split, variant)), lambda r: (r, None)
    if name.startswith("images:"):
        hr_files = list_images(_image_dir(name[len("images:"):], split))
        lr_dir = data.get("lr_dir", "")
        if lr_dir:
            lr_files = pair_lr_files(hr_files, _image_dir(lr_dir, split), scale)
            return FileSource(list(zip(hr_files, lr_files))), lambda r: (_rgb(r[0]), _rgb(r[1]))
        return FileSource([(f, None) for f in hr_files]), lambda r: (_rgb(r[0]), None)
    src = tfds_source(name, split, data.data_dir or None)
    keys = set(src.dataset_info.features.keys())
    if "hr" not in keys:
        raise UserError(f"tfds {name!r} has features {sorted(keys)}; SR needs 'hr' (and "
                        f"optionally 'lr') images")
    return src, lambda r: (_rgb(r["hr"]), _rgb(r["lr"]) if "lr" in keys else None)


def dihedral(x: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 flips/rotations of `[H, W, C]` (k in 0..7)."""
    x = np.rot90(x, k % 4)
    return np.ascontiguousarray(x[:, ::-1] if k >= 4 else x)


# ------------------------------------------------------------------------------- transforms
def train_transform(config: Any, decode: Callable, scale: int) -> Callable[[int, Any], dict]:
    """(stream index, record) -> {"lr", "hr"} random patch pair, float32 in [0, 1]."""
    p, seed, aug = config.input.patch_size, config.seed, config.input.sr_augment
    if p % scale:
        raise UserError(f"input.patch_size={p} must be a multiple of the scale {scale}")

    def fn(index: int, record: Any) -> dict:
        hr, lr = decode(record)
        hr = mod_crop(hr, scale)
        if min(hr.shape[:2]) < p:
            raise UserError(f"an HR image of {hr.shape[0]}x{hr.shape[1]} is smaller than "
                            f"input.patch_size={p}")
        rng = np.random.default_rng([seed, 1, index])
        ty = int(rng.integers(0, (hr.shape[0] - p) // scale + 1))
        tx = int(rng.integers(0, (hr.shape[1] - p) // scale + 1))
        n = p // scale
        if lr is None:
            lr_patch = degrade_window(hr, ty * scale, tx * scale, p, scale)
        else:
            check_pair(hr, lr, scale)
            lr_patch = lr[ty:ty + n, tx:tx + n]
        hr_patch = hr[ty * scale:ty * scale + p, tx * scale:tx * scale + p]
        k = int(rng.integers(8)) if aug else 0
        return {"lr": dihedral(lr_patch, k).astype(np.float32) / 255.0,
                "hr": dihedral(hr_patch, k).astype(np.float32) / 255.0}

    return fn


def eval_transform(decode: Callable, scale: int) -> Callable[[Any], dict]:
    def fn(record: Any) -> dict:
        hr, lr = decode(record)
        hr = mod_crop(hr, scale)
        if lr is None:
            lr = degrade(hr, scale)
        check_pair(hr, lr, scale)
        return {"lr": lr, "hr": hr}

    return fn
