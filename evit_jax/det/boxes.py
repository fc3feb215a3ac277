"""Anchor points, decoding of the raw head outputs, and a jit-able class-aware NMS.

Every box here is xyxy in input pixels (x1, y1, x2, y2), as COCO results and the predictor
return them; YOLOX's own centre / size form is used inside the loss only.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from evit_jax.models.det.model import STRIDES

Array = jax.Array


def grid_points(shapes: Sequence[tuple[int, int]], strides: Sequence[int] = STRIDES
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The prediction points of all levels, in the order of `flatten_outputs`: cell column
    x `[A]`, cell row y `[A]` and stride `[A]` (float32 numpy; static for jit).
    `shapes`: the (h, w) of each level's output."""
    xs, ys, st = [], [], []
    for (h, w), s in zip(shapes, strides):
        yy, xx = np.mgrid[0:h, 0:w]
        xs.append(xx.ravel())
        ys.append(yy.ravel())
        st.append(np.full(h * w, s))
    f32 = np.float32
    return (np.concatenate(xs).astype(f32), np.concatenate(ys).astype(f32),
            np.concatenate(st).astype(f32))


def flatten_outputs(outputs: Sequence[Array]) -> Array:
    """Per-level outputs `[N, h_i, w_i, 5 + C]` -> `[N, A, 5 + C]`, A = sum of h_i * w_i
    (row-major within a level, finest level first: YOLOX's order)."""
    return jnp.concatenate([o.reshape(o.shape[0], -1, o.shape[-1]) for o in outputs], 1)


def decode_cxcywh(raw: Array, xs: Array, ys: Array, st: Array) -> Array:
    """Raw offsets `[..., A, 4]` -> boxes (cx, cy, w, h) in input pixels:
    centre = (cell + offset) * stride, size = exp(log size) * stride."""
    cx = (raw[..., 0] + xs) * st
    cy = (raw[..., 1] + ys) * st
    w = jnp.exp(raw[..., 2]) * st
    h = jnp.exp(raw[..., 3]) * st
    return jnp.stack([cx, cy, w, h], -1)


def cxcywh_to_xyxy(b: Array) -> Array:
    """(cx, cy, w, h) -> (x1, y1, x2, y2), YOLOX's arithmetic (x1 = cx - w / 2)."""
    half = b[..., 2:4] / 2
    return jnp.concatenate([b[..., :2] - half, b[..., :2] + half], -1)


def xyxy_to_cxcywh(b: Array) -> Array:
    """(x1, y1, x2, y2) -> (cx, cy, w, h)."""
    wh = b[..., 2:4] - b[..., :2]
    return jnp.concatenate([b[..., :2] + wh / 2, wh], -1)


def decode(outputs: Sequence[Array], strides: Sequence[int] = STRIDES) -> tuple[Array, Array]:
    """The raw head outputs -> boxes and scores of every prediction point (YOLOX's
    `decode_outputs`, in xyxy).

    Args:
      outputs: `model.apply(variables, images)`: per level `[N, h, w, 5 + C]`.
      strides: the levels' strides.
    Returns:
      boxes `[N, A, 4]` xyxy in input pixels, and scores `[N, A, C]` = sigmoid(objectness) x
      sigmoid(class logit), float32.
    """
    xs, ys, st = grid_points([o.shape[1:3] for o in outputs], strides)
    raw = flatten_outputs(outputs).astype(jnp.float32)
    boxes = cxcywh_to_xyxy(decode_cxcywh(raw[..., :4], xs, ys, st))
    scores = jax.nn.sigmoid(raw[..., 4:5]) * jax.nn.sigmoid(raw[..., 5:])
    return boxes, scores


class Detections(NamedTuple):
    """Fixed-size detections, best first; rows past `num` are padding (boxes 0, scores 0,
    labels -1).

    Attributes:
      boxes: `[..., max_det, 4]` xyxy.
      scores: `[..., max_det]`.
      labels: `[..., max_det]` int32 class indices.
      num: `[...]` int32, the number of real rows.
    """

    boxes: Array
    scores: Array
    labels: Array
    num: Array


def _iou_one_to_many(box: Array, boxes: Array, area: Array, areas: Array) -> Array:
    """IoU of one xyxy box with `[K, 4]` boxes (torchvision's formula)."""
    lt = jnp.maximum(box[:2], boxes[:, :2])
    rb = jnp.minimum(box[2:], boxes[:, 2:])
    wh = jnp.clip(rb - lt, 0)
    inter = wh[:, 0] * wh[:, 1]
    return inter / (area + areas - inter)


def _nms_one(boxes: Array, scores: Array, labels: Array, score_thr: Array, nms_thr: Array,
             max_det: int, pre_nms_topk: int, class_agnostic: bool) -> Detections:
    """One image: boxes `[A, 4]`, scores `[A]`, labels `[A]` -> `Detections`."""
    k = min(pre_nms_topk, scores.shape[0])
    top, idx = jax.lax.top_k(jnp.where(scores >= score_thr, scores, -jnp.inf), k)
    b, lab = boxes[idx], labels[idx]
    valid = jnp.isfinite(top)
    n_valid = valid.sum()
    areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    order = jnp.arange(k)

    def cond(carry):
        i, _, n = carry
        return (i < n_valid) & (n < max_det)

    def body(carry):
        # Greedy NMS: box i, if still kept, suppresses the lower-scored boxes (j > i) of
        # its class that overlap it by more than nms_thr. Keep flags of boxes before i are
        # final, so the loop can stop once max_det are kept.
        i, keep, n = carry
        iou = _iou_one_to_many(b[i], b, areas[i], areas)
        hit = (iou > nms_thr) & (order > i)
        if not class_agnostic:
            hit &= lab == lab[i]
        kept = keep[i]
        return i + 1, keep & ~(hit & kept), n + kept.astype(jnp.int32)

    _, keep, n = jax.lax.while_loop(cond, body, (jnp.int32(0), valid, jnp.int32(0)))
    sel = jnp.nonzero(keep, size=max_det, fill_value=0)[0]
    real = jnp.arange(max_det) < n
    return Detections(jnp.where(real[:, None], b[sel], 0.0), jnp.where(real, top[sel], 0.0),
                      jnp.where(real, lab[sel], -1).astype(jnp.int32), n)


@functools.partial(jax.jit, static_argnames=("max_det", "pre_nms_topk", "class_agnostic"))
def batched_nms(boxes: Array, scores: Array, score_thr: float = 0.01, nms_thr: float = 0.65,
                max_det: int = 100, pre_nms_topk: int = 1000, class_agnostic: bool = False
                ) -> Detections:
    """Class-aware NMS of a batch, with fixed output shapes (jit-able, vmapped over images).

    As YOLOX's `postprocess`: each point's label is its best class and its score
    objectness x that class's probability; points scoring at least `score_thr` are kept,
    the best `pre_nms_topk` of them enter greedy NMS (a box suppresses the lower-scored boxes
    of its class overlapping it by IoU > `nms_thr`; every class with `class_agnostic`),
    and the best `max_det` survivors are returned.

    Args:
      boxes: `[N, A, 4]` xyxy; scores: `[N, A, C]` (`decode`'s outputs).
      score_thr, nms_thr: thresholds (YOLOX's COCO evaluation: 0.01, 0.65).
      max_det: detections per image (static).
      pre_nms_topk: candidates per image entering NMS (static; bounds its cost).
      class_agnostic: suppress across classes too.
    Returns:
      `Detections` with leading axis N.
    """
    best = scores.max(-1)
    labels = scores.argmax(-1).astype(jnp.int32)
    fn = functools.partial(_nms_one, max_det=max_det, pre_nms_topk=pre_nms_topk,
                           class_agnostic=class_agnostic)
    return jax.vmap(fn, in_axes=(0, 0, 0, None, None))(
        boxes, best, labels, jnp.float32(score_thr), jnp.float32(nms_thr))
