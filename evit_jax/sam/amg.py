"""`SamAutomaticMaskGenerator`: segment everything, as segment-anything's generator.

A grid of foreground clicks is decoded in batches (`points_per_batch` clicks, three masks
each: one compiled decoder call per batch, then one that computes the full-size masks, their
stability scores and boxes on the device); masks are filtered by predicted IoU, stability
and crop edges, deduplicated by box NMS (per crop, then across crops), optionally cleaned of
small holes and islands, and returned as segment-anything's records.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import numpy as np

from evit_jax.errors import UserError
from evit_jax.models.sam.prompt_encoder import NOT_A_POINT, POSITIVE
from evit_jax.sam import amg_utils as U
from evit_jax.sam.predictor import MASK_THRESHOLD, SamPredictor, decode_low_res, upscale
from evit_jax.sam.prompts import bucket
from evit_jax.sam.transforms import check_image

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")


@jax.jit
def grid_statistics(low_res: jax.Array, mh: jax.Array, mw: jax.Array, offset: float
                    ) -> tuple[jax.Array, ...]:
    """Low-res logits `[B, 3, 256, 256]` -> (masks `[B, 3, H, W]` bool, stability `[B, 3]`,
    boxes `[B, 3, 4]`) at the (crop's) original size, on the device."""
    logits = upscale(low_res, mh, mw)
    masks = logits > MASK_THRESHOLD
    return masks, U.stability_score(logits, MASK_THRESHOLD, offset), U.masks_to_boxes(masks)


class SamAutomaticMaskGenerator:
    """Masks for everything in an image, from a grid of click prompts.

    Args:
      model, variables: an EfficientViT-SAM model and its variables.
      points_per_side: clicks per side of the grid (None: give `point_grids`).
      points_per_batch: clicks decoded per compiled call.
      pred_iou_thresh: keep masks whose predicted IoU is above this (0 disables).
      stability_score_thresh: keep masks whose stability score is at least this.
      stability_score_offset: logit offset of the stability score.
      box_nms_thresh: box IoU above which the lower-IoU mask of a crop is dropped.
      crop_n_layers: extra layers of image crops (layer i: (2^i)^2 crops).
      crop_nms_thresh: box IoU for deduplicating across crops.
      crop_overlap_ratio: overlap of neighbouring crops (fraction of the short side).
      crop_n_points_downscale_factor: layer i uses points_per_side / factor^i clicks a side.
      point_grids: explicit `[n, 2]` grids in [0, 1], one per layer.
      min_mask_region_area: if > 0, fill holes and remove islands smaller than this.
      output_mode: "binary_mask", "uncompressed_rle" or "coco_rle".
    """

    def __init__(self, model: nn.Module, variables: Any, points_per_side: int | None = 32,
                 points_per_batch: int = 64, pred_iou_thresh: float = 0.88,
                 stability_score_thresh: float = 0.95, stability_score_offset: float = 1.0,
                 box_nms_thresh: float = 0.7, crop_n_layers: int = 0,
                 crop_nms_thresh: float = 0.7, crop_overlap_ratio: float = 512 / 1500,
                 crop_n_points_downscale_factor: int = 1,
                 point_grids: list[np.ndarray] | None = None, min_mask_region_area: int = 0,
                 output_mode: str = "binary_mask"):
        if (points_per_side is None) == (point_grids is None):
            raise UserError("give exactly one of points_per_side and point_grids")
        if output_mode not in OUTPUT_MODES:
            raise UserError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
        if crop_n_layers < 0 or points_per_batch < 1:
            raise UserError("crop_n_layers must be >= 0 and points_per_batch >= 1")
        if points_per_side is not None:
            if points_per_side < 1:
                raise UserError(f"points_per_side must be >= 1, got {points_per_side}")
            point_grids = U.build_all_layer_point_grids(points_per_side, crop_n_layers,
                                                        crop_n_points_downscale_factor)
        if len(point_grids) < crop_n_layers + 1:
            raise UserError(f"point_grids has {len(point_grids)} grids; crop_n_layers="
                            f"{crop_n_layers} needs {crop_n_layers + 1}")
        self.point_grids = [np.asarray(g, np.float64).reshape(-1, 2) for g in point_grids]
        self.predictor = SamPredictor(model, variables)
        self.points_per_batch = int(points_per_batch)
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode

    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """Masks of uint8 RGB `image` `[H, W, 3]`, as segment-anything's records.

        Returns:
          A list of dicts: `segmentation` (`[H, W]` bool, or an RLE dict), `area` (pixels),
          `bbox` (XYWH), `predicted_iou`, `point_coords` ([[x, y]]), `stability_score`,
          `crop_box` (XYWH).
        """
        check_image(image)
        h, w = image.shape[:2]
        crop_boxes, layers = U.generate_crop_boxes((h, w), self.crop_n_layers,
                                                   self.crop_overlap_ratio)
        data: dict[str, list] = {k: [] for k in ("rles", "boxes", "iou", "points", "stab",
                                                 "crop_boxes")}
        for crop_box, layer in zip(crop_boxes, layers):
            crop = self._process_crop(image, crop_box, layer, (h, w))
            for k in data:
                data[k] += crop[k]
        if len(crop_boxes) > 1 and data["rles"]:
            areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in data["crop_boxes"]]
            keep = U.nms(np.asarray(data["boxes"]), 1.0 / np.asarray(areas, np.float64),
                         self.crop_nms_thresh)
            data = {k: [v[i] for i in keep] for k, v in data.items()}
        if self.min_mask_region_area > 0:
            data = self.postprocess_small_regions(
                data, self.min_mask_region_area, max(self.box_nms_thresh, self.crop_nms_thresh))
        records = []
        for i, rle in enumerate(data["rles"]):
            if self.output_mode == "binary_mask":
                seg = U.rle_to_mask(rle)
            elif self.output_mode == "coco_rle":
                seg = U.coco_encode_rle(rle)
            else:
                seg = rle
            records.append({
                "segmentation": seg,
                "area": U.area_from_rle(rle),
                "bbox": U.xyxy_to_xywh([int(v) for v in data["boxes"][i]]),
                "predicted_iou": float(data["iou"][i]),
                "point_coords": [[float(v) for v in data["points"][i]]],
                "stability_score": float(data["stab"][i]),
                "crop_box": U.xyxy_to_xywh(data["crop_boxes"][i]),
            })
        return records

    def _process_crop(self, image: np.ndarray, crop_box: list[int], layer: int,
                      orig_size: tuple[int, int]) -> dict[str, list]:
        x0, y0, x1, y1 = crop_box
        p = self.predictor
        p.set_image(image[y0:y1, x0:x1])
        ch, cw = p.original_size
        points = self.point_grids[layer] * np.array([cw, ch], np.float64)
        out: dict[str, list] = {k: [] for k in ("rles", "boxes", "iou", "points", "stab")}
        for start in range(0, len(points), self.points_per_batch):
            self._process_batch(points[start:start + self.points_per_batch], crop_box,
                                orig_size, out)
        p.reset_image()
        if out["rles"]:
            keep = U.nms(np.asarray(out["boxes"]), np.asarray(out["iou"]), self.box_nms_thresh)
            out = {k: [v[i] for i in keep] for k, v in out.items()}
        out["crop_boxes"] = [list(crop_box)] * len(out["rles"])
        return out

    def _process_batch(self, points: np.ndarray, crop_box: list[int],
                       orig_size: tuple[int, int], out: dict[str, list]) -> None:
        p, n = self.predictor, len(points)
        rows = min(self.points_per_batch, bucket(n))  # few points: a smaller padded batch
        coords = np.zeros((rows, 2, 2), np.float32)
        coords[:n, 0] = p.transform.apply_coords(points, p.original_size)
        labels = np.tile(np.array([[POSITIVE, NOT_A_POINT]], np.int32), (rows, 1))
        low, iou = decode_low_res(p.decoder, p.decoder_variables, p.features, coords, labels,
                                  None, None, True)
        masks, stab, boxes = grid_statistics(low, *p._maps, self.stability_score_offset)
        iou, stab, boxes = (np.asarray(a)[:n].reshape(n * 3, *a.shape[2:])
                            for a in (iou, stab, boxes))
        keep = np.ones(n * 3, bool)
        if self.pred_iou_thresh > 0:
            keep &= iou > self.pred_iou_thresh
        if self.stability_score_thresh > 0:
            keep &= stab >= self.stability_score_thresh
        x0, y0, x1, y1 = crop_box
        oh, ow = orig_size
        boxes = boxes.astype(np.int64) + np.array([x0, y0, x0, y0])
        keep &= ~U.is_box_near_crop_edge(boxes, crop_box, [0, 0, ow, oh])
        idx = np.flatnonzero(keep)
        if not idx.size:
            return
        masks = np.asarray(masks).reshape(-1, *masks.shape[2:])
        for i in idx:
            m = masks[i]
            if (x0, y0, x1, y1) != (0, 0, ow, oh):  # back into the full image
                full = np.zeros((oh, ow), bool)
                full[y0:y1, x0:x1] = m
                m = full
            out["rles"].append(U.mask_to_rle(m))
            out["boxes"].append(boxes[i])
            out["iou"].append(float(iou[i]))
            out["stab"].append(float(stab[i]))
            out["points"].append(points[i // 3] + np.array([x0, y0]))

    @staticmethod
    def postprocess_small_regions(data: dict[str, list], min_area: int, nms_thresh: float
                                  ) -> dict[str, list]:
        """Fill small holes and drop small islands of every mask, then redo box NMS,
        preferring masks that did not change."""
        if not data["rles"]:
            return data
        masks, scores = [], []
        for rle in data["rles"]:
            m = U.rle_to_mask(rle)
            m, changed_holes = U.remove_small_regions(m, min_area, "holes")
            m, changed_islands = U.remove_small_regions(m, min_area, "islands")
            masks.append(m)
            scores.append(0.0 if (changed_holes or changed_islands) else 1.0)
        boxes = np.asarray(U.masks_to_boxes(np.stack(masks)))
        keep = U.nms(boxes, np.asarray(scores), nms_thresh)
        data = {k: list(v) for k, v in data.items()}
        for i in keep:
            if scores[i] == 0.0:
                data["rles"][i] = U.mask_to_rle(masks[i])
                data["boxes"][i] = boxes[i]
        return {k: [v[i] for i in keep] for k, v in data.items()}
