"""Export a zoo model's inference function with `jax.export` (serialized StableHLO).

  evit-export --model efficientvit-b1-r224 --weights DIR --out b1.jaxexport
  evit-export --model efficientvit-sam-l0 --weights DIR --out l0-encoder.jaxexport --part encoder

The artifact holds the weights (BatchNorm folded, `evit_jax.fuse_bn`) and the computation
for images `[N, H, W, 3]` -> outputs with a symbolic batch N, for the chosen platforms. It
needs neither evit_jax nor the model code to run, only JAX:

  exp = jax.export.deserialize(open("b1.jaxexport", "rb").read())
  logits = exp.call(images)          # any batch size

Depthwise convolutions are lowered portably (shift-and-add on CPU, XLA's convolution on
GPU/TPU): the native C++ kernels are process-local custom calls, not serializable.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from jax import export

from evit_jax.cli import UserError, parse_resolution, run, write_atomic
from evit_jax.fuse import fuse_bn
from evit_jax.nn.depthwise import depthwise_impl
from evit_jax.parts import DTYPES, compute_dtype, inference_part
from evit_jax.zoo import create_model, model_info


def export_model(name: str, variables: Any, resolution: tuple[int, int] | None = None,
                 part: str | None = None, dtype: str = "float32", batch: int | None = None,
                 platforms: tuple[str, ...] | None = None, fuse: bool = True
                 ) -> export.Exported:
    """Trace and lower one zoo model's inference function, weights included.

    Args:
      name: zoo name.
      variables: its variables (`evit_jax.load_variables`).
      resolution: input (H, W); default the zoo entry's (SAM: its encoder size).
      part: one of `evit_jax.parts.inference_parts(name)`: `model` (cls/seg, the default)
        or, for SAM, `encoder` (default; images -> embeddings `[N, 64, 64, 256]`),
        `decoder` (embeddings `[1, 64, 64, 256]`, point coords `[N, P, 2]`, labels
        `[N, P]` -> low-res logits `[N, 4, 256, 256]` and IoUs `[N, 4]`; P = 2) or `e2e`.
      dtype: compute dtype, "float32" or "bfloat16" (inputs and outputs are float32).
      batch: a fixed batch size; default symbolic (`N`, any size at call time).
      platforms: e.g. ("cpu", "cuda"); default the current backend.
      fuse: fold BatchNorm into the convolutions first (`fuse_bn`, and the model built
        with `fused_bn=True`).
    Returns:
      A `jax.export.Exported`; `.serialize()` gives the bytes `save_exported` writes.
    """
    fuse = fuse and bool(variables.get("batch_stats"))  # models without BatchNorm (SR)
    the_part = inference_part(name, part)
    resolution = the_part.resolution(None if resolution is None else tuple(resolution))
    model = create_model(name, dtype=compute_dtype(dtype), fused_bn=fuse)
    if fuse:
        variables = fuse_bn(variables, name)
    variables = jax.tree.map(jnp.asarray, variables)
    n = export.symbolic_shape("N")[0] if batch is None else int(batch)
    fn = lambda *inputs: the_part.run(model, variables, *inputs)
    with depthwise_impl("portable"):
        return export.export(jax.jit(fn), platforms=platforms)(*the_part.shapes(n, resolution))


def save_exported(exported: export.Exported, path: str | os.PathLike) -> Path:
    """Write the serialized artifact atomically (a temporary file renamed into place)."""
    return write_atomic(path, exported.serialize())


def load_exported(path: str | os.PathLike) -> export.Exported:
    """Read an artifact written by `save_exported`; call it with `.call(*inputs)`."""
    return export.deserialize(bytearray(Path(path).read_bytes()))


PROG = "evit-export"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="zoo name (evit_jax.list_models())")
    ap.add_argument("--weights", required=True, type=Path,
                    help="variables directory (evit-convert), training workdir, or checkpoint file")
    ap.add_argument("--out", required=True, type=Path, help="artifact file to write")
    ap.add_argument("--resolution", type=parse_resolution, default=None,
                    help="input 224 or HxW (default: the model's)")
    ap.add_argument("--part", default=None, help="SAM: encoder (default) or decoder")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    ap.add_argument("--batch", type=int, default=None, help="fixed batch (default: symbolic)")
    ap.add_argument("--platform", nargs="+", default=None,
                    help="target platforms, e.g. cpu cuda tpu (default: this backend)")
    ap.add_argument("--no-fuse-bn", action="store_true", help="keep BatchNorm separate")
    from evit_jax.deploy import cli as deploy_cli  # --format onnx|tflite (evit_jax.deploy)
    deploy_cli.add_arguments(ap)
    return ap


def _main(args: argparse.Namespace) -> int:
    from evit_jax.io import load_variables

    model_info(args.model)  # an unknown name fails before any reading
    if args.batch is not None and args.batch < 1:
        raise UserError(f"--batch must be at least 1, got {args.batch}")
    from evit_jax.deploy import cli as deploy_cli
    deploy_cli.check(args)  # flags the format cannot honour fail before the weights load
    variables = load_variables(args.weights, model=args.model)
    if args.format != "stablehlo":  # ONNX, TFLite: evit_jax.deploy
        print(deploy_cli.export(args, variables))
        return 0
    exp = export_model(args.model, variables, args.resolution, args.part, args.dtype,
                       args.batch, tuple(args.platform) if args.platform else None,
                       fuse=not args.no_fuse_bn)
    path = save_exported(exp, args.out)
    shapes = ", ".join(str(a.shape) for a in exp.in_avals)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB): inputs {shapes}, "
          f"platforms {', '.join(exp.platforms)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (`evit_jax.cli`)."""
    return run(PROG, build_parser(), _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
