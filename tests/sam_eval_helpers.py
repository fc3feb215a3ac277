"""A small COCO / LVIS-format evaluation set drawn for the SAM evaluation tests.

Four PNG images of coloured shapes with their instance annotations (polygons, COCO's
uncompressed "iscrowd" RLE), objects in every size bucket (one of area exactly 32**2, a
boundary the authors count twice; one of area < 1, skipped), an image without objects, and
a detections file (jittered ground-truth boxes, a false positive). Needs only numpy, PIL and
pycocotools, so the reference's environment draws the same set
(tests/data/make_sam_eval_reference.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

CATEGORIES = [{"id": 1, "name": "box", "frequency": "f"},
              {"id": 2, "name": "disc", "frequency": "c"},
              {"id": 3, "name": "triangle", "frequency": "r"}]
FOLDER = "val2017"


def _rect(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _disc(cx: float, cy: float, r: float, n: int = 24) -> list[list[float]]:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return [np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1).ravel().round(2).tolist()]


# (width, height, [(category, segmentation polygons, as "rle"?, area override)])
SCENES = [
    (200, 160, [(1, _rect(20, 30, 140, 130), False, None),        # large, 120 x 100
                (3, [[150, 20, 190, 20, 170, 50]], False, None),    # small triangle
                (2, _disc(160, 110, 28), True, None)]),             # medium disc, RLE
    (128, 96, [(2, _disc(40, 45, 30), False, None),                 # medium
               (1, _rect(90, 10, 110, 40), True, None)]),           # small, RLE
    (80, 64, [(1, _rect(10, 10, 42, 42), False, 1024.0),            # exactly 32**2
              (3, [[50, 50, 51, 50, 50.5, 50.6]], False, 0.3)]),    # area < 1: skipped
    (64, 48, []),                                                   # no objects
]


def _scene_image(w: int, h: int, masks: list[np.ndarray], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    img = np.stack([90 + 60 * xx / w, 150 - 50 * yy / h, 120 + 0 * xx], -1)
    img = img + rng.normal(0, 4, img.shape)
    for m in masks:
        img[m] = rng.integers(0, 256, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def draw_eval_set(root: Path) -> dict[str, Path]:
    """Write the set under `root`: `val2017/*.png`, `instances.json` (COCO), `lvis.json`
    (the same objects in LVIS's format) and `detections.json`. Returns those paths."""
    from pycocotools import mask as mask_utils

    root = Path(root)
    (root / FOLDER).mkdir(parents=True, exist_ok=True)
    images, anns, dets = [], [], []
    rng = np.random.default_rng(0)
    for i, (w, h, objects) in enumerate(SCENES):
        image_id = i + 1
        name = f"{image_id:012d}.png"
        masks = []
        for cat, polys, as_rle, area in objects:
            rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
            m = mask_utils.decode(rle).astype(bool)
            masks.append(m)
            seg = polys
            if as_rle:  # COCO's crowd format: uncompressed counts, column-major
                flat = m.ravel(order="F")
                change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
                counts = ([0] if flat[0] else []) + np.diff(np.r_[0, change, flat.size]).tolist()
                seg = {"size": [h, w], "counts": counts}
            box = [float(v) for v in mask_utils.toBbox(rle)]
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat,
                         "segmentation": seg, "bbox": box, "iscrowd": 0,
                         "area": float(mask_utils.area(rle)) if area is None else area})
            if area is None or area >= 1:
                jitter = rng.uniform(-1.5, 1.5, 4) * [1, 1, 0, 0]
                dets.append({"image_id": image_id, "category_id": cat,
                             "bbox": [round(float(v), 2) for v in np.add(box, jitter)],
                             "score": round(float(rng.uniform(0.5, 1.0)), 3)})
        if objects:  # a false positive on the background
            dets.append({"image_id": image_id, "category_id": 1,
                         "bbox": [1.0, float(h - 12), 10.0, 10.0], "score": 0.42})
        Image.fromarray(_scene_image(w, h, masks, image_id)).save(root / FOLDER / name)
        images.append({"id": image_id, "file_name": name, "width": w, "height": h,
                       "coco_url": f"http://images.cocodataset.org/{FOLDER}/{name}"})
    coco = {"images": images, "annotations": anns,
            "categories": [{"id": c["id"], "name": c["name"]} for c in CATEGORIES]}
    lvis = {"images": [dict(im, neg_category_ids=[], not_exhaustive_category_ids=[])
                       for im in images],
            "annotations": [{k: v for k, v in a.items() if k != "iscrowd"} for a in anns],
            "categories": CATEGORIES}
    paths = {"image_root": root / FOLDER, "root": root, "instances": root / "instances.json",
             "lvis": root / "lvis.json", "detections": root / "detections.json"}
    for key, obj in (("instances", coco), ("lvis", lvis), ("detections", dets)):
        paths[key].write_text(json.dumps(obj))
    return paths


def click_cases() -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """(ground truth, predictions one per round) pairs for the clicker: random blobs and
    their perturbations, plus the edge cases (an empty and a perfect prediction, objects on
    the image border, symmetric shapes whose farthest pixels tie)."""
    from scipy import ndimage

    rng = np.random.default_rng(7)
    cases = []
    for k in range(12):
        h, w = rng.integers(20, 60, 2)
        blob = ndimage.gaussian_filter(rng.random((h, w)), 3) > 0.5
        preds = [np.zeros((h, w), bool), ndimage.binary_dilation(blob, iterations=2),
                 np.roll(blob, int(rng.integers(-4, 5)), axis=int(k % 2)),
                 blob ^ (ndimage.gaussian_filter(rng.random((h, w)), 2) > 0.56), blob]
        cases.append((blob, preds))
    square = np.zeros((21, 21), bool)
    square[5:16, 5:16] = True                       # 4-fold symmetric: ties everywhere
    border = np.zeros((16, 24), bool)
    border[:, :9] = True                            # touches three image borders
    full = np.ones((10, 12), bool)
    for gt in (square, border, full):
        cases.append((gt, [np.zeros_like(gt), ~gt, gt, np.zeros_like(gt)]))
    return cases


def bucket_cases() -> list[dict[str, float]]:
    """{"area", "iou"} results with areas on and around the bucket bounds."""
    rng = np.random.default_rng(3)
    areas = [1.0, 1023.5, 1024.0, 1024.5, 5000.0, 9215.9, 9216.0, 9216.1, 40000.0]
    areas += rng.uniform(1, 20000, 30).round(1).tolist()
    return [{"area": a, "iou": float(rng.uniform(0, 100))} for a in areas]


def oracle_detections(paths: dict[str, Path]) -> list[dict]:
    """Detections with masks, scored by the AP tools in both implementations: each object's
    ground-truth mask shifted by 0-3 pixels (so IoUs spread over the AP thresholds), one
    with the wrong category, and a false positive per image, as COCO RLE."""
    from pycocotools import mask as mask_utils

    gt = json.loads(Path(paths["instances"]).read_text())
    sizes = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
    out = []
    for k, a in enumerate(gt["annotations"]):
        if a["area"] < 1:
            continue
        h, w = sizes[a["image_id"]]
        seg = a["segmentation"]
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w)) if isinstance(seg, list) \
            else mask_utils.frPyObjects(seg, h, w)
        m = np.roll(mask_utils.decode(rle), k % 4, axis=k % 2)
        fp = np.zeros_like(m)
        fp[h - 6:h - 1, 1:6] = 1
        for mask, cat, score in ((m, a["category_id"], 0.9 - 0.05 * k),
                                 (fp, 1, 0.3 + 0.01 * k),
                                 (m, a["category_id"] % 3 + 1, 0.2)):
            r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            out.append({"image_id": a["image_id"], "category_id": cat, "score": score,
                        "bbox": [float(v) for v in mask_utils.toBbox(r)],
                        "segmentation": {"size": [int(v) for v in r["size"]],
                                         "counts": r["counts"].decode()}})
    return out


class GtOracle:
    """A stand-in for `SamPredictor` that knows the ground truth, to test the scoring and
    prompting code, not a network: `predict_batch` returns per prompt three masks (the whole
    image, the oracle's answer, nothing) with predicted IoUs (0.2, 0.9, 0.5), so only a
    correct pick of the best of three gives the oracle's answer.

    The answer for a box is the mask of the annotation whose box overlaps it most (IoU >=
    0.5), shifted `shift` pixels to the right (zero fill); for another box, the box filled.
    For clicks it is the (shifted) annotation under the first click (or nothing). `calls`
    records the prompts.
    """

    def __init__(self, images, shift: int = 0):
        from evit_jax.sam.eval.data import gt_mask
        self.gt_mask, self.shift, self.calls = gt_mask, shift, []
        self.by_key = {self._key(im.load()): im for im in images}

    @staticmethod
    def _key(pixels: np.ndarray) -> bytes:
        import hashlib
        return hashlib.sha1(np.ascontiguousarray(pixels).tobytes()).digest()

    def set_image(self, pixels: np.ndarray) -> None:
        self.image = self.by_key[self._key(pixels)]

    def _shifted(self, m: np.ndarray) -> np.ndarray:
        out = np.zeros_like(m)
        out[:, self.shift:] = m[:, :m.shape[1] - self.shift]
        return out

    def _for_box(self, box: np.ndarray) -> np.ndarray:
        im = self.image
        best, best_iou = None, 0.5
        for a in im.annotations:
            x, y, w, h = a["bbox"]
            lt = np.maximum(box[:2], [x, y])
            rb = np.minimum(box[2:], [x + w, y + h])
            inter = np.prod(np.clip(rb - lt, 0, None))
            union = w * h + np.prod(box[2:] - box[:2]) - inter
            if union > 0 and inter / union >= best_iou:
                best, best_iou = a, inter / union
        if best is not None:
            return self._shifted(self.gt_mask(best, im.height, im.width))
        m = np.zeros((im.height, im.width), bool)
        x0, y0, x1, y1 = np.round(box).astype(int)
        m[y0:y1, x0:x1] = True
        return m

    def _for_clicks(self, coords: np.ndarray) -> np.ndarray:
        im = self.image
        x, y = np.asarray(coords[0], int)
        for a in im.annotations:
            m = self.gt_mask(a, im.height, im.width)
            if m[y, x]:
                return self._shifted(m)
        return np.zeros((im.height, im.width), bool)

    def predict_batch(self, points=None, point_labels=None, boxes=None,
                      multimask_output=True):
        assert multimask_output
        self.calls.append({"points": points, "point_labels": point_labels, "boxes": boxes})
        answers = [self._for_box(np.asarray(b, float)) for b in boxes] if boxes is not None \
            else [self._for_clicks(p) for p in points]
        masks = np.stack([np.stack([np.ones_like(a), a, np.zeros_like(a)]) for a in answers])
        iou = np.tile(np.float32([0.2, 0.9, 0.5]), (len(answers), 1))
        return masks, iou, None
