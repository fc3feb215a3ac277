"""Random-access sources for the input pipeline, and a decoder per dataset.

`open_source(data_cfg, split, task)` returns `(source, decode, num_classes)`: `source[i]` is a
raw record (tfds ArrayRecord, an image file, ...), and `decode(record)` gives the common
form `{"image": uint8 [H, W, 3], "label": int}` (classification) or `{"image": ...,
"label": uint8 [H, W]}` (segmentation, 255 = ignore). Names understood by `data.name`:

- `evit_shapes` / `evit_shapes/tiny`: the embedded dataset (built on first use);
- `folder:/root`: an ImageFolder tree `/root/<split>/<class>/<image>` (classes sorted);
- `ade20k:/root/ADEChallengeData2016`: `images/<split>/*.jpg` + `annotations/<split>/*.png`
  (0 = other -> ignored, k -> class k - 1), splits `training` / `validation`;
- any other tfds name, read with `tfds.data_source` from `data.data_dir` (for ImageNet:
  `imagenet2012`, prepared once with the manual download; `cityscapes/semantic_segmentation`,
  whose labelIds are mapped to the 19 train ids).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from evit_jax.cli import UserError
from evit_jax.errors import UserFileNotFoundError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".JPEG", ".JPG", ".PNG")
IGNORE = 255

# Cityscapes labelId -> trainId (19 evaluated classes; everything else ignored).
_CITYSCAPES_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
CITYSCAPES_LUT = np.full(256, IGNORE, np.uint8)
CITYSCAPES_LUT[list(_CITYSCAPES_IDS)] = np.arange(19, dtype=np.uint8)


def _rgb(x: Any) -> np.ndarray:
    """Decoded tfds image / PIL image / path -> uint8 `[H, W, 3]`."""
    if isinstance(x, (str, os.PathLike, bytes)):
        with Image.open(io.BytesIO(x) if isinstance(x, bytes) else x) as im:
            return np.asarray(im.convert("RGB"))
    x = np.asarray(x)
    if x.ndim == 2:
        x = x[..., None]
    return np.repeat(x, 3, -1) if x.shape[-1] == 1 else x[..., :3]


class FileSource:
    """A list of (path, label) as a grain-compatible random-access source."""

    def __init__(self, items: list[tuple[str, Any]]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[str, Any]:
        return self.items[i]


def _folder(root: str, split: str) -> tuple[FileSource, list[str]]:
    d = os.path.join(root, split)
    if not os.path.isdir(d):
        raise UserFileNotFoundError(f"ImageFolder split {d!r} does not exist; expected "
                                    f"{root}/<split>/<class>/<image> (set data.train_split / "
                                    f"data.eval_split to the split folder names)")
    classes = sorted(c for c in os.listdir(d) if os.path.isdir(os.path.join(d, c)))
    items = [(os.path.join(d, c, f), k) for k, c in enumerate(classes)
             for f in sorted(os.listdir(os.path.join(d, c))) if f.endswith(IMAGE_EXTS)]
    if not items:
        raise UserFileNotFoundError(f"no images found under {d!r}")
    return FileSource(items), classes


def _ade20k(root: str, split: str) -> FileSource:
    img_dir, ann_dir = os.path.join(root, "images", split), os.path.join(root, "annotations",
                                                                         split)
    if not os.path.isdir(img_dir) or not os.path.isdir(ann_dir):
        raise UserFileNotFoundError(f"expected {img_dir} and {ann_dir} (ADEChallengeData2016 "
                                    f"layout; splits 'training' and 'validation')")
    names = sorted(f[:-4] for f in os.listdir(img_dir) if f.endswith(".jpg"))
    return FileSource([(os.path.join(img_dir, n + ".jpg"), os.path.join(ann_dir, n + ".png"))
                       for n in names])


def _ade_label(path: str) -> np.ndarray:
    with Image.open(path) as im:
        lab = np.asarray(im).astype(np.int32)
    return np.where(lab == 0, IGNORE, lab - 1).astype(np.uint8)


def tfds_source(name: str, split: str, data_dir: str | None) -> Any:
    """`tfds.data_source` of an already prepared tfds dataset, never a download.

    Unprepared, tfds would try to download (minutes of retries offline, then a misleading
    error about file formats); say what to run instead."""
    import tensorflow_datasets as tfds
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise UserError(f"tfds has no dataset {name!r}: check data.name (tfds names such as "
                        "'div2k/bicubic_x2', or images:/folder)") from None
    if not builder.is_prepared():
        raise UserError(
            f"tfds {name!r} is not prepared under {builder.data_dir}: prepare it once with "
            f"`tfds build {name} --data_dir DIR --file_format array_record` and set "
            "data.data_dir=DIR")
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)


def open_source(data: Any, split: str, task: str
                ) -> tuple[Any, Callable[[Any], dict], int | None]:
    """(source, decode, num_classes or None if unknown) of `data.name`'s `split`."""
    name = data.name
    if name.startswith("folder:"):
        src, classes = _folder(name[len("folder:"):], split)
        if task != "cls":
            raise UserError("an ImageFolder tree only has image labels: use task 'cls'")
        return src, lambda r: {"image": _rgb(r[0]), "label": int(r[1])}, len(classes)
    if name.startswith("ade20k:"):
        src = _ade20k(name[len("ade20k:"):], split)
        return src, lambda r: {"image": _rgb(r[0]), "label": _ade_label(r[1])}, 150
    if name.split("/")[0] == "scene_parse150":
        raise UserError("tfds 'scene_parse150' stores the 100-category *instance* annotations "
                        "of the Places challenge, not ADE20K's 150-class semantic labels; "
                        "point data.name at 'ade20k:/path/to/ADEChallengeData2016' instead")
    if name.split("/")[0] == "evit_shapes":
        from evit_jax.data.shapes_tfds import load_split
        config = name.split("/")[1] if "/" in name else "default"
        src = load_split(split, config, data.data_dir or None)
        if task == "seg":  # background 0, shape k -> k + 1: 11 classes
            return src, lambda r: {"image": r["image"], "label": r["mask"][..., 0]}, 11
        return src, lambda r: {"image": r["image"], "label": int(r["label"])}, 10
    src = tfds_source(name, split, data.data_dir or None)
    feats = src.dataset_info.features
    if name.startswith("cityscapes"):
        ik, lk = data.image_key or "image_left", data.label_key or "segmentation_label"
        return src, lambda r: {"image": _rgb(r[ik]),
                               "label": CITYSCAPES_LUT[np.asarray(r[lk])[..., 0]]}, 19
    ik, lk = data.image_key or "image", data.label_key or "label"
    if task == "seg":
        return src, lambda r: {"image": _rgb(r[ik]),
                               "label": np.asarray(r[lk]).reshape(np.shape(r[lk])[:2])}, None
    n = getattr(feats[lk], "num_classes", None)
    return src, lambda r: {"image": _rgb(r[ik]), "label": int(r[lk])}, n
