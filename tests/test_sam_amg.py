"""Automatic mask generator: its helpers, and the generator against the authors' (L0)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import evit_jax
from evit_jax.sam import SamAutomaticMaskGenerator
from evit_jax.sam import amg_utils as U
from tests.helpers import drawn_scene, needs_shared, synth_case

NAME = "efficientvit-sam-l0"
REFERENCE = Path(__file__).parent / "data" / "sam_amg_reference.json"


# ----------------------------------------------------------------------------------- helpers
def _masks(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    full = np.ones((5, 7), bool)
    first_on = np.zeros((4, 3), bool)
    first_on[0, 0] = True
    return [rng.random((13, 17)) > 0.6, np.zeros((6, 4), bool), full, first_on,
            rng.random((1, 9)) > 0.5]


def test_uncompressed_rle_round_trip_and_area():
    for m in _masks():
        rle = U.mask_to_rle(m)
        assert rle["size"] == list(m.shape) and sum(rle["counts"]) == m.size
        np.testing.assert_array_equal(U.rle_to_mask(rle), m)
        assert U.area_from_rle(rle) == int(m.sum())
    assert U.mask_to_rle(np.ones((2, 2), bool))["counts"] == [0, 4]  # starts with a 0-run


def test_coco_rle_strings_match_pycocotools():
    # Expected strings: pycocotools 2.0 `mask.encode(np.asfortranarray(m))["counts"]`.
    m1 = np.zeros((7, 5), bool)
    m1[1:4, 2:5] = True
    m2 = np.array([[1, 0, 0, 0, 1, 1, 1, 1, 1], [1, 1, 0, 1, 0, 1, 0, 1, 1],
                   [0, 0, 0, 0, 1, 1, 1, 0, 1], [1, 1, 1, 1, 0, 0, 1, 1, 0],
                   [0, 1, 1, 0, 1, 0, 1, 0, 0], [1, 0, 1, 0, 1, 1, 0, 1, 0]], bool)
    m3 = np.ones((40, 33), bool)
    m3[3:37, 4:30] = False
    m3[10:12, 10:12] = True
    cases = [(m1, "?34000O"), (m2, "021O00000131MN0010O0041MO10O0O032"),
             (m3, "0S5R1SK0000000000UOLb04^OLb0490000000000000000000000000000000000e3")]
    for m, want in cases:
        coco = U.coco_encode_rle(U.mask_to_rle(m))
        assert coco == {"size": list(m.shape), "counts": want}
        np.testing.assert_array_equal(U.coco_rle_to_mask(coco), m)
    for m in _masks(1):
        np.testing.assert_array_equal(
            U.coco_rle_to_mask(U.coco_encode_rle(U.mask_to_rle(m))), m)


def test_boxes_and_stability_on_device_match_numpy():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(3, 2, 20, 30)).astype(np.float32) * 3
    logits[0, 1] = -5  # an empty mask
    masks = logits > 0
    boxes = np.asarray(U.masks_to_boxes(masks))
    for idx in np.ndindex(3, 2):
        ys, xs = np.nonzero(masks[idx])
        want = [xs.min(), ys.min(), xs.max(), ys.max()] if len(xs) else [0, 0, 0, 0]
        assert boxes[idx].tolist() == want
    stab = np.asarray(U.stability_score(logits, 0.0, 1.0))
    with np.errstate(invalid="ignore"):  # the empty mask: 0 / 0, NaN as in segment-anything
        want = (logits > 1).sum((-2, -1)) / (logits > -1).sum((-2, -1))
    np.testing.assert_allclose(stab, want, rtol=1e-6)
    assert np.isnan(stab[0, 1])


def test_nms_keeps_the_best_of_each_overlapping_group():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 9, 10.0]])
    scores = np.array([0.5, 0.9, 0.3, 0.4])
    assert U.nms(boxes, scores, 0.7).tolist() == [1, 2]
    assert U.nms(boxes, scores, 1.0).tolist() == [1, 0, 3, 2]
    rng = np.random.default_rng(3)  # against a keep-if-no-kept-box-overlaps formulation
    xy = rng.uniform(0, 50, (40, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 30, (40, 2))], 1)
    scores = rng.random(40)
    kept = []
    for i in np.argsort(-scores):
        if all(U.box_iou(boxes[k], boxes[i:i + 1])[0] <= 0.5 for k in kept):
            kept.append(i)
    assert U.nms(boxes, scores, 0.5).tolist() == kept


def test_point_grids_and_crop_boxes():
    g = U.build_point_grid(4)
    assert g.shape == (16, 2) and g[0].tolist() == [0.125, 0.125] and g[1].tolist() == [0.375,
                                                                                       0.125]
    assert [len(x) for x in U.build_all_layer_point_grids(8, 2, 2)] == [64, 16, 4]
    boxes, layers = U.generate_crop_boxes((480, 640), 1, 512 / 1500)
    # overlap int(512/1500 * 480) = 163; crops ceil((163 + 640) / 2) x ceil((163 + 480) / 2)
    assert boxes == [[0, 0, 640, 480], [0, 0, 402, 322], [0, 159, 402, 480],
                     [239, 0, 640, 322], [239, 159, 640, 480]]
    assert layers == [0, 1, 1, 1, 1]
    near = U.is_box_near_crop_edge(np.array([[0, 0, 395, 100], [250, 170, 600, 470]]),
                                   [0, 0, 402, 322], [0, 0, 640, 480])
    assert near.tolist() == [True, False]


def test_remove_small_regions():
    m = np.zeros((30, 30), bool)
    m[2:20, 2:20] = True
    m[8:10, 8:10] = False       # a 4-pixel hole
    m[25:27, 25:27] = True      # a 4-pixel island
    filled, changed = U.remove_small_regions(m, 10, "holes")
    assert changed and filled[8:10, 8:10].all() and filled[25:27, 25:27].all()
    cleaned, changed = U.remove_small_regions(m, 10, "islands")
    assert changed and not cleaned[25:27, 25:27].any() and cleaned[2:8, 2:8].all()
    assert not cleaned[8:10, 8:10].any()
    same, changed = U.remove_small_regions(m, 3, "islands")
    assert not changed and same is m
    tiny = np.zeros((10, 10), bool)
    tiny[1, 1] = tiny[5:7, 5:7] = True  # every island small: the largest stays
    kept, _ = U.remove_small_regions(tiny, 100, "islands")
    assert kept.sum() == 4 and kept[5:7, 5:7].all()


# --------------------------------------------------------------------------------- generator
@pytest.fixture(scope="module")
def l0():
    sd, golden = synth_case(NAME)
    return evit_jax.create_model(NAME), evit_jax.convert_state_dict(NAME, sd), golden


@needs_shared
def test_generator_matches_reference(l0):
    """Same records as the authors' generator (segment-anything's), on the parity fixture."""
    ref = json.loads(REFERENCE.read_text())
    cfg = dict(ref["config"])
    gen = SamAutomaticMaskGenerator(l0[0], l0[1], **cfg)
    records = gen.generate(l0[2]["image"])
    want = ref["records"]
    assert len(records) == len(want) == 64
    for got, exp in zip(records, want):  # same order: NMS order, by predicted IoU
        assert got["point_coords"] == exp["point_coords"]
        assert got["crop_box"] == exp["crop_box"]
        assert abs(got["predicted_iou"] - exp["predicted_iou"]) < 1e-4
        assert abs(got["stability_score"] - exp["stability_score"]) < 1e-3
        assert abs(got["area"] - exp["area"]) <= 1e-3 * exp["area"]
        assert np.abs(np.subtract(got["bbox"], exp["bbox"])).max() <= 1
        assert U.area_from_rle(got["segmentation"]) == got["area"]


@needs_shared
def test_generator_outputs_crops_and_cleanup(l0):
    image = drawn_scene(96, 128)
    kw = dict(points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0,
              box_nms_thresh=1.0, crop_n_layers=1, crop_nms_thresh=1.0, min_mask_region_area=5)
    gen = SamAutomaticMaskGenerator(l0[0], l0[1], output_mode="binary_mask", **kw)
    records = gen.generate(image)
    crops = [U.xyxy_to_xywh(b) for b in U.generate_crop_boxes((96, 128), 1, 512 / 1500)[0]]
    assert records and {tuple(r["crop_box"]) for r in records} <= {tuple(c) for c in crops}
    for r in records:
        seg = r["segmentation"]
        assert seg.shape == (96, 128) and seg.dtype == bool and r["area"] == int(seg.sum())
        if r["area"]:
            ys, xs = np.nonzero(seg)
            assert r["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]
        x, y = r["point_coords"][0]
        assert 0 <= x <= 128 and 0 <= y <= 96
        assert isinstance(r["predicted_iou"], float) and isinstance(r["stability_score"], float)


@needs_shared
def test_generator_output_modes(l0):
    image = drawn_scene(48, 64)
    kw = dict(points_per_side=1, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    gen = SamAutomaticMaskGenerator(l0[0], l0[1], output_mode="binary_mask", **kw)
    binary = gen.generate(image)
    gen.output_mode = "coco_rle"
    coco = gen.generate(image)
    assert len(coco) == len(binary) == 3  # one click, three masks
    for a, b in zip(coco, binary):
        assert isinstance(a["segmentation"]["counts"], str) and a["area"] == b["area"]
        np.testing.assert_array_equal(U.coco_rle_to_mask(a["segmentation"]),
                                      b["segmentation"])


@needs_shared
def test_generator_rejects_bad_arguments(l0):
    model, variables, _ = l0
    with pytest.raises(ValueError, match="exactly one of points_per_side and point_grids"):
        SamAutomaticMaskGenerator(model, variables, point_grids=[U.build_point_grid(2)])
    with pytest.raises(ValueError, match="output_mode"):
        SamAutomaticMaskGenerator(model, variables, output_mode="png")
    with pytest.raises(ValueError, match="crop_n_layers=1 needs 2"):
        SamAutomaticMaskGenerator(model, variables, points_per_side=None, crop_n_layers=1,
                                  point_grids=[U.build_point_grid(2)])
    gen = SamAutomaticMaskGenerator(model, variables, points_per_side=2)
    with pytest.raises(ValueError, match="uint8"):
        gen.generate(np.zeros((8, 8, 3), np.float64))
