"""The SAM tasks of the trainer: end-to-end fine-tuning (`task = "sam"`, phase 2 of the
EfficientViT-SAM recipe) and encoder distillation (`task = "sam_distill"`, phase 1).

Fine-tuning step (spec section 7.3): the image encoder runs once per image (BatchNorm in
training mode, statistics over the global batch), then the prompt encoder and mask decoder
decode the image's M prompts; with probability `sam.multimask_prob` the step is a multimask
step and only the lowest-loss of the three multimask outputs of each prompt is
back-propagated, else the single-mask output is. Mask loss: 20 * BCE + dice
(`train.sam_losses`); the IoU head regresses the true IoU of its masks (MSE, weight
`sam.iou_loss_weight`; the authors' script leaves that head untrained). Padding prompts
(`valid = False`) weigh 0.

Evaluation: `evit-sam-eval`'s box protocol (each held-out object prompted by its box, the
best of three masks by predicted IoU) through `SamPredictor`; `miou` in percent.

Distillation: MSE between the student's image embeddings `[B, 64, 64, 256]` and the
teacher's, which are read from `.npy` files or computed by a zoo teacher on the device
(`batch_hook`). Only the image encoder learns; prompt encoder and decoder stay as loaded.

A reduced encoder input (`input.encoder_size`) or embedding grid (`sam.grid`, low-res masks
are 4x it) is recorded in the workdir's run_config.json; `model_from_run` rebuilds the same
module, so `load_variables(workdir)` + `SamPredictor` / `evit-sam-eval` work on it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from evit_jax.workdir import SAM_TASKS, model_from_run
from evit_jax.zoo import sam_model

from . import sam_losses as L
from .evaluate import local_copy
from .optim import path_str

Array = jax.Array
TASKS = SAM_TASKS


def build_model(config: Any) -> Any:
    """The SAM module of a config (with its reduced sizes, if any)."""
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[config.dtype]
    return sam_model(config.model, config.input.encoder_size, config.sam.grid, dtype=dtype)


def load_sam(workdir: str) -> tuple[Any, dict]:
    """(module, variables) of a SAM training workdir, ready for `SamPredictor`."""
    import evit_jax
    from evit_jax.workdir import read_run_config
    run = read_run_config(workdir)
    if "model" not in run:
        raise FileNotFoundError(f"{workdir}: no run_config.json with a model name")
    return model_from_run(run["model"], run), evit_jax.load_variables(workdir)


# --------------------------------------------------------------------------- fine-tuning
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


def _grad_norm(grads: Any) -> Array:
    return jnp.sqrt(sum(jnp.vdot(g, g) for g in jax.tree.leaves(grads)))


def make_train_step(config: Any, model: Any, tx: Any, schedule: Any):
    """(state, batch) -> (state, metrics) for `task = "sam"` or `"sam_distill"`."""
    if config.task == "sam_distill":
        return _distill_step(config, model, tx, schedule)

    def step_fn(state: Any, batch: dict) -> tuple[Any, dict]:
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        k_multi, k_loss = jax.random.split(key)
        multimask = jax.random.bernoulli(k_multi, config.sam.multimask_prob)

        def loss_fn(params):
            v = {"params": params, "batch_stats": state.batch_stats}
            return sam_loss(config, model, v, batch, k_loss, multimask, True)

        (loss, (mets, bstats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = jax.tree.map(lambda p, u: p + u, state.params, updates)
        out = {"loss": loss, **mets, "multimask": multimask.astype(jnp.float32),
               "lr": schedule(state.step), "grad_norm": _grad_norm(grads)}
        return state.replace(step=state.step + 1, params=params, batch_stats=bstats,
                             opt_state=opt_state), out

    return step_fn


# -------------------------------------------------------------------------- distillation
def distill_loss(model: Any, variables: dict, images: Array, teacher: Array, train: bool
                 ) -> tuple[Array, Any]:
    """(MSE of the student's embeddings to the teacher's `[B, 64, 64, 256]`, batch_stats)."""
    if train:
        emb, mut = model.apply(variables, images, True, mutable=["batch_stats"],
                               method="encode_image")
        bstats = mut["batch_stats"]
    else:
        emb, bstats = model.apply(variables, images, method="encode_image"), None
    return jnp.mean(jnp.square(emb - teacher.astype(jnp.float32))), bstats


def _distill_step(config: Any, model: Any, tx: Any, schedule: Any):
    def step_fn(state: Any, batch: dict) -> tuple[Any, dict]:
        def loss_fn(params):
            v = {"params": params, "batch_stats": state.batch_stats}
            return distill_loss(model, v, batch["image"], batch["teacher"], True)

        (loss, bstats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        # Only the image encoder learns: no weight decay drift on the decoder either.
        updates = jax.tree_util.tree_map_with_path(
            lambda p, u: u if "image_encoder" in path_str(p) else jnp.zeros_like(u), updates)
        params = jax.tree.map(lambda p, u: p + u, state.params, updates)
        out = {"loss": loss, "lr": schedule(state.step), "grad_norm": _grad_norm(grads)}
        return state.replace(step=state.step + 1, params=params, batch_stats=bstats,
                             opt_state=opt_state), out

    return step_fn


def load_teacher(config: Any) -> tuple[Any, dict] | None:
    """(teacher module, variables) of `distill.teacher_model` / `teacher_weights`, or None
    when the teacher is a directory of embeddings."""
    d = config.distill
    if d.teacher_dir:
        return None
    if not d.teacher_model:
        raise ValueError("task 'sam_distill' needs distill.teacher_dir (a directory of "
                         "<image_id>.npy embeddings) or distill.teacher_model (+ weights)")
    import evit_jax
    teacher = sam_model(d.teacher_model, d.teacher_size)
    if d.teacher_weights:
        variables = evit_jax.load_variables(d.teacher_weights, model=d.teacher_model)
    else:  # a random teacher: only for tests of the machinery
        variables = evit_jax.init_variables(teacher, jax.random.PRNGKey(d.teacher_seed))
    return teacher, variables


def batch_hook(config: Any, mesh: Any):
    """A function global batch -> global batch run before each step, or None: with a zoo
    teacher it replaces `teacher_image` by the teacher's embeddings (`teacher`), computed
    sharded over the batch like the step itself."""
    if config.task != "sam_distill":
        return None
    loaded = load_teacher(config)
    if loaded is None:
        return None
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P
    teacher, variables = loaded
    rep, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    variables = jax.device_put(variables, rep)
    enc = jax.jit(lambda v, x: teacher.apply(v, x, method="encode_image"),
                  in_shardings=(rep, data), out_shardings=data)

    def hook(batch: dict) -> dict:
        batch = dict(batch)
        batch["teacher"] = enc(variables, batch.pop("teacher_image"))
        return batch
    return hook


# ---------------------------------------------------------------------------- evaluation
def _sum_over_hosts(sums: np.ndarray) -> np.ndarray:
    if jax.process_count() == 1:
        return sums
    from .sync import barrier
    barrier("sam_eval_done")
    return np.asarray(multihost_utils.process_allgather(sums)).sum(0)


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
        sums = _sum_over_hosts(sums)
        return {"miou": float(sums[0] / max(sums[1], 1)), "examples": int(sums[1])}


class DistillEvaluator:
    """Mean embedding MSE to the teacher over held-out (EvalImage, example) pairs."""

    def __init__(self, model: Any, config: Any):
        self.model, self.teacher = model, load_teacher(config)
        self._student = jax.jit(lambda v, x: model.apply(v, x, method="encode_image"))
        if self.teacher is not None:
            t = self.teacher[0]
            self._teacher = jax.jit(lambda v, x: t.apply(v, x, method="encode_image"))

    def run(self, variables: Any, pairs: list) -> dict[str, float]:
        variables = jax.tree.map(jnp.asarray, local_copy(variables))
        sums = np.zeros(2, np.float64)
        for _, ex in pairs[jax.process_index()::jax.process_count()]:
            emb = self._student(variables, ex["image"][None])
            if "teacher" in ex:
                target = jnp.asarray(ex["teacher"])[None]
            else:
                target = self._teacher(self.teacher[1], ex["teacher_image"][None])
            sums += [float(jnp.mean(jnp.square(emb - target))), 1]
        sums = _sum_over_hosts(sums)
        return {"mse": float(sums[0] / max(sums[1], 1)), "examples": int(sums[1])}


def make_evaluator(config: Any, model: Any) -> Any:
    if config.task == "sam_distill":
        return DistillEvaluator(model, config)
    return SamEvaluator(model, config.eval_batch_size)
