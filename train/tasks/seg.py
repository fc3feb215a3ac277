"""Semantic segmentation (`task = "seg"`): the zoo's segmenters, trained on random crops of
randomly rescaled, flipped images (labels padded with the ignore index), cross-entropy of
the stride-8 logits upsampled to the crop, and full-resolution mIoU as the reference
computes it. Everything else (model options, BN re-estimation, the percent figures) is the
classification task's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from PIL import Image

from .. import augment, losses
from .cls import ClsTask, fill_of


class SegTask(ClsTask):
    kind = "seg"
    percent_metrics = ("miou",)

    def check_config(self, config: Any) -> None:
        del config  # no classification loss to check

    def train_transform(self, config: Any, decode: Callable) -> Callable[[int, Any], dict]:
        """(stream index, raw record) -> a random crop {"image", "label" `[H, W]`}."""
        inp, seed = config.input, config.seed

        def fn(index: int, record: Any) -> dict:
            ex = decode(record)
            rng = np.random.default_rng([seed, 1, index])
            img = Image.fromarray(np.asarray(ex["image"]))
            img, lab = augment.seg_train_crop(img, np.asarray(ex["label"]), rng,
                                              tuple(inp.crop_size), tuple(inp.scale_range),
                                              inp.hflip, inp.ignore_index, fill_of(inp))
            return {"image": augment.normalize(img, inp.mean, inp.std),
                    "label": lab.astype(np.int32)}

        return fn

    def eval_transform(self, config: Any, decode: Callable) -> Callable[[Any], dict]:
        """The image resized as the reference evaluates; the labels at full resolution."""
        inp = config.input

        def fn(record: Any) -> dict:
            ex = decode(record)
            img = Image.fromarray(np.asarray(ex["image"]))
            w, h = img.size
            s = inp.eval_size
            if inp.eval_mode == "fixed":  # Cityscapes: (H, W) = (s, 2s)
                size_wh = (2 * s, s)
            else:  # shorter side -> s; the longer scaled alike, rounded up to a multiple of 32
                long_ = -(-max(w, h) * s // min(w, h) // 32) * 32
                size_wh = (s, long_) if w <= h else (long_, s)
            img = img.resize(size_wh, Image.BICUBIC)  # labels keep their full resolution
            return {"image": augment.normalize(img, inp.mean, inp.std),
                    "label": np.asarray(ex["label"]).astype(np.int32)}

        return fn

    def loss_fn(self, config, model, state, batch, key, num_classes):
        del num_classes
        _, k_drop = jax.random.split(key)  # the classification task's dropout key
        images, labels = batch["image"], batch["label"]

        def fn(params):
            logits, mut = model.apply({"params": params, "batch_stats": state.batch_stats},
                                      images, train=True, mutable=["batch_stats"],
                                      rngs={"dropout": k_drop})
            loss, acc = losses.seg_loss(logits, labels, config.input.ignore_index)
            return loss, ({"top1": acc}, mut["batch_stats"])  # "top1": pixel accuracy

        return fn


TASK = SegTask()
