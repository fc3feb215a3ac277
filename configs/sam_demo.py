"""Train EfficientViT-SAM-L0 on the embedded dataset's masks, sized for a 2-core CPU.

`evit-train --config configs/sam_demo.py --workdir runs/sam_demo`

From `init_variables` weights (no pretrained weights: the demo shows the trainer learning,
not the authors' checkpoint). Reduced sizes, recorded in the workdir so `load_variables` +
`SamPredictor` / `evit-sam-eval` rebuild the same module: the encoder reads the 64 px images
at `size` (default 64) instead of 512, and the embedding grid is `grid` (default 16, so the
low-res masks are 64 x 64, the images' own size) instead of 64. Loss on the full low-res mask
(`points=N` for the uncertainty-sampled one). Arguments: `steps`, `size`, `grid`,
`batch_size`, `lr`, `points`, `tiny` (the 640-image variant, for tests), `runlocal`.
"""

from evit_jax.configs import common, sam_common


def get_config(arg: str | None = None):
    a = common.parse_arg(arg, steps=100, size=64, grid=16, batch_size=8, lr=1e-3, points=0,
                         masks=2, tiny=False, runlocal=False)
    c = sam_common.sam_base("efficientvit-sam-l0")
    c.data.name = "evit_shapes/tiny" if a.tiny else "evit_shapes"
    c.data.num_workers = 1
    c.data.eval_examples = 200
    c.input.encoder_size = a.size
    c.sam.grid = a.grid
    c.sam.num_masks = a.masks  # objects per image: one shape, sometimes cut in two
    c.sam.loss_points = a.points
    c.batch_size = a.batch_size
    c.total_steps = a.steps
    c.warmup_steps = max(a.steps // 20, 1)  # from scratch: a short warmup (the recipe has none)
    c.lr = a.lr
    c.min_lr = a.lr / 100
    c.weight_decay = 0.05
    c.log_every_steps = 10
    c.checkpoint_every_steps = 200
    return sam_common.runlocal(c) if a.runlocal else c
