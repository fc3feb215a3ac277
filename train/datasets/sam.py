"""The SAM input pipeline: the authors' phase-2 recipe as fixed-shape examples, through grain.

Per training image (the recipe of the spec, section 7.3), seeded by its stream position:
random horizontal flip; resize the longest side to the encoder size S (PIL bilinear,
antialiased, as the predictor preprocesses), normalise, zero-pad bottom / right to S x S;
up to `sam.num_masks` objects drawn without replacement (fewer objects: the rest are padding
with `valid = False`); then for the whole image either a box per object (probability
`sam.box_prob`) or the same number n ~ U{1..10} of positive clicks drawn from each object's
pixels. Prompts are in the 1024 frame (the image resized to a longest side of 1024), as at
inference. One example:

    image   float32 [S, S, 3]     masks   uint8 [M, S, S]   (0/1, in the padded S frame)
    valid   bool    [M]           coords  float32 [M, T, 2] (XY, 1024 frame; T = 11)
    labels  int32   [M, T]        (1 click, -1 segment-anything's padding point,
                                   2 / 3 box corners, PAD no token)

Distillation examples are `image` plus the teacher's target: `teacher` float32 [64, 64, 256]
(a directory of `<image_id>.npy`) or `teacher_image` float32 [St, St, 3] (a zoo teacher,
encoded in the train step). No flip then: stored embeddings are of the unflipped image.

The trainer's stream is `train.input_pipeline.train_stream` of these transforms (the SAM
tasks, train/tasks/sam.py and sam_distill.py).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from PIL import Image

from evit_jax.errors import UserFileNotFoundError
from evit_jax.models.sam.prompt_encoder import BOX_BOTTOM_RIGHT, BOX_TOP_LEFT, NOT_A_POINT, PAD
from evit_jax.sam.transforms import preprocess, preprocess_shape

from .sam_sources import gt_mask

MAX_CLICKS = 10
TOKENS = MAX_CLICKS + 1  # the clicks and segment-anything's padding point
FRAME = 1024  # the prompt frame


def resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """bool `[M, H, W]` -> uint8 `[M, size, size]` 0/1: longest side to `size` (bilinear,
    then >= 0.5, so thin parts survive a downscale as well as the image's do), padded."""
    m, h, w = masks.shape
    nh, nw = preprocess_shape(h, w, size)
    out = np.zeros((m, size, size), np.uint8)
    for k in range(m):
        im = Image.fromarray(masks[k].astype(np.uint8) * 255)
        out[k, :nh, :nw] = np.asarray(im.resize((nw, nh), Image.Resampling.BILINEAR)) >= 128
    return out


def mask_box(mask: np.ndarray) -> np.ndarray:
    """XYXY pixel box of a bool mask `[H, W]` (pycocotools' extent: max + 1)."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)


def prompt_rows(masks: np.ndarray, use_box: bool, n_clicks: int, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray]:
    """Tokens of one prompt per mask `[M, H, W]` in original pixels: coords `[M, T, 2]`,
    labels `[M, T]` (a box: corners 2 / 3; clicks: n positives + the padding point)."""
    m = len(masks)
    coords = np.zeros((m, TOKENS, 2), np.float64)
    labels = np.full((m, TOKENS), PAD, np.int32)
    for k in range(m):
        if use_box:
            coords[k, :2] = mask_box(masks[k]).reshape(2, 2)
            labels[k, :2] = (BOX_TOP_LEFT, BOX_BOTTOM_RIGHT)
        else:
            ys, xs = np.nonzero(masks[k])
            pick = rng.choice(len(ys), n_clicks, replace=len(ys) < n_clicks)
            coords[k, :n_clicks] = np.stack([xs[pick], ys[pick]], -1)
            labels[k, :n_clicks] = 1
            labels[k, n_clicks] = NOT_A_POINT  # at (0, 0), as segment-anything pads
    return coords, labels


def _objects(rec: dict, num: int, rng: np.random.Generator | None) -> np.ndarray:
    """bool `[m, H, W]` of up to `num` objects (random ones when `rng`, else the first)."""
    h, w = rec["image"].shape[:2]
    anns = [a for a in rec["anns"] if a.get("area", 1) >= 1]
    if rng is not None and len(anns) > num:
        anns = [anns[i] for i in sorted(rng.choice(len(anns), num, replace=False))]
    masks = [gt_mask(a, h, w) for a in anns[:num]]
    masks = [m for m in masks if m.any()]
    return np.stack(masks) if masks else np.zeros((0, h, w), bool)


def sam_example(rec: dict, cfg: Any, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One training example (see the module doc) of a source record."""
    s, num = cfg.input.encoder_size, cfg.sam.num_masks
    image, masks = rec["image"], _objects(rec, num, rng)
    if cfg.input.hflip and rng.random() < 0.5:
        image, masks = image[:, ::-1], masks[:, :, ::-1]
    h, w = image.shape[:2]
    use_box = bool(rng.random() < cfg.sam.box_prob)
    n_clicks = int(rng.integers(1, MAX_CLICKS + 1))
    coords, labels = prompt_rows(masks, use_box, n_clicks, rng)
    fh, fw = preprocess_shape(h, w, FRAME)
    coords = coords * np.array([fw / w, fh / h])
    m = len(masks)
    out_c = np.zeros((num, TOKENS, 2), np.float32)
    out_l = np.full((num, TOKENS), PAD, np.int32)
    # Padding rows get a whole-frame box: an all-PAD row would leave attention nothing to
    # attend to (NaN); their loss weight is 0.
    out_c[:, 1] = (fw, fh)
    out_l[:, :2] = (BOX_TOP_LEFT, BOX_BOTTOM_RIGHT)
    out_c[:m], out_l[:m] = coords, labels
    out_m = np.zeros((num, s, s), np.uint8)
    if m:
        out_m[:m] = resize_masks(masks, s)
    return {"image": preprocess(np.ascontiguousarray(image), s)[0], "masks": out_m,
            "valid": np.arange(num) < m, "coords": out_c, "labels": out_l}


def distill_example(rec: dict, cfg: Any) -> dict[str, np.ndarray]:
    """`image` and the teacher's target (`teacher` embeddings or `teacher_image`)."""
    image = np.ascontiguousarray(rec["image"])
    out = {"image": preprocess(image, cfg.input.encoder_size)[0]}
    if cfg.distill.teacher_dir:
        path = os.path.join(cfg.distill.teacher_dir, f"{rec['image_id']}.npy")
        if not os.path.isfile(path):
            raise UserFileNotFoundError(f"teacher embedding {path!r} missing (one "
                                        "<image_id>.npy [64, 64, 256] per image; docs/sam.md)")
        emb = np.load(path).astype(np.float32)
        out["teacher"] = emb.reshape(emb.shape[-3:]) if emb.ndim == 4 else emb
    else:
        out["teacher_image"] = preprocess(image, cfg.distill.teacher_size)[0]
    return out


def train_transform(cfg: Any):
    """(stream index, source record) -> a fine-tuning example (seeded by the index)."""
    seed = cfg.seed

    def fn(index: int, rec: dict) -> dict:
        return sam_example(rec, cfg, np.random.default_rng([seed, 11, index]))
    return fn


def distill_transform(cfg: Any):
    """(stream index, source record) -> a distillation example (no randomness)."""
    def fn(index: int, rec: dict) -> dict:
        del index
        return distill_example(rec, cfg)
    return fn
