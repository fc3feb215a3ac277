"""The grain pipeline (train/input_pipeline.py) through the cls / seg tasks: determinism,
resumable state, host sharding, worker processes, sources, preprocessing."""

from __future__ import annotations

import os

import numpy as np
import pytest
from evit_jax.configs import demo
from evit_jax.train import augment
from evit_jax.train.datasets.sources import CITYSCAPES_LUT, open_source
from evit_jax.train.tasks import get_task
from PIL import Image


def _config(shapes_dir, **kw):
    c = demo.get_config("tiny")
    c.data.data_dir = shapes_dir
    c.data.num_workers = 0
    c.batch_size = 8
    for k, v in kw.items():
        node, leaf = (c, k) if "." not in k else (c[k.split(".")[0]], k.split(".")[1])
        node[leaf] = v
    return c


def _train(c, process_index=0, process_count=1):
    """The task's stream of this host's batches (input_pipeline.train_stream) and the
    dataset's class count."""
    data = get_task(c.task).make_data(c, process_index, process_count)
    return data.train, data.train_length, data.num_classes


def _eval(c, process_index=0, process_count=1):
    return get_task(c.task).eval_data(c, process_index, process_count)


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_same_seed_same_batches_and_resume_from_state(shapes_dir):
    c = _config(shapes_dir)
    a, _, _ = _train(c)
    b, _, _ = _train(c)
    first = _take(a, 3)
    for x, y in zip(first, _take(b, 3)):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    state = a.get_state()
    want = _take(a, 2)
    fresh, _, _ = _train(c)
    fresh.set_state(state)
    for x, y in zip(want, _take(fresh, 2)):
        np.testing.assert_array_equal(x["image"], y["image"])
    c.seed = 1
    other, _, _ = _train(c)
    assert not np.array_equal(next(other)["image"], first[0]["image"])


def test_hosts_split_the_global_batch_in_order(shapes_dir):
    c = _config(shapes_dir)
    one, _, _ = _train(c, 0, 1)
    h0, _, _ = _train(c, 0, 2)
    h1, _, _ = _train(c, 1, 2)
    for _ in range(3):
        g, a, b = next(one), next(h0), next(h1)
        assert a["image"].shape[0] == 4
        np.testing.assert_array_equal(g["image"], np.concatenate([a["image"], b["image"]]))
        np.testing.assert_array_equal(g["label"], np.concatenate([a["label"], b["label"]]))


def test_multi_resolution_is_per_global_batch(shapes_dir):
    c = _config(shapes_dir, **{"input.train_sizes": (32, 64)})
    it, _, _ = _train(c)
    sizes = {next(it)["image"].shape[1] for _ in range(8)}
    assert sizes == {32, 64}


def test_worker_processes_give_the_same_stream(shapes_dir):
    c = _config(shapes_dir)
    ref, _, _ = _train(c)
    c.data.num_workers = 2
    mp, _, _ = _train(c)
    for x, y in zip(_take(ref, 3), _take(mp, 3)):
        np.testing.assert_array_equal(x["image"], y["image"])


def test_eval_split_is_sharded_and_preprocessed(shapes_dir):
    c = _config(shapes_dir, **{"data.eval_examples": 10})
    ds, n, k = _eval(c, 0, 1)
    assert n == 10 and k == 10
    items = list(ds)
    assert len(items) == 10 and items[0]["image"].shape == (32, 32, 3)
    parts = [list(_eval(c, p, 3)[0]) for p in range(3)]
    assert sorted(len(p) for p in parts) == [3, 3, 4]
    np.testing.assert_array_equal(parts[1][0]["image"], items[1]["image"])


def test_segmentation_examples_and_label_aware_padding(shapes_dir):
    c = _config(shapes_dir, task="seg", **{"input.crop_size": (96, 96)})
    it, _, k = _train(c)
    b = next(it)
    assert k == 11 and b["image"].shape == (8, 96, 96, 3) and b["label"].shape == (8, 96, 96)
    assert (b["label"] == 255).any(), "padding is marked ignored"
    assert set(np.unique(b["label"])) <= set(range(11)) | {255}
    img = Image.fromarray(np.full((20, 30, 3), 200, np.uint8))
    lab = np.ones((20, 30), np.uint8)
    out, ol = augment.seg_train_crop(img, lab, np.random.default_rng(0), (40, 40), (1.0, 1.0),
                                     hflip=False)
    assert out.size == (40, 40) and (ol[:20, :30] == 1).all() and (ol[20:] == 255).all()
    ev, _, _ = _eval(c)
    e = next(iter(ev))
    assert e["image"].shape == (32, 32, 3) and e["label"].shape == (64, 64), \
        "labels stay at full resolution"


def test_image_folder_source(tmp_path):
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            os.makedirs(tmp_path / split / cls)
            for i in range(3):
                Image.fromarray(np.full((40, 50, 3), 80 * (cls == "dog"), np.uint8)).save(
                    tmp_path / split / cls / f"{i}.jpg")
    c = demo.get_config()
    c.data.name = f"folder:{tmp_path}"
    src, decode, k = open_source(c.data, "val", "cls")
    assert k == 2 and len(src) == 6
    ex = decode(src[4])
    assert ex["label"] == 1 and ex["image"].shape == (40, 50, 3)
    with pytest.raises(FileNotFoundError, match="split"):
        open_source(c.data, "validation", "cls")


def test_cityscapes_label_ids_map_to_train_ids():
    assert CITYSCAPES_LUT[7] == 0 and CITYSCAPES_LUT[33] == 18 and CITYSCAPES_LUT[26] == 13
    assert CITYSCAPES_LUT[0] == 255 and CITYSCAPES_LUT[34] == 255
    assert (CITYSCAPES_LUT != 255).sum() == 19


def test_ade20k_folder_source(tmp_path):
    for split in ("training", "validation"):
        os.makedirs(tmp_path / "images" / split)
        os.makedirs(tmp_path / "annotations" / split)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(
            tmp_path / "images" / split / "ADE_1.jpg")
        Image.fromarray(np.array([[0, 1], [150, 7]], np.uint8)).save(
            tmp_path / "annotations" / split / "ADE_1.png")
    c = demo.get_config()
    c.data.name = f"ade20k:{tmp_path}"
    src, decode, k = open_source(c.data, "validation", "seg")
    assert k == 150
    np.testing.assert_array_equal(decode(src[0])["label"], [[255, 0], [149, 6]])


def test_eval_transform_matches_reference_resize():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 451, 3), np.uint8))
    out = augment.center_crop_resize(img, 224, 0.95)
    # torchvision: Resize(ceil(224 / 0.95) = 236) keeps the aspect (int(236 * 451 / 300)),
    # CenterCrop(224) with rounded offsets.
    ref = img.resize((354, 236), Image.BICUBIC)
    left, top = int(round((354 - 224) / 2)), int(round((236 - 224) / 2))
    np.testing.assert_array_equal(np.asarray(out),
                                  np.asarray(ref.crop((left, top, left + 224, top + 224))))
