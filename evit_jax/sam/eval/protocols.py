"""The three prompting protocols of the EfficientViT-SAM zero-shot evaluation, per image.

`predictor` is anything with segment-anything's `set_image` and our batched
`predict_batch` (a `SamPredictor`; tests pass oracles). The image is encoded once; the
prompts of its objects go to the decoder `chunk` at a time. In every protocol the mask kept
for a prompt is the one of the three multimask outputs with the highest predicted IoU, as in
the authors' evaluation.

- `box_ious`: each ground-truth object (area >= 1) prompted by its box.
- `point_ious`: each object prompted by N clicks, placed one after the other by `next_click`
  on the previous prediction's errors (the prompt of round k holds all k clicks so far; no
  mask logits are fed back, as in the authors' evaluation).
- `detector_masks`: each detection prompted by its box; the mask becomes its COCO RLE.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from evit_jax.errors import UserError
from evit_jax.sam.eval.data import EvalImage, gt_mask
from evit_jax.sam.eval.metrics import mask_iou

MIN_AREA = 1  # objects with a smaller annotated area are skipped


def xywh_to_xyxy(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """COCO boxes `[N, 4]` XYWH -> XYXY, clipped to the image (the predictor rejects boxes
    outside it; COCO's boxes lie inside up to rounding)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    xyxy = np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], 1)
    return np.clip(xyxy, 0, [width, height, width, height])


def _best_masks(predictor: Any, **prompts: np.ndarray) -> np.ndarray:
    """`[B, H, W]`: per prompt, the multimask output with the highest predicted IoU."""
    masks, iou, _ = predictor.predict_batch(multimask_output=True, **prompts)
    return masks[np.arange(len(masks)), np.argmax(iou, axis=1)]


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def next_click(gt: np.ndarray, pred: np.ndarray, not_clicked: np.ndarray
               ) -> tuple[int, int, bool]:
    """The next simulated click (RITM's protocol, as the authors use it): (y, x, positive).

    The click goes to the pixel farthest from the border of its error region, by the exact
    Euclidean distance transform, in the larger (by that distance) of the false-negative
    region (a positive click) and the false-positive region (a negative one); a tie goes to
    the negative. The image border counts as outside the region (the masks are padded by one
    background pixel), pixels clicked before are excluded, and among equally far pixels the
    first in row-major order wins. With no error left the click is negative at (0, 0),
    the authors' behaviour.

    Args:
      gt, pred: boolean `[H, W]` ground truth and current prediction.
      not_clicked: boolean `[H, W]`, False at the earlier clicks.
    """
    def farthest(region: np.ndarray) -> np.ndarray:
        # float32 as OpenCV's distanceTransform (the authors'), so ties are the same ties.
        d = ndimage.distance_transform_edt(np.pad(region, 1)).astype(np.float32)
        return d[1:-1, 1:-1] * not_clicked

    fn, fp = farthest(gt & ~pred), farthest(~gt & pred)
    positive = bool(fn.max() > fp.max())
    dist = fn if positive else fp
    y, x = np.argwhere(dist == dist.max())[0]
    return int(y), int(x), positive


def box_ious(predictor: Any, image: EvalImage, chunk: int = 64) -> list[dict[str, float]]:
    """{"area", "iou"} of every object of `image` (area >= 1) prompted by its box (the
    predictor holds the image already)."""
    anns = [a for a in image.annotations if a["area"] >= MIN_AREA]
    out = []
    for part in _chunks(anns, chunk):
        boxes = xywh_to_xyxy([a["bbox"] for a in part], image.height, image.width)
        masks = _best_masks(predictor, boxes=boxes)
        for a, m in zip(part, masks):
            out.append({"area": float(a["area"]),
                        "iou": mask_iou(m, gt_mask(a, image.height, image.width))})
    return out


def point_ious(predictor: Any, image: EvalImage, num_clicks: int, chunk: int = 64
               ) -> list[dict[str, float]]:
    """{"area", "iou"} of every object of `image` (area >= 1) after `num_clicks` clicks
    (see `next_click`); the IoU is that of the last prediction."""
    anns = [a for a in image.annotations if a["area"] >= MIN_AREA]
    out = []
    for part in _chunks(anns, chunk):
        gts = [gt_mask(a, image.height, image.width) for a in part]
        preds = [np.zeros_like(g) for g in gts]
        free = [np.ones_like(g) for g in gts]
        coords = np.zeros((len(part), 0, 2))
        labels = np.zeros((len(part), 0), np.int32)
        for _ in range(num_clicks):
            clicks = [next_click(g, p, f) for g, p, f in zip(gts, preds, free)]
            for (y, x, _), f in zip(clicks, free):
                f[y, x] = False
            coords = np.concatenate([coords, [[[x, y]] for y, x, _ in clicks]], 1)
            labels = np.concatenate([labels, [[int(pos)] for _, _, pos in clicks]], 1)
            preds = list(_best_masks(predictor, points=coords, point_labels=labels))
        out += [{"area": float(a["area"]), "iou": mask_iou(p, g)}
                for a, p, g in zip(part, preds, gts)]
    return out


def detector_masks(predictor: Any, image: EvalImage, chunk: int = 64) -> list[dict[str, Any]]:
    """The detections of `image`, each with the COCO RLE `segmentation` of the mask its box
    prompts (all other fields kept)."""
    from pycocotools import mask as mask_utils

    out = []
    for part in _chunks(image.detections, chunk):
        boxes = xywh_to_xyxy([d["bbox"] for d in part], image.height, image.width)
        masks = _best_masks(predictor, boxes=boxes)
        for d, m in zip(part, masks):
            rle = mask_utils.encode(np.asfortranarray(m, dtype=np.uint8))
            out.append(dict(d, segmentation={"size": [int(s) for s in rle["size"]],
                                             "counts": rle["counts"].decode("utf-8")}))
    return out


PROTOCOLS = ("box", "point", "box_from_detector")


def evaluate_image(predictor: Any, image: EvalImage, protocol: str, num_clicks: int = 1,
                   chunk: int = 64) -> list[dict[str, Any]]:
    """Encode `image` once and run `protocol` on it: {"area", "iou"} per object for "box" /
    "point", the detections with masks for "box_from_detector". Images without prompts are
    not encoded."""
    if protocol not in PROTOCOLS:
        raise UserError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    prompts = image.detections if protocol == "box_from_detector" else \
        [a for a in image.annotations if a["area"] >= MIN_AREA]
    if not prompts:
        return []
    pixels = image.load()
    if pixels.shape[:2] != (image.height, image.width):
        raise UserError(f"image {image.image_id} is {pixels.shape[1]}x{pixels.shape[0]} "
                        f"(WxH) but its record says {image.width}x{image.height}")
    predictor.set_image(pixels)
    if protocol == "box":
        return box_ious(predictor, image, chunk)
    if protocol == "point":
        return point_ious(predictor, image, num_clicks, chunk)
    return detector_masks(predictor, image, chunk)
