"""tfds / folder sources -> grain pipelines for training and evaluation.

Training stream (deterministic from `config.seed`, identical whatever the host count):

    source -> global shuffle (reshuffled every epoch) -> repeat -> per-example augmentation
    (seeded by the example's position in the stream) -> local batches -> host p keeps local
    batches p, p + n, ... -> worker processes

so global batch g is always stream elements `[g * B, (g + 1) * B)`, split over the hosts in
order; its resolution (multi-resolution recipes) is drawn from (seed, g). The grain iterator
state (a small dict) goes into every checkpoint.

Evaluation: host p takes examples p, p + n, ... of the split; `Evaluator` batches them.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import grain
import numpy as np
from absl import flags
from PIL import Image, ImageOps

from . import augment
from .datasets.sources import open_source


def _enable_workers() -> None:
    # grain's worker processes read absl flags; outside `absl.app.run` (tests, notebooks) they
    # are not parsed yet and grain would raise UnparsedFlagAccessError.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


PARENT_POLL_S = 0.5  # how often a worker checks that the process that started it is alive


def _exit_with_parent(parent_pid: int, worker_index: int, worker_count: int) -> None:
    """grain worker init: end this worker once `parent_pid` (the trainer) is gone.

    A worker blocks on its output queue while nobody reads it, so after a `kill -9` of the
    trainer it would live on, reparented to init. The parent-death signal of Linux
    (`prctl(PR_SET_PDEATHSIG)`) does not fit: it fires when the *thread* that started the
    child exits, and grain starts its workers from a pool of short-lived threads. So a daemon
    thread polls `os.getppid()`, which changes (to init or a subreaper) when the parent dies;
    POSIX-portable, and cheap (one syscall per `PARENT_POLL_S`).
    """
    del worker_index, worker_count

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        os._exit(1)  # no cleanup to run: the buffers it would flush belong to the dead parent

    threading.Thread(target=watch, name="evit-parent-watchdog", daemon=True).start()


def _fill(inp: Any) -> tuple[int, int, int]:
    return tuple(int(round(255 * m)) for m in inp.mean)


def train_transform(config: Any, decode: Callable) -> Callable[[int, Any], dict]:
    """(stream index, raw record) -> augmented example."""
    inp, seed, task = config.input, config.seed, config.task
    sizes, gb = tuple(inp.train_sizes), config.batch_size

    def fn(index: int, record: Any) -> dict:
        ex = decode(record)
        rng = np.random.default_rng([seed, 1, index])
        img = Image.fromarray(np.asarray(ex["image"]))
        if task == "seg":
            img, lab = augment.seg_train_crop(img, np.asarray(ex["label"]), rng,
                                              tuple(inp.crop_size), tuple(inp.scale_range),
                                              inp.hflip, inp.ignore_index, _fill(inp))
            return {"image": augment.normalize(img, inp.mean, inp.std),
                    "label": lab.astype(np.int32)}
        # Every example of global batch g gets the same resolution.
        size = sizes[int(np.random.default_rng([seed, 2, index // gb]).integers(len(sizes)))]
        img = augment.random_resized_crop(img, size, rng, tuple(inp.rrc_scale),
                                          tuple(inp.rrc_ratio), inp.interpolation)
        if inp.hflip and rng.random() < 0.5:
            img = ImageOps.mirror(img)
        if inp.randaug_n > 0:
            img = augment.rand_augment(img, rng, inp.randaug_n, inp.randaug_m,
                                       inp.randaug_mstd, _fill(inp))
        x = augment.random_erase(augment.normalize(img, inp.mean, inp.std), rng, inp.erase_p)
        return {"image": x, "label": np.int32(ex["label"])}

    return fn


def eval_transform(config: Any, decode: Callable) -> Callable[[Any], dict]:
    """Raw record -> evaluation example, preprocessed as the reference evaluates."""
    inp, task = config.input, config.task

    def fn(record: Any) -> dict:
        ex = decode(record)
        img = Image.fromarray(np.asarray(ex["image"]))
        if task == "seg":
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
        img = augment.center_crop_resize(img, inp.eval_size, inp.eval_crop)
        return {"image": augment.normalize(img, inp.mean, inp.std),
                "label": np.int32(ex["label"])}

    return fn


@dataclasses.dataclass
class Data:
    """What the trainer gets: the train stream and the evaluation split of this host."""

    train: Any  # grain DatasetIterator of local batches {"image", "label"}
    train_length: int
    eval_dataset: Any  # grain IterDataset of single evaluation examples (this host's part)
    eval_length: int  # examples in the whole (capped) evaluation split
    num_classes: int | None


def _read_options(config: Any) -> grain.ReadOptions:
    return grain.ReadOptions(num_threads=max(2, config.data.num_workers * 2),
                             prefetch_buffer_size=4)


def make_train_iterator(config: Any, process_index: int = 0, process_count: int = 1):
    """(iterator of this host's batches, number of train examples, num_classes)."""
    src, decode, n_cls = open_source(config.data, config.data.train_split, config.task)
    if config.batch_size % process_count:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by the "
                         f"{process_count} hosts")
    local = config.batch_size // process_count
    ds = grain.MapDataset.source(src).shuffle(seed=config.seed).repeat()
    ds = ds.map_with_index(train_transform(config, decode)).batch(local, drop_remainder=True)
    ds = ds[process_index::process_count].to_iter_dataset(_read_options(config))
    if config.data.num_workers > 0:
        _enable_workers()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.data.num_workers),
                            worker_init_fn=functools.partial(_exit_with_parent, os.getpid()))
    return iter(ds), len(src), n_cls


def make_eval_dataset(config: Any, process_index: int = 0, process_count: int = 1):
    """(this host's evaluation examples as a grain IterDataset, split size, num_classes)."""
    src, decode, n_cls = open_source(config.data, config.data.eval_split, config.task)
    n = len(src) if not config.data.eval_examples else min(len(src), config.data.eval_examples)
    ds = grain.MapDataset.source(src)[process_index:n:process_count]
    ds = ds.map(eval_transform(config, decode)).to_iter_dataset(_read_options(config))
    return ds, n, n_cls


def make_data(config: Any, process_index: int = 0, process_count: int = 1) -> Data:
    if config.task in ("sam", "sam_distill"):
        from .datasets.sam import make_sam_data
        return make_sam_data(config, process_index, process_count)
    if config.task == "sr":
        from .datasets.sr import make_sr_data
        from .sr_task import scale_of
        return make_sr_data(config, scale_of(config), process_index, process_count)
    train, n_train, n_cls = make_train_iterator(config, process_index, process_count)
    ev, n_eval, _ = make_eval_dataset(config, process_index, process_count)
    return Data(train, n_train, ev, n_eval, n_cls)
