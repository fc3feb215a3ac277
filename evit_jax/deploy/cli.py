"""The deployment formats of `evit-export` (`--format onnx`): flags and the dispatch.

`evit_jax.export.main` adds these flags with `add_arguments` and hands the parsed
arguments and loaded variables to `export` for every format other than `stablehlo`.
"""

from __future__ import annotations

import argparse
from typing import Any

from evit_jax.cli import UserError, parse_resolution

FORMATS = ("stablehlo", "onnx")


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """`--format`, and the ONNX-only flags."""
    ap.add_argument("--format", choices=FORMATS, default="stablehlo",
                    help="artifact format: stablehlo (jax.export, default) or onnx "
                         "(pip install -e '.[onnx]'; see docs/deploy.md)")
    ap.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    ap.add_argument("--image-size", type=parse_resolution, default=None,
                    help="onnx, SAM decoder: original image HxW, adds a `masks` output")
    ap.add_argument("--points", type=int, default=6,
                    help="onnx, SAM decoder: prompt tokens per row (pad with label -2; "
                         "default 6)")


def export(args: argparse.Namespace, variables: Any) -> str:
    """Write `args.out` in `args.format`; returns the one-line summary to print."""
    if args.format != "onnx":
        raise UserError(f"unknown format {args.format!r}")
    if args.dtype != "float32":
        raise UserError("ONNX export is float32; leave out --dtype")
    if args.platform:
        raise UserError("--platform is for --format stablehlo; ONNX runs anywhere")
    from evit_jax.deploy.onnx import export_onnx
    proto = export_onnx(args.model, variables, args.out, opset=args.opset,
                        resolution=args.resolution, part=args.part, batch=args.batch,
                        image_size=args.image_size, points=args.points,
                        fuse=not args.no_fuse_bn)

    def dims(v: Any) -> str:
        return "x".join(d.dim_param or str(d.dim_value) for d in v.type.tensor_type.shape.dim)

    ins = ", ".join(f"{i.name} [{dims(i)}]" for i in proto.graph.input)
    outs = ", ".join(f"{o.name} [{dims(o)}]" for o in proto.graph.output)
    size = args.out.stat().st_size / 2**20
    return f"wrote {args.out} ({size:.1f} MiB, opset {args.opset}): {ins} -> {outs}"
