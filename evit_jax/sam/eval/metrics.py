"""Scores of `evit-sam-eval`: mask IoU by object size, COCO and LVIS mask AP.

The size buckets follow the EfficientViT-SAM authors' evaluation exactly, by the
annotation's `area` field: small `area <= 32**2`, medium `32**2 <= area <= 96**2`, large
`area >= 96**2` (the bounds are inclusive on both sides, so an area of exactly 1024 or 9216
counts in two buckets, as theirs does). AP comes from the real tools: pycocotools'
`COCOeval` (iouType "segm", maxDets 1/10/100) and the `lvis` package's `LVISEval` (300
detections per image), in percent.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from typing import Any

import numpy as np

from evit_jax.errors import UserError

SMALL, LARGE = 32 ** 2, 96 ** 2
BUCKETS = ("all", "large", "medium", "small")
COCO_AP = ("AP", "AP50", "AP75", "APs", "APm", "APl")
LVIS_AP = COCO_AP + ("APr", "APc", "APf")


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU x 100 of two boolean masks `[H, W]` (the authors' formula: intersection over
    union + 1e-7, so two empty masks give 0)."""
    inter = np.count_nonzero(pred & gt)
    union = np.count_nonzero(pred | gt)
    return float(inter / (union + 1e-7)) * 100


def in_bucket(area: float, bucket: str) -> bool:
    """Whether an annotation of `area` pixels counts in a size bucket (module docstring)."""
    if bucket == "small":
        return area <= SMALL
    if bucket == "medium":
        return SMALL <= area <= LARGE
    if bucket == "large":
        return area >= LARGE
    return bucket == "all"


def iou_by_size(results: list[dict[str, float]]) -> dict[str, float | None]:
    """Mean IoU over `results` ({"area", "iou"} per prompted object) for all objects and per
    size bucket; None for an empty bucket."""
    out: dict[str, float | None] = {}
    for b in BUCKETS:
        ious = [r["iou"] for r in results if in_bucket(r["area"], b)]
        out[b] = sum(ious) / len(ious) if ious else None
    return out


def _percent(v: float) -> float | None:
    """AP in [0, 1] -> percent; the tools' -1 / NaN (no ground truth there) -> None."""
    v = float(v)
    return None if math.isnan(v) or v < 0 else v * 100


def _segm_results(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Detections with masks, without `bbox` (the tools would otherwise prefer the boxes
    for a result's area)."""
    if not results:
        raise UserError("no detections on the evaluated images: nothing to score (check "
                        "--detections and --limit)")
    out = copy.deepcopy(results)
    for r in out:
        r.pop("bbox", None)
    return out


def coco_mask_ap(gt: dict[str, Any], results: list[dict[str, Any]],
                 image_ids: list[int]) -> dict[str, float | None]:
    """COCO mask AP (pycocotools `COCOeval`, iouType "segm") of `results` (COCO results
    dicts with an RLE `segmentation`) on the images `image_ids` of the instances dict `gt`."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        api = COCO()
        api.dataset = copy.deepcopy(gt)
        api.createIndex()
        ev = COCOeval(api, api.loadRes(_segm_results(results)), "segm")
        ev.params.imgIds = sorted(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: _percent(v) for k, v in zip(COCO_AP, ev.stats[:6])}


def lvis_mask_ap(gt: dict[str, Any], results: list[dict[str, Any]],
                 image_ids: list[int]) -> dict[str, float | None]:
    """LVIS mask AP (the `lvis` package's `LVISEval`, 300 detections per image) of `results`
    on the images `image_ids` of the LVIS annotations dict `gt`."""
    try:
        from lvis import LVIS, LVISEval, LVISResults
    except ImportError:
        raise UserError("LVIS AP needs the lvis package: pip install 'evit-jax[sam-eval]' "
                        "(or pip install lvis)") from None
    import logging
    quiet = logging.getLogger("lvis")  # it logs every step at INFO
    level, quiet.level = quiet.level, logging.WARNING
    # lvis 0.5.3, the last release, still calls np.float (removed in numpy 1.24).
    alias = "float" not in np.__dict__
    if alias:
        np.float = float
    try:
        api = LVIS.__new__(LVIS)  # LVIS() only reads a path; build it from the dict
        api.logger, api.dataset = quiet, copy.deepcopy(gt)
        api._create_index()
        ev = LVISEval(api, LVISResults(api, _segm_results(results), max_dets=300), "segm")
        ev.params.img_ids = sorted(image_ids)
        ev.run()
        got = ev.get_results()
    finally:
        quiet.setLevel(level)
        if alias:
            del np.float
    return {k: _percent(got[k]) for k in LVIS_AP}
