"""Parity with Megvii's YOLOX (PyTorch): the PAFPN neck and decoupled head loaded from a
Megvii-layout state dict through the strict converter, the decoding, and the loss (SimOTA
assignment and the four terms), on the fixtures of tests/data/make_det_reference.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evit_jax.convert import CheckpointMismatchError, convert_state_dict
from evit_jax.det import decode, yolox_loss
from evit_jax.models.backbone import BackboneConfig, EfficientViTBackbone
from evit_jax.models.det import DetConfig, EfficientViTDet, det_parts
from tests.helpers import rel_l2

FIXTURE = Path(__file__).parent / "data" / "det" / "yolox_reference.npz"
NECKS = ["silu", "dw_relu"]
LOSSES = ["basic", "empty_image", "all_empty", "crowded", "l1"]
HOST = "efficientvit-det-b1"  # the entry whose naming the Megvii keys convert into


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURE) as z:
        return {k: z[k] for k in z.files}


def _case(ref, prefix):
    n = len(prefix)
    return {k[n:]: v for k, v in ref.items() if k.startswith(prefix)}


def _nhwc(x):
    return np.ascontiguousarray(np.moveaxis(x, 1, -1))


def _neck_model(c):
    """A detector with the fixture's neck and head (YOLOX's BatchNorm eps 1e-3), on a small
    backbone whose stage2..4 widths are the fixture's features' (the converter traces the
    whole model; only the neck and head are filled)."""
    depth, width, depthwise, classes = c["config"]
    widths = tuple(int(ch * width) for ch in (256, 512, 1024))
    cfg = DetConfig(widths, widths, round(3 * depth), int(256 * width), int(classes),
                    bool(depthwise), str(c["act"]))
    neck, head = det_parts(cfg)
    bb = BackboneConfig("b", (8, 8) + widths, (1, 1, 1, 1, 1), dim=8)
    eps = dict(norm_eps=1e-3)
    return EfficientViTDet(EfficientViTBackbone(bb, **eps), dataclasses.replace(neck, **eps),
                           dataclasses.replace(head, **eps))


def _sub(variables, part):
    return {col: tree[part] for col, tree in variables.items() if part in tree}


@pytest.mark.parametrize("case", NECKS)
def test_neck_and_head_match_yolox(ref, case):
    c = _case(ref, f"neck_{case}/")
    sd = {k[3:]: v for k, v in c.items() if k.startswith("sd/")}
    model = _neck_model(c)
    variables = convert_state_dict(HOST, sd, model=model, parts=("neck", "head"))
    feats = tuple(jnp.asarray(_nhwc(c[f"feat{i}"])) for i in range(3))

    @jax.jit
    def run(vn, vh, feats):
        fpn = model.neck.apply(vn, feats)
        return fpn, model.head.apply(vh, fpn)

    fpn, outs = run(_sub(variables, "neck"), _sub(variables, "head"), feats)
    for i in range(3):
        err_fpn = rel_l2(fpn[i], _nhwc(c[f"fpn{i}"]))
        err = rel_l2(outs[i], _nhwc(c[f"raw{i}"]))
        print(f"{case} level {i}: neck rel-L2 {err_fpn:.1e}, head {err:.1e}")
        assert err_fpn <= 1e-5 and err <= 1e-5
    # Decoding: YOLOX's decode_outputs gives (cx, cy, w, h), sigmoid(obj), sigmoid(cls).
    dec = c["decoded"]
    boxes, scores = decode(outs)
    half = dec[..., 2:4] / 2
    ref_boxes = np.concatenate([dec[..., :2] - half, dec[..., :2] + half], -1)
    ref_scores = dec[..., 4:5] * dec[..., 5:]
    err_b, err_s = rel_l2(boxes, ref_boxes), rel_l2(scores, ref_scores)
    print(f"{case} decode: boxes rel-L2 {err_b:.1e}, scores {err_s:.1e}")
    assert err_b <= 1e-5 and err_s <= 1e-5


def test_converter_is_strict_about_megvii_keys(ref):
    c = _case(ref, "neck_silu/")
    sd = {k[3:]: v for k, v in c.items() if k.startswith("sd/")}
    model = _neck_model(c)
    bad = dict(sd)
    bad["head.extra.weight"] = bad.pop("head.stems.0.bn.weight")
    with pytest.raises(CheckpointMismatchError) as e:
        convert_state_dict(HOST, bad, model=model, parts=("neck", "head"))
    assert e.value.unexpected == ["head.extra.weight"]
    assert e.value.missing == ["params/head/stems_0/norm/scale"]
    # Without `parts`, the backbone is missing from a neck + head state dict.
    with pytest.raises(CheckpointMismatchError, match="missing keys"):
        convert_state_dict(HOST, sd, model=model)


def _targets(labels):
    """YOLOX labels `[B, M, 5]` (class, cx, cy, w, h; zero rows = padding) -> ours."""
    cxcy, wh = labels[..., 1:3], labels[..., 3:5]
    boxes = np.concatenate([cxcy - wh / 2, cxcy + wh / 2], -1)
    return boxes, labels[..., 0].astype(np.int32), labels.sum(-1) > 0


@pytest.mark.parametrize("case", LOSSES)
def test_loss_matches_yolox(ref, case):
    c = _case(ref, f"loss_{case}/")
    outputs = [jnp.asarray(_nhwc(c[f"raw{i}"])) for i in range(3)]
    boxes, classes, valid = _targets(c["labels"])
    fn = jax.jit(yolox_loss, static_argnames=("use_l1",))
    terms, assign = fn(outputs, boxes, classes, valid, use_l1=bool(c["use_l1"]))
    np.testing.assert_array_equal(np.asarray(assign.fg), c["fg"])
    np.testing.assert_array_equal(np.where(c["fg"], np.asarray(assign.matched), -1),
                                  c["matched"])
    got = np.array([float(t) for t in terms])
    want = c["losses"]
    print(case, "ours", got.round(5), "YOLOX", want.round(5))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_loss_gradients_are_finite_and_reach_every_output(ref):
    """The loss trains: finite gradients, also for extreme predictions (exp overflow on
    background points), and every level receives some."""
    c = _case(ref, "loss_l1/")
    outputs = [jnp.asarray(_nhwc(c[f"raw{i}"])) for i in range(3)]
    outputs[0] = outputs[0].at[0, 0, 0, 2:4].set(200.0)  # exp(200) = inf on one point
    boxes, classes, valid = _targets(c["labels"])

    def total(outs):
        return yolox_loss(outs, boxes, classes, valid, use_l1=True)[0].total

    grads = jax.jit(jax.grad(total))(outputs)
    for g in grads:
        assert bool(jnp.isfinite(g).all()) and float(jnp.abs(g).sum()) > 0
