"""Fine-tune EfficientViT-SAM end to end on your own masks (phase 2 of the recipe).

`--config configs/sam_finetune.py:model=efficientvit-sam-l0,weights=~/evit/sam-l0,`
`data=coco:/data/mine/images,annotations=/data/mine/train.json,eval_annotations=/data/mine/val.json`

`weights`: converted official weights (evit-convert) or a training workdir. Data: a COCO-format
instance json + image folder (`coco:IMAGE_ROOT`), an SA-1B-layout folder (`sa1b:ROOT`) or the
embedded dataset. The learning rate is the authors' per-4-images rate scaled to the batch.
"""

from evit_jax.configs import common, sam_common


def get_config(arg: str | None = None):
    a = common.parse_arg(arg, model="efficientvit-sam-l0", weights="", data="evit_shapes",
                         data_dir="", annotations="", eval_annotations="", eval_image_root="",
                         batch_size=16, steps=5000, lr=0.0, masks=64, runlocal=False)
    c = sam_common.sam_base(a.model)
    c.init_from = a.weights
    c.batch_size = a.batch_size
    c.total_steps = a.steps
    c.lr = a.lr or sam_common.BASE_LR[sam_common.family(a.model)] * a.batch_size / 4
    c.sam.num_masks = a.masks
    c.data.name = a.data
    c.data.data_dir = a.data_dir
    c.data.annotations = a.annotations
    c.data.eval_annotations = a.eval_annotations
    c.data.eval_image_root = a.eval_image_root
    c.checkpoint_every_steps = 500
    c.eval_every_steps = 1000
    return sam_common.runlocal(c) if a.runlocal else c
