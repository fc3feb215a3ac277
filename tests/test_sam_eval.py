"""evit-sam-eval: hand-checked scores per protocol (a ground-truth oracle stands in for the
network), the clicker, the authors' numbers (tests/data/sam_eval_reference.json, written by
tests/data/make_sam_eval_reference.py), the CLI end to end, several processes, evit_shapes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evit_jax.sam.eval import cli as C
from evit_jax.sam.eval import data as D
from evit_jax.sam.eval import metrics as M
from evit_jax.sam.eval.protocols import evaluate_image, next_click
from tests.helpers import needs_shared
from tests.sam_eval_helpers import (
    GtOracle,
    bucket_cases,
    click_cases,
    draw_eval_set,
    oracle_detections,
)

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = json.loads((ROOT / "tests/data/sam_eval_reference.json").read_text())
NAME = "efficientvit-sam-l0"


def _rect_set(root: Path, rects: list[tuple[int, int, int, int]], size=(160, 200),
              detections: list | None = None) -> tuple[list[D.EvalImage], dict]:
    """One image with rectangle objects (x0, y0, x1, y1), category 1; every second one as
    COCO's uncompressed RLE, the others as polygons."""
    from PIL import Image

    from evit_jax.sam.amg_utils import mask_to_rle
    h, w = size
    root.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(root / "1.png")
    anns = []
    for i, (x0, y0, x1, y1) in enumerate(rects):
        seg = [[x0, y0, x1, y0, x1, y1, x0, y1]]
        if i % 2:
            m = np.zeros((h, w), bool)
            m[y0:y1, x0:x1] = True
            seg = mask_to_rle(m)
        anns.append({"id": i + 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
                     "segmentation": seg, "area": float((x1 - x0) * (y1 - y0)),
                     "bbox": [x0, y0, x1 - x0, y1 - y0]})
    gt = {"images": [{"id": 1, "file_name": "1.png", "height": h, "width": w}],
          "annotations": anns, "categories": [{"id": 1, "name": "r", "frequency": "f"}]}
    return D.coco_images("coco", str(root), gt, detections), gt


def _iou(inter: int, union: int) -> float:
    return inter / (union + 1e-7) * 100


# ----------------------------------------------------------------------------- scoring
def test_buckets_follow_the_authors_inclusive_bounds():
    res = [{"area": 1024.0, "iou": 10.0}, {"area": 9216.0, "iou": 20.0},
           {"area": 500.0, "iou": 40.0}]
    got = M.iou_by_size(res)
    assert got == {"all": 70 / 3, "large": 20.0, "medium": 15.0, "small": 25.0}
    assert M.iou_by_size(res[2:]) == {"all": 40.0, "large": None, "medium": None,
                                      "small": 40.0}
    ref = REFERENCE["buckets"]
    for k, v in M.iou_by_size(bucket_cases()).items():
        assert v == pytest.approx(ref[k], rel=1e-12), k


def test_gt_masks_from_polygons_and_both_rle_forms():
    from pycocotools import mask as mask_utils
    m = np.zeros((7, 9), bool)
    m[2:5, 3:8] = True
    poly = {"segmentation": [[3, 2, 8, 2, 8, 5, 3, 5]]}
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    from evit_jax.sam.amg_utils import mask_to_rle
    for seg in (poly["segmentation"], mask_to_rle(m),
                {"size": [7, 9], "counts": rle["counts"].decode()}):
        np.testing.assert_array_equal(D.gt_mask({"segmentation": seg}, 7, 9), m)
    with pytest.raises(ValueError, match="polygons or an RLE"):
        D.gt_mask({"id": 3, "segmentation": 5}, 7, 9)


# ------------------------------------------------------------------------------ clicker
def test_next_click_on_hand_drawn_maps():
    free = lambda m: np.ones_like(m)
    # Object on the left border: the border counts as background (padding), so the
    # farthest pixel is in column 1, rows 1-3 tie, the first wins.
    gt = np.zeros((5, 7), bool)
    gt[:, :3] = True
    assert next_click(gt, np.zeros_like(gt), free(gt)) == (1, 1, True)
    # A 3 x 3 false negative and a 3 x 3 false positive: equally far, the negative wins.
    gt, pred = np.zeros((5, 9), bool), np.zeros((5, 9), bool)
    gt[1:4, 1:4], pred[1:4, 5:8] = True, True
    assert next_click(gt, pred, free(gt)) == (2, 6, False)
    clicked = free(gt)
    clicked[2, 6] = False  # an earlier click there: its centre is out
    assert next_click(gt, pred, clicked) == (2, 2, True)
    # No error left: the authors click (0, 0), negative.
    assert next_click(gt, gt.copy(), free(gt)) == (0, 0, False)


def test_clicks_equal_the_authors_clicker():
    for (gt, preds), want in zip(click_cases(), REFERENCE["clicks"], strict=True):
        free, got = np.ones_like(gt), []
        for p in preds:
            y, x, pos = next_click(gt, p, free)
            free[y, x] = False
            got.append([y, x, pos])
        assert got == want


# ------------------------------------------------------------------- protocols, oracle
def test_box_protocol_hand_checked(tmp_path):
    # Oracle masks: the object shifted 1 px right, so IoU = (w - 1) / (w + 1) exactly.
    rects = [(20, 30, 140, 130), (150, 10, 190, 40), (10, 135, 30, 145), (150, 60, 182, 92),
             (5, 5, 6, 5)]  # large, medium, small, 32 x 32 (small and medium), empty
    images, _ = _rect_set(tmp_path, rects)
    res = evaluate_image(GtOracle(images, shift=1), images[0], "box")
    ious = [_iou((w - 1) * h, (w + 1) * h) for w, h in ((120, 100), (40, 30), (20, 10),
                                                        (32, 32))]
    assert [r["iou"] for r in res] == pytest.approx(ious, rel=1e-12)
    got = M.iou_by_size(res)
    assert got["all"] == pytest.approx(sum(ious) / 4, rel=1e-12)
    assert got["large"] == pytest.approx(ious[0], rel=1e-12)
    assert got["medium"] == pytest.approx((ious[1] + ious[3]) / 2, rel=1e-12)
    assert got["small"] == pytest.approx((ious[2] + ious[3]) / 2, rel=1e-12)


def test_point_protocol_feeds_each_prediction_to_the_next_click(tmp_path):
    """GT 20 x 10 at x 10-29, y 8-17. Click 1: the farthest pixel, first in row-major order
    at (x 14, y 12), positive. The prediction adds a false-positive strip x 30-35; click 2:
    its farthest pixel (x 32, y 10), negative; the second prediction is exact."""
    images, _ = _rect_set(tmp_path, [(10, 8, 30, 18)], size=(40, 48))
    gt = D.gt_mask(images[0].annotations[0], 40, 48)
    strip = gt.copy()
    strip[8:18, 30:36] = True

    class Scripted(GtOracle):
        answers = [strip, gt]

        def _for_clicks(self, coords):
            return self.answers[len(self.calls) - 1]

    for clicks, want in ((1, _iou(200, 260)), (2, _iou(200, 200))):
        oracle = Scripted(images)
        res = evaluate_image(oracle, images[0], "point", num_clicks=clicks)
        assert [r["iou"] for r in res] == pytest.approx([want], rel=1e-12)
    np.testing.assert_array_equal(oracle.calls[0]["points"], [[[14, 12]]])
    np.testing.assert_array_equal(oracle.calls[1]["points"], [[[14, 12], [32, 10]]])
    np.testing.assert_array_equal(oracle.calls[1]["point_labels"], [[1, 0]])


def test_detector_protocol_ap_hand_checked(tmp_path):
    """Two medium objects found exactly, a small false positive ranked between them:
    precision 1 up to recall 0.5, then 2/3; COCO's 101-point AP = (51 + 50 * 2/3) / 101.
    APm ignores the false positive (its area is outside the medium range): 100."""
    rects = [(20, 30, 60, 60), (100, 50, 150, 90)]
    dets = [{"image_id": 1, "category_id": 1, "bbox": [20, 30, 40, 30], "score": 0.9},
            {"image_id": 1, "category_id": 1, "bbox": [170, 140, 10, 10], "score": 0.8},
            {"image_id": 1, "category_id": 1, "bbox": [100, 50, 50, 40], "score": 0.7}]
    images, gt = _rect_set(tmp_path, rects, detections=dets)
    res = evaluate_image(GtOracle(images), images[0], "box_from_detector")
    assert [r["score"] for r in res] == [0.9, 0.8, 0.7] and all("segmentation" in r for r in res)
    ap = (51 + 50 * 2 / 3) / 101 * 100
    coco = M.coco_mask_ap(gt, res, [1])
    assert coco == pytest.approx({"AP": ap, "AP50": ap, "AP75": ap, "APs": None, "APm": 100.0,
                                  "APl": None})
    for im in gt["images"]:
        im.update(neg_category_ids=[], not_exhaustive_category_ids=[])
    lvis = M.lvis_mask_ap(gt, res, [1])
    assert lvis == pytest.approx(dict(coco, APr=None, APc=None, APf=ap))


def test_ap_equals_the_authors_on_the_same_masks(tmp_path):
    paths = draw_eval_set(tmp_path)
    dets = oracle_detections(paths)
    ids = [im["id"] for im in json.loads(paths["instances"].read_text())["images"]]
    for kind, fn, key in (("instances", M.coco_mask_ap, "oracle_ap_coco"),
                          ("lvis", M.lvis_mask_ap, "oracle_ap_lvis")):
        got = fn(json.loads(paths[kind].read_text()), dets, ids)
        want = {k: (None if v < 0 else v) for k, v in REFERENCE[key].items()}
        assert got == pytest.approx(want, rel=1e-12), kind


# ------------------------------------------------------------------ network, reference
@pytest.fixture(scope="module")
def evalset(tmp_path_factory):
    return draw_eval_set(tmp_path_factory.mktemp("evalset"))


@pytest.fixture(scope="module")
def synth_weights(tmp_path_factory):
    import evit_jax
    from tests.helpers import synth_case
    sd, _ = synth_case(NAME)
    d = tmp_path_factory.mktemp("w") / NAME
    evit_jax.save_variables(evit_jax.convert_state_dict(NAME, sd), d, model=NAME)
    return d


def _cli(evalset, weights, prompt, out, *extra, dataset="coco"):
    root = evalset["root"] if dataset == "lvis" else evalset["image_root"]
    ann = evalset["lvis" if dataset == "lvis" else "instances"]
    return ["--model", NAME, "--weights", str(weights), "--dataset", dataset, "--image-root",
            str(root), "--annotations", str(ann), "--prompt", prompt, "--out", str(out),
            "--no-progress", *extra]


def _close(got: dict, want: dict, tol: float) -> None:
    assert set(got) == set(want)
    for k, v in want.items():
        v = None if v is not None and v < 0 else v
        assert (got[k] is None) == (v is None) and (v is None or abs(got[k] - v) <= tol), \
            (k, got[k], v)


@needs_shared
def test_cli_box_equals_the_authors(evalset, synth_weights, tmp_path, capsys):
    """The authors' box protocol on the same weights (the parity fixture's synthetic
    ones) and images. Our masks equal theirs but for pixels whose logit is within float
    rounding of 0, hence a small tolerance."""
    out = tmp_path / "box.json"
    assert C.main(_cli(evalset, synth_weights, "box", out)) == 0
    got = json.loads(out.read_text())
    _close(got, REFERENCE["box"], 0.02)
    table = capsys.readouterr().out
    assert "4 images, 6 objects" in table and "images/s" in table
    assert all(f"{k} " in table for k in got)


@needs_shared
@pytest.mark.slow
def test_cli_points_and_detector_equal_the_authors(evalset, synth_weights, tmp_path):
    for clicks in (1, 3):
        out = tmp_path / f"p{clicks}.json"
        assert C.main(_cli(evalset, synth_weights, "point", out, "--num-click",
                           str(clicks))) == 0
        _close(json.loads(out.read_text()), REFERENCE[f"point_{clicks}"], 0.02)
    for dataset in ("coco", "lvis"):
        out = tmp_path / f"d_{dataset}.json"
        assert C.main(_cli(evalset, synth_weights, "box_from_detector", out, "--detections",
                           str(evalset["detections"]), dataset=dataset)) == 0
        _close(json.loads(out.read_text()), REFERENCE[f"box_from_detector_{dataset}"], 0.02)


def test_cli_rejects_bad_input(evalset, tmp_path, capsys):
    base = ["--model", NAME, "--weights", str(tmp_path), "--dataset", "coco"]
    cases = [(["--prompt", "box"], "needs --image-root and --annotations"),
             (["--prompt", "box_from_detector", "--image-root", str(evalset["image_root"]),
               "--annotations", str(evalset["instances"])], "--detections goes with"),
             (["--prompt", "box", "--image-root", str(tmp_path / "nope"), "--annotations",
               str(evalset["instances"])], "is not a directory"),
             (["--prompt", "box", "--image-root", str(evalset["image_root"]),
               "--annotations", str(evalset["detections"])], "COCO-format instances"),
             (["--prompt", "point", "--num-click", "0"], "must be positive")]
    for extra, msg in cases:
        assert C.main(base + extra) == 1
        err = capsys.readouterr().err
        assert err.startswith("evit-sam-eval: error: ") and msg in err, err


# ---------------------------------------------------------------- processes, datasets
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# `evaluate` + `score` with the oracle in process `pid` of `n` (argv: root, port, pid, n).
_WORKER = """
import argparse, json, sys
from evit_jax.sam.eval import cli as C
from tests.test_sam_eval import _oracle_scores
root, port, pid, n = sys.argv[1:5]
C.init_distributed(argparse.Namespace(coordinator_address=f"127.0.0.1:{port}",
                                      num_processes=int(n), process_id=int(pid)))
for prompt in ("point", "box_from_detector"):
    res = _oracle_scores(root, prompt)
    if res is not None:
        print("RESULT" + json.dumps(res))
"""


def _oracle_scores(root, prompt: str) -> dict | None:
    """Scores of `prompt` with a shifted-ground-truth oracle (2 clicks; chunks of 2 prompts),
    merged over the processes; None on processes other than 0."""
    root = Path(root)
    gt = json.loads((root / "instances.json").read_text())
    dets = str(root / "detections.json") if prompt == "box_from_detector" else None
    images = D.coco_images("coco", str(root / "val2017"), gt, dets)
    res = C.evaluate(GtOracle(images, shift=2), images, prompt, 2, chunk=2, progress=False)
    return None if res is None else C.score(prompt, "coco", res, gt, images)


def test_two_processes_give_the_same_json_as_one(evalset):
    one = [_oracle_scores(evalset["root"], p) for p in ("point", "box_from_detector")]
    assert [len(s) for s in one] == [4, 6]
    assert all(v not in (None, 0.0, 100.0) for v in one[0].values())  # non-trivial scores
    assert one[1]["AP"] not in (None, 0.0, 100.0)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(evalset["root"]), port,
                               str(i), "2"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=300)[0])
        finally:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outs)
    assert not any("RESULT" in o for o in outs[1:])  # process 0 alone scores
    two = [json.loads(ln[len("RESULT"):]) for ln in outs[0].splitlines()
           if ln.startswith("RESULT")]
    assert two == one


def test_evit_shapes_instances_and_oracle_scores(shapes_dir):
    images = D.shapes_images("evit_shapes/tiny", shapes_dir)[:8]
    assert len(images) == 8
    from evit_jax.data.shapes_tfds import load_split
    src = load_split("validation", "tiny", shapes_dir)
    for im in images:
        labels = np.asarray(src[im.index]["mask"])[..., 0]
        union = np.zeros_like(labels, bool)
        for a in im.annotations:
            m = D.gt_mask(a, im.height, im.width)
            assert not (union & m).any() and a["area"] == m.sum()
            ys, xs = np.nonzero(m)
            assert a["bbox"] == [xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1]
            union |= m
        np.testing.assert_array_equal(union, labels > 0)
    res = [r for im in images for r in evaluate_image(GtOracle(images), im, "box")]
    assert M.iou_by_size(res)["all"] == pytest.approx(100.0)


@needs_shared
@pytest.mark.slow
def test_cli_in_two_processes_equals_one(evalset, synth_weights, tmp_path):
    """The command itself (flags, weights, the real network) in 2 processes on loopback."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    port, out = str(_free_port()), tmp_path / "box2.json"
    procs = [subprocess.Popen(
        [sys.executable, "-m", "evit_jax.sam.eval.cli",
         *_cli(evalset, synth_weights, "box", out), "--coordinator-address",
         f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=900)[0])
        finally:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outs)
    assert "images/s" in outs[0] and "images/s" not in outs[1]
    _close(json.loads(out.read_text()), REFERENCE["box"], 0.02)
