"""SAM fine-tuning (`task = "sam"`, phase 2 of the EfficientViT-SAM recipe).

Step (spec section 7.3): the image encoder runs once per image (BatchNorm in training mode,
statistics over the global batch), then the prompt encoder and mask decoder decode the
image's M prompts; with probability `sam.multimask_prob` the step is a multimask step and
only the lowest-loss of the three multimask outputs of each prompt is back-propagated, else
the single-mask output is. Mask loss: 20 * BCE + dice (`train.sam_losses`); the IoU head
regresses the true IoU of its masks (MSE, weight `sam.iou_loss_weight`; the authors' script
leaves that head untrained). Padding prompts (`valid = False`) weigh 0.

Evaluation: `evit-sam-eval`'s box protocol (each held-out object prompted by its box, the
best of three masks by predicted IoU) through `SamPredictor`; `miou` in percent.

A reduced encoder input (`input.encoder_size`) or embedding grid (`sam.grid`, low-res masks
are 4x it) is recorded in the workdir's run_config.json; `model_from_run` rebuilds the same
module, so `load_variables(workdir)` + `SamPredictor` / `evit-sam-eval` work on it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from evit_jax.errors import UserFileNotFoundError
from evit_jax.workdir import model_from_run
from evit_jax.zoo import sam_model

from .. import sam_losses as L
from ..datasets import sam as sam_data
from ..datasets.sam_sources import eval_images, open_sam_source
from ..input_pipeline import Data, train_stream
from ..sync import local_copy, sum_over_hosts
from . import Task

Array = jax.Array


def load_sam(workdir: str) -> tuple[Any, dict]:
    """(module, variables) of a SAM training workdir, ready for `SamPredictor`."""
    import evit_jax
    from evit_jax.workdir import read_run_config
    run = read_run_config(workdir)
    if "model" not in run:
        raise UserFileNotFoundError(f"{workdir}: no run_config.json with a model name")
    return model_from_run(run["model"], run), evit_jax.load_variables(workdir)


def _per_mask_losses(config: Any, key: Array, low: Array, target: Array) -> tuple[Array, Array]:
    """Loss and true IoU of every output of one prompt: low-res logits `[4, L, L]`, 0/1
    target `[S, S]` -> (`[4]`, `[4]`)."""
    sam = config.sam
    tlow = L.low_res_target(target, low.shape[-1])
    ious = jax.vmap(L.mask_iou, in_axes=(0, None))(low, tlow)
    if sam.loss_points > 0:
        keys = jax.random.split(key, low.shape[0])
        loss = jax.vmap(lambda k, lg: L.point_loss(k, lg, target, sam.loss_points,
                                                   sam.oversample, sam.importance))(keys, low)
    else:
        loss = jax.vmap(L.full_loss, in_axes=(0, None))(low, tlow)
    return loss, jax.lax.stop_gradient(ious)


def _decode(model: Any, variables: dict, emb: Array, coords: Array, labels: Array):
    """One image's prompts: embedding `[G, G, 256]`, tokens `[M, T, 2]` / `[M, T]` ->
    (low-res logits `[M, 4, L, L]`, IoU predictions `[M, 4]`)."""
    return model.apply(variables, emb[None], coords, labels, method="predict_masks")


def sam_loss(config: Any, model: Any, variables: dict, batch: dict, key: Array,
             multimask: Array, train: bool) -> tuple[Array, tuple[dict, Any]]:
    """(loss, (metrics, new batch_stats)) of a batch of images with M prompts each."""
    k_pts, _ = jax.random.split(key)
    if train:
        emb, mut = model.apply(variables, batch["image"], True, mutable=["batch_stats"],
                               method="encode_image")
        bstats = mut["batch_stats"]
    else:
        emb, bstats = model.apply(variables, batch["image"], method="encode_image"), None
    low, iou_pred = jax.vmap(lambda e, c, lab: _decode(model, variables, e, c, lab))(
        emb, batch["coords"], batch["labels"])  # [B, M, 4, L, L], [B, M, 4]
    target = batch["masks"].astype(jnp.float32)  # [B, M, S, S]
    b, m = target.shape[:2]
    keys = jax.random.split(k_pts, (b, m))
    loss, ious = jax.vmap(jax.vmap(lambda k, lo, t: _per_mask_losses(config, k, lo, t)))(
        keys, low, target)  # [B, M, 4] each
    # Multimask step: the best of outputs 1..3 per prompt; else output 0 (segment-anything's
    # single-mask token). The IoU head learns every output the step uses.
    multi_loss = jnp.min(loss[..., 1:], -1)
    best = jnp.argmin(loss[..., 1:], -1) + 1
    mask_loss = jnp.where(multimask, multi_loss, loss[..., 0])
    sq = jnp.square(iou_pred - ious)
    iou_mse = jnp.where(multimask, sq[..., 1:].mean(-1), sq[..., 0])
    chosen = jnp.where(multimask, best, 0)
    chosen_iou = jnp.take_along_axis(ious, chosen[..., None], -1)[..., 0]
    w = batch["valid"].astype(jnp.float32)
    n = jnp.maximum(w.sum(), 1.0)
    total = jnp.sum(w * (mask_loss + config.sam.iou_loss_weight * iou_mse)) / n
    metrics = {"mask_loss": jnp.sum(w * mask_loss) / n, "iou_mse": jnp.sum(w * iou_mse) / n,
               "train_iou": jnp.sum(w * chosen_iou) / n}
    return total, (metrics, bstats)


class SamEvaluator:
    """Box-prompted mean IoU (percent) of held-out `EvalImage`s, `evit-sam-eval`'s protocol;
    host p scores images p, p + n, ...; the mean is over every object of every host."""

    def __init__(self, model: Any, max_batch: int = 64):
        self.model, self.max_batch = model, max_batch

    def run(self, variables: Any, images: list) -> dict[str, float]:
        from evit_jax.sam import SamPredictor
        from evit_jax.sam.eval.protocols import box_ious
        pred = SamPredictor(self.model, local_copy(variables), max_batch=self.max_batch)
        sums = np.zeros(2, np.float64)
        for im in images[jax.process_index()::jax.process_count()]:
            pred.set_image(im.load())
            ious = [r["iou"] for r in box_ious(pred, im, self.max_batch)]
            sums += [sum(ious), len(ious)]
        sums = sum_over_hosts(sums, "sam_eval_done")
        return {"miou": float(sums[0] / max(sums[1], 1)), "examples": int(sums[1])}


class SamTask(Task):
    """End-to-end fine-tuning; `sam_distill` (train/tasks/sam_distill.py) builds on it."""

    def build_model(self, config: Any, num_classes: int = 0, train: bool = True) -> Any:
        """The SAM module of a config (with its reduced sizes, if any)."""
        dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[config.dtype]
        return sam_model(config.model, config.input.encoder_size, config.sam.grid, dtype=dtype)

    def train_transform(self, config: Any):
        return sam_data.train_transform(config)

    def eval_examples(self, config: Any, source: Any) -> list:
        """The held-out images (`EvalImage`s, all of them: the evaluator takes its share)."""
        return eval_images(source, config.data.eval_examples)

    def make_data(self, config: Any, process_index: int = 0, process_count: int = 1) -> Data:
        src = open_sam_source(config.data, config.data.train_split)
        train = train_stream(config, src, self.train_transform(config), process_index,
                             process_count)
        ev = self.eval_examples(config, open_sam_source(config.data, config.data.eval_split))
        return Data(train, len(src), ev, len(ev), None)

    def loss_fn(self, config, model, state, batch, key, num_classes):
        k_multi, k_loss = jax.random.split(key)
        multimask = jax.random.bernoulli(k_multi, config.sam.multimask_prob)

        def fn(params):
            v = {"params": params, "batch_stats": state.batch_stats}
            loss, (mets, bstats) = sam_loss(config, model, v, batch, k_loss, multimask, True)
            return loss, ({**mets, "multimask": multimask.astype(jnp.float32)}, bstats)

        return fn

    def evaluator(self, config: Any, model: Any, num_classes: int) -> SamEvaluator:
        return SamEvaluator(model, config.eval_batch_size)

    def summary(self, results: dict[str, Any]) -> str:
        return f"box mIoU {results['miou']:.2f}%"


TASK = SamTask()
