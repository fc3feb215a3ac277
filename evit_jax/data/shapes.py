"""Renderer of the embedded dataset `evit_shapes`: one textured shape on a cluttered,
textured background (the tfds builder is `evit_jax.data.shapes_tfds`).

Every image holds one foreground object of one of ten classes, drawn with a random size,
position, rotation, colour and fill texture, on a background of procedural texture (value
noise, stripes, checks, gradients) scattered with distractor strokes and blobs that belong
to no class; a little blur and sensor noise finish it. The per-pixel mask marks the object
with its class index + 1 (0 = background). Rendering is supersampled 2x and downsampled
with a Lanczos filter so edges look like a camera's, and it is deterministic: example `i`
of a split depends only on (seed, split, i).
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("circle", "ring", "triangle", "square", "star", "cross", "crescent", "arrow",
           "heart", "ellipse")
SS = 2  # supersampling factor


def rotate(pts: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return pts @ np.array([[c, s], [-s, c]])


def outline(kind: str, rng: np.random.Generator) -> list[np.ndarray]:
    """Outline(s) in unit coordinates (radius ~1, centred at 0): the first is filled, any
    further ones are cut out of it."""
    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    circ = np.stack([np.cos(t), np.sin(t)], -1)
    if kind == "circle":
        return [circ]
    if kind == "ring":
        return [circ, circ * rng.uniform(0.45, 0.65)]
    if kind == "ellipse":
        return [circ * np.array([1.0, rng.uniform(0.35, 0.55)])]
    if kind in ("triangle", "square"):
        n = 3 if kind == "triangle" else 4
        a = np.arange(n) * 2 * np.pi / n + np.pi / 2
        return [np.stack([np.cos(a), np.sin(a)], -1)]
    if kind == "star":
        a = np.arange(10) * np.pi / 5 + np.pi / 2
        r = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.38, 0.5))
        return [np.stack([r * np.cos(a), r * np.sin(a)], -1)]
    if kind == "cross":
        w = rng.uniform(0.28, 0.38)
        return [np.array([[-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w], [w, 1],
                          [-w, 1], [-w, w], [-1, w], [-1, -w], [-w, -w]])]
    if kind == "crescent":
        return [circ, circ * 0.85 + np.array([rng.uniform(0.35, 0.5), 0.0])]
    if kind == "arrow":
        w, hx = rng.uniform(0.18, 0.28), rng.uniform(0.0, 0.25)
        return [np.array([[-1, -w], [hx, -w], [hx, -0.65], [1, 0], [hx, 0.65], [hx, w],
                          [-1, w]])]
    if kind == "heart":
        th = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        x = 16 * np.sin(th) ** 3
        y = -(13 * np.cos(th) - 5 * np.cos(2 * th) - 2 * np.cos(3 * th) - np.cos(4 * th))
        return [np.stack([x, y + 2.5], -1) / 17.0]
    raise ValueError(f"unknown shape {kind!r}")


def value_noise(rng: np.random.Generator, size: int, octaves: int = 4) -> np.ndarray:
    """Smooth multi-octave noise in [0, 1], `[size, size]`."""
    out = np.zeros((size, size), np.float32)
    amp, total = 1.0, 0.0
    cells = int(rng.integers(2, 5))
    for _ in range(octaves):
        grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
        img = Image.fromarray((grid * 255).astype(np.uint8)).resize((size, size),
                                                                    Image.BICUBIC)
        out += amp * np.asarray(img, np.float32) / 255.0
        total += amp
        amp *= 0.5
        cells *= 2
    return out / total


def texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random RGB texture `[size, size, 3]` float in [0, 1]."""
    c0, c1 = rng.random(3), rng.random(3)
    kind = rng.integers(4)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == 0:  # noise between two colours
        t = value_noise(rng, size)
    elif kind == 1:  # stripes
        a = rng.uniform(0, np.pi)
        f = rng.uniform(3, 9)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * f * (xx * np.cos(a) + yy * np.sin(a)))
    elif kind == 2:  # checks, rotated
        a, f = rng.uniform(0, np.pi), rng.uniform(3, 8)
        u, v = xx * np.cos(a) + yy * np.sin(a), -xx * np.sin(a) + yy * np.cos(a)
        t = 0.25 + 0.5 * ((np.floor(u * f) + np.floor(v * f)) % 2).astype(np.float32)
    else:  # gradient
        a = rng.uniform(0, 2 * np.pi)
        t = xx * np.cos(a) + yy * np.sin(a)
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    t = 0.8 * t + 0.2 * value_noise(rng, size, 2)
    return c0 + (c1 - c0) * t[..., None]


def to_image(tex: np.ndarray, size: int) -> Image.Image:
    """Float texture -> PIL RGB image of `size` (textures are made at output resolution and
    upsampled: only the edges need supersampling)."""
    img = Image.fromarray((np.clip(tex, 0, 1) * 255).astype(np.uint8))
    return img.resize((size, size), Image.BILINEAR)


def clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int, n: int,
             erase: ImageDraw.ImageDraw | None = None) -> None:
    """Distractor strokes, arcs and dots in random colours (also cut out of `erase`'s mask:
    what covers the object is not the object)."""
    for _ in range(n):
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        kind = rng.integers(3)
        p = rng.uniform(0, size, 4)
        w = int(rng.integers(1, 4)) * SS
        if kind == 0:
            args, kw, fn = ([tuple(p[:2]), tuple(p[2:])],), dict(width=w), "line"
        elif kind == 1:
            box = [min(p[0], p[2]), min(p[1], p[3]), max(p[0], p[2]) + 1, max(p[1], p[3]) + 1]
            args = (box, float(rng.uniform(0, 360)), float(rng.uniform(0, 360)))
            kw, fn = dict(width=w), "arc"
        else:
            r = rng.uniform(1, size / 14)
            args, kw, fn = ([p[0] - r, p[1] - r, p[0] + r, p[1] + r],), {}, "ellipse"
        for d, c in ((draw, col), (erase, 0)):
            if d is not None:
                getattr(d, fn)(*args, fill=c, **kw)


def background(rng: np.random.Generator, size: int) -> tuple[Image.Image, np.ndarray]:
    """A textured, cluttered background at `size * SS` pixels, and its texture `[size, size,
    3]` (objects are pushed away from its mean colour)."""
    big = size * SS
    bg_tex = texture(rng, size)
    bg = to_image(bg_tex, big)
    clutter(ImageDraw.Draw(bg), rng, big, int(rng.integers(2, 7)))
    return bg, bg_tex


def paint_object(img: Image.Image, rng: np.random.Generator, label: int, bg_tex: np.ndarray,
                 radius: float, centre: np.ndarray) -> tuple[Image.Image, Image.Image]:
    """Paint one shape of class `label` (radius and centre in supersampled pixels, a random
    rotation, outline width, fill and texture) onto `img`. Returns (the new image, its mask
    as an "L" image, 255 on the shape), both at `img`'s size."""
    big = img.size[0]
    size = big // SS
    angle = rng.uniform(0, 2 * np.pi)
    shape = Image.new("L", (big, big), 0)
    edge = Image.new("L", (big, big), 0)
    sd, ed = ImageDraw.Draw(shape), ImageDraw.Draw(edge)
    width = int(rng.integers(1, 3)) * SS
    for k, poly in enumerate(outline(CLASSES[label], rng)):
        pts = [tuple(p) for p in rotate(poly, angle) * radius + centre]
        sd.polygon(pts, fill=255 if k == 0 else 0)
        ed.line(pts + pts[:1], fill=255, width=width, joint="curve")

    # A base colour with a texture on top (painted, printed, striped objects).
    fill = rng.random(3) + rng.uniform(0.15, 0.5) * (texture(rng, size) - 0.5)
    # Keep the object apart from the background: push it away from the mean background colour.
    fill = fill + 0.35 * np.sign(fill.mean((0, 1)) - bg_tex.mean((0, 1)) + 1e-3)
    img = Image.composite(to_image(fill, big), img, shape)
    if rng.random() < 0.6:  # a dark outline
        dark = Image.new("RGB", (big, big), tuple(int(v) for v in rng.integers(0, 80, 3)))
        img = Image.composite(dark, img, edge)
    return img, shape


def finish(img: Image.Image, rng: np.random.Generator, size: int) -> np.ndarray:
    """Supersampled image -> uint8 `[size, size, 3]`: Lanczos downsampling, a little blur and
    sensor noise."""
    img = img.resize((size, size), Image.LANCZOS).filter(
        ImageFilter.GaussianBlur(rng.uniform(0.15, 0.6)))
    arr = np.asarray(img, np.float32) + rng.normal(0, rng.uniform(1, 6), (size, size, 3))
    return np.clip(arr, 0, 255).astype(np.uint8)


def object_mask(shape: Image.Image, size: int) -> np.ndarray:
    """A supersampled "L" mask -> bool `[size, size]`."""
    return np.asarray(shape.resize((size, size), Image.BILINEAR)) >= 128


def render(rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, np.ndarray, int]:
    """One example: image `[size, size, 3]` uint8, mask `[size, size]` uint8 (class + 1 on
    the object, 0 elsewhere), and the class index.

    Built from the steps a variant reuses (several objects: `paint_object` per object, each
    later one cut out of the earlier masks): `background`, `paint_object`, distractors over
    the object (`clutter` with the mask to erase from), `finish`."""
    label = int(rng.integers(len(CLASSES)))
    big = size * SS
    bg, bg_tex = background(rng, size)
    radius = rng.uniform(0.28, 0.42) * big
    centre = rng.uniform(radius * 0.8, big - radius * 0.8, 2)
    img, shape = paint_object(bg, rng, label, bg_tex, radius, centre)
    clutter(ImageDraw.Draw(img), rng, big, int(rng.integers(0, 2)), ImageDraw.Draw(shape))
    image = finish(img, rng, size)
    return image, (object_mask(shape, size) * (label + 1)).astype(np.uint8), label


def example_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of example `index` of `split` (independent streams per example)."""
    return np.random.default_rng([seed, {"train": 0, "validation": 1}[split], index])


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def encoded_example(job: tuple[int, str, int, int]) -> tuple[str, dict]:
    """(key, features) of example (seed, split, index, size) with PNG-encoded image and mask
    (encoded bytes are stored as they are: no TensorFlow needed, and the encoding runs in the
    builder's worker processes)."""
    seed, split, index, size = job
    image, mask, label = render(example_rng(seed, split, index), size)
    return f"{split}_{index:06d}", {"image": _png(image), "mask": _png(mask),
                                    "label": label}
