"""`evit-detect`: detect objects in an image with an EfficientViT-Det model.

  evit-detect --model efficientvit-det-b1 --weights DIR --image IN.jpg --out OUT.png \
      [--score 0.3] [--nms 0.65] [--size 416] [--json OUT.json]

Writes the image with labelled boxes (COCO's class names for an 80-class model, else the
names of `--class-names` or the class indices) and, with `--json`, the detections:
`{"image", "width", "height", "model", "detections": [{"box": [x1, y1, x2, y2], "score",
"label", "name"}, ...]}` in the image's pixels, best first.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evit_jax.cli import UserError, parse_resolution, run, write_atomic

PROG = "evit-detect"


def class_names(num_classes: int, path: Path | None = None) -> list[str]:
    """Names of a model's classes: from a file (one per line), COCO's for 80, else indices."""
    if path is not None:
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if len(names) != num_classes:
            raise UserError(f"{path} names {len(names)} classes; the model has {num_classes}")
        return names
    if num_classes == 80:
        from evit_jax.det.coco import COCO_CLASSES
        return list(COCO_CLASSES)
    return [str(i) for i in range(num_classes)]


def _colour(label: int) -> tuple[int, int, int]:
    """A distinct, saturated colour per class (golden-ratio hue steps)."""
    import colorsys
    r, g, b = colorsys.hsv_to_rgb((label * 0.618034) % 1.0, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(image: np.ndarray, result: dict[str, np.ndarray], names: Sequence[str]
                    ) -> np.ndarray:
    """The image (uint8 `[H, W, 3]`) with each box outlined and labelled "name 0.87"."""
    from PIL import Image, ImageDraw, ImageFont

    im = Image.fromarray(image)
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default()
    width = max(1, round(max(image.shape[:2]) / 300))
    for box, score, label in zip(result["boxes"], result["scores"], result["labels"]):
        c = _colour(int(label))
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle([x1, y1, x2, y2], outline=c, width=width)
        text = f"{names[int(label)]} {score:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), text, font=font)
        th = bottom - top
        ty = y1 - th - 2 if y1 - th - 2 >= 0 else y1  # above the box if it fits
        draw.rectangle([x1, ty, x1 + (right - left) + 4, ty + th + 2], fill=c)
        draw.text((x1 + 2, ty), text, fill=(0, 0, 0), font=font)
    return np.asarray(im)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="detector zoo name (efficientvit-det-*)")
    ap.add_argument("--weights", required=True, type=Path,
                    help="variables directory (evit-convert), training workdir, or checkpoint")
    ap.add_argument("--image", required=True, type=Path, help="input image file")
    ap.add_argument("--out", required=True, type=Path, help="output image (.png, .jpg)")
    ap.add_argument("--score", type=float, default=0.3,
                    help="keep detections scoring at least this (default 0.3)")
    ap.add_argument("--nms", type=float, default=0.65,
                    help="IoU above which a box suppresses weaker ones of its class (0.65)")
    ap.add_argument("--max-det", type=int, default=100, help="detections at most (100)")
    ap.add_argument("--size", type=parse_resolution, default=None,
                    help="letterbox input size, S or HxW, multiples of 32 (default: the "
                         "model's resolution)")
    ap.add_argument("--class-names", type=Path, default=None,
                    help="text file with one class name per line (default: COCO's for 80 "
                         "classes, else the indices)")
    ap.add_argument("--json", type=Path, default=None, help="also write the detections here")
    return ap


def _main(args: argparse.Namespace) -> int:
    from evit_jax.det.predictor import DetPredictor
    from evit_jax.io import load_variables
    from evit_jax.sam.cli import read_image
    from evit_jax.zoo import create_model, model_info

    spec = model_info(args.model)  # an unknown name fails before any reading
    if spec.task != "det":
        raise UserError(f"{args.model} is not a detector; choose one of "
                        "evit_jax.list_models('*det*')")
    if not 0 <= args.score <= 1 or not 0 <= args.nms <= 1:
        raise UserError("--score and --nms are between 0 and 1")
    if args.max_det < 1:
        raise UserError(f"--max-det must be at least 1, got {args.max_det}")
    image = read_image(args.image)
    variables = load_variables(args.weights, model=spec.name)
    num_classes = detector_classes(variables)
    names = class_names(num_classes, args.class_names)
    model = create_model(spec.name, num_classes=num_classes)
    predictor = DetPredictor(model, variables, args.size or spec.resolution, args.score,
                             args.nms, args.max_det)
    t0 = time.perf_counter()
    result = predictor(image)
    dt = time.perf_counter() - t0
    write_atomic(args.out, lambda tmp: _save(draw_detections(image, result, names), tmp,
                                             args.out.suffix))
    if args.json is not None:
        write_atomic(args.json, json.dumps(_record(args, image, result, names), indent=1))
    print(f"{len(result['scores'])} detections (score >= {args.score}) in {dt:.2f} s "
          f"(compilation included) -> {args.out}")
    return 0


def detector_classes(variables: Any) -> int:
    """The number of classes of a detector's variables (its class predictor's width)."""
    try:
        return int(np.shape(variables["params"]["head"]["cls_preds_0"]["bias"])[0])
    except (KeyError, TypeError):
        raise UserError("these weights are not a detector's (no params/head/cls_preds_0)") \
            from None


def _save(image: np.ndarray, path: str, suffix: str) -> None:
    from PIL import Image
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG"}.get(suffix.lower(), "PNG")
    Image.fromarray(image).save(path, format=fmt)


def _record(args: argparse.Namespace, image: np.ndarray, result: dict[str, np.ndarray],
            names: Sequence[str]) -> dict[str, Any]:
    dets = [{"box": [round(float(v), 2) for v in box], "score": round(float(s), 5),
             "label": int(lab), "name": names[int(lab)]}
            for box, s, lab in zip(result["boxes"], result["scores"], result["labels"])]
    return {"image": str(args.image), "width": int(image.shape[1]),
            "height": int(image.shape[0]), "model": args.model, "detections": dets}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (`evit_jax.cli`)."""
    return run(PROG, build_parser(), _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
