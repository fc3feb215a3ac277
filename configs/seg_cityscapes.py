"""Cityscapes (19 classes) segmentation for efficientvit-seg-{b0..b3,l1,l2}-cityscapes.

`--config configs/seg_cityscapes.py:model=efficientvit-seg-b1-cityscapes,weights=~/evit/b1`
Data: tfds `cityscapes/semantic_segmentation` (manual download; labelIds -> 19 train ids).
Training crops 1024 x 1024 from images rescaled 0.5-2.0x; evaluation at the native
1024 x 2048, mIoU as the reference computes it.
"""

from evit_jax.configs import common
from evit_jax.configs.seg_common import seg_config


def get_config(arg: str | None = None):
    a = common.parse_arg(arg, model="efficientvit-seg-b1-cityscapes", weights="", data_dir="",
                         batch_size=16, steps=90_000, runlocal=False)
    c = seg_config(a, "cityscapes")
    c.data.name = "cityscapes/semantic_segmentation"
    c.data.train_split, c.data.eval_split = "train", "validation"
    c.input.crop_size = (1024, 1024)
    c.input.scale_range = (0.5, 2.0)
    return common.runlocal(c) if a.runlocal else c
