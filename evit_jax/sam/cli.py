"""`evit-segment`: segment an image with EfficientViT-SAM from the command line.

  evit-segment --model efficientvit-sam-l0 --weights DIR --image IN.jpg \
      (--point X,Y[,LABEL] ... | --box X0,Y0,X1,Y1 ... | --auto) --out OUT.png \
      [--masks-out masks.npz|masks.json]

Writes the image with the masks drawn over it (colours, outlines, prompt markers) and,
optionally, the masks themselves; prints the time of each stage.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evit_jax.cli import UserError, allow_negative_numbers, run, write_atomic

PROG = "evit-segment"


def _floats(text: str, n: tuple[int, ...], what: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        vals = []
    if len(vals) not in n:
        raise UserError(f"{what} {text!r}: expected {' or '.join(map(str, n))} comma-separated "
                         "numbers")
    return vals


def read_image(path: str | Path) -> np.ndarray:
    """uint8 RGB `[H, W, 3]` of an image file. 16-bit images are scaled to 8 bits (not
    clipped); a decompression bomb (PIL's pixel limit) and unreadable files are UserErrors."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    from evit_jax.errors import UserFileNotFoundError, path_error

    p = Path(path)
    if not p.is_file():
        raise UserFileNotFoundError(f"{p}: no such image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as im:
                return _to_rgb8(p, im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UserError(f"{p}: too many pixels to decode safely ({e}); downscale the image "
                        "first") from None
    except UnidentifiedImageError:
        raise UserError(f"{p}: not an image file PIL can read (give a PNG, JPEG, ...)") from None
    except OSError as e:
        if e.errno is not None:  # the system's refusal (permission, I/O error), not PIL's
            raise path_error(e, p) from e
        raise UserError(f"{p}: cannot decode the image ({e}); is the file complete?") from None
    except (SyntaxError, ValueError) as e:  # PIL's decoders: truncated / corrupt data
        raise UserError(f"{p}: cannot decode the image ({e}); is the file complete?") from None


def _to_rgb8(p: Path, im: Any) -> np.ndarray:
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):  # 16-bit grey (PNG, TIFF)
        a = np.asarray(im).astype(np.int64)
        if a.min() < 0 or a.max() > 65535:
            raise UserError(f"{p}: 32-bit integer pixels ({a.min()}..{a.max()}); save it as an "
                            "8- or 16-bit image")
        if im.mode == "I" and a.max() <= 255:  # 8-bit values stored as int32
            grey = a.astype(np.uint8)
        else:
            grey = ((a * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if im.mode == "F":
        raise UserError(f"{p}: floating-point pixels; save it as an 8- or 16-bit image")
    return np.asarray(im.convert("RGB"))


def save_masks(path: Path, masks: np.ndarray, scores: np.ndarray,
               extra: dict[str, Any] | None = None) -> None:
    """`.npz`: `masks` [N, H, W] bool, `scores` [N] (+ extra arrays); `.json`: COCO RLEs."""
    from evit_jax.sam import amg_utils as U

    if path.suffix == ".npz":
        arrays = {"masks": masks.astype(bool), "scores": scores.astype(np.float32)}
        arrays.update({k: np.asarray(v) for k, v in (extra or {}).items()})

        def write(tmp):
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **arrays)
    elif path.suffix == ".json":
        records = [{"segmentation": U.coco_encode_rle(U.mask_to_rle(m)), "score": float(s),
                    "area": int(m.sum())} for m, s in zip(masks, scores)]
        text = json.dumps({"masks": records, **{k: np.asarray(v).tolist()
                                                for k, v in (extra or {}).items()}})

        def write(tmp):
            Path(tmp).write_text(text)
    else:
        raise UserError(f"--masks-out {path}: use a .npz or .json file")
    write_atomic(path, write)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Segment an image with EfficientViT-SAM: "
                                "from clicks, boxes, or everything (--auto).")
    p.add_argument("--model", required=True, help="zoo name, e.g. efficientvit-sam-l0")
    p.add_argument("--weights", required=True,
                   help="variables directory written by evit-convert, or the authors' .pt file")
    p.add_argument("--image", required=True, help="input image (any format PIL reads)")
    p.add_argument("--point", action="append", metavar="X,Y[,LABEL]",
                   help="a click in pixels; LABEL 1 foreground (default) or 0 background; "
                        "repeat for several clicks (one prompt); may be combined with one --box")
    p.add_argument("--auto", action="store_true", help="segment everything (mask generator)")
    p.add_argument("--box", action="append", metavar="X0,Y0,X1,Y1",
                   help="a box in pixels; several boxes give one mask each, in one batch; "
                        "a box reaching past the image is clipped to it")
    p.add_argument("--out", required=True, help="output PNG with the masks drawn over the image")
    p.add_argument("--masks-out", help="also save the masks: .npz (boolean arrays) or .json "
                                       "(COCO RLE)")
    p.add_argument("--all-masks", action="store_true",
                   help="clicks only: keep all three masks (default: the best by predicted IoU)")
    p.add_argument("--points-per-side", type=int, default=32, help="--auto: grid size")
    p.add_argument("--pred-iou-thresh", type=float, default=0.88, help="--auto filter")
    p.add_argument("--stability-score-thresh", type=float, default=0.95, help="--auto filter")
    p.add_argument("--box-nms-thresh", type=float, default=0.7, help="--auto NMS IoU")
    p.add_argument("--crop-n-layers", type=int, default=0, help="--auto crop layers")
    p.add_argument("--min-mask-region-area", type=int, default=0,
                   help="--auto: remove holes / islands smaller than this")
    return allow_negative_numbers(p)  # --box -5,10,100,100 as well as --box=-5,...


def _prompts(args) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    points = labels = boxes = None
    if args.point:
        vals = [_floats(t, (2, 3), "--point") for t in args.point]
        points = np.array([v[:2] for v in vals])
        labels = np.array([int(v[2]) if len(v) == 3 else 1 for v in vals])
        if not np.isin(labels, (0, 1)).all():
            raise UserError("--point LABEL must be 1 (foreground) or 0 (background)")
    if args.box:
        boxes = np.array([_floats(t, (4,), "--box") for t in args.box])
        if points is not None and len(boxes) > 1:
            raise UserError("clicks combine with one --box; give several boxes without clicks")
    return points, labels, boxes


def clip_boxes(boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """XYXY boxes `[B, 4]` clipped to an `(H, W)` image, each clip said on stdout (a box
    drawn around an object at the edge, or a detector's, often reaches past it). A box with
    x1 < x0 or y1 < y0, or none of it inside, stays an error."""
    h, w = size
    out = boxes.copy()
    for i, b in enumerate(boxes):
        if b[2] < b[0] or b[3] < b[1]:
            continue  # check_boxes names it
        c = np.clip(b, 0, [w, h, w, h])
        if (c == b).all():
            continue
        text = ",".join(f"{v:g}" for v in b)
        if c[0] == c[2] and b[0] != b[2] or c[1] == c[3] and b[1] != b[3]:
            raise UserError(f"--box {text} lies outside the {w}x{h} (WxH) image")
        print(f"note: --box {text} reaches past the {w}x{h} (WxH) image; clipped to "
              + ",".join(f"{v:g}" for v in c))
        out[i] = c
    return out


def segment(args: argparse.Namespace) -> dict[str, float]:
    """Load, encode, decode, draw and save; returns the timings in seconds."""
    import evit_jax
    from evit_jax.sam import SamAutomaticMaskGenerator, SamPredictor
    from evit_jax.sam import prompts as P
    from evit_jax.sam.draw import overlay

    if evit_jax.model_info(args.model).task != "sam":
        raise UserError(f"{args.model} is not a SAM model; see evit_jax.list_models('*sam*')")
    if args.auto and (args.box or args.point):
        raise UserError("--auto segments everything: give it no --point / --box")
    if not (args.auto or args.box or args.point):
        raise UserError("give prompts: --point X,Y[,LABEL] and/or --box X0,Y0,X1,Y1, or --auto")
    points, labels, boxes = _prompts(args)
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise UserError(f"--out {out}: write a .png file")
    if args.masks_out and Path(args.masks_out).suffix not in (".npz", ".json"):
        raise UserError(f"--masks-out {args.masks_out}: use a .npz or .json file")
    image = read_image(args.image)
    size = image.shape[:2]
    if points is not None:  # check the prompts before the (slow) model
        P.check_points(points, labels, size)
    if boxes is not None:
        boxes = clip_boxes(boxes, size)
        P.check_boxes(boxes, size, batched=True)
    t = {}
    t0 = time.perf_counter()
    model = evit_jax.create_model(args.model)
    variables = evit_jax.load_variables(args.weights, model=args.model)
    t["load"] = time.perf_counter() - t0
    extra: dict[str, Any] = {}
    if args.auto:
        gen = SamAutomaticMaskGenerator(
            model, variables, points_per_side=args.points_per_side,
            pred_iou_thresh=args.pred_iou_thresh,
            stability_score_thresh=args.stability_score_thresh,
            box_nms_thresh=args.box_nms_thresh, crop_n_layers=args.crop_n_layers,
            min_mask_region_area=args.min_mask_region_area)
        t0 = time.perf_counter()
        records = gen.generate(image)
        t["generate"] = time.perf_counter() - t0
        masks = np.array([r["segmentation"] for r in records], bool).reshape(-1, *image.shape[:2])
        scores = np.array([r["predicted_iou"] for r in records], np.float32)
        extra = {"bbox_xywh": np.array([r["bbox"] for r in records]).reshape(-1, 4),
                 "stability_score": np.array([r["stability_score"] for r in records])}
    else:
        p = SamPredictor(model, variables)
        t0 = time.perf_counter()
        p.set_image(image)
        p.features.block_until_ready()
        t["encode"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if boxes is not None and len(boxes) > 1:
            m, scores, _ = p.predict_batch(boxes=boxes, multimask_output=False)
            masks, scores = m[:, 0], scores[:, 0]
        else:
            multimask = boxes is None and not (points is not None and len(points) > 1)
            masks, scores, _ = p.predict(points, labels, None if boxes is None else boxes[0],
                                         multimask_output=multimask)
            if multimask and not args.all_masks:
                best = int(np.argmax(scores))
                masks, scores = masks[best:best + 1], scores[best:best + 1]
        t["decode"] = time.perf_counter() - t0
    img = overlay(image, masks, points=points, labels=labels, boxes=boxes)
    write_atomic(out, lambda tmp: img.save(tmp, format="PNG"))
    if args.masks_out:
        save_masks(Path(args.masks_out), masks, scores, extra)
    t["masks"] = len(masks)
    return t


def _main(args: argparse.Namespace) -> int:
    t = segment(args)
    stages = [f"{k} {t[k]:.2f} s" for k in ("load", "encode", "decode", "generate") if k in t]
    print(f"{args.model}: {t['masks']} mask(s) -> {args.out}"
          + (f", {args.masks_out}" if args.masks_out else ""))
    print("time: " + ", ".join(stages) + " (first calls include XLA compilation)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (`evit_jax.cli`: 0 ok, 1 user error,
    2 bad command line, 130 interrupted)."""
    return run(PROG, build_parser(), _main, argv)


if __name__ == "__main__":
    sys.exit(main())
