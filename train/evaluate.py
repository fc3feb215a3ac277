"""Evaluation: top-1 / top-5 (classification) and full-resolution mIoU (segmentation).

`Evaluator` runs on this host's local devices over its share of the evaluation split and
sums the counts over hosts. Segmentation follows the reference: logits (stride 8) are
resized to the label's full resolution with PyTorch-exact bicubic, argmax, and mIoU is the
mean over classes of (sum of intersections) / (sum of unions) over the whole split.

CLI (`evit-eval`): evaluate converted official weights or a training workdir, e.g.
`evit-eval --model efficientvit-b1-r224 --weights ~/evit/b1 --data imagenet2012
--data-dir ~/tensorflow_datasets` or `evit-eval --weights runs/demo --data evit_shapes`.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from evit_jax.models.seg import resize_logits


def local_copy(tree: Any) -> Any:
    """Host numpy copy of (possibly multi-host) arrays."""
    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if x.is_fully_replicated:
                return np.asarray(x.addressable_data(0))
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)
    return jax.tree.map(one, tree)


class Evaluator:
    """Accuracy / mIoU of variables on an evaluation dataset (see module docstring).

    Args:
      model: the Flax module (inference mode is used).
      task: "cls" or "seg".
      num_classes: classes of the labels.
      batch_size: global evaluation batch (split over hosts, padded to the local devices).
      ignore_index: segmentation label value that is not scored.
    """

    def __init__(self, model: Any, task: str, num_classes: int, batch_size: int,
                 ignore_index: int = 255):
        self.model, self.task, self.k, self.ignore = model, task, num_classes, ignore_index
        devs = jax.local_devices()
        self.mesh = Mesh(np.array(devs), ("batch",))
        per_host = max(batch_size // jax.process_count(), 1)
        self.batch = math.ceil(per_host / len(devs)) * len(devs)
        self._fn = jax.jit(self._cls_counts if task == "cls" else self._seg_confusion)

    def _cls_counts(self, variables, images, labels, valid):
        logits = self.model.apply(variables, images)
        top = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
        hit = top == labels[:, None]
        return jnp.stack([(hit[:, 0] & valid).sum(), (hit.any(-1) & valid).sum(), valid.sum()])

    def _seg_confusion(self, variables, images, labels, valid):
        logits = resize_logits(self.model.apply(variables, images), labels.shape[1:3])
        pred = logits.argmax(-1)
        ok = valid[:, None, None] & (labels != self.ignore) & (labels < self.k) & (labels >= 0)
        idx = jnp.where(ok, labels * self.k + pred, 0)
        return jnp.bincount(idx.ravel(), ok.ravel().astype(jnp.int32), length=self.k * self.k)

    def _flush(self, variables, items: list[dict]) -> np.ndarray:
        n = len(items)
        pad = self.batch - n
        images = np.stack([it["image"] for it in items] + [np.zeros_like(items[0]["image"])] * pad)
        labels = np.stack([it["label"] for it in items] + [np.zeros_like(items[0]["label"])] * pad)
        valid = np.arange(self.batch) < n
        sh = NamedSharding(self.mesh, P("batch"))
        args = [jax.device_put(a, sh) for a in (images, labels.astype(np.int32), valid)]
        return np.asarray(self._fn(variables, *args))

    def run(self, variables: Any, dataset: Any) -> dict[str, float]:
        """Metrics of `variables` ({"params", "batch_stats"}) over `dataset` (this host's
        examples, each {"image", "label"}); the same numbers on every host."""
        variables = jax.device_put(local_copy(variables), NamedSharding(self.mesh, P()))
        total = np.zeros(3 if self.task == "cls" else self.k * self.k, np.int64)
        items: list[dict] = []
        for ex in dataset:
            key = (ex["image"].shape, np.shape(ex["label"]))
            if items and (len(items) == self.batch or key != items[0]["_key"]):
                total += self._flush(variables, items)
                items = []
            items.append({**ex, "_key": key})
        if items:
            total += self._flush(variables, items)
        if jax.process_count() > 1:
            from .sync import barrier
            barrier("eval_done")  # hosts finish their shares at different times
            total = np.asarray(multihost_utils.process_allgather(total)).sum(0)
        if self.task == "cls":
            n = max(int(total[2]), 1)
            return {"top1": total[0] / n, "top5": total[1] / n, "examples": int(total[2])}
        conf = total.reshape(self.k, self.k).astype(np.float64)
        inter = np.diag(conf)
        union = conf.sum(0) + conf.sum(1) - inter
        present = union > 0
        return {"miou": float((inter[present] / union[present]).mean()) if present.any() else 0.0,
                "pixel_acc": float(inter.sum() / max(conf.sum(), 1))}


# ------------------------------------------------------------------------------ evit-eval CLI

def eval_config(name: str, run: dict, args: Any) -> Any:
    """The evaluation config: the run's (a workdir) or the zoo entry's preprocessing."""
    import ml_collections as mlc

    try:  # installed, configs/ is evit_jax.configs; in a checkout, the top-level configs/
        from evit_jax.configs.common import base_config
    except ImportError:
        from configs.common import base_config
    from evit_jax.zoo import model_info
    c = base_config()
    if run.get("config"):
        c = mlc.ConfigDict(run["config"])
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

    from .input_pipeline import make_eval_dataset
    from .state import build_model

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
    ds, n, n_cls = make_eval_dataset(c)
    k = c.num_classes or n_cls
    ev = Evaluator(build_model(c, k, train=False), c.task, k, c.eval_batch_size,
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
