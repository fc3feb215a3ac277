"""The SAM training data: sources (COCO-format, SA-1B, embedded) and the recipe's examples."""

import json
import os

import numpy as np
import pytest
from evit_jax.train.datasets import sam as S
from evit_jax.train.datasets import sam_sources as src
from PIL import Image

from evit_jax.models.sam.prompt_encoder import BOX_BOTTOM_RIGHT, BOX_TOP_LEFT, NOT_A_POINT, PAD


def _cfg(**sam):
    from evit_jax.configs import sam_common
    c = sam_common.sam_base()
    c.input.encoder_size = 64
    c.sam.num_masks = 4
    c.sam.update(sam)
    return c


def _rle(mask):
    from pycocotools import mask as mu
    r = mu.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in r["size"]], "counts": r["counts"].decode()}


def write_coco(root, n=3, h=40, w=80):
    """n images of h x w with two objects: a rectangle as a polygon, a disc as RLE."""
    os.makedirs(root, exist_ok=True)
    images, anns = [], []
    yy, xx = np.mgrid[:h, :w]
    for i in range(n):
        Image.fromarray(np.full((h, w, 3), 40 * i, np.uint8)).save(f"{root}/im{i}.png")
        images.append({"id": 100 + i, "file_name": f"im{i}.png", "height": h, "width": w})
        x0 = 5 + 3 * i
        anns.append({"id": 2 * i + 1, "image_id": 100 + i, "category_id": 1, "iscrowd": 0,
                     "area": 200.0, "bbox": [x0, 10, 20, 10],
                     "segmentation": [[x0, 10, x0 + 20, 10, x0 + 20, 20, x0, 20]]})
        disc = (yy - 25) ** 2 + (xx - 60) ** 2 <= 64
        anns.append({"id": 2 * i + 2, "image_id": 100 + i, "category_id": 2, "iscrowd": 0,
                     "area": float(disc.sum()), "bbox": [52, 17, 17, 17],
                     "segmentation": _rle(disc)})
    path = f"{root}/instances.json"
    json.dump({"images": images, "annotations": anns, "categories": []}, open(path, "w"))
    return path


def test_coco_example_prompts_fit_their_masks(tmp_path):
    ann = write_coco(str(tmp_path))
    c = _cfg()
    c.data.name, c.data.annotations, c.data.eval_annotations = f"coco:{tmp_path}", ann, ann
    c.input.hflip = False  # (flips: the next test)
    rec = src.open_sam_source(c.data, "validation")[0]
    assert rec["image_id"] == 100 and len(rec["anns"]) == 2
    full = [src.gt_mask(a, 40, 80) for a in rec["anns"]]
    seen_box = seen_clicks = False
    for seed in range(12):
        ex = S.sam_example(rec, c, np.random.default_rng(seed))
        assert ex["image"].shape == (64, 64, 3) and ex["masks"].shape == (4, 64, 64)
        assert ex["coords"].shape == (4, S.TOKENS, 2) and ex["labels"].shape == (4, S.TOKENS)
        assert ex["valid"].tolist() == [True, True, False, False]
        # The 80 x 40 image is 64 x 32 in the encoder frame: nothing below row 32.
        assert not ex["masks"][:, 32:].any()
        for k in range(2):
            lab, xy = ex["labels"][k], ex["coords"][k]
            m = ex["masks"][k].astype(bool)
            if lab[0] == BOX_TOP_LEFT:
                seen_box = True
                assert lab[1] == BOX_BOTTOM_RIGHT and (lab[2:] == PAD).all()
                # Box in the 1024 frame (x 12.8) = the mask's box in the 64 frame (x 16).
                ys, xs = np.nonzero(m)
                np.testing.assert_allclose(xy[0] / 16, [xs.min(), ys.min()], atol=1.0)
                np.testing.assert_allclose(xy[1] / 16, [xs.max() + 1, ys.max() + 1], atol=1.0)
            else:
                seen_clicks = True
                n = int((lab == 1).sum())
                assert 1 <= n <= 10 and lab[n] == NOT_A_POINT and (lab[n + 1:] == PAD).all()
                px = np.round(xy[:n] / 12.8).astype(int)  # 1024 frame -> original pixels
                assert full[k][px[:, 1], px[:, 0]].all()
        # Padding rows: a whole-frame box (never an all-PAD row), weight 0.
        assert (ex["labels"][2:, :2] == (BOX_TOP_LEFT, BOX_BOTTOM_RIGHT)).all()
    assert seen_box and seen_clicks


def test_hflip_moves_masks_and_prompts_together(tmp_path):
    ann = write_coco(str(tmp_path), n=1)
    c = _cfg(box_prob=1.0)
    c.data.name, c.data.annotations = f"coco:{tmp_path}", ann
    c.data.eval_annotations = ann
    rec = src.open_sam_source(c.data, "validation")[0]
    flips = []
    for seed in range(8):
        ex = S.sam_example(rec, c, np.random.default_rng(seed))
        flipped = np.nonzero(ex["masks"][0].any(0))[0].mean() > 32  # the rectangle's side
        box_x = ex["coords"][0, :, 0][:2].mean() / 16  # its box, in the 64 frame
        assert (box_x > 32) == flipped
        flips.append(flipped)
    c.input.hflip = False
    unflipped = [np.nonzero(S.sam_example(rec, c, np.random.default_rng(s))["masks"][0]
                            .any(0))[0].mean() > 32 for s in range(8)]
    assert len(set(flips)) == 2 and len(set(unflipped)) == 1


def test_sa1b_layout_and_split(tmp_path):
    yy, xx = np.mgrid[:30, :30]
    for i in range(1, 201):
        Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(tmp_path / f"sa_{i}.jpg")
        m = (yy < 10 + i % 10) & (xx < 15)
        json.dump({"image": {"image_id": i, "height": 30, "width": 30},
                   "annotations": [{"segmentation": _rle(m), "bbox": [0, 0, 15, 10 + i % 10],
                                    "area": float(m.sum()), "point_coords": [[2, 2]]}]},
                  open(tmp_path / f"sa_{i}.json", "w"))
    train, val = src.Sa1bSource(str(tmp_path), "train"), src.Sa1bSource(str(tmp_path),
                                                                         "validation")
    assert (len(train), len(val)) == (198, 2)
    assert val.ids == ["199", "200"]  # numeric order, the last 1 %
    rec = train[3]
    assert rec["image_id"] == 4 and rec["image"].shape == (30, 30, 3)
    assert src.gt_mask(rec["anns"][0], 30, 30).sum() == 15 * 14
    ims = src.eval_images(val)
    assert [im.image_id for im in ims] == [199, 200] and ims[0].load().shape == (30, 30, 3)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(FileNotFoundError, match="sa_<id>.json"):
        src.Sa1bSource(str(tmp_path / "nothing"), "train")


def test_embedded_masks_match_the_eval_objects(shapes_dir):
    from evit_jax.sam.eval.data import shapes_images
    c = _cfg()
    c.data.name, c.data.data_dir = "evit_shapes/tiny", shapes_dir
    ev = src.eval_images(src.open_sam_source(c.data, "validation"), 5)
    ref = shapes_images("evit_shapes/tiny", shapes_dir)[:5]
    for a, b in zip(ev, ref):
        assert [x["bbox"] for x in a.annotations] == [x["bbox"] for x in b.annotations]
        np.testing.assert_array_equal(a.load(), b.load())


def test_train_stream_is_deterministic_and_checkpointable(shapes_dir):
    from evit_jax.train.tasks import get_task
    make_sam_data = get_task("sam").make_data
    c = _cfg()
    c.data.name, c.data.data_dir, c.data.num_workers = "evit_shapes/tiny", shapes_dir, 0
    c.batch_size, c.data.eval_examples = 2, 3
    d = make_sam_data(c)
    next(d.train)
    saved = d.train.get_state()
    b1 = next(d.train)
    d2 = make_sam_data(c)
    d2.train.set_state(saved)
    b2 = next(d2.train)
    assert b1["masks"].shape == (2, 4, 64, 64) and d.eval_length == 3
    for k in b1:
        np.testing.assert_array_equal(b1[k], b2[k])
    # Two hosts split the same global batch.
    h0, h1 = make_sam_data(c, 0, 2), make_sam_data(c, 1, 2)
    g = make_sam_data(c)
    whole, a, b = next(g.train), next(h0.train), next(h1.train)
    np.testing.assert_array_equal(whole["coords"], np.concatenate([a["coords"],
                                                                   b["coords"]]))
