"""YOLOX's training loss: SimOTA dynamic-k label assignment and the four loss terms, with
static shapes (jit-able; ground truth padded to a fixed number of boxes per image).

Per image, SimOTA (Ge et al., 2021; YOLOX's `get_assignments` / `simota_matching`):
1. candidates: the points whose cell centre lies within `center_radius` strides of a box's
   centre (a square window), for some box;
2. cost(box, point) = BCE of sqrt(sigmoid(class) x sigmoid(objectness)) against the box's
   one-hot class, summed over classes, + 3 x -log(IoU + 1e-8), + 1e6 if the point is
   outside this box's own window (non-candidates are never assigned);
3. each box takes its k lowest-cost points, k = floor(sum of its 10 best IoUs), at least 1;
4. a point claimed by several boxes goes to its lowest-cost box.
The assignment sees no gradient. Losses, each summed and divided by the number of
foreground points in the batch (at least 1): 5 x IoU loss (1 - IoU^2) on the foreground
boxes, objectness BCE on every point (target: foreground), class BCE on the foreground
points against the one-hot class x the IoU of the assigned prediction, and (`use_l1`, the
last no-augmentation epochs) L1 on the raw offsets against the box's offsets.

The class term of the cost is computed without the `[boxes, points, classes]` tensor YOLOX
builds: sum over classes of -log(1 - p) once per point, corrected at the box's class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from evit_jax.det.boxes import decode_cxcywh, flatten_outputs, grid_points, xyxy_to_cxcywh
from evit_jax.models.det.model import STRIDES

Array = jax.Array

REG_WEIGHT = 5.0  # YOLOX's weight of the IoU loss
CANDIDATES_K = 10  # IoUs summed for the dynamic k (and the most points one box can take)
LOG_SIZE_CAP = 20.0


class Assignment(NamedTuple):
    """SimOTA's result per point: `fg` `[..., A]` bool, `matched` `[..., A]` int32 (index of
    the assigned box; 0 for background), `iou` `[..., A]` (IoU of the point's prediction with
    its box; 0 for background)."""

    fg: Array
    matched: Array
    iou: Array


def pairwise_iou_cxcywh(a: Array, b: Array) -> Array:
    """IoU of `[G, 4]` and `[A, 4]` (cx, cy, w, h) boxes -> `[G, A]` (YOLOX's `bboxes_iou`
    with xyxy=False: no epsilon; a box pair without overlap gives 0)."""
    tl = jnp.maximum(a[:, None, :2] - a[:, None, 2:] / 2, b[None, :, :2] - b[None, :, 2:] / 2)
    br = jnp.minimum(a[:, None, :2] + a[:, None, 2:] / 2, b[None, :, :2] + b[None, :, 2:] / 2)
    area_a = a[:, 2] * a[:, 3]
    area_b = b[:, 2] * b[:, 3]
    overlap = jnp.all(tl < br, -1)
    inter = jnp.where(overlap, (br - tl)[..., 0] * (br - tl)[..., 1], 0.0)
    return inter / (area_a[:, None] + area_b[None] - inter)


def iou_loss(pred: Array, target: Array) -> Array:
    """YOLOX's `IOUloss` ("iou"): 1 - IoU^2 of matching (cx, cy, w, h) boxes `[..., 4]`."""
    tl = jnp.maximum(pred[..., :2] - pred[..., 2:] / 2, target[..., :2] - target[..., 2:] / 2)
    br = jnp.minimum(pred[..., :2] + pred[..., 2:] / 2, target[..., :2] + target[..., 2:] / 2)
    area_p = pred[..., 2] * pred[..., 3]
    area_g = target[..., 2] * target[..., 3]
    overlap = jnp.all(tl < br, -1)
    inter = jnp.where(overlap, (br - tl)[..., 0] * (br - tl)[..., 1], 0.0)
    iou = inter / (area_p + area_g - inter + 1e-16)
    return 1 - iou ** 2


def bce_with_logits(x: Array, y: Array) -> Array:
    """Elementwise binary cross-entropy of logits `x` against targets `y` in [0, 1]."""
    return jnp.maximum(x, 0) - x * y + jnp.log1p(jnp.exp(-jnp.abs(x)))


def simota_assign(pred: Array, obj: Array, cls: Array, gt: Array, gt_cls: Array,
                  gt_valid: Array, xs: Array, ys: Array, st: Array,
                  center_radius: float = 1.5) -> Assignment:
    """SimOTA for one image (module docstring).

    Args:
      pred: `[A, 4]` predicted (cx, cy, w, h); obj: `[A]` objectness logits; cls: `[A, C]`
        class logits.
      gt: `[G, 4]` (cx, cy, w, h); gt_cls: `[G]` int; gt_valid: `[G]` bool (padding rows
        False).
      xs, ys, st: the points' cell column, row and stride `[A]` (`grid_points`).
      center_radius: candidate window half-size, in strides.
    """
    num_classes = cls.shape[-1]
    # 1. Candidates: cell centres inside a box's window (YOLOX's arithmetic, strict >).
    xc, yc = (xs + 0.5) * st, (ys + 0.5) * st
    dist = st * center_radius
    gx, gy = gt[:, 0:1], gt[:, 1:2]
    deltas = jnp.stack([xc - (gx - dist), yc - (gy - dist), (gx + dist) - xc,
                        (gy + dist) - yc], -1)
    in_window = (deltas.min(-1) > 0.0) & gt_valid[:, None]  # [G, A]
    candidate = in_window.any(0)
    ok = candidate[None] & gt_valid[:, None]
    # 2. Cost.
    ious = pairwise_iou_cxcywh(gt, pred)
    iou_cost = -jnp.log(ious + 1e-8)
    p = jnp.sqrt(jax.nn.sigmoid(cls) * jax.nn.sigmoid(obj)[:, None])  # [A, C]
    log_p = jnp.maximum(jnp.log(p), -100.0)  # torch's binary_cross_entropy clamps at -100
    log_q = jnp.maximum(jnp.log1p(-p), -100.0)
    g = jnp.clip(gt_cls, 0, num_classes - 1)
    cls_cost = -log_q.sum(-1)[None] + log_q[:, g].T - log_p[:, g].T  # [G, A]
    cost = cls_cost + 3.0 * iou_cost + 1e6 * (~in_window)
    cost = jnp.where(ok, cost, jnp.inf)
    # 3. Dynamic k, and each box's k cheapest points.
    k_max = min(CANDIDATES_K, pred.shape[0])
    top_ious = jax.lax.top_k(jnp.where(ok, ious, 0.0), k_max)[0]
    dynamic_k = jnp.maximum(jnp.floor(top_ious.sum(-1)), 1).astype(jnp.int32)
    neg_cost, idx = jax.lax.top_k(-cost, k_max)
    take = (jnp.arange(k_max)[None] < dynamic_k[:, None]) & jnp.isfinite(neg_cost)
    rows = jnp.arange(gt.shape[0])[:, None]
    matching = jnp.zeros(cost.shape, bool).at[rows, idx].set(take)
    # 4. A point claimed by several boxes goes to its cheapest one.
    claims = matching.sum(0)
    cheapest = jax.nn.one_hot(jnp.argmin(cost, 0), gt.shape[0], dtype=bool).T
    matching = jnp.where((claims > 1)[None], cheapest, matching)
    fg = claims > 0
    matched = jnp.argmax(matching, 0).astype(jnp.int32)
    iou = jnp.where(matching, ious, 0.0).sum(0)
    return Assignment(fg, matched, iou)


class LossTerms(NamedTuple):
    """The loss and its parts (scalars), as YOLOX's `get_losses` returns them.

    Attributes:
      total: 5 x iou + obj + cls + l1, the loss to minimise.
      iou: the IoU loss, already weighted by 5.
      obj, cls, l1: the other terms (l1 = 0 unless `use_l1`).
      fg_per_gt: foreground points per ground-truth box (monitoring; as YOLOX's, the
        points counted at least 1).
    """

    total: Array
    iou: Array
    obj: Array
    cls: Array
    l1: Array
    fg_per_gt: Array


def yolox_loss(outputs: Sequence[Array], gt_boxes: Array, gt_classes: Array, gt_valid: Array,
               strides: Sequence[int] = STRIDES, use_l1: bool = False,
               center_radius: float = 1.5) -> tuple[LossTerms, Assignment]:
    """YOLOX's loss of a batch (module docstring); jit-able, static shapes.

    Args:
      outputs: the model's raw outputs, per level `[N, h, w, 5 + C]`.
      gt_boxes: `[N, M, 4]` xyxy boxes in input pixels, padded to M per image.
      gt_classes: `[N, M]` int class indices.
      gt_valid: `[N, M]` bool, False on padding rows (an image may have none).
      strides: the levels' strides.
      use_l1: add the L1 term (YOLOX: the last no-augmentation epochs).
      center_radius: SimOTA's candidate window, in strides.
    Returns:
      (`LossTerms`, `Assignment` with leading axis N).
    """
    xs, ys, st = grid_points([o.shape[1:3] for o in outputs], strides)
    raw = flatten_outputs(outputs).astype(jnp.float32)
    reg, obj, cls = raw[..., :4], raw[..., 4], raw[..., 5:]
    # Log-sizes capped at 20 (e^20 strides): a diverging point then cannot make an inf box,
    # whose 0 x inf gradient would turn every gradient into NaN (YOLOX does not cap).
    capped = jnp.concatenate([reg[..., :2], jnp.minimum(reg[..., 2:], LOG_SIZE_CAP)], -1)
    pred = decode_cxcywh(capped, xs, ys, st)  # [N, A, 4]
    gt = xyxy_to_cxcywh(gt_boxes.astype(jnp.float32))
    valid = gt_valid.astype(bool)
    sg = jax.lax.stop_gradient
    assign = jax.vmap(simota_assign, in_axes=(0, 0, 0, 0, 0, 0, None, None, None, None))(
        sg(pred), sg(obj), sg(cls), gt, gt_classes, valid, xs, ys, st, center_radius)
    fg = assign.fg
    fgf = fg.astype(jnp.float32)
    num_fg = jnp.maximum(fgf.sum(), 1.0)
    target = jnp.take_along_axis(gt, assign.matched[..., None], 1)  # [N, A, 4]
    # Background rows get a harmless box, so no inf / nan reaches the masked-out gradients.
    safe = jnp.where(fg[..., None], pred, 1.0)
    loss_iou = (iou_loss(safe, jnp.where(fg[..., None], target, 1.0)) * fgf).sum() / num_fg
    loss_obj = bce_with_logits(obj, fgf).sum() / num_fg
    onehot = jax.nn.one_hot(jnp.take_along_axis(gt_classes, assign.matched, 1),
                            cls.shape[-1], dtype=jnp.float32)
    cls_target = onehot * assign.iou[..., None]
    loss_cls = (bce_with_logits(cls, cls_target) * fgf[..., None]).sum() / num_fg
    if use_l1:
        l1_target = jnp.stack([target[..., 0] / st - xs, target[..., 1] / st - ys,
                               jnp.log(target[..., 2] / st + 1e-8),
                               jnp.log(target[..., 3] / st + 1e-8)], -1)
        l1_target = jnp.where(fg[..., None], l1_target, 0.0)
        loss_l1 = (jnp.abs(reg - l1_target) * fgf[..., None]).sum() / num_fg
    else:
        loss_l1 = jnp.float32(0.0)
    total = REG_WEIGHT * loss_iou + loss_obj + loss_cls + loss_l1
    fg_per_gt = num_fg / jnp.maximum(valid.sum(), 1)  # YOLOX's figure (1 with no boxes)
    return LossTerms(total, REG_WEIGHT * loss_iou, loss_obj, loss_cls, loss_l1,
                     fg_per_gt), assign
