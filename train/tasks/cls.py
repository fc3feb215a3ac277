"""Image classification (`task = "cls"`): the EfficientViT classifiers of the zoo on tfds /
ImageFolder / the embedded dataset, with the reference recipe's augmentation (per example on
the host: RandomResizedCrop, flip, RandAugment, RandomErasing; per batch on the device:
label smoothing, mixup / cutmix), BCE or CE, MESA, BatchNorm re-estimation before evaluation,
and top-1 / top-5 as the reference evaluates (`train.evaluator`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageOps

from evit_jax.cli import UserError
from evit_jax.zoo import create_model

from .. import augment, bn_reset, losses
from ..datasets.sources import open_source
from ..evaluator import Evaluator
from ..input_pipeline import Data, eval_split, step_of, train_stream
from . import Task


def fill_of(inp: Any) -> tuple[int, int, int]:
    """The mean colour as uint8 RGB (what augmentations fill uncovered pixels with)."""
    return tuple(int(round(255 * m)) for m in inp.mean)


def compute_dtype(config: Any) -> Any:
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[config.dtype]


class ClsTask(Task):
    """Classification; `SegTask` (train/tasks/seg.py) changes the examples, loss and metric."""

    kind = "cls"  # what `datasets.sources.open_source` decodes
    percent_metrics = ("top1", "top5")

    def check_config(self, config: Any) -> None:
        if config.loss not in losses.CLS_LOSSES:
            raise UserError(f"config.loss={config.loss!r}; use one of {losses.CLS_LOSSES}")

    # ---------------------------------------------------------------- data (host side)
    def train_transform(self, config: Any, decode: Callable) -> Callable[[int, Any], dict]:
        """(stream index, raw record) -> augmented example {"image", "label"}."""
        inp, seed = config.input, config.seed
        sizes = tuple(inp.train_sizes)

        def fn(index: int, record: Any) -> dict:
            ex = decode(record)
            rng = np.random.default_rng([seed, 1, index])
            img = Image.fromarray(np.asarray(ex["image"]))
            # Every example of a global batch gets the same resolution.
            g = step_of(index, config)
            size = sizes[int(np.random.default_rng([seed, 2, g]).integers(len(sizes)))]
            img = augment.random_resized_crop(img, size, rng, tuple(inp.rrc_scale),
                                              tuple(inp.rrc_ratio), inp.interpolation)
            if inp.hflip and rng.random() < 0.5:
                img = ImageOps.mirror(img)
            if inp.randaug_n > 0:
                img = augment.rand_augment(img, rng, inp.randaug_n, inp.randaug_m,
                                           inp.randaug_mstd, fill_of(inp))
            x = augment.random_erase(augment.normalize(img, inp.mean, inp.std), rng,
                                     inp.erase_p)
            return {"image": x, "label": np.int32(ex["label"])}

        return fn

    def eval_transform(self, config: Any, decode: Callable) -> Callable[[Any], dict]:
        """Raw record -> evaluation example, preprocessed as the reference evaluates
        (resize the shorter side to size / crop, center crop)."""
        inp = config.input

        def fn(record: Any) -> dict:
            ex = decode(record)
            img = augment.center_crop_resize(Image.fromarray(np.asarray(ex["image"])),
                                             inp.eval_size, inp.eval_crop)
            return {"image": augment.normalize(img, inp.mean, inp.std),
                    "label": np.int32(ex["label"])}

        return fn

    def eval_data(self, config: Any, process_index: int = 0, process_count: int = 1):
        """(this host's evaluation examples, size of the capped split, the dataset's classes)."""
        src, decode, n_cls = open_source(config.data, config.data.eval_split, self.kind)
        ds, n = eval_split(config, src, self.eval_transform(config, decode), process_index,
                           process_count)
        return ds, n, n_cls

    def make_data(self, config: Any, process_index: int = 0, process_count: int = 1) -> Data:
        src, decode, n_cls = open_source(config.data, config.data.train_split, self.kind)
        train = train_stream(config, src, self.train_transform(config, decode), process_index,
                             process_count)
        ev, n_eval, _ = self.eval_data(config, process_index, process_count)
        return Data(train, len(src), ev, n_eval, n_cls)

    # ---------------------------------------------------------------- model and loss
    def build_model(self, config: Any, num_classes: int, train: bool = True) -> Any:
        kw = dict(num_classes=num_classes)
        if train:
            kw.update(drop_path=config.drop_path, drop_path_skip=config.drop_path_skip,
                      zero_init_last=config.zero_init_last)
        return create_model(config.model, dtype=compute_dtype(config), **kw)

    def loss_fn(self, config, model, state, batch, key, num_classes):
        k_mix, k_drop = jax.random.split(key)
        images, labels = batch["image"], batch["label"]
        targets = losses.smooth_one_hot(labels, num_classes, config.label_smoothing)
        images, targets = losses.mix(k_mix, images, targets, config.mixup_alpha,
                                     config.cutmix_alpha)
        warmup = config.warmup_steps
        post_warmup = max(config.total_steps - warmup, 1)

        def fn(params):
            logits, mut = model.apply({"params": params, "batch_stats": state.batch_stats},
                                      images, train=True, mutable=["batch_stats"],
                                      rngs={"dropout": k_drop})
            loss = losses.cls_loss(logits, targets, config.loss)
            if config.mesa_ratio > 0 and state.ema is not None:
                # MESA: also fit the EMA model's sigmoid outputs, once training is far enough.
                progress = jnp.maximum(state.step - warmup, 0) / post_warmup
                ema_logits = jax.lax.stop_gradient(model.apply(state.ema, images))
                mesa = losses.cls_loss(logits, jax.nn.sigmoid(ema_logits), "bce")
                loss = loss + jnp.where(progress >= config.mesa_start,
                                        config.mesa_ratio * mesa, 0.0)
            acc = (logits.argmax(-1) == labels).mean()
            return loss, ({"top1": acc}, mut["batch_stats"])

        return fn

    # ---------------------------------------------------------------- evaluation
    def evaluator(self, config: Any, model: Any, num_classes: int) -> Evaluator:
        return Evaluator(model, self.kind, num_classes, config.eval_batch_size,
                         config.input.ignore_index)

    def bn_batches(self, config: Any, process_index: int, process_count: int) -> Any:
        """This host's share of the fixed `reset_bn_examples` training images that BatchNorm
        statistics are re-estimated on: train augmentation at the evaluation resolution."""
        cfg = copy.deepcopy(config)
        with cfg.unlocked():
            cfg.input.train_sizes = (config.input.eval_size,)
            cfg.seed = config.seed + 12345  # a fixed subset, apart from the training stream
        src, decode, _ = open_source(cfg.data, cfg.data.train_split, self.kind)
        n = min(config.reset_bn_examples, len(src))
        bs = max(config.reset_bn_batch_size // process_count, 1)
        ds = grain.MapDataset.source(src).shuffle(seed=cfg.seed)[:n]
        ds = ds.map_with_index(self.train_transform(cfg, decode))
        return ds.batch(bs, drop_remainder=False)[process_index::process_count]

    def eval_variables(self, config, model, variables, process_index, process_count):
        if config.reset_bn_examples <= 0:
            return variables
        return bn_reset.reset_bn(model, variables,
                                 self.bn_batches(config, process_index, process_count))

    def format_metrics(self, results: dict[str, float]) -> str:
        return ", ".join(f"{k} {100 * v:.2f}%" for k, v in results.items())

    def summary(self, results: dict[str, Any]) -> str:
        return ", ".join(f"{k} {100 * results[k]:.2f}%" for k in self.percent_metrics
                         if k in results)


TASK = ClsTask()
