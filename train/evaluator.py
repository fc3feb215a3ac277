"""Top-1 / top-5 (classification) and full-resolution mIoU (segmentation) of variables on
an evaluation split: the metric of the cls and seg tasks and of `evit-eval`.

`Evaluator` runs on this host's local devices over its share of the evaluation split and
sums the counts over hosts. Segmentation follows the reference: logits (stride 8) are
resized to the label's full resolution with PyTorch-exact bicubic, argmax, and mIoU is the
mean over classes of (sum of intersections) / (sum of unions) over the whole split.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from evit_jax.models.seg import resize_logits

from .sync import local_copy, sum_over_hosts


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
        total = sum_over_hosts(total, "eval_done")
        if self.task == "cls":
            n = max(int(total[2]), 1)
            return {"top1": total[0] / n, "top5": total[1] / n, "examples": int(total[2])}
        conf = total.reshape(self.k, self.k).astype(np.float64)
        inter = np.diag(conf)
        union = conf.sum(0) + conf.sum(1) - inter
        present = union > 0
        return {"miou": float((inter[present] / union[present]).mean()) if present.any() else 0.0,
                "pixel_acc": float(inter.sum() / max(conf.sum(), 1))}
