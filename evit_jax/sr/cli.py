"""`evit-sr`: upscale one image with an EfficientViT SR model (and what the SR CLIs share).

  evit-sr --model efficientvit-sr-x2 --weights runs/sr_x2 --image in.png --out out.png

Images larger than `--tile` LR pixels run stage by stage in tiles (`evit_jax.sr.tiled`):
the same output as one whole-image call, in a fraction of its memory.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from PIL import Image

from evit_jax.cli import UserError, run, write_atomic
from evit_jax.errors import path_error
from evit_jax.sr.pairs import bicubic_upscale, to_uint8
from evit_jax.sr.upscale import load_sr, make_sr

PROG = "evit-sr"


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """An image file -> uint8 `[H, W, 3]`."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as e:  # PIL's UnidentifiedImageError and decoder errors are OSErrors too
        if e.errno is not None:  # the system's refusal (missing, permission), not PIL's
            raise path_error(e, path) from e
        raise UserError(f"cannot read {path} as an image ({e})") from None


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="SR zoo name, e.g. efficientvit-sr-x2")
    p.add_argument("--weights", required=True, type=Path,
                   help="variables dir (save_variables) or training workdir")
    p.add_argument("--tile", type=int, default=512,
                   help="tile side in LR pixels for images larger than it, even (exact: "
                        "same output as untiled; 0 = never tile; default 512)")


def upscaler_from_args(args: argparse.Namespace):
    """(scale, uint8 LR `[h, w, 3]` -> uint8 SR) from --model / --weights / --tile."""
    if args.tile < 0 or args.tile % 2:
        raise UserError(f"--tile must be 0 (never tile) or an even number of LR pixels, "
                        f"got {args.tile}")
    model, variables = load_sr(args.model, args.weights)
    sr = make_sr(model, variables, args.tile or None)
    return model.head_cfg.scale, lambda lr: to_uint8(sr(lr.astype(np.float32) / 255.0) * 255.0)


# ------------------------------------------------------------------------------------ evit-sr
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Upscale one image with an "
                                "EfficientViT SR model (in exact tiles when large).")
    add_model_args(p)
    p.add_argument("--image", required=True, type=Path, help="input (LR) image")
    p.add_argument("--out", required=True, type=Path, help="output PNG")
    p.add_argument("--bicubic", type=Path, default=None,
                   help="also write MATLAB-bicubic upscaling here, for comparison")
    return p


def _sr_main(args: argparse.Namespace) -> int:
    lr = read_rgb(args.image)
    s, up = upscaler_from_args(args)
    out = up(lr)
    write_atomic(args.out, lambda tmp: Image.fromarray(out).save(tmp, format="PNG"))
    if args.bicubic:
        bic = bicubic_upscale(lr, s)
        write_atomic(args.bicubic, lambda tmp: Image.fromarray(bic).save(tmp, format="PNG"))
    print(f"{args.image} {lr.shape[1]}x{lr.shape[0]} -> {args.out} "
          f"{out.shape[1]}x{out.shape[0]} (x{s})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(PROG, build_parser(), _sr_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
