"""The README's model-zoo table, generated: `python -m evit_jax.bench.zoo_table [--no-xla]`.

One row per released checkpoint (classification, segmentation, SAM), per model the papers
publish figures of without weights (the v1 EfficientViT-Base and EfficientViT-Det) and per
detector, at the entry's evaluation resolution (SAM: its image encoder at the encoder's
input size):

- params: exact count of the `params` collection (SAM: encoder, prompt encoder and decoder);
- GMACs: the analytic count (`evit_jax.bench.count_macs`: convolutions and matmuls, as the
  papers count them);
- paper GMACs: what the papers print (spec section 9; 2 significant digits), where they do
  (`PAPER_GMACS`, or the zoo entry's `paper["macs"]`);
- XLA GFLOPs / 2: XLA:CPU's `cost_analysis()` of the compiled program halved. It also counts
  elementwise work (norms, activations, the attention's division) and the resizes, and sees
  the program after XLA's rewrites, so it is not the papers' count: measured from 0.8 %
  below the analytic count (L3) to 13 % above (seg-B0, where the resizes weigh most).
  Compiled with the `lax` depthwise convolution: XLA cannot see inside the native kernels'
  custom calls. Compiling every model took 33 min on 2 cores at load ~18 (2026-12-02);
  `--no-xla` skips it (the column then reads "-"; 4.5 min).
- paper accuracy: the authors' README (zoo entry `paper`).
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
from typing import Any

import jax

from evit_jax.bench.macs import count_params, count_program_macs
from evit_jax.bench.programs import make_program
from evit_jax.cli import run
from evit_jax.nn.depthwise import depthwise_impl
from evit_jax.zoo import abstract_variables, create_model, list_models, model_info

# MACs as the papers print them, in G (spec section 9.1-9.4: EfficientViT Tables 4-6 and
# EfficientViT-SAM Table 6). Only these rows have a published figure.
PAPER_GMACS: dict[str, float] = {
    "efficientvit-b1-r224": 0.52, "efficientvit-b1-r288": 0.86, "efficientvit-b2-r256": 2.1,
    "efficientvit-b3-r224": 4.0, "efficientvit-b3-r288": 6.5, "efficientvit-l1-r224": 5.3,
    "efficientvit-l2-r288": 11, "efficientvit-l2-r384": 20,
    "efficientvit-seg-b0-cityscapes": 4.4, "efficientvit-seg-b1-cityscapes": 25,
    "efficientvit-seg-b2-cityscapes": 74, "efficientvit-seg-b3-cityscapes": 179,
    "efficientvit-seg-l1-cityscapes": 282, "efficientvit-seg-l2-cityscapes": 396,
    "efficientvit-seg-b1-ade20k": 3.1, "efficientvit-seg-b2-ade20k": 9.1,
    "efficientvit-seg-b3-ade20k": 22, "efficientvit-seg-l1-ade20k": 36,
    "efficientvit-seg-l2-ade20k": 45,
    "efficientvit-sam-l0": 35, "efficientvit-sam-l1": 49, "efficientvit-sam-l2": 69,
    "efficientvit-sam-xl0": 185, "efficientvit-sam-xl1": 322,
}
_TASK_ORDER = {"cls": 0, "seg": 1, "sam": 2, "det": 3}
HEADER = ("| model | resolution | params | GMACs | paper GMACs | XLA GFLOPs / 2 "
          "| paper accuracy |\n|---|---|---|---|---|---|---|")


def checkpoint_names() -> list[str]:
    """Zoo names with an official checkpoint or published figures (the v1 models have no
    weights), classification, then segmentation, then SAM, then the detectors (none
    released: the paper's, and ours on the released backbones)."""
    names = [n for n in list_models() if ((model_info(n).checkpoint or model_info(n).paper)
             and model_info(n).key_style == "official") or model_info(n).task == "det"]
    return sorted(names, key=lambda n: (_TASK_ORDER.get(model_info(n).task, len(_TASK_ORDER)),
                                        n))


def _accuracy(paper: dict | None) -> str:
    if not paper:
        return "not reported"
    if "miou" in paper:
        return f"{paper['miou']:.1f} mIoU"
    if "ap" in paper:  # COCO detection
        return f"{paper['ap']:.1f} AP ({paper['ap50']:.1f} AP50)"
    if "coco_map" in paper:
        return f"{paper['coco_map']:.1f} / {paper['lvis_map']:.1f} mAP"
    top5 = paper.get("top5")
    return f"{paper['top1']:.2f}" + (f" / {top5:.2f}" if top5 else "")


def _g(x: float | None) -> str:
    return "-" if x is None else f"{x / 1e9:.2f}"


def row(name: str, xla: bool = True) -> dict[str, Any]:
    """The figures of one zoo entry: params, analytic MACs, the paper's MACs and (when `xla`)
    XLA's flop count / 2 of the same program, batch 1. Traces with shapes only."""
    spec = model_info(name)
    variables = abstract_variables(create_model(name))
    prog = make_program(name, 1, None, variables=variables)  # SAM: the encoder part
    macs = count_program_macs(prog.fn, prog.variables, *prog.inputs)["total"]
    xla_macs = None
    if xla:
        with depthwise_impl("lax"):  # a native custom call would count as zero flops
            compiled = jax.jit(lambda *a: prog.fn(*a)).lower(prog.variables,
                                                               *prog.inputs).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        xla_macs = float(cost["flops"]) / 2 if cost and "flops" in cost else None
    paper = PAPER_GMACS.get(name)
    if paper is None and spec.paper and spec.paper.get("macs"):
        paper = spec.paper["macs"] / 1e9
    return {"model": name, "resolution": tuple(prog.resolution),
            "params": count_params(variables), "macs": macs,
            "paper_macs": None if paper is None else paper * 1e9, "xla_macs": xla_macs,
            "accuracy": _accuracy(spec.paper)}


def format_row(r: dict[str, Any]) -> str:
    """One markdown line of `HEADER`."""
    h, w = r["resolution"]
    paper = "-" if r["paper_macs"] is None else f"{r['paper_macs'] / 1e9:g}"
    return (f"| `{r['model']}` | {h}×{w} | {r['params'] / 1e6:.2f} M | {_g(r['macs'])} | "
            f"{paper} | {_g(r['xla_macs'])} | {r['accuracy']} |")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evit_jax.bench.zoo_table",
                                description=__doc__.splitlines()[0])
    p.add_argument("--no-xla", action="store_true",
                   help="skip compiling each model for XLA's flop count (minutes)")
    p.add_argument("--models", default=None,
                   help="a shell pattern of zoo names (default: every released checkpoint)")
    return p


def main(args: argparse.Namespace) -> int:
    names = checkpoint_names()
    if args.models:
        names = fnmatch.filter(names, args.models)
        if not names:
            from evit_jax.errors import UserError
            raise UserError(f"no released checkpoint matches {args.models!r}")
    print(HEADER, flush=True)
    for name in names:  # printed as they come: the big ones take a minute each to compile
        print(format_row(row(name, xla=not args.no_xla)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run("zoo_table", build_parser(), main))
