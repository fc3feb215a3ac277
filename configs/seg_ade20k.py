"""ADE20K (150 classes) segmentation for efficientvit-seg-{b1..b3,l1,l2}-ade20k.

`--config configs/seg_ade20k.py:model=efficientvit-seg-b1-ade20k,data=/d/ADEChallengeData2016`
Data: the ADEChallengeData2016 folder (images/ + annotations/; tfds' `scene_parse150` holds
the instance-challenge annotations, not these labels). Training crops 512 x 512 from images
rescaled 0.5-2.0x; evaluation with the shorter side at 512 and full-resolution labels.
"""

from evit_jax.configs import common
from evit_jax.configs.seg_common import seg_config


def get_config(arg: str | None = None):
    a = common.parse_arg(arg, model="efficientvit-seg-b1-ade20k", weights="", data="",
                         data_dir="", batch_size=16, steps=160_000, runlocal=False)
    c = seg_config(a, "ade20k")
    c.data.name = f"ade20k:{a.data}" if a.data else "ade20k:ADEChallengeData2016"
    c.data.train_split, c.data.eval_split = "training", "validation"
    c.input.crop_size = (512, 512)
    c.input.scale_range = (0.5, 2.0)
    c.eval_batch_size = 1  # every validation image has its own size
    return common.runlocal(c) if a.runlocal else c
