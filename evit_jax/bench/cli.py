"""`evit-bench` / `python -m evit_jax.bench`: latency, throughput, FLOPs and memory of zoo
models on whatever backend JAX has.

  evit-bench --model efficientvit-b1 --batch 1 8 --resolution 224
  evit-bench --model '*seg*' --dtype float32 bfloat16 --json seg.json
  evit-bench --model efficientvit-sam-l0 --part encoder decoder e2e
  evit-bench --vs-reference /tmp/evit-ref --targets     (side by side with PyTorch; see
                                                         `python -m evit_jax.bench.compare -h`)
"""

from __future__ import annotations

import argparse
import json
import sys

from evit_jax.bench.measure import Result, measure
from evit_jax.bench.programs import DTYPES, make_program, parts_of
from evit_jax.bench.tables import render
from evit_jax.cli import UserError, parse_resolution, run, write_atomic
from evit_jax.zoo import list_models, model_info

PROG = "evit-bench"


def expand_models(patterns: list[str]) -> list[str]:
    """Zoo names from names or shell patterns (`all`, `*seg*`), in the given order."""
    names: list[str] = []
    for p in patterns:
        hits = list_models() if p == "all" else list_models(p) if any(c in p for c in "*?[") \
            else [p]
        if not hits:
            raise UserError(f"no zoo model matches {p!r} (see evit_jax.list_models())")
        names += [n for n in hits if n not in names]
    for n in names:
        model_info(n)  # an unknown name fails here, before any timing, with close names
    return names


class _Parser(argparse.ArgumentParser):
    """Keeps the arguments it does not know for `--vs-reference` (they go to
    evit_jax.bench.compare) and refuses them otherwise."""

    def parse_args(self, args=None, namespace=None):  # noqa: D102
        ns, rest = self.parse_known_args(args, namespace)
        if rest and not ns.vs_reference:
            self.error(f"unrecognized arguments: {' '.join(rest)}")
        ns.rest = rest
        return ns


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog=PROG, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", nargs="+", default=["efficientvit-b1"],
                    help="zoo names or shell patterns ('all', '*seg*')")
    ap.add_argument("--batch", nargs="+", type=int, default=[1],
                    help="batch sizes (SAM decoder: prompts per image)")
    ap.add_argument("--resolution", nargs="+", type=parse_resolution, default=None,
                    help="224 or HxW; default each model's evaluation resolution "
                         "(SAM: always its encoder size)")
    ap.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), default=["float32"])
    ap.add_argument("--part", nargs="+", default=None,
                    help="SAM parts: encoder decoder e2e (default all); ignored otherwise")
    ap.add_argument("--iters", type=int, default=20, help="timed calls per case")
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls before timing")
    ap.add_argument("--max-seconds", type=float, default=30.0,
                    help="stop timing a case after this long (at least 3 calls)")
    ap.add_argument("--fuse-bn", action="store_true", help="fold BatchNorm into the convs")
    ap.add_argument("--depthwise", choices=["lax", "shift_add", "native"], default=None,
                    help="depthwise conv implementation (default: best for the backend)")
    ap.add_argument("--json", metavar="PATH", help="also write the rows as JSON ('-': stdout)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--vs-reference", metavar="DIR",
                    help="time against the reference PyTorch set up in DIR (setup.sh) instead; "
                         "the other options go to evit_jax.bench.compare")
    return ap


def cases(args: argparse.Namespace) -> list[tuple]:
    """(name, part, batch, resolution, dtype) of every case. SAM models take their fixed
    encoder size whatever `--resolution` says (so `--model all --resolution 64` works)."""
    out = []
    for name in expand_models(args.model):
        parts = parts_of(name)
        chosen = [p for p in (args.part or parts) if p in parts] or [parts[0]]
        sam = parts != ("model",)
        for part in chosen:
            for res in ([None] if sam else args.resolution or [None]):
                for dtype in args.dtype:
                    for batch in args.batch:
                        out.append((name, part, batch, res, dtype))
    return out


def format_table(rows: list[Result]) -> str:
    """A fixed-width table of results, one line per case."""
    head = ("model", "part", "batch", "res", "dtype", "compile s", "median ms", "p90 ms",
            "img/s", "GMACs", "XLA GFLOP", "peak MB", "params M")
    lines = [head]
    for r in rows:
        lines.append((
            r.model, r.part, str(r.batch), f"{r.resolution[0]}x{r.resolution[1]}", r.dtype,
            f"{r.compile_s:.1f}", f"{r.median_ms:.2f}", f"{r.p90_ms:.2f}",
            f"{r.items_per_s:.1f}", f"{r.macs / 1e9:.3f}",
            "-" if r.xla_flops is None else f"{r.xla_flops / 1e9:.2f}",
            "-" if r.peak_bytes is None else f"{r.peak_bytes / 2**20:.0f}",
            f"{r.params / 1e6:.2f}"))
    return render(lines[0], lines[1:], left=2, rule=True)


def _main(args: argparse.Namespace) -> int:
    if args.vs_reference:
        from evit_jax.bench import compare
        return compare.main(["--ref", args.vs_reference, *args.rest])
    if min(args.batch) < 1 or args.iters < 1:
        raise UserError(f"--batch and --iters must be at least 1, got --batch "
                        f"{' '.join(map(str, args.batch))} --iters {args.iters}")
    if args.max_seconds <= 0:
        raise UserError(f"--max-seconds must be positive, got {args.max_seconds}")
    from tqdm.auto import tqdm

    from evit_jax.nn.depthwise import default_impl, set_depthwise_impl
    if args.depthwise:
        set_depthwise_impl(args.depthwise)
    todo = cases(args)
    rows: list[Result] = []
    bar = tqdm(todo, desc=PROG, unit="case", disable=args.no_progress, file=sys.stderr)
    for name, part, batch, res, dtype in bar:
        bar.set_postfix_str(f"{name} {part} b{batch} {dtype}")
        prog = make_program(name, batch, res, dtype, part, fuse=args.fuse_bn)
        rows.append(measure(prog, args.iters, args.warmup, args.max_seconds,
                            depthwise=default_impl(), fused_bn=args.fuse_bn))
    bar.close()
    print(format_table(rows))
    if args.json:
        text = json.dumps([r.as_dict() for r in rows], indent=1)
        if args.json == "-":
            print(text)
        else:
            write_atomic(args.json, text + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (`evit_jax.cli`)."""
    return run(PROG, build_parser(), _main, argv)
