"""The embedded dataset (evit_jax/data/): deterministic rendering, a proper tfds build,
consistent masks, and tfds only imported when the dataset is used."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import tensorflow_datasets as tfds

from evit_jax.data import shapes
from evit_jax.data.shapes_tfds import as_numpy

# sha256 of the first 8 rendered examples of each split (image, mask, label bytes): a change
# of the renderer changes every cached dataset's meaning; bump the tfds VERSION with it.
RENDERED_SHA256 = "295583ef03b692b0fed333305571ea536a04b6ccc7d206a11b61ad60579ac4cc"


def test_render_is_deterministic_and_masks_match_labels():
    for i in range(12):
        a = shapes.render(shapes.example_rng(0, "train", i))
        b = shapes.render(shapes.example_rng(0, "train", i))
        assert all(np.array_equal(x, y) for x, y in zip(a[:2], b[:2])) and a[2] == b[2]
        image, mask, label = a
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, label + 1}
        assert 0.02 < (mask > 0).mean() < 0.8, "the object covers a sensible part"
    other = shapes.render(shapes.example_rng(1, "train", 0))[0]
    assert not np.array_equal(other, shapes.render(shapes.example_rng(0, "train", 0))[0])


def test_every_class_can_be_drawn():
    rng = np.random.default_rng(0)
    for name in shapes.CLASSES:
        outlines = shapes.outline(name, rng)
        assert outlines and all(o.ndim == 2 and o.shape[1] == 2 for o in outlines)


def test_tfds_build_and_read_back(shapes_dir):
    root = os.path.join(shapes_dir, "evit_shapes", "tiny", "1.0.0")
    info = json.load(open(os.path.join(root, "dataset_info.json")))
    assert {s["name"]: int(s["shardLengths"][0]) for s in info["splits"]} == \
        {"train": 640, "validation": 320}
    assert any(f.endswith(".array_record-00000-of-00001") for f in os.listdir(root))
    src = tfds.data_source("evit_shapes/tiny", split="validation", data_dir=shapes_dir)
    ex = src[5]
    assert ex["image"].shape == (64, 64, 3) and ex["mask"].shape == (64, 64, 1)
    want = shapes.render(shapes.example_rng(0, "validation", 5))
    # PNG is lossless: the stored example is exactly the rendered one.
    assert np.array_equal(ex["image"], want[0]) and int(ex["label"]) == want[2]
    images, masks, labels = as_numpy("train", "tiny", shapes_dir)
    counts = np.bincount(labels, minlength=10)
    assert counts.min() > 30, f"classes are balanced enough: {counts}"


def test_rendering_is_pinned():
    h = hashlib.sha256()
    for split in ("train", "validation"):
        for i in range(8):
            image, mask, label = shapes.render(shapes.example_rng(0, split, i))
            h.update(image.tobytes()), h.update(mask.tobytes()), h.update(bytes([label]))
    assert h.hexdigest() == RENDERED_SHA256


def test_the_library_imports_tfds_only_to_use_the_dataset():
    code = ("import sys, evit_jax, evit_jax.data.shapes_tfds, evit_jax.sam.eval.data; "
            "assert 'tensorflow_datasets' not in sys.modules, 'tfds imported'; "
            "assert not any(m.startswith('evit_jax.train') for m in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert r.returncode == 0, r.stderr[-2000:]
