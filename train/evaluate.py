"""`evit-eval`: top-1 / top-5 or mIoU of weights on a dataset, as the trainer evaluates.

Evaluate converted official weights or a training workdir, e.g. `evit-eval --model
efficientvit-b1-r224 --weights ~/evit/b1 --data imagenet2012 --data-dir ~/tensorflow_datasets`
or `evit-eval --weights runs/demo --data evit_shapes`. The preprocessing is the zoo entry's
(or the run's), the metric `train.evaluator.Evaluator`. A model whose class count differs
from the dataset's is refused (`--allow-class-mismatch` scores its class indices anyway).
"""

from __future__ import annotations

from typing import Any

from .evaluator import Evaluator
from .tasks import get_task

# ------------------------------------------------------------------------------ evit-eval CLI

def eval_config(name: str, run: dict, args: Any) -> Any:
    """The evaluation config: the run's (a workdir) or the zoo entry's preprocessing."""
    import ml_collections as mlc
    from evit_jax.configs.common import base_config

    from evit_jax.zoo import model_info
    c = base_config()
    if run.get("config"):
        c = mlc.ConfigDict(run["config"])
        c.num_classes = run.get("num_classes", c.num_classes)  # what the run trained
    spec = model_info(name)
    if not run.get("config"):
        c.model, c.task = name, spec.task
        c.num_classes = spec.num_classes
        c.input.eval_size, c.input.eval_crop = spec.eval_size, spec.crop_pct
        c.input.eval_mode = spec.eval_mode
    c.data.name = args.data
    c.data.data_dir = args.data_dir or c.data.get("data_dir", "")
    c.data.eval_split = args.split or c.data.eval_split
    c.data.eval_examples = args.examples
    c.data.num_workers = args.num_workers
    c.eval_batch_size = args.batch_size
    for key in ("size", "crop"):
        v = getattr(args, key)
        if v:
            setattr(c.input, "eval_size" if key == "size" else "eval_crop", v)
    return c


PROG = "evit-eval"
# Underscore spellings of the flags before they became kebab-case; still accepted, not shown.
_OLD_SPELLINGS = {"--data-dir": "--data_dir", "--batch-size": "--batch_size",
                  "--num-workers": "--num_workers"}


def build_parser() -> Any:
    import argparse

    p = argparse.ArgumentParser(prog=PROG, description="Top-1/top-5 (classification) or mIoU "
                                "(segmentation) of weights on a dataset; prints JSON.")
    p.add_argument("--weights", required=True, help="training workdir, converted weights dir, "
                   "or the authors' / timm's checkpoint file (.pt/.pth/.bin/.safetensors)")
    p.add_argument("--model", help="zoo name (default: the one the weights record)")
    p.add_argument("--data", required=True, help="tfds name, evit_shapes, folder:/x, ade20k:/x")
    p.add_argument("--data-dir", default="", help="tfds data_dir")
    p.add_argument("--split", default="", help="split (default validation)")
    p.add_argument("--size", type=int, default=0, help="evaluation resolution")
    p.add_argument("--crop", type=float, default=0.0, help="center-crop ratio")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--examples", type=int, default=0, help="first N examples only")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--raw", action="store_true", help="a workdir's raw weights, not its EMA")
    p.add_argument("--out", default="", help="also write the results JSON here")
    p.add_argument("--allow-class-mismatch", action="store_true",
                   help="score a model whose class count differs from the dataset's (its "
                   "class indices compared with the dataset's labels)")
    for new, old in _OLD_SPELLINGS.items():
        p.add_argument(old, dest=new[2:].replace("-", "_"), help=argparse.SUPPRESS,
                       type=int if "data" not in new else str, default=argparse.SUPPRESS)
    return p


def _evaluate(args: Any) -> dict:
    import json

    import evit_jax
    from evit_jax.cli import UserError, write_atomic
    from evit_jax.io import recorded_model
    from evit_jax.workdir import is_workdir, read_run_config

    for flag in ("size", "batch_size", "examples", "num_workers"):
        if getattr(args, flag) < 0 or (flag == "batch_size" and args.batch_size == 0):
            raise UserError(f"--{flag.replace('_', '-')} must be positive, got "
                            f"{getattr(args, flag)}")
    if not 0.0 <= args.crop <= 1.0:
        raise UserError(f"--crop is a ratio in (0, 1] (0: the model's), got {args.crop}")
    name = args.model or recorded_model(args.weights)
    if not name:
        raise UserError(f"{args.weights} records no model: pass --model NAME "
                        "(evit_jax.list_models())")
    evit_jax.model_info(name)  # an unknown name fails here, with suggestions
    variables = evit_jax.load_variables(args.weights, model=name,
                                        use_ema=False if args.raw else None)
    run = read_run_config(args.weights) if is_workdir(args.weights) else {}
    c = eval_config(name, run, args)
    task = get_task(c.task)
    if not hasattr(task, "eval_data"):
        raise UserError(f"{name} is a {c.task!r} model: evit-eval scores classifiers and "
                        "segmenters (SAM: evit-sam-eval, super-resolution: evit-sr-eval)")
    ds, n, n_cls = task.eval_data(c)
    k = c.num_classes or n_cls
    if n_cls and k != n_cls and not args.allow_class_mismatch:
        raise UserError(f"{name} predicts {k} classes but {args.data} has {n_cls}: its "
                        "scores would compare class indices of two label sets. Evaluate "
                        f"weights trained on {args.data} (an evit-train workdir, "
                        "configs/finetune.py), or pass --allow-class-mismatch to score them "
                        "anyway")
    ev = Evaluator(task.build_model(c, k, train=False), c.task, k, c.eval_batch_size,
                   c.input.ignore_index)
    res = {"model": name, "data": args.data, "split": c.data.eval_split, "examples": n,
           **{kk: v for kk, v in ev.run(variables, ds).items() if kk != "examples"}}
    print(json.dumps(res, indent=1))
    if args.out:
        write_atomic(args.out, json.dumps(res, indent=1))
    return res


def run_eval(argv: list[str] | None = None) -> dict:
    """`evit-eval` as a function: the results dict (user errors raise)."""
    return _evaluate(build_parser().parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point (`evit-eval`); returns the exit status (evit_jax.cli)."""
    from evit_jax.cli import run

    def main_(args: Any) -> int:
        _evaluate(args)
        return 0

    return run(PROG, build_parser(), main_, argv)


if __name__ == "__main__":
    raise SystemExit(main())
