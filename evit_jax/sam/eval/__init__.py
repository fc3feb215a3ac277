"""Zero-shot evaluation of EfficientViT-SAM (`evit-sam-eval`): the authors' COCO / LVIS
protocols (box- and click-prompted mean IoU by object size, mask AP from a detector's boxes)
on COCO-format data and on the embedded dataset.

`data` reads datasets into `EvalImage`s, `protocols` prompts the predictor per image,
`metrics` scores (pycocotools, lvis), `cli` is the command (multi-process merge included).
"""

from evit_jax.sam.eval.data import EvalImage, coco_images, gt_mask, shapes_images
from evit_jax.sam.eval.metrics import coco_mask_ap, iou_by_size, lvis_mask_ap, mask_iou
from evit_jax.sam.eval.protocols import evaluate_image, next_click

__all__ = ["EvalImage", "coco_images", "coco_mask_ap", "evaluate_image", "gt_mask",
           "iou_by_size", "lvis_mask_ap", "mask_iou", "next_click", "shapes_images"]
