"""Image + instance-mask sources for SAM training: COCO-format, SA-1B, the embedded dataset.

Every source is random access (`len`, `src[i]`) and returns one image with its objects:

    {"image": uint8 [H, W, 3], "image_id": int, "anns": [COCO annotation dicts]}

where an annotation has `segmentation` (polygons or RLE, decoded by `gt_mask`), `bbox`
XYWH and `area`. `data.name` selects the source:

- `evit_shapes` / `evit_shapes/tiny`: the embedded dataset; its per-pixel labels become one
  object per connected region (the same objects `evit-sam-eval --dataset evit_shapes` scores);
  image ids: the index for validation images (as evit-sam-eval), 1000000 + index for train;
- `coco:IMAGE_ROOT`: a COCO-format instance json (`data.annotations`) with its images under
  IMAGE_ROOT (your own annotations: CVAT / labelme exports in COCO format); the held-out split
  is `data.eval_annotations`, or, when that is empty, the last 1 % of the images;
- `sa1b:ROOT`: the SA-1B layout, `sa_<id>.jpg` + `sa_<id>.json` (masks as COCO RLE) directly
  under ROOT or under ROOT/images and ROOT/masks; the id list is ROOT/sa_images_ids.txt if
  present (the authors' file), else every id found, sorted; the first 99 % train, the rest
  validate (the authors' split).
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Any

import numpy as np
from PIL import Image

from evit_jax.cli import UserError
from evit_jax.errors import UserFileNotFoundError
from evit_jax.sam.eval.data import EvalImage, gt_mask, image_file, shapes_instances

TRAIN_FRACTION = 0.99  # the authors' SA-1B id split
SHAPES_TRAIN_ID_OFFSET = 1_000_000  # distinct ids for the two splits (teacher .npy names)


def _load_rgb(path: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise UserFileNotFoundError(f"image {path!r} not found")
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def split_ids(ids: list, split: str) -> list:
    """The authors' split of an id list: first 99 % train, the rest validation."""
    cut = int(len(ids) * TRAIN_FRACTION)
    if split not in ("train", "validation"):
        raise UserError(f"split must be 'train' or 'validation', got {split!r}")
    return ids[:cut] if split == "train" else ids[cut:]


class ShapesSource:
    """The embedded dataset's split; objects from its per-pixel labels."""

    def __init__(self, split: str, config: str = "default", data_dir: str | None = None):
        from evit_jax.data.shapes_tfds import load_split
        self.src = load_split(split, config, data_dir)
        self.id_offset = SHAPES_TRAIN_ID_OFFSET if split == "train" else 0

    def __len__(self) -> int:
        return len(self.src)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ex = self.src[int(i)]
        return {"image": np.asarray(ex["image"]), "image_id": self.id_offset + int(i),
                "anns": shapes_instances(np.asarray(ex["mask"])[..., 0])}


class CocoSource:
    """The images of a COCO-format instance json (and their non-crowd annotations)."""

    def __init__(self, image_root: str, annotations: str, split: str | None = None):
        if not os.path.isfile(annotations):
            raise UserFileNotFoundError(f"data.annotations {annotations!r} not found")
        with open(annotations) as f:
            gt = json.load(f)
        if not isinstance(gt, dict) or "images" not in gt or "annotations" not in gt:
            raise UserError(f"{annotations}: not a COCO instance json (needs 'images' and "
                            "'annotations')")
        by_image: dict[int, list] = {}
        for a in gt["annotations"]:
            if not a.get("iscrowd", 0):
                by_image.setdefault(a["image_id"], []).append(a)
        images = gt["images"] if split is None else split_ids(gt["images"], split)
        self.root = image_root
        self.items = [(os.path.join(image_root, image_file("coco", im)), int(im["id"]),
                       int(im["height"]), int(im["width"]), by_image.get(im["id"], []))
                      for im in images]
        if not self.items:
            raise UserError(f"{annotations}: no images in this split")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path, image_id, _, _, anns = self.items[int(i)]
        return {"image": _load_rgb(path), "image_id": image_id, "anns": anns}


def _sa1b_paths(root: str, sa_id: str) -> tuple[str, str]:
    flat = os.path.join(root, f"sa_{sa_id}.jpg")
    if os.path.isfile(flat):
        return flat, os.path.join(root, f"sa_{sa_id}.json")
    return (os.path.join(root, "images", f"sa_{sa_id}.jpg"),
            os.path.join(root, "masks", f"sa_{sa_id}.json"))


class Sa1bSource:
    """SA-1B: one jpg + one json of RLE masks per image id."""

    def __init__(self, root: str, split: str):
        if not os.path.isdir(root):
            raise UserFileNotFoundError(f"SA-1B root {root!r} is not a directory")
        listed = os.path.join(root, "sa_images_ids.txt")
        if os.path.isfile(listed):
            with open(listed) as f:
                ids = [s.strip() for s in f if s.strip()]
        else:
            found = glob.glob(os.path.join(root, "sa_*.json")) + glob.glob(
                os.path.join(root, "masks", "sa_*.json"))
            ids = sorted({re.sub(r"^sa_|\.json$", "", os.path.basename(p)) for p in found},
                         key=lambda s: (len(s), s))
        if not ids:
            raise UserFileNotFoundError(f"no sa_<id>.json under {root!r} (nor masks/)")
        self.root, self.ids = root, split_ids(ids, split)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        jpg, js = _sa1b_paths(self.root, self.ids[int(i)])
        with open(js) as f:
            anns = json.load(f)["annotations"]
        sa_id = self.ids[int(i)]
        return {"image": _load_rgb(jpg), "image_id": int(sa_id) if sa_id.isdigit() else int(i),
                "anns": anns}


def open_sam_source(data: Any, split: str) -> Any:
    """The source of `data.name` for split "train" or "validation" (see the module doc)."""
    name = data.name
    if name.split("/")[0] == "evit_shapes":
        config = name.split("/")[1] if "/" in name else "default"
        return ShapesSource(split, config, data.data_dir or None)
    if name.startswith("coco:"):
        root = name[len("coco:"):]
        if not data.annotations:
            raise UserError("data.name='coco:IMAGE_ROOT' needs data.annotations (the "
                            "instances json)")
        if split == "validation" and data.eval_annotations:
            return CocoSource(data.eval_image_root or root, data.eval_annotations)
        held_out = not data.eval_annotations
        return CocoSource(root, data.annotations, split if held_out else None)
    if name.startswith("sa1b:"):
        return Sa1bSource(name[len("sa1b:"):], split)
    raise UserError(f"data.name={name!r} is not a SAM source; use evit_shapes[/tiny], "
                    "coco:IMAGE_ROOT (+ data.annotations) or sa1b:ROOT")


def eval_images(src: Any, limit: int = 0) -> list[EvalImage]:
    """A source's images as `evit-sam-eval`'s `EvalImage`s (loaded lazily), first `limit`."""
    n = len(src) if not limit else min(limit, len(src))
    out = []
    for i in range(n):
        if isinstance(src, CocoSource):  # no need to open the image to know its size
            path, image_id, h, w, anns = src.items[i]
            out.append(EvalImage(i, image_id, h, w, (lambda p=path: _load_rgb(p)), anns))
            continue
        if isinstance(src, Sa1bSource):  # size from the json; the jpg only when evaluated
            jpg, js = _sa1b_paths(src.root, src.ids[i])
            with open(js) as f:
                rec = json.load(f)
            sa_id = src.ids[i]
            out.append(EvalImage(i, int(sa_id) if sa_id.isdigit() else i,
                                 int(rec["image"]["height"]), int(rec["image"]["width"]),
                                 (lambda p=jpg: _load_rgb(p)), rec["annotations"]))
            continue
        rec = src[i]
        img = rec["image"]
        out.append(EvalImage(i, rec["image_id"], img.shape[0], img.shape[1],
                             (lambda im=img: im), rec["anns"]))
    return out


__all__ = ["open_sam_source", "eval_images", "gt_mask", "split_ids"]
