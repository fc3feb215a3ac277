"""`evit_shapes`: the embedded dataset as a proper tfds dataset in ArrayRecord.

Built locally on first use (no network), cached under `data_dir`, then read like any tfds
dataset: `tfds.data_source("evit_shapes", data_dir=...)`, `load_split`, or the trainer's
`data.name = "evit_shapes"`. Features: `image` `[S, S, 3]` uint8, `mask` `[S, S, 1]` uint8
(class + 1 on the object, 0 background), `label` (10 classes, `shapes.CLASSES`). Configs:
`default` (10 000 train / 2 000 validation, 64 px) and `tiny` (640 / 320, for tests).
Examples are rendered by `shapes.render`, deterministic from the config's seed.

tensorflow-datasets is a training dependency: it is imported when a dataset is built or read,
never by `import evit_jax`; without it, a one-line error says what to install.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import multiprocessing
import os
from typing import Any

import numpy as np

from evit_jax.data import shapes
from evit_jax.errors import require

DEFAULT_DATA_DIR = os.path.join(os.path.expanduser("~"), ".cache", "evit_jax",
                                "tensorflow_datasets")
DESCRIPTION = "Textured shapes on cluttered backgrounds: 10 classes, masks, train/validation."


def _tfds() -> Any:
    return require("tensorflow_datasets")  # a one-line error naming evit-jax[train] if absent


@functools.cache
def builder_class() -> type:
    """The tfds builder `EvitShapes` (defined, and registered with tfds, on first use)."""
    tfds = _tfds()

    @dataclasses.dataclass
    class ShapesConfig(tfds.core.BuilderConfig):
        """Size of an `evit_shapes` variant."""

        num_train: int = 10_000
        num_validation: int = 2_000
        image_size: int = 64
        seed: int = 0

    class EvitShapes(tfds.core.GeneratorBasedBuilder):
        """Textured shapes on cluttered backgrounds: 10 classes, masks, train/validation."""

        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES = {"1.0.0": "First release."}
        BUILDER_CONFIGS = [
            ShapesConfig(name="default", description="10 000 train / 2 000 validation, 64 px"),
            ShapesConfig(name="tiny", description="640 train / 320 validation, 64 px (tests)",
                         num_train=640, num_validation=320),
        ]
        DEFAULT_CONFIG_NAME = "default"

        def _info(self) -> Any:
            s = self.builder_config.image_size
            return tfds.core.DatasetInfo(
                builder=self,
                description=DESCRIPTION,
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(s, s, 3), encoding_format="png"),
                    "mask": tfds.features.Image(shape=(s, s, 1), encoding_format="png"),
                    "label": tfds.features.ClassLabel(names=list(shapes.CLASSES)),
                }),
                supervised_keys=("image", "label"),
                disable_shuffling=True,  # record i is example i (grain shuffles at read time)
            )

        def _split_generators(self, dl_manager):
            del dl_manager  # nothing to download
            cfg = self.builder_config
            return {"train": self._generate_examples("train", cfg.num_train),
                    "validation": self._generate_examples("validation", cfg.num_validation)}

        def _generate_examples(self, split: str, n: int):
            cfg = self.builder_config
            jobs = [(cfg.seed, split, i, cfg.image_size) for i in range(n)]
            workers = min(os.cpu_count() or 1, 8)
            if workers < 2 or n < 256:
                yield from map(shapes.encoded_example, jobs)
                return
            # "spawn": the caller may already run JAX threads, which do not survive a fork.
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                yield from pool.imap(shapes.encoded_example, jobs, chunksize=32)

    return EvitShapes


@contextlib.contextmanager
def _file_lock(path: str):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # several processes of one host may ask at once
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_built(config: str = "default", data_dir: str | None = None) -> str:
    """Build `evit_shapes/<config>` once (cached) and return its `data_dir`.

    `data_dir` defaults to `$EVIT_DATA_DIR`, else `~/.cache/evit_jax/tensorflow_datasets`.
    """
    tfds, cls = _tfds(), builder_class()
    data_dir = os.path.abspath(data_dir or os.environ.get("EVIT_DATA_DIR") or DEFAULT_DATA_DIR)
    builder = cls(config=config, data_dir=data_dir, file_format="array_record")
    if os.path.exists(os.path.join(builder.data_dir, "dataset_info.json")):
        return data_dir
    with _file_lock(os.path.join(data_dir, f".evit_shapes_{config}.lock")):
        builder = cls(config=config, data_dir=data_dir, file_format="array_record")
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return data_dir


def load_split(split: str, config: str = "default", data_dir: str | None = None):
    """The random-access source of one split (builds the dataset if needed)."""
    data_dir = ensure_built(config, data_dir)
    return _tfds().data_source(f"evit_shapes/{config}", split=split, data_dir=data_dir)


def as_numpy(split: str, config: str = "tiny", data_dir: str | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A whole split as arrays (images, masks, labels): handy for small configs."""
    src = load_split(split, config, data_dir)
    ex = [src[i] for i in range(len(src))]
    return (np.stack([e["image"] for e in ex]), np.stack([e["mask"] for e in ex]),
            np.array([e["label"] for e in ex]))
