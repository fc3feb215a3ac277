"""Host-side image augmentation (PIL / numpy), one example at a time, seeded per example.

The ops follow the reference recipe (spec section 7.1): RandomResizedCrop with a random
resampling filter, horizontal flip, RandAugment in timm's "rand-n{N}-m{M}-mstd1.0-inc1"
flavour (severity grows with M, a random sign per op, each op applied with probability
0.5, mean-colour fill, bicubic warps), RandomErasing after normalisation. Batch-level mixup
and cutmix run on device (`train.mixing`). Every function takes a `np.random.Generator`
so the same seed gives the same pixels.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

FILTERS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
           "box": Image.BOX, "hamming": Image.HAMMING, "lanczos": Image.LANCZOS}


def random_resized_crop(img: Image.Image, size: int, rng: np.random.Generator,
                        scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                        interpolation: str = "random") -> Image.Image:
    """Crop a random area fraction in `scale` with aspect ratio in `ratio` (log-uniform),
    resized to `size` x `size`; after 10 misses, the largest centre crop within `ratio`."""
    w, h = img.size
    area = w * h
    box = None
    for _ in range(10):
        target = area * rng.uniform(*scale)
        r = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = round(math.sqrt(target * r)), round(math.sqrt(target / r))
        if 0 < cw <= w and 0 < ch <= h:
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            box = (x0, y0, x0 + cw, y0 + ch)
            break
    if box is None:
        r = w / h
        cw, ch = (w, round(w / ratio[0])) if r < ratio[0] else \
            (round(h * ratio[1]), h) if r > ratio[1] else (w, h)
        x0, y0 = (w - cw) // 2, (h - ch) // 2
        box = (x0, y0, x0 + cw, y0 + ch)
    name = interpolation if interpolation != "random" else \
        list(FILTERS)[int(rng.integers(len(FILTERS)))]
    return img.resize((size, size), FILTERS[name], box=box)


def center_crop_resize(img: Image.Image, size: int, crop: float = 1.0) -> Image.Image:
    """The reference's evaluation transform: shorter side -> ceil(size / crop) (bicubic,
    antialiased like torchvision's PIL backend), then the centre `size` x `size`."""
    w, h = img.size
    short = math.ceil(size / crop)
    nw, nh = (short, max(1, int(short * h / w))) if w <= h else (max(1, int(short * w / h)), short)
    img = img.resize((nw, nh), Image.BICUBIC)
    x0, y0 = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    return img.crop((x0, y0, x0 + size, y0 + size))


# --- RandAugment -------------------------------------------------------------------------
# Each op: (image, strength in [0, 1], sign, fill colour) -> image.

def _affine(img, matrix, fill):
    return img.transform(img.size, Image.AFFINE, matrix, resample=Image.BICUBIC, fillcolor=fill)


def _enhance(cls):
    return lambda img, s, sign, fill: cls(img).enhance(1.0 + sign * 0.9 * s)


_OPS = {
    "AutoContrast": lambda img, s, sign, fill: ImageOps.autocontrast(img),
    "Equalize": lambda img, s, sign, fill: ImageOps.equalize(img),
    "Invert": lambda img, s, sign, fill: ImageOps.invert(img),
    "Rotate": lambda img, s, sign, fill: img.rotate(sign * 30.0 * s, resample=Image.BICUBIC,
                                                    fillcolor=fill),
    "Posterize": lambda img, s, sign, fill: ImageOps.posterize(img, max(4 - int(4 * s), 1)),
    "Solarize": lambda img, s, sign, fill: ImageOps.solarize(img, 256 - int(256 * s)),
    "SolarizeAdd": lambda img, s, sign, fill: Image.fromarray(np.where(
        np.asarray(img) < 128, np.minimum(np.asarray(img).astype(np.int32) + int(110 * s), 255),
        np.asarray(img)).astype(np.uint8)),
    "Color": _enhance(ImageEnhance.Color),
    "Contrast": _enhance(ImageEnhance.Contrast),
    "Brightness": _enhance(ImageEnhance.Brightness),
    "Sharpness": _enhance(ImageEnhance.Sharpness),
    "ShearX": lambda img, s, sign, fill: _affine(img, (1, sign * 0.3 * s, 0, 0, 1, 0), fill),
    "ShearY": lambda img, s, sign, fill: _affine(img, (1, 0, 0, sign * 0.3 * s, 1, 0), fill),
    "TranslateX": lambda img, s, sign, fill: _affine(
        img, (1, 0, sign * 0.45 * s * img.size[0], 0, 1, 0), fill),
    "TranslateY": lambda img, s, sign, fill: _affine(
        img, (1, 0, 0, 0, 1, sign * 0.45 * s * img.size[1]), fill),
}
RANDAUG_OPS = tuple(_OPS)


def rand_augment(img: Image.Image, rng: np.random.Generator, n: int, m: float,
                 mstd: float = 1.0, fill=(124, 116, 104), prob: float = 0.5) -> Image.Image:
    """`n` ops drawn uniformly (with replacement), each applied with probability `prob` at
    magnitude ~ N(m, mstd) clipped to [0, 10] (out of 10)."""
    for idx in rng.integers(0, len(RANDAUG_OPS), n):
        if rng.random() > prob:
            continue
        mag = float(np.clip(rng.normal(m, mstd) if mstd > 0 else m, 0.0, 10.0))
        sign = 1.0 if rng.random() < 0.5 else -1.0
        img = _OPS[RANDAUG_OPS[idx]](img, mag / 10.0, sign, tuple(fill))
    return img


def random_erase(x: np.ndarray, rng: np.random.Generator, p: float,
                 area=(0.02, 1 / 3), aspect=(0.3, 1 / 0.3)) -> np.ndarray:
    """With probability `p`, zero one random rectangle of the normalised image `[H, W, C]`
    (zero = the mean colour after normalisation)."""
    if p <= 0 or rng.random() >= p:
        return x
    h, w = x.shape[:2]
    for _ in range(10):
        target = h * w * rng.uniform(*area)
        r = math.exp(rng.uniform(math.log(aspect[0]), math.log(aspect[1])))
        eh, ew = int(round(math.sqrt(target * r))), int(round(math.sqrt(target / r)))
        if 0 < eh < h and 0 < ew < w:
            y0, x0 = int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1))
            x = x.copy()
            x[y0:y0 + eh, x0:x0 + ew] = 0.0
            return x
    return x


def normalize(img: Image.Image | np.ndarray, mean, std) -> np.ndarray:
    """uint8 `[H, W, 3]` -> float32 (x / 255 - mean) / std."""
    x = np.asarray(img, np.float32) / 255.0
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


# --- segmentation -----------------------------------------------------------------------

def seg_train_crop(img: Image.Image, label: np.ndarray, rng: np.random.Generator,
                   crop: tuple[int, int], scale_range=(0.5, 2.0), hflip: bool = True,
                   ignore: int = 255, fill=(124, 116, 104)) -> tuple[Image.Image, np.ndarray]:
    """Random rescale (image bilinear, label nearest), pad to at least `crop` = (H, W) (the
    image with `fill`, the mean colour, so ~0 after normalisation; the label with
    `ignore`), random crop, random horizontal flip."""
    s = rng.uniform(*scale_range)
    w, h = img.size
    nw, nh = max(1, int(round(w * s))), max(1, int(round(h * s)))
    img = img.resize((nw, nh), Image.BILINEAR)
    lab = Image.fromarray(label.astype(np.uint8)).resize((nw, nh), Image.NEAREST)
    ch, cw = crop
    ph, pw = max(ch - nh, 0), max(cw - nw, 0)
    arr, lab = np.asarray(img), np.asarray(lab)
    if ph or pw:
        arr = np.stack([np.pad(arr[..., i], ((0, ph), (0, pw)), constant_values=fill[i])
                        for i in range(3)], -1)
        lab = np.pad(lab, ((0, ph), (0, pw)), constant_values=ignore)
    y0 = int(rng.integers(0, arr.shape[0] - ch + 1))
    x0 = int(rng.integers(0, arr.shape[1] - cw + 1))
    arr, lab = arr[y0:y0 + ch, x0:x0 + cw], lab[y0:y0 + ch, x0:x0 + cw]
    if hflip and rng.random() < 0.5:
        arr, lab = arr[:, ::-1], lab[:, ::-1]
    return Image.fromarray(np.ascontiguousarray(arr)), np.ascontiguousarray(lab)
