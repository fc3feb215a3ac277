"""EfficientViT-SAM phase 2 at scale: end to end on SA-1B, the authors' recipe.

`--config configs/sam_sa1b.py:model=efficientvit-sam-xl1,root=/data/sa1b,weights=/ckpt/xl1`

2 SA-1B epochs over the 99 % train split (the authors' 80 sub-epochs of 1/40 epoch each),
64 masks per image, image size 512 (L) / 1024 (XL), global batch `batch_size` (the authors:
4 per GPU), lr = base_lr * batch / 4 (base 8e-7 L, 4e-7 XL), AdamW, cosine, no warmup, clip by
value 2.0. TPU-pod commands: docs/sam.md.
"""

from evit_jax.configs import common, sam_common

SA1B_IMAGES = 11_185_362  # images in SA-1B v1.0 (the train split is 99 % of the ids)


def get_config(arg: str | None = None):
    a = common.parse_arg(arg, model="efficientvit-sam-l0", root="/data/sa1b", weights="",
                         batch_size=256, epochs=2.0, images=SA1B_IMAGES, runlocal=False)
    c = sam_common.sam_base(a.model)
    c.init_from = a.weights
    c.data.name = f"sa1b:{a.root}"
    c.data.num_workers = 8
    c.batch_size = a.batch_size
    c.lr = sam_common.BASE_LR[sam_common.family(a.model)] * a.batch_size / 4
    c.total_steps = max(int(a.epochs * a.images * 0.99 / a.batch_size), 1)
    c.log_every_steps = 100
    c.checkpoint_every_steps = 2000
    c.eval_every_steps = max(c.total_steps // 80, 1)  # the authors validate every sub-epoch
    c.data.eval_examples = 1000
    return sam_common.runlocal(c) if a.runlocal else c
