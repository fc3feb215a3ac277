"""`evit-sam-eval`: zero-shot COCO / LVIS evaluation of EfficientViT-SAM (the papers' tables).

  evit-sam-eval --model efficientvit-sam-l0 --weights DIR --dataset coco \\
      --image-root val2017 --annotations instances_val2017.json --prompt box

`--prompt box` / `point` report mean mask IoU (all / large / medium / small objects);
`box_from_detector` prompts with a detector's boxes (`--detections`, COCO results json) and
reports COCO or LVIS mask AP. Several processes (`--coordinator-address`, `--num-processes`,
`--process-id`, as `evit-train`) each take every P-th image; process 0 merges in image order
and scores, so the numbers do not depend on the number of processes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from typing import Any

import numpy as np

from evit_jax.cli import UserError, run, write_atomic
from evit_jax.sam.eval import data as D
from evit_jax.sam.eval import metrics as M
from evit_jax.sam.eval.protocols import PROTOCOLS, evaluate_image

PROG = "evit-sam-eval"
BARRIER_MS = 24 * 3600 * 1000  # a slow host may take hours over its share


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Protocol details: docs/sam.md, 'Zero-shot evaluation'.")
    p.add_argument("--model", required=True, help="zoo name, e.g. efficientvit-sam-l0")
    p.add_argument("--weights", required=True,
                   help="what evit_jax.load_variables reads (a converted directory, a workdir)")
    p.add_argument("--dataset", required=True, choices=D.DATASETS + ("evit_shapes/tiny",),
                   help="coco / lvis (instance json + images), or the embedded dataset's "
                        "validation split")
    p.add_argument("--image-root", help="folder of the images (coco: e.g. val2017/; lvis: "
                   "the COCO root holding train2017/ and val2017/)")
    p.add_argument("--annotations", help="instances json (COCO or LVIS format)")
    p.add_argument("--prompt", required=True, choices=PROTOCOLS)
    p.add_argument("--num-click", type=int, default=1, help="--prompt point: clicks per object")
    p.add_argument("--detections", help="--prompt box_from_detector: COCO results json")
    p.add_argument("--out", help="write the metrics as JSON here")
    p.add_argument("--limit", type=int, help="evaluate only the first N images")
    p.add_argument("--data-dir", help="evit_shapes: tfds data dir (default $EVIT_DATA_DIR)")
    p.add_argument("--batch", type=int, default=64, help="prompts per compiled decoder call")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("multi-host (as evit-train)")
    g.add_argument("--coordinator-address", help="HOST:PORT of process 0")
    g.add_argument("--num-processes", type=int)
    g.add_argument("--process-id", type=int)
    return p


def init_distributed(args: argparse.Namespace) -> None:
    """`jax.distributed.initialize` from the flags (all three or none)."""
    flags = (args.coordinator_address, args.num_processes, args.process_id)
    if all(f is None for f in flags):
        return
    if any(f is None for f in flags):
        raise UserError("--coordinator-address, --num-processes and --process-id go together")
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU hosts need it
    jax.distributed.initialize(args.coordinator_address, args.num_processes, args.process_id,
                               initialization_timeout=300)


def gather_to_first(items: list) -> list | None:
    """Every process's JSON-able `items`, concatenated in process order, on process 0
    (None elsewhere). One process: `items` itself."""
    import jax
    if jax.process_count() == 1:
        return items
    from jax._src import distributed  # coordination-service barrier: waits for slow hosts
    from jax.experimental import multihost_utils
    distributed.global_state.client.wait_at_barrier("evit_sam_eval_gather", BARRIER_MS)
    payload = np.frombuffer(zlib.compress(json.dumps(items).encode()), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.int64(payload.size)))
    buf = np.zeros(int(sizes.max()), np.uint8)
    buf[:payload.size] = payload
    every = np.asarray(multihost_utils.process_allgather(buf))
    if jax.process_index() != 0:
        return None
    return [x for row, n in zip(every, sizes)
            for x in json.loads(zlib.decompress(row[:int(n)].tobytes()))]


def load_weights(name: str, path: str) -> Any:
    """Variables of `name` from whatever `evit_jax.load_variables` reads (it checks the model
    the weights record)."""
    import evit_jax
    return evit_jax.load_variables(path, model=name)


def build_model(name: str, weights: str) -> Any:
    """The module for `weights`: the zoo model, or for a SAM training workdir the module it
    trained (reduced encoder input or grid included, `evit_jax.workdir.model_from_run`)."""
    import evit_jax
    from evit_jax.workdir import is_workdir, model_from_run, read_run_config
    if is_workdir(weights):
        return model_from_run(name, read_run_config(weights))
    return evit_jax.create_model(name)


def load_images(args: argparse.Namespace) -> tuple[list[D.EvalImage], dict | None]:
    """The images to evaluate (all, or the first --limit) and the ground-truth dict."""
    if args.dataset.startswith("evit_shapes"):
        if args.prompt == "box_from_detector":
            raise UserError("--dataset evit_shapes has no detections: use --prompt box or point")
        images, gt = D.shapes_images(args.dataset, args.data_dir), None
    else:
        if not args.image_root or not args.annotations:
            raise UserError(f"--dataset {args.dataset} needs --image-root and --annotations")
        if (args.prompt == "box_from_detector") != bool(args.detections):
            raise UserError("--detections goes with --prompt box_from_detector (and it needs "
                            "one)")
        gt = D.read_json(args.annotations, "--annotations")
        images = D.coco_images(args.dataset, args.image_root, gt, args.detections)
    if args.limit is not None:
        images = images[:args.limit]
    return images, gt


def evaluate(predictor: Any, images: list[D.EvalImage], protocol: str, num_clicks: int = 1,
             chunk: int = 64, progress: bool = True) -> list[dict[str, Any]] | None:
    """This process's share of `images` (every P-th from its index) through `protocol`, then
    everyone's results merged in image order on process 0 (None on the others)."""
    import jax
    from tqdm import tqdm
    mine = images[jax.process_index()::jax.process_count()]
    done = []
    bar = tqdm(mine, unit="img", desc=protocol, disable=not progress or not mine,
               file=sys.stderr)
    for image in bar:
        done.append([image.index, evaluate_image(predictor, image, protocol, num_clicks,
                                                 chunk)])
    merged = gather_to_first(done)
    if merged is None:
        return None
    return [r for _, rs in sorted(merged, key=lambda x: x[0]) for r in rs]


def score(protocol: str, dataset: str, results: list[dict[str, Any]], gt: dict | None,
          images: list[D.EvalImage]) -> dict[str, float | None]:
    """The metrics of merged `results` (see `evaluate`)."""
    if protocol != "box_from_detector":
        return M.iou_by_size(results)
    ids = [im.image_id for im in images]
    return (M.lvis_mask_ap if dataset == "lvis" else M.coco_mask_ap)(gt, results, ids)


def format_table(metrics: dict[str, float | None]) -> str:
    width = max(len(k) for k in metrics)
    return "\n".join(f"{k:<{width}}  {'-' if v is None else f'{v:.3f}'}"
                     for k, v in metrics.items())


def _main(args: argparse.Namespace) -> int:
    if args.num_click < 1 or args.batch < 1 or (args.limit is not None and args.limit < 1):
        raise UserError("--num-click, --batch and --limit must be positive")
    init_distributed(args)
    import jax

    from evit_jax.sam import SamPredictor
    images, gt = load_images(args)
    model = build_model(args.model, args.weights)
    predictor = SamPredictor(model, load_weights(args.model, args.weights),
                             max_batch=args.batch)
    t0 = time.perf_counter()
    results = evaluate(predictor, images, args.prompt, args.num_click, args.batch,
                       progress=not args.no_progress and jax.process_index() == 0)
    seconds = time.perf_counter() - t0
    if results is None:  # not process 0: it scores
        return 0
    metrics = score(args.prompt, args.dataset, results, gt, images)
    what = f"{len(results)} {'detections' if args.prompt == 'box_from_detector' else 'objects'}"
    print(f"{args.model} | {args.dataset} | {args.prompt}"
          + (f" ({args.num_click} clicks)" if args.prompt == "point" else "")
          + f" | {len(images)} images, {what} | {len(images) / seconds:.2f} images/s")
    print(format_table(metrics))
    if args.out:
        write_atomic(args.out, json.dumps(metrics, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(PROG, build_parser(), _main, argv)


if __name__ == "__main__":
    sys.exit(main())
