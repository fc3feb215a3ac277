"""The deployment formats of `evit-export` (`--format onnx|tflite`): flags and the dispatch.

`evit_jax.export.main` adds these flags with `add_arguments`, calls `check` before it reads
the weights (so a bad request fails at once) and hands the parsed arguments and loaded
variables to `export` for every format other than `stablehlo`.
"""

from __future__ import annotations

import argparse
from typing import Any

from evit_jax.cli import UserError, parse_resolution
from evit_jax.deploy import JAX2ONNX, ONNX_INSTALL  # noqa: F401 (JAX2ONNX: re-exported)

FORMATS = ("stablehlo", "onnx", "tflite")
ONNX_MODULES = ("jax2onnx", "onnx", "onnx_ir", "onnxruntime")  # what the export imports


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """`--format`, and the ONNX- / TFLite-only flags."""
    ap.add_argument("--format", choices=FORMATS, default="stablehlo",
                    help=f"artifact format: stablehlo (jax.export, default), onnx "
                         f"({ONNX_INSTALL}) or tflite (pip install 'evit-jax[tflite]'); "
                         "see docs/deploy.md")
    ap.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    ap.add_argument("--image-size", type=parse_resolution, default=None,
                    help="onnx, SAM decoder: original image HxW, adds a `masks` output")
    ap.add_argument("--points", type=int, default=None,
                    help="onnx, SAM decoder: fix the prompt tokens per row, P (default "
                         "dynamic; pad shorter rows with label -2)")
    ap.add_argument("--float16", action="store_true",
                    help="tflite: store the weights as float16 (half the file; float32 "
                         "inputs and outputs)")


def check(args: argparse.Namespace) -> None:
    """One-line errors for flags the chosen format cannot honour (no weights read yet)."""
    if args.format == "stablehlo":
        if args.float16:
            raise UserError("--float16 is for --format tflite; use --dtype for stablehlo")
        return
    if args.platform:
        raise UserError(f"--platform is for --format stablehlo; {args.format} runs anywhere")
    if args.format == "onnx":
        require_onnx()
        if args.dtype != "float32":
            raise UserError("ONNX export is float32; leave out --dtype")
        if args.float16:
            raise UserError("--float16 is for --format tflite; ONNX export is float32")
        return
    if args.format != "tflite":
        raise UserError(f"unknown format {args.format!r}")
    from evit_jax.deploy.tflite import check_model
    check_model(args.model)  # SAM: says which formats cover it
    if args.dtype != "float32":
        raise UserError("TFLite export computes in float32 (--float16 stores float16 "
                        "weights); leave out --dtype")
    if args.part not in (None, "model"):
        raise UserError(f"{args.model} has no parts; leave out --part")
    if args.image_size is not None:
        raise UserError("--image-size is for the SAM decoder in ONNX; leave it out")


def require_onnx() -> None:
    """A one-line error naming the install command that works when a package of the ONNX
    export is missing (before any weights are read)."""
    import importlib.util

    missing = [m for m in ONNX_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"--format onnx needs {', '.join(missing)}, not installed here: "
                        f"{ONNX_INSTALL}")


def export(args: argparse.Namespace, variables: Any) -> str:
    """Write `args.out` in `args.format`; returns the one-line summary to print."""
    check(args)
    if args.format == "tflite":
        return _export_tflite(args, variables)
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


def _export_tflite(args: argparse.Namespace, variables: Any) -> str:
    from evit_jax.deploy.tflite import export_tflite, interpreter
    data = export_tflite(args.model, variables, args.out, float16=args.float16,
                         resolution=args.resolution, batch=args.batch,
                         fuse=not args.no_fuse_bn)
    runner = interpreter(data).get_signature_runner()  # the file's own view of its contract

    def sig(details: dict[str, Any]) -> str:
        return ", ".join(f"{n} [{'x'.join(str(int(v)) for v in d['shape'])}]"
                         for n, d in details.items())

    kind = "float16 weights" if args.float16 else "float32"
    return (f"wrote {args.out} ({len(data) / 2**20:.1f} MiB, {kind}): "
            f"{sig(runner.get_input_details())} -> {sig(runner.get_output_details())}")
