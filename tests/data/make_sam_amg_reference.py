"""Write sam_amg_reference.json: the authors' automatic mask generator on the SAM-L0 parity
fixture (synthetic weights, the fixture's 480x640 image), for tests/test_sam_amg.py.

Needs the reference set up as in ../shared/reference (PyTorch, segment-anything, the authors'
package); run from the repository root:

  PYTHONPATH=/tmp/evit-ref/stubs:/tmp/evit-ref/src /tmp/evit-ref/venv/bin/python \
      tests/data/make_sam_amg_reference.py
"""

import importlib.util
import json
from pathlib import Path

import evstub_boot  # noqa: F401  (import stand-ins of the reference setup)
import segment_anything.automatic_mask_generator as amg
import torch
import torchvision.ops.boxes as boxes_ops
from efficientvit.models.efficientvit.sam import EfficientViTSamAutomaticMaskGenerator
from efficientvit.sam_model_zoo import create_efficientvit_sam_model

ROOT = Path(__file__).resolve().parents[2]
NAME = "efficientvit-sam-l0"
# Thresholds low enough that synthetic weights give masks (their logits are small); NMS off
# (all random masks span the image, so NMS would keep one).
CONFIG = dict(points_per_side=8, pred_iou_thresh=0.2, stability_score_thresh=0.05,
              stability_score_offset=0.05, box_nms_thresh=1.0, output_mode="uncompressed_rle")


def main() -> None:
    spec = importlib.util.spec_from_file_location("synth", ROOT.parent / "shared/parity/synth.py")
    synth = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(synth)
    golden = synth.load_golden(NAME)
    sd = synth.synthesize(synth.load_schema(NAME), int(golden["seed"]))
    model = create_efficientvit_sam_model(NAME, pretrained=False).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    # The torchvision stand-in's batched_nms takes the threshold positionally.
    amg.batched_nms = lambda b, s, i, iou_threshold: boxes_ops.batched_nms(b, s, i, iou_threshold)
    records = EfficientViTSamAutomaticMaskGenerator(model, **CONFIG).generate(golden["image"])
    out = {"model": NAME, "config": CONFIG, "records": [
        {k: r[k] for k in ("area", "bbox", "predicted_iou", "point_coords", "stability_score",
                           "crop_box")} for r in records]}
    path = Path(__file__).with_name("sam_amg_reference.json")
    rows = ",\n  ".join(json.dumps(r) for r in out.pop("records"))
    head = json.dumps(out)[:-1]
    path.write_text(f'{head}, "records": [\n  {rows}\n]}}\n')
    print(f"{len(records)} records -> {path}")


if __name__ == "__main__":
    main()
