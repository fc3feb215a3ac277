"""Write sam_eval_reference.json: the authors' zero-shot SAM evaluation on the set of
tests/sam_eval_helpers.py, with the SAM-L0 parity fixture's synthetic weights, for
tests/test_sam_eval.py.

It runs their `eval_efficientvit_sam_model.py` functions (`run_box`, `run_point`,
`run_box_from_detector`, `evaluate_predictions_on_coco` / `_on_lvis`, `get_iou_metric`) as
their script does (one process: a gloo group of one, `.cuda()` made a no-op, images in
file order), their `Clicker` on the click cases and `get_iou_metric` on the bucket cases.
Needs the reference set up as in ../shared/reference plus `pip install pycocotools lvis`;
run from the repository root:

  PYTHONPATH=/tmp/evit-ref/stubs:/tmp/evit-ref/src:. /tmp/evit-ref/venv/bin/python \
      tests/data/make_sam_eval_reference.py [MIRROR_GIT_DIR]
"""

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import evstub_boot  # noqa: F401  (import stand-ins of the reference setup)
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import tests.sam_eval_helpers as H  # noqa: E402

NAME = "efficientvit-sam-l0"
MIRROR = "/work/.mirror/mit-han-lab+efficientvit/repo"
APP = "applications/efficientvit_sam"
CLICKS = (1, 3)


def _their_modules(mirror: str, dest: Path):
    for f in ("eval_efficientvit_sam_model.py", "sam_eval_utils.py"):
        text = subprocess.run(["git", "-C", mirror, "show", f"HEAD:{APP}/{f}"], check=True,
                              capture_output=True, text=True).stdout
        (dest / f).write_text(text)
    sys.path.insert(0, str(dest))
    import eval_efficientvit_sam_model as ev
    import sam_eval_utils as utils
    return ev, utils


def _model():
    from efficientvit.sam_model_zoo import create_efficientvit_sam_model
    spec = importlib.util.spec_from_file_location("synth", ROOT.parent / "shared/parity/synth.py")
    synth = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(synth)
    golden = synth.load_golden(NAME)
    sd = synth.synthesize(synth.load_schema(NAME), int(golden["seed"]))
    model = create_efficientvit_sam_model(NAME, pretrained=False).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    return model


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    ev, utils = _their_modules(sys.argv[1] if len(sys.argv) > 1 else MIRROR, tmp)
    paths = H.draw_eval_set(tmp / "set")
    torch.nn.Module.cuda = lambda self, *a, **k: self  # CPU only
    os.environ.update(WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29517")
    torch.distributed.init_process_group("gloo", rank=0, world_size=1)
    model = _model()

    def loader(dataset, prompt, ann, image_root):
        ds = ev.eval_dataset(dataset, str(image_root), prompt, str(ann),
                             str(paths["detections"]))
        order = sorted(range(len(ds)), key=lambda i: ds.ids[i])  # listdir order is arbitrary
        return [[ds[i]] for i in order]

    out = {"model": NAME}
    coco = loader("coco", "box", paths["instances"], paths["image_root"])
    out["box"] = utils.get_iou_metric(ev.run_box(model, coco, 0))
    for n in CLICKS:
        out[f"point_{n}"] = utils.get_iou_metric(ev.run_point(model, coco, n, 0))
    dets = ev.run_box_from_detector(
        model, loader("coco", "box_from_detector", paths["instances"], paths["image_root"]), 0)
    from pycocotools.coco import COCO
    stats = utils.evaluate_predictions_on_coco(COCO(str(paths["instances"])), dets, "segm").stats
    out["box_from_detector_coco"] = dict(zip(("AP", "AP50", "AP75", "APs", "APm", "APl"),
                                             (float(v) * 100 for v in stats[:6])))
    from lvis import LVIS
    np.float = float  # lvis 0.5.3 (the last release) still uses this alias, gone in numpy 2
    dets = ev.run_box_from_detector(
        model, loader("lvis", "box_from_detector", paths["lvis"], paths["root"]), 0)
    out["box_from_detector_lvis"] = utils.evaluate_predictions_on_lvis(
        LVIS(str(paths["lvis"])), dets, "segm")

    oracle = H.oracle_detections(paths)
    stats = utils.evaluate_predictions_on_coco(COCO(str(paths["instances"])), oracle, "segm").stats
    out["oracle_ap_coco"] = dict(zip(("AP", "AP50", "AP75", "APs", "APm", "APl"),
                                     (float(v) * 100 for v in stats[:6])))
    out["oracle_ap_lvis"] = utils.evaluate_predictions_on_lvis(LVIS(str(paths["lvis"])),
                                                               oracle, "segm")

    clicks = []
    for gt, preds in H.click_cases():
        clicker = utils.Clicker(gt_mask=gt)
        for p in preds:
            clicker.make_next_click(p)
        clicks.append([[int(c.coords[0]), int(c.coords[1]), bool(c.is_positive)]
                       for c in clicker.clicks_list])
    out["clicks"] = clicks
    out["buckets"] = utils.get_iou_metric(H.bucket_cases())
    path = Path(__file__).with_name("sam_eval_reference.json")
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "clicks"}, indent=1))


if __name__ == "__main__":
    main()
