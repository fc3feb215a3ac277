"""What `evit-sam-eval` reads: COCO / LVIS instance files, detections, the embedded dataset.

Every dataset becomes a list of `EvalImage`s in the order of its `images` list (that order
is also the order results are merged and scored in, so any split over processes gives the
same numbers). Annotations and detections stay COCO dicts (`bbox` XYWH in pixels, `area`,
`segmentation` as polygons or RLE); `gt_mask` decodes a segmentation with pycocotools.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np

from evit_jax.errors import UserError, UserFileNotFoundError, user_path

DATASETS = ("coco", "lvis", "evit_shapes")


@dataclasses.dataclass
class EvalImage:
    """One image to evaluate.

    Attributes:
      index: position in the dataset's image list (results are merged in this order).
      image_id: the `id` of the image in the annotation file.
      height, width: its size in pixels.
      load: returns the RGB image, uint8 `[H, W, 3]`.
      annotations: the ground-truth annotations of the image (COCO dicts).
      detections: the detector's results for the image (COCO results dicts).
    """

    index: int
    image_id: int
    height: int
    width: int
    load: Callable[[], np.ndarray]
    annotations: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    detections: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def read_json(path: str, what: str) -> Any:
    if not os.path.isfile(path):
        raise UserFileNotFoundError(f"{what} {path!r} not found")
    with user_path(path):
        with open(path, "rb") as f:
            raw = f.read()
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{what} {path!r} is not valid JSON ({e})") from None


def _rgb_loader(path: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from PIL import Image
        if not os.path.isfile(path):
            raise UserFileNotFoundError(f"image {path!r} not found: check --image-root")
        with user_path(path), Image.open(path) as im:  # unreadable: one line naming it
            return np.asarray(im.convert("RGB"))
    return load


def image_file(dataset: str, image: dict[str, Any]) -> str:
    """Path of an image record under the image root. LVIS records name the COCO folder and
    file in `coco_url` (`.../val2017/000000397133.jpg` -> `val2017/000000397133.jpg`, as
    the authors' script reads them, so the root holds COCO's train2017/ and val2017/);
    COCO records have `file_name`."""
    if dataset == "lvis" and "coco_url" in image:
        return os.path.join(*image["coco_url"].split("/")[-2:])
    if "file_name" not in image:
        raise UserError(f"image record {image.get('id')} has no 'file_name'"
                        + (" or 'coco_url'" if dataset == "lvis" else ""))
    return image["file_name"]


def coco_images(dataset: str, image_root: str, annotations: str | dict,
                detections: str | list | None = None) -> list[EvalImage]:
    """The images of a COCO / LVIS instance file with their annotations (and detections).

    Args:
      dataset: "coco" or "lvis" (how image files are named, see `image_file`).
      image_root: folder the image files are under.
      annotations: path of the instances json, or its loaded dict.
      detections: a COCO results json (path or list): `image_id`, `category_id`, `bbox`
        XYWH, `score` per detection; None for the ground-truth-prompted protocols.
    """
    gt = read_json(annotations, "--annotations") if isinstance(annotations, str) \
        else annotations
    if not isinstance(gt, dict) or "images" not in gt or "annotations" not in gt:
        raise UserError("--annotations must be a COCO-format instances json with 'images' "
                        "and 'annotations' lists")
    if not os.path.isdir(image_root):
        raise UserFileNotFoundError(f"--image-root {image_root!r} is not a directory")
    try:
        return _coco_images(dataset, image_root, gt, detections)
    except KeyError as e:  # a record without a field every COCO file has
        raise UserError(f"--annotations / --detections: a record has no {e} field (expected "
                        "COCO instances / results files)") from None


def _coco_images(dataset: str, image_root: str, gt: dict,
                 detections: str | list | None) -> list[EvalImage]:
    anns: dict[int, list] = defaultdict(list)
    for a in gt["annotations"]:
        anns[a["image_id"]].append(a)
    dets: dict[int, list] = defaultdict(list)
    if detections is not None:
        res = read_json(detections, "--detections") if isinstance(detections, str) \
            else detections
        if not isinstance(res, list) or any(not {"image_id", "bbox"} <= set(d) for d in res):
            raise UserError("--detections must be a COCO results json: a list of "
                            "{'image_id', 'category_id', 'bbox': [x, y, w, h], 'score'}")
        known = {im["id"] for im in gt["images"]}
        unknown = {d["image_id"] for d in res} - known
        if unknown:
            raise UserError(f"--detections names {len(unknown)} image ids that are not in "
                            f"--annotations (e.g. {sorted(unknown)[:3]}): wrong file pair?")
        for d in res:
            dets[d["image_id"]].append(d)
    return [EvalImage(i, im["id"], int(im["height"]), int(im["width"]),
                      _rgb_loader(os.path.join(image_root, image_file(dataset, im))),
                      anns[im["id"]], dets[im["id"]])
            for i, im in enumerate(gt["images"])]


def gt_mask(ann: dict[str, Any], height: int, width: int) -> np.ndarray:
    """The boolean `[H, W]` mask of an annotation: polygons (merged), uncompressed RLE
    (`counts` a list) or compressed RLE (`counts` a string), decoded by pycocotools."""
    from pycocotools import mask as mask_utils

    seg = ann["segmentation"]
    if isinstance(seg, list):  # polygons of one object
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):
        rle = mask_utils.frPyObjects(seg, height, width)
    elif isinstance(seg, dict) and isinstance(seg.get("counts"), (str, bytes)):
        c = seg["counts"]
        rle = {"size": seg["size"], "counts": c.encode() if isinstance(c, str) else c}
    else:
        raise UserError(f"annotation {ann.get('id')}: 'segmentation' must be polygons or an "
                        "RLE dict")
    return mask_utils.decode(rle) > 0


def shapes_instances(mask: np.ndarray) -> list[dict[str, Any]]:
    """COCO annotations of one `evit_shapes` label map `[H, W]` (class + 1, 0 background):
    one instance per 8-connected region of each class, as compressed RLE with pycocotools'
    area and XYWH box."""
    from pycocotools import mask as mask_utils
    from scipy import ndimage

    out = []
    for cls in np.unique(mask[mask > 0]):
        regions, n = ndimage.label(mask == cls, structure=np.ones((3, 3), bool))
        for r in range(1, n + 1):
            rle = mask_utils.encode(np.asfortranarray(regions == r, dtype=np.uint8))
            out.append({"category_id": int(cls), "iscrowd": 0,
                        "area": float(mask_utils.area(rle)),
                        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                        "segmentation": {"size": [int(s) for s in rle["size"]],
                                         "counts": rle["counts"].decode("utf-8")}})
    return out


def shapes_images(name: str = "evit_shapes", data_dir: str | None = None) -> list[EvalImage]:
    """The validation split of the embedded dataset (`evit_shapes` or `evit_shapes/tiny`,
    built on first use under `data_dir`, default `$EVIT_DATA_DIR`) as `EvalImage`s."""
    config = name.split("/", 1)[1] if "/" in name else "default"
    from evit_jax.data.shapes_tfds import load_split
    src = load_split("validation", config, data_dir)
    images, next_id = [], 1
    for i in range(len(src)):
        ex = src[i]
        image, labels = np.asarray(ex["image"]), np.asarray(ex["mask"])[..., 0]
        anns = [dict(a, id=next_id + k, image_id=i)
                for k, a in enumerate(shapes_instances(labels))]
        next_id += len(anns)
        images.append(EvalImage(i, i, image.shape[0], image.shape[1],
                                (lambda im=image: im), anns))
    return images
