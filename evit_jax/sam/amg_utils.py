"""Helpers of the automatic mask generator: point grids, crops, mask statistics on device,
box NMS, run-length encodings (uncompressed here; COCO's compressed strings by pycocotools)
and small-region cleanup. Same conventions as segment-anything's `utils/amg.py`: boxes are
XYXY with inclusive pixel indices, RLEs run down columns (Fortran order) starting with a
0-run.
"""

from __future__ import annotations

import math
from itertools import product
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


# ---------------------------------------------------------------------------- grids, crops
def build_point_grid(n_per_side: int) -> np.ndarray:
    """`[n * n, 2]` XY points in [0, 1], cell centres of an n x n grid, row by row."""
    t = (np.arange(n_per_side) + 0.5) / n_per_side
    xs, ys = np.meshgrid(t, t, indexing="xy")
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(n_per_side: int, n_layers: int, scale_per_layer: int
                                ) -> list[np.ndarray]:
    """One grid per crop layer; layer i has `n_per_side / scale_per_layer**i` points a side."""
    return [build_point_grid(int(n_per_side / scale_per_layer ** i))
            for i in range(n_layers + 1)]


def generate_crop_boxes(im_size: tuple[int, int], n_layers: int, overlap_ratio: float
                        ) -> tuple[list[list[int]], list[int]]:
    """XYXY crop boxes and their layer: the whole image, then (2^i)^2 overlapping crops in
    layer i (overlap = overlap_ratio * short side * 2 / crops per side)."""
    im_h, im_w = im_size
    boxes, layers = [[0, 0, im_w, im_h]], [0]
    for i in range(n_layers):
        n = 2 ** (i + 1)
        overlap = int(overlap_ratio * min(im_h, im_w) * (2 / n))
        crop_w = int(math.ceil((overlap * (n - 1) + im_w) / n))
        crop_h = int(math.ceil((overlap * (n - 1) + im_h) / n))
        x0s = [int((crop_w - overlap) * k) for k in range(n)]
        y0s = [int((crop_h - overlap) * k) for k in range(n)]
        for x0, y0 in product(x0s, y0s):
            boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layers.append(i + 1)
    return boxes, layers


def xyxy_to_xywh(box) -> list:
    x0, y0, x1, y1 = (v.item() if hasattr(v, "item") else v for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


# ------------------------------------------------------------------------ device statistics
def stability_score(logits: Array, threshold: float, offset: float) -> Array:
    """IoU of the masks thresholded at `threshold + offset` and `threshold - offset`
    (`[..., H, W]` -> `[...]`); NaN for an empty outer mask, as segment-anything."""
    inter = jnp.sum(logits > threshold + offset, axis=(-2, -1), dtype=jnp.int32)
    union = jnp.sum(logits > threshold - offset, axis=(-2, -1), dtype=jnp.int32)
    return inter / union


def masks_to_boxes(masks: Array) -> Array:
    """XYXY boxes (inclusive pixel indices, int32) of boolean masks `[..., H, W]`;
    [0, 0, 0, 0] for an empty mask."""
    h, w = masks.shape[-2:]
    rows, cols = masks.any(-1), masks.any(-2)
    ys, xs = jnp.arange(h), jnp.arange(w)
    bottom = jnp.max(jnp.where(rows, ys, -1), -1)
    top = jnp.min(jnp.where(rows, ys, h), -1)
    right = jnp.max(jnp.where(cols, xs, -1), -1)
    left = jnp.min(jnp.where(cols, xs, w), -1)
    box = jnp.stack([left, top, right, bottom], -1)
    return jnp.where(rows.any(-1)[..., None], box, 0).astype(jnp.int32)


# ------------------------------------------------------------------------------ host side
def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one XYXY box with `[N, 4]` boxes (area = (x1 - x0) * (y1 - y0))."""
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area(box) + area(boxes) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, highest score first."""
    boxes = np.asarray(boxes, np.float64)
    order = np.argsort(-np.asarray(scores), kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        order = order[1:][box_iou(boxes[i], boxes[order[1:]]) <= iou_threshold]
    return np.asarray(keep, np.int64)


def is_box_near_crop_edge(boxes: np.ndarray, crop_box: list[int], orig_box: list[int],
                          atol: float = 20.0) -> np.ndarray:
    """True for boxes (in image coords) within `atol` of a crop edge that is not an image
    edge: such masks are probably cut by the crop."""
    near_crop = np.isclose(boxes, np.asarray(crop_box, np.float64)[None], atol=atol, rtol=0)
    near_image = np.isclose(boxes, np.asarray(orig_box, np.float64)[None], atol=atol, rtol=0)
    return np.any(near_crop & ~near_image, axis=1)


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """Boolean `[H, W]` -> uncompressed RLE {"size": [H, W], "counts": [...]}, column-major,
    the first count being a run of zeros (possibly 0)."""
    h, w = mask.shape
    flat = np.asarray(mask, bool).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(edges).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [h, w], "counts": counts}


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Uncompressed RLE -> boolean `[H, W]`."""
    h, w = rle["size"]
    counts = np.asarray(rle["counts"], np.int64)
    values = np.arange(counts.size) % 2 == 1
    return np.repeat(values, counts).reshape(w, h).T


def area_from_rle(rle: dict[str, Any]) -> int:
    return int(np.asarray(rle["counts"][1::2], np.int64).sum())


def coco_encode_rle(rle: dict[str, Any]) -> dict[str, Any]:
    """Uncompressed RLE -> COCO's compressed RLE {"size": [H, W], "counts": str} (by
    pycocotools, as segment-anything's `coco_encode_rle`)."""
    from pycocotools import mask as mask_utils

    h, w = rle["size"]
    out = mask_utils.frPyObjects({"size": [h, w], "counts": np.asarray(rle["counts"]).tolist()},
                                 h, w)
    return {"size": [int(h), int(w)], "counts": out["counts"].decode("utf-8")}


def coco_rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """COCO's compressed RLE (counts as str or bytes) -> boolean `[H, W]` (pycocotools)."""
    from pycocotools import mask as mask_utils

    counts = rle["counts"]
    obj = {"size": list(rle["size"]),
           "counts": counts.encode("utf-8") if isinstance(counts, str) else counts}
    return mask_utils.decode(obj).astype(bool)


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str
                         ) -> tuple[np.ndarray, bool]:
    """Fill holes (`mode="holes"`) or drop islands (`"islands"`) smaller than `area_thresh`
    pixels (8-connectivity). Returns the mask and whether it changed."""
    from scipy import ndimage

    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    holes = mode == "holes"
    work = np.logical_xor(mask, holes)
    labels, n = ndimage.label(work, structure=np.ones((3, 3), bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    small = [i + 1 for i, s in enumerate(sizes) if s < area_thresh]
    if not small:
        return mask, False
    if holes:  # background keeps label 0; the small holes join the mask
        return np.isin(labels, [0] + small), True
    keep = [i for i in range(1, n + 1) if i not in small]
    if not keep:  # every island is small: keep the largest
        keep = [int(np.argmax(sizes)) + 1]
    return np.isin(labels, keep), True
