"""SamPredictor: the public API against the reference (L0), batching, bucketing, bad input."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import evit_jax
from evit_jax.sam import SamPredictor
from evit_jax.sam import predictor as predictor_module
from tests.helpers import assert_masks_match, needs_shared, rel_l2, synth_case

pytestmark = needs_shared  # every test runs the L0 fixture
NAME = "efficientvit-sam-l0"


@pytest.fixture(scope="module")
def case():
    sd, g = synth_case(NAME)
    return evit_jax.create_model(NAME), evit_jax.convert_state_dict(NAME, sd), g


@pytest.fixture(scope="module")
def pred(case):
    model, variables, g = case
    p = SamPredictor(model, variables)
    p.set_image(g["image"])
    return p


PROMPTS = {1: dict(multimask_output=True), 2: dict(box="p2_box", multimask_output=False),
           3: dict(mask_input="p3_mask_input", multimask_output=False)}


@pytest.mark.parametrize("i", [1, 2, 3])
def test_predict_matches_reference(pred, case, i):
    g = case[2]
    kw = {k: (g[v] if isinstance(v, str) else v) for k, v in PROMPTS[i].items()}
    pts, labels = g[f"p{i}_point_coords"], g[f"p{i}_point_labels"]
    logits, iou, low = pred.predict(pts, labels, return_logits=True, **kw)
    masks, iou2, low2 = pred.predict(pts, labels, **kw)
    c = 3 if i == 1 else 1
    assert logits.shape == (c, 480, 640) and logits.dtype == np.float32
    assert masks.shape == (c, 480, 640) and masks.dtype == bool
    assert iou.shape == (c,) and low.shape == (c, 256, 256)
    np.testing.assert_array_equal(iou, iou2)
    np.testing.assert_array_equal(masks, logits > 0)
    assert rel_l2(low, g[f"p{i}_low_res_logits"]) <= 1e-5
    assert rel_l2(logits[:, ::4, ::4], g[f"p{i}_mask_logits_s4"]) <= 1e-5
    assert_masks_match(masks, logits, g[f"p{i}_mask"], g[f"p{i}_mask_logits_s4"])


def test_low_res_logits_feed_back_as_mask_input(pred, case):
    g = case[2]
    _, iou, low = pred.predict(g["p1_point_coords"], g["p1_point_labels"])
    best = low[np.argmax(iou)][None]
    masks, iou2, low2 = pred.predict(g["p3_point_coords"], g["p3_point_labels"],
                                     mask_input=best, multimask_output=False)
    assert masks.shape == (1, 480, 640) and iou2.shape == (1,) and low2.shape == (1, 256, 256)


def test_embedding_and_sizes(pred, case):
    g = case[2]
    assert pred.get_image_embedding().shape == (1, 64, 64, 256)
    assert pred.original_size == (480, 640) and pred.input_size == (768, 1024)
    assert rel_l2(pred.features, g["image_embeddings"].transpose(0, 2, 3, 1)) <= 1e-5


def test_bgr_input_is_flipped(pred, case):
    model, variables, g = case
    p = SamPredictor(model, variables)
    p.set_image(np.ascontiguousarray(g["image"][..., ::-1]), image_format="BGR")
    np.testing.assert_allclose(np.asarray(p.features), np.asarray(pred.features), atol=1e-6)


def test_padding_tokens_change_nothing(pred):
    """Two clicks fill 3 of 4 token slots (one PAD): decoding the 3 tokens unpadded agrees to
    float32 noise, while a real extra token (a not-a-point) changes the masks."""
    pts = np.array([[200.0, 150.0], [400.0, 300.0]])
    _, iou, low = pred.predict(pts, np.array([1, 0]), multimask_output=False)
    coords = pred.transform.apply_coords(np.vstack([pts, [[0, 0]], [[0, 0]]]),
                                         pred.original_size).astype(np.float32)
    decode = jax.jit(pred.decoder.apply)
    for labels, close in (([1, 0, -1], True), ([1, 0, -1, -1], False)):
        n = len(labels)
        low_n, iou_n = decode(pred.decoder_variables, pred.features, coords[None, :n],
                              np.array([labels], np.int32))
        err = rel_l2(np.asarray(low_n)[0, :1], low)
        assert (err < 1e-5) if close else (err > 1e-3), (labels, err)
        if close:
            assert abs(float(iou_n[0, 0]) - iou[0]) < 1e-5


def test_new_click_counts_reuse_compiled_decoder(pred):
    rng = np.random.default_rng(0)
    pred.predict(rng.uniform(0, 400, (2, 2)), np.ones(2))  # 3 tokens -> bucket 4
    before = predictor_module.decode_low_res._cache_size()
    pred.predict(rng.uniform(0, 400, (3, 2)), np.ones(3))  # 4 tokens -> bucket 4
    pred.predict(rng.uniform(0, 400, (1, 2)), np.zeros(1), box=np.array([10, 10, 300, 200]))
    assert predictor_module.decode_low_res._cache_size() == before


def test_predict_batch_of_64_boxes_is_one_compiled_call(pred, monkeypatch):
    rng = np.random.default_rng(1)
    x0, y0 = rng.uniform(0, 300, 64), rng.uniform(0, 200, 64)
    boxes = np.stack([x0, y0, x0 + rng.uniform(20, 300, 64), y0 + rng.uniform(20, 250, 64)], 1)
    calls = []
    for fn in ("decode_low_res", "postprocess"):
        real = getattr(predictor_module, fn)

        def counting(*args, _real=real, _fn=fn, **kwargs):
            calls.append(_fn)
            return _real(*args, **kwargs)

        monkeypatch.setattr(predictor_module, fn, counting)
    logits, iou, low = pred.predict_batch(boxes=boxes, multimask_output=False,
                                          return_logits=True)
    assert calls == ["decode_low_res", "postprocess"]  # the 64 boxes in one decoder call
    assert logits.shape == (64, 1, 480, 640) and iou.shape == (64, 1)
    assert low.shape == (64, 1, 256, 256)
    for row in (0, 37, 63):
        m1, i1, l1 = pred.predict(box=boxes[row], multimask_output=False, return_logits=True)
        assert rel_l2(low[row], l1) < 1e-5 and abs(iou[row, 0] - i1[0]) < 1e-5
        assert rel_l2(logits[row], m1) < 1e-5


def test_predict_batch_points_default_to_foreground_and_chunks(pred):
    pts = np.array([[[100.0, 100.0]], [[500.0, 300.0]], [[320.0, 240.0]]])
    m, iou, low = pred.predict_batch(pts)
    m1, iou1, _ = pred.predict(pts[2], np.ones(1))
    assert m.shape == (3, 3, 480, 640) and m.dtype == bool and iou.shape == (3, 3)
    assert np.abs(iou[2] - iou1).max() < 1e-5
    pred.max_batch = 2  # 3 prompts in chunks of 2 give the same answer
    try:
        m2, iou2, _ = pred.predict_batch(pts, point_labels=np.ones((3, 1)))
    finally:
        pred.max_batch = 64
    assert np.abs(iou2 - iou).max() < 1e-5 and m2.shape == m.shape


BAD_PREDICT = [
    (dict(point_coords=np.array([[10.0, 10.0]])), ValueError, "point_labels must be given"),
    (dict(point_labels=np.array([1])), ValueError, "without point_coords"),
    (dict(point_coords=np.array([10.0, 10.0]), point_labels=np.array([1])), ValueError,
     r"shape \[N, 2\]"),
    (dict(point_coords=np.array([[10.0, 10.0]]), point_labels=np.array([1, 0])), ValueError,
     "one label per point"),
    (dict(point_coords=np.array([[10.0, 10.0]]), point_labels=np.array([2])), ValueError,
     "1 \\(foreground\\), 0"),
    (dict(point_coords=np.array([[700.0, 10.0]]), point_labels=np.array([1])), ValueError,
     "outside the 640x480"),
    (dict(point_coords=np.array([[np.nan, 10.0]]), point_labels=np.array([1])), ValueError,
     "NaN"),
    (dict(box=np.array([10, 10, 700, 100])), ValueError, "outside the 640x480"),
    (dict(box=np.array([-5, 10, 100, 100])), ValueError, "np.clip"),
    (dict(box=np.array([100, 10, 50, 100])), ValueError, "x0 <= x1"),
    (dict(box=np.array([1, 2, 3])), ValueError, r"shape \[4\]"),
    (dict(mask_input=np.zeros((1, 128, 128))), ValueError, "256, 256"),
]


@pytest.mark.parametrize("kwargs,exc,match", BAD_PREDICT)
def test_bad_prompts_raise_clear_errors(pred, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        pred.predict(**kwargs)


def test_bad_batches_raise_clear_errors(pred):
    with pytest.raises(ValueError, match="same batch size"):
        pred.predict_batch(np.zeros((2, 1, 2)), boxes=np.zeros((3, 4)))
    with pytest.raises(ValueError, match="needs points, boxes or mask_input"):
        pred.predict_batch()
    with pytest.raises(ValueError, match=r"\[B, N, 2\]"):
        pred.predict_batch(np.zeros((2, 2)))


BAD_IMAGES = [
    (np.zeros((480, 640, 3), np.float32), "uint8"),
    (np.zeros((3, 48, 64), np.uint8), "channels-first"),
    (np.zeros((48, 64, 4), np.uint8), "RGBA"),
    (np.zeros((48, 64), np.uint8), "single-channel"),
    (np.zeros((2, 48, 64, 3), np.uint8), r"\[H, W, 3\]"),
    ([[0, 0, 0]], "numpy uint8 image"),
]


@pytest.mark.parametrize("image,match", BAD_IMAGES)
def test_bad_images_raise_clear_errors(case, image, match):
    p = SamPredictor(*case[:2])
    with pytest.raises((ValueError, TypeError), match=match):
        p.set_image(image)
    assert not p.is_image_set


def test_predict_before_set_image_and_bad_format(case):
    p = SamPredictor(*case[:2])
    with pytest.raises(RuntimeError, match="set_image"):
        p.predict(np.array([[1.0, 1.0]]), np.array([1]))
    with pytest.raises(ValueError, match="'RGB' or 'BGR'"):
        p.set_image(np.zeros((8, 8, 3), np.uint8), image_format="rgb")
    with pytest.raises(TypeError, match="EfficientViT-SAM model"):
        SamPredictor(evit_jax.create_model("efficientvit-b0"), {})


def test_bad_box_in_a_batch_is_named_in_one_short_line():
    """One bad box among many: the error names it (index and value), not the whole batch."""
    from evit_jax.sam.prompts import check_boxes
    boxes = np.tile([10.0, 10.0, 50.0, 40.0], (64, 1))
    boxes[3, 2] = 700.0
    with pytest.raises(ValueError, match=r"box 3 of 64 \(\[10.0, 10.0, 700.0, 40.0\]\) lies") as e:
        check_boxes(boxes, (480, 640), batched=True)
    assert len(str(e.value)) < 200 and "\n" not in str(e.value)
    boxes[3] = [50.0, 10.0, 10.0, 40.0]
    with pytest.raises(ValueError, match=r"x0 <= x1 .* box 3 of 64"):
        check_boxes(boxes, (480, 640), batched=True)
    with pytest.raises(ValueError, match=r"box \[5.0, 5.0, 1.0, 9.0\] is not"):
        check_boxes([5.0, 5.0, 1.0, 9.0], (480, 640))
