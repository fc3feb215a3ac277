"""SAM encoder distillation (`task = "sam_distill"`, phase 1 of the EfficientViT-SAM recipe).

MSE between the student's image embeddings `[B, 64, 64, 256]` and the teacher's, which are
read from `.npy` files (`distill.teacher_dir`) or computed by a zoo teacher on the devices
before each step (`batch_hook`). Only the image encoder learns; the prompt encoder and
decoder stay as loaded. Evaluation: the mean embedding MSE on held-out images.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from evit_jax.cli import UserError
from evit_jax.zoo import sam_model

from ..datasets import sam as sam_data
from ..sync import local_copy, sum_over_hosts
from .sam import SamTask


def distill_loss(model: Any, variables: dict, images: jax.Array, teacher: jax.Array,
                 train: bool) -> tuple[jax.Array, Any]:
    """(MSE of the student's embeddings to the teacher's `[B, 64, 64, 256]`, batch_stats)."""
    if train:
        emb, mut = model.apply(variables, images, True, mutable=["batch_stats"],
                               method="encode_image")
        bstats = mut["batch_stats"]
    else:
        emb, bstats = model.apply(variables, images, method="encode_image"), None
    return jnp.mean(jnp.square(emb - teacher.astype(jnp.float32))), bstats


def load_teacher(config: Any) -> tuple[Any, dict] | None:
    """(teacher module, variables) of `distill.teacher_model` / `teacher_weights`, or None
    when the teacher is a directory of embeddings."""
    d = config.distill
    if d.teacher_dir:
        return None
    if not d.teacher_model:
        raise UserError("task 'sam_distill' needs distill.teacher_dir (a directory of "
                        "<image_id>.npy embeddings) or distill.teacher_model (+ weights)")
    import evit_jax
    teacher = sam_model(d.teacher_model, d.teacher_size)
    if d.teacher_weights:
        variables = evit_jax.load_variables(d.teacher_weights, model=d.teacher_model)
    else:  # a random teacher: only for tests of the machinery
        variables = evit_jax.init_variables(teacher, jax.random.PRNGKey(d.teacher_seed))
    return teacher, variables


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
        sums = sum_over_hosts(sums, "sam_eval_done")
        return {"mse": float(sums[0] / max(sums[1], 1)), "examples": int(sums[1])}


class DistillTask(SamTask):
    def train_transform(self, config: Any):
        return sam_data.distill_transform(config)

    def eval_examples(self, config: Any, source: Any) -> list:
        """(EvalImage, example) pairs: the evaluator needs the same inputs as training."""
        return [(im, sam_data.distill_example(source[im.index], config))
                for im in super().eval_examples(config, source)]

    def loss_fn(self, config, model, state, batch, key, num_classes):
        def fn(params):
            v = {"params": params, "batch_stats": state.batch_stats}
            loss, bstats = distill_loss(model, v, batch["image"], batch["teacher"], True)
            return loss, ({}, bstats)

        return fn

    def trainable(self, config: Any):
        return lambda path: "image_encoder" in path

    def batch_hook(self, config: Any, mesh: Any):
        """With a zoo teacher: `teacher_image` replaced by the teacher's embeddings
        (`teacher`), computed sharded over the batch like the step itself."""
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

    def evaluator(self, config: Any, model: Any, num_classes: int) -> DistillEvaluator:
        return DistillEvaluator(model, config)

    def summary(self, results: dict[str, Any]) -> str:
        return f"embedding MSE {results['mse']:.4f}"


TASK = DistillTask()
