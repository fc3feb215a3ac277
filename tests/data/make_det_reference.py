"""Write tests/data/det/yolox_reference.npz: Megvii's YOLOX (PyTorch) on synthetic weights and
inputs, for tests/test_det_parity.py (which runs without torch).

Three kinds of case:
- `neck_<case>`: `YOLOPAFPN` (its darknet replaced by the given P3 / P4 / P5 features) and
  `YOLOXHead` in eval mode, YOLOX's BatchNorm eps 1e-3 (its `init_yolo`): the Megvii-layout
  state dict of `YOLOX(backbone=pafpn, head)` (random weights and statistics), the input
  features, the raw per-level outputs (forward hooks on the `*_preds` convs) and the decoded
  outputs (`decode_in_inference=True`).
- `loss_<case>`: `YOLOXHead.get_losses` on random raw head outputs and padded labels, laid
  out by YOLOX's own `get_output_and_grid`: the six returned values, and each image's SimOTA
  assignment (`get_assignments`: foreground mask, matched ground truth).

YOLOX is read from Megvii's repository (`git archive HEAD yolox | tar -x -C /tmp/yolox-src`
from the fetched mirror). Its package imports logging (loguru), OpenCV and torchvision in
modules these computations do not use; they are stood in for here, at run time. Run from
the repository root with the reference venv (torch, numpy):

  mkdir -p /tmp/yolox-src && git --git-dir=/work/.mirror/Megvii-BaseDetection+YOLOX/repo \\
      archive HEAD yolox | tar -x -C /tmp/yolox-src
  /tmp/evit-ref/venv/bin/python tests/data/make_det_reference.py --yolox /tmp/yolox-src
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import types
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "det" / "yolox_reference.npz"
BN_EPS = 1e-3  # YOLOX's init_yolo sets every BatchNorm's eps (and momentum 0.03)

# (name, YOLOPAFPN depth, width, depthwise, act, num_classes, batch, image H, W)
NECK_CASES = [("silu", 0.33, 0.0625, False, "silu", 5, 2, 64, 96),
              ("dw_relu", 0.67, 0.0625, True, "relu", 3, 1, 96, 64)]
# (name, image H, W, classes, boxes per image (0 = none), use_l1, seed)
LOSS_CASES = [("basic", 64, 96, 5, (3, 1), False, 1),
              ("empty_image", 64, 96, 5, (0, 4), False, 2),
              ("all_empty", 64, 64, 4, (0, 0), False, 3),
              ("crowded", 128, 128, 80, (40, 2), False, 4),
              ("l1", 96, 96, 7, (6, 2, 0), True, 5)]
MAX_BOXES = 48  # label rows per image (YOLOX pads to a fixed count too)


def import_yolox(src: Path) -> types.SimpleNamespace:
    """YOLOX's pafpn and head modules, without executing its package `__init__`s (which import
    every utility: loguru, cv2, torchvision)."""
    logger = types.ModuleType("loguru")
    logger.logger = logging.getLogger("yolox")
    sys.modules.setdefault("loguru", logger)
    # boxes.py imports torchvision for `postprocess` (NMS), which is not run here.
    sys.modules.setdefault("torchvision", types.ModuleType("torchvision"))
    for name in ("yolox", "yolox.models", "yolox.utils"):
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(src.joinpath(*name.split(".")))]
        sys.modules[name] = pkg
    utils = sys.modules["yolox.utils"]
    boxes = importlib.import_module("yolox.utils.boxes")
    compat = importlib.import_module("yolox.utils.compat")
    utils.bboxes_iou, utils.cxcywh2xyxy, utils.meshgrid = (boxes.bboxes_iou,
                                                           boxes.cxcywh2xyxy, compat.meshgrid)

    def visualize_assign(*_a, **_k):  # only `visualize_assign_result` draws (cv2)
        raise NotImplementedError

    utils.visualize_assign = visualize_assign
    return types.SimpleNamespace(
        YOLOPAFPN=importlib.import_module("yolox.models.yolo_pafpn").YOLOPAFPN,
        YOLOXHead=importlib.import_module("yolox.models.yolo_head").YOLOXHead)


def synthesize(module, rng: np.random.Generator) -> None:
    """Random weights of sane scale and BatchNorm statistics, in place."""
    import torch

    with torch.no_grad():
        for key, t in module.state_dict().items():
            leaf = key.rsplit(".", 1)[-1]
            if leaf == "num_batches_tracked":
                continue
            if leaf == "weight" and t.ndim == 4:
                v = rng.normal(0, (t[0].numel()) ** -0.5, t.shape)
            elif leaf in ("running_var",) or (leaf == "weight" and t.ndim == 1):
                v = rng.uniform(0.5, 1.5, t.shape)
            elif leaf == "running_mean":
                v = rng.normal(0, 0.2, t.shape)
            else:  # biases
                v = rng.normal(0, 0.3, t.shape)
            t.copy_(torch.from_numpy(v.astype(np.float32)))


def neck_case(Y, name, depth, width, depthwise, act, classes, batch, h, w, out) -> None:
    import torch
    import torch.nn as nn

    torch.manual_seed(0)
    in_ch = [256, 512, 1024]
    pafpn = Y.YOLOPAFPN(depth, width, in_channels=in_ch, depthwise=depthwise, act=act)

    class Given(nn.Module):  # the darknet's place: hand the given features over
        def forward(self, feats):
            return feats

    pafpn.backbone = Given()
    head = Y.YOLOXHead(classes, width, in_channels=in_ch, act=act, depthwise=depthwise)
    model = nn.Module()
    model.backbone, model.head = pafpn, head  # YOLOX(backbone, head)'s key layout
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps, m.momentum = BN_EPS, 0.03
    rng = np.random.default_rng(sum(map(ord, name)))
    synthesize(model, rng)
    model.eval()
    widths = [int(c * width) for c in in_ch]
    feats = {f"dark{i + 3}": rng.normal(0, 1, (batch, c, h >> (i + 3), w >> (i + 3)))
             .astype(np.float32) for i, c in enumerate(widths)}
    raw: dict[int, dict[str, np.ndarray]] = {}

    def hook(level, kind):
        def fn(_m, _i, y):
            raw.setdefault(level, {})[kind] = y.detach().numpy()
        return fn

    for i in range(3):
        for kind in ("reg", "obj", "cls"):
            getattr(head, f"{kind}_preds")[i].register_forward_hook(hook(i, kind))
    with torch.no_grad():
        fpn = pafpn({k: torch.from_numpy(v) for k, v in feats.items()})
        decoded = head(fpn).numpy()
    p = f"neck_{name}/"
    out[p + "config"] = np.array([depth, width, float(depthwise), classes], np.float64)
    out[p + "act"] = np.array(act)
    for k, v in model.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            out[p + "sd/" + k] = v.numpy()
    for i in range(3):
        out[p + f"feat{i}"] = feats[f"dark{i + 3}"]
        out[p + f"raw{i}"] = np.concatenate([raw[i]["reg"], raw[i]["obj"], raw[i]["cls"]], 1)
        out[p + f"fpn{i}"] = fpn[i].numpy()
    out[p + "decoded"] = decoded
    print(f"{p}: {len([k for k in out if k.startswith(p + 'sd/')])} tensors, decoded "
          f"{decoded.shape}")


def _labels(rng: np.random.Generator, counts, h: int, w: int, classes: int) -> np.ndarray:
    """`[B, MAX_BOXES, 5]` (class, cx, cy, w, h), zero rows after each image's boxes."""
    labels = np.zeros((len(counts), MAX_BOXES, 5), np.float32)
    for b, n in enumerate(counts):
        if n > 20:  # crowded: boxes packed around a few centres
            centres = rng.uniform([0.3 * w, 0.3 * h], [0.7 * w, 0.7 * h], (3, 2))
            cxy = centres[rng.integers(0, 3, n)] + rng.normal(0, 6, (n, 2))
            wh = rng.uniform(8, 0.5 * min(h, w), (n, 2))
        else:
            cxy = rng.uniform([0.1 * w, 0.1 * h], [0.9 * w, 0.9 * h], (n, 2))
            wh = rng.uniform(6, 0.7 * min(h, w), (n, 2))
        labels[b, :n, 0] = rng.integers(0, classes, n)
        labels[b, :n, 1:3] = cxy
        labels[b, :n, 3:5] = wh
    return labels


def _raw_outputs(rng, labels, h, w, classes, strides=(8, 16, 32)) -> list[np.ndarray]:
    """Random raw head outputs `[B, 5 + C, h / s, w / s]`; near each box, points predict a
    jittered copy of it (so IoUs, dynamic k and the cost ranking are not degenerate)."""
    outs = []
    for s in strides:
        gh, gw = h // s, w // s
        o = np.empty((labels.shape[0], 5 + classes, gh, gw), np.float32)
        o[:, :2] = rng.normal(0.5, 0.4, (labels.shape[0], 2, gh, gw))
        o[:, 2:4] = np.log(rng.uniform(0.8, 5, (labels.shape[0], 2, gh, gw)))
        o[:, 4:] = rng.normal(-1, 1.5, (labels.shape[0], 1 + classes, gh, gw))
        ys, xs = np.mgrid[0:gh, 0:gw]
        for b in range(labels.shape[0]):
            for cls, cx, cy, bw, bh in labels[b]:
                if bw <= 0:
                    continue
                near = (np.abs((xs + 0.5) * s - cx) < 2.5 * s) & (np.abs((ys + 0.5) * s - cy)
                                                                  < 2.5 * s)
                n = int(near.sum())
                jit = rng.normal(0, 0.15, (4, n))
                o[b, 0][near] = cx / s - xs[near] + jit[0] * bw / s
                o[b, 1][near] = cy / s - ys[near] + jit[1] * bh / s
                o[b, 2][near] = np.log(bw / s) + jit[2]
                o[b, 3][near] = np.log(bh / s) + jit[3]
                o[b, 5 + int(cls)][near] += rng.uniform(0, 3, n)
        outs.append(o)
    return outs


def loss_case(Y, name, h, w, classes, counts, use_l1, seed, out) -> None:
    import torch

    rng = np.random.default_rng(seed)
    labels = _labels(rng, counts, h, w, classes)
    raws = _raw_outputs(rng, labels, h, w, classes)
    head = Y.YOLOXHead(classes, 0.0625)
    head.use_l1 = use_l1
    outputs, xs, ys, strides, origin = [], [], [], [], []
    for k, (raw, s) in enumerate(zip(raws, (8, 16, 32))):
        t = torch.from_numpy(raw)
        o, grid = head.get_output_and_grid(t.clone(), k, s, t.type())
        xs.append(grid[:, :, 0])
        ys.append(grid[:, :, 1])
        strides.append(torch.full((1, grid.shape[1]), float(s)))
        origin.append(t[:, :4].permute(0, 2, 3, 1).reshape(t.shape[0], -1, 4).clone())
        outputs.append(o)
    cat = torch.cat(outputs, 1)
    lab = torch.from_numpy(labels)
    with torch.no_grad():
        values = head.get_losses(None, xs, ys, strides, lab, cat, origin, dtype=torch.float32)
    values = [float(v) for v in values]
    # Each image's assignment, by YOLOX's own function.
    n_anchor = cat.shape[1]
    fg = np.zeros((labels.shape[0], n_anchor), bool)
    matched = np.full((labels.shape[0], n_anchor), -1, np.int64)
    xs_, ys_, st_ = torch.cat(xs, 1), torch.cat(ys, 1), torch.cat(strides, 1)
    for b, n in enumerate(counts):
        if n == 0:
            continue
        g = head.get_assignments(b, n, lab[b, :n, 1:5], lab[b, :n, 0], cat[b, :, :4], st_, xs_,
                                 ys_, cat[:, :, 5:], cat[:, :, 4:5])
        mask = g[1].numpy()
        fg[b] = mask
        matched[b, mask] = g[3].numpy()
    p = f"loss_{name}/"
    for i, raw in enumerate(raws):
        out[p + f"raw{i}"] = raw
    out[p + "labels"] = labels
    out[p + "use_l1"] = np.array(use_l1)
    out[p + "losses"] = np.array(values, np.float64)  # total, 5 x iou, obj, cls, l1, fg/gt
    out[p + "fg"] = fg
    out[p + "matched"] = matched
    print(f"{p}: total {values[0]:.5f} (iou {values[1]:.4f} obj {values[2]:.4f} "
          f"cls {values[3]:.4f} l1 {values[4]:.4f}), {int(fg.sum())} foreground points")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--yolox", type=Path, default=Path("/tmp/yolox-src"),
                    help="directory holding Megvii's `yolox` package source")
    args = ap.parse_args()
    Y = import_yolox(args.yolox)
    out: dict[str, np.ndarray] = {}
    for case in NECK_CASES:
        neck_case(Y, *case, out)
    for case in LOSS_CASES:
        loss_case(Y, *case, out)
    OUT.parent.mkdir(exist_ok=True)
    np.savez_compressed(OUT, **out)
    print(f"{OUT}: {OUT.stat().st_size / 2**20:.2f} MiB")


if __name__ == "__main__":
    main()
