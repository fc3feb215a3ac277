"""`evit-sr-eval`: PSNR / SSIM on Y of an SR model over a folder of HR images, next to bicubic.

  evit-sr-eval --model efficientvit-sr-x2 --weights runs/sr_x2 --hr BSD100/HR [--lr BSD100/LR]

BasicSR's protocol: HR cropped to a multiple of the scale, the output rounded to uint8, Y of
BT.601, crop_border = scale. Without `--lr` the LR images are made from HR with MATLAB-exact
bicubic (`evit_jax.sr.imresize`), rounded to uint8, as the benchmarks' LR files are. Prints a
table and writes it as JSON (`--json`); `--panel` writes a bicubic | model | HR crop.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image

from evit_jax.cli import UserError, run, write_atomic
from evit_jax.sr.cli import add_model_args, read_rgb, upscaler_from_args
from evit_jax.sr.pairs import (
    bicubic_upscale,
    check_pair,
    degrade,
    list_images,
    mod_crop,
    pair_lr_files,
    score,
)

PROG = "evit-sr-eval"
KEYS = ("psnr_y", "ssim_y", "bicubic_psnr_y", "bicubic_ssim_y")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--hr", required=True, type=Path, help="folder of HR images")
    p.add_argument("--lr", type=Path, default=None,
                   help="folder of LR images (default: made from HR by MATLAB bicubic)")
    p.add_argument("--scale", type=int, default=None,
                   help="check that the model's scale is this (2, 3, 4)")
    p.add_argument("--json", type=Path, default=Path("sr_eval.json"),
                   help="results file to write (default sr_eval.json)")
    p.add_argument("--panel", type=Path, default=None,
                   help="write a crop of the first image: bicubic | model | HR (PNG)")
    p.add_argument("--panel-crop", type=int, default=96, help="HR crop side of the panel")
    p.add_argument("--limit", type=int, default=0, help="only the first N images (0 = all)")
    return p


def write_panel(path: Path, parts: list[np.ndarray], crop: int, zoom: int = 2) -> None:
    """Centre crops of equally sized images side by side, each enlarged `zoom` x (nearest)."""
    h, w = parts[0].shape[:2]
    c = min(crop, h, w)
    y, x = (h - c) // 2, (w - c) // 2
    gap = np.full((c * zoom, 4, 3), 255, np.uint8)
    tiles = []
    for im in parts:
        t = im[y:y + c, x:x + c].repeat(zoom, 0).repeat(zoom, 1)
        tiles += [t, gap]
    panel = np.concatenate(tiles[:-1], 1)
    write_atomic(path, lambda tmp: Image.fromarray(panel).save(tmp, format="PNG"))


def _eval_main(args: argparse.Namespace) -> int:
    hr_files = list_images(args.hr)
    if args.limit:
        hr_files = hr_files[: args.limit]
    s, up = upscaler_from_args(args)
    if args.scale is not None and args.scale != s:
        raise UserError(f"{args.model} upscales x{s}, not x{args.scale}: pick the "
                        f"efficientvit-sr-...-x{args.scale} model")
    lr_files = pair_lr_files(hr_files, args.lr, s) if args.lr else [None] * len(hr_files)
    rows = []
    print(f"{'image':<24} {'PSNR-Y':>8} {'SSIM-Y':>8} {'bic PSNR':>9} {'bic SSIM':>9}")
    for i, (hf, lf) in enumerate(zip(hr_files, lr_files, strict=True)):
        hr = mod_crop(read_rgb(hf), s)
        lr = read_rgb(lf) if lf else degrade(hr, s)
        check_pair(hr, lr, s)
        out = up(lr)
        r = {"image": os.path.basename(hf), **score(out, hr, lr, s)}
        rows.append(r)
        print(f"{r['image'][:24]:<24} {r['psnr_y']:8.3f} {r['ssim_y']:8.4f} "
              f"{r['bicubic_psnr_y']:9.3f} {r['bicubic_ssim_y']:9.4f}", flush=True)
        if i == 0 and args.panel:
            write_panel(args.panel, [bicubic_upscale(lr, s), out, hr], args.panel_crop)
    mean = {k: float(np.mean([r[k] for r in rows])) for k in KEYS}
    print(f"{'mean (' + str(len(rows)) + ')':<24} {mean['psnr_y']:8.3f} {mean['ssim_y']:8.4f} "
          f"{mean['bicubic_psnr_y']:9.3f} {mean['bicubic_ssim_y']:9.4f}")
    result = {"model": args.model, "scale": s, "hr": str(args.hr),
              "lr": str(args.lr) if args.lr else None, "crop_border": s, "images": len(rows),
              **mean, "per_image": rows}
    finite = lambda v: v if not (isinstance(v, float) and math.isinf(v)) else "inf"  # noqa: E731
    result["per_image"] = [{k: finite(v) for k, v in r.items()} for r in rows]
    write_atomic(args.json, json.dumps({k: finite(v) for k, v in result.items()}, indent=1))
    print(f"wrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(PROG, build_parser(), _eval_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
