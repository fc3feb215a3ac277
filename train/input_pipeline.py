"""The one grain pipeline of every task: a task gives a random-access source and a
per-example transform, this module makes the streams.

Training stream (deterministic from `config.seed`, identical whatever the host and worker
counts):

    source -> global shuffle (reshuffled every epoch) -> repeat -> transform(index, record)
    -> local batches -> host p keeps local batches p, p + n, ... -> worker processes

so global batch g is always stream elements `[g * B, (g + 1) * B)`, split over the hosts in
order. The transform gets the element's stream index: it seeds the example's randomness
with it, and `step_of(index, config)` is the step that trains on it (a resolution drawn per
global batch, augmentations that stop for the last N steps). The grain iterator state (a
small dict) goes into every checkpoint, so a resumed stream continues where it stopped.

Evaluation: host p takes examples p, p + n, ... of the (capped) split.
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
from absl import flags

from evit_jax.cli import UserError

PARENT_POLL_S = 0.5  # how often a worker checks that the process that started it is alive


@dataclasses.dataclass
class Data:
    """What the trainer gets from a task: the train stream and the evaluation data of this
    host. `eval_dataset` is whatever the task's evaluator reads (a grain IterDataset of
    examples, a list of images, ...)."""

    train: Any  # grain DatasetIterator of this host's batches (checkpointed)
    train_length: int  # examples in the train split
    eval_dataset: Any
    eval_length: int  # examples in the whole (capped) evaluation split
    num_classes: int | None  # the dataset's class count, None if it has none or unknown


def step_of(index: int, config: Any) -> int:
    """The training step (0-based) whose global batch holds stream element `index`."""
    return index // config.batch_size


def _enable_workers() -> None:
    # grain's worker processes read absl flags; outside `absl.app.run` (every evit-* command,
    # tests, notebooks) they are not parsed and grain would raise UnparsedFlagAccessError.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


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


def read_options(config: Any) -> grain.ReadOptions:
    return grain.ReadOptions(num_threads=max(2, config.data.num_workers * 2),
                             prefetch_buffer_size=4)


def local_batch_size(config: Any, process_count: int) -> int:
    if config.batch_size % process_count:
        raise UserError(f"batch_size {config.batch_size} is not divisible by the "
                        f"{process_count} hosts: choose a multiple")
    return config.batch_size // process_count


def train_stream(config: Any, source: Any, transform: Callable[[int, Any], dict],
                 process_index: int = 0, process_count: int = 1):
    """The iterator of this host's training batches (module docstring): `source` is random
    access (`len`, `[i]`), `transform(stream index, record)` gives one example, a dict of
    arrays of one shape per key within a global batch."""
    local = local_batch_size(config, process_count)
    ds = grain.MapDataset.source(source).shuffle(seed=config.seed).repeat()
    ds = ds.map_with_index(transform).batch(local, drop_remainder=True)
    ds = ds[process_index::process_count].to_iter_dataset(read_options(config))
    if config.data.num_workers > 0:
        _enable_workers()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.data.num_workers),
                            worker_init_fn=functools.partial(_exit_with_parent, os.getpid()))
    return iter(ds)


def eval_split(config: Any, source: Any, transform: Callable[[Any], dict],
               process_index: int = 0, process_count: int = 1) -> tuple[Any, int]:
    """(this host's evaluation examples as a grain IterDataset, size of the capped split):
    the first `data.eval_examples` (0: all) of `source`, each through `transform(record)`."""
    n = len(source) if not config.data.eval_examples else min(len(source),
                                                              config.data.eval_examples)
    ds = grain.MapDataset.source(source)[process_index:n:process_count]
    return ds.map(transform).to_iter_dataset(read_options(config)), n
