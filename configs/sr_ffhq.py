"""High-resolution SR (the paper's FFHQ setting): x2, 512x512 -> 1024x1024 faces.

Train on the first 3000 FFHQ training images, test on the first 500 validation images (the
paper's split): put the 1024x1024 HR PNGs in `/path/ffhq/train/` (3000) and
`/path/ffhq/validation/` (500), then
`evit-train --config configs/sr_ffhq.py:root=/path/ffhq --workdir runs/sr_ffhq`.
Arguments: `root`, `width` ("" or "w0.75"), `runlocal`. HR patches 256, batch 32, 200k steps.
"""

from evit_jax.configs import common, sr_common


def get_config(arg: str | None = None):
    a = common.parse_arg(arg, root="/data/ffhq", width="", runlocal=False)
    body = "sr-w0.75" if a.width == "w0.75" else "sr"
    c = sr_common.sr_base(f"efficientvit-{body}-x2")
    c.data.name = f"images:{a.root}"
    c.input.patch_size = 256
    c.batch_size = 32
    c.total_steps = 200_000
    c.warmup_steps = 2_000
    c.lr = 1e-3
    c.min_lr = 1e-6
    c.log_every_steps = 100
    c.eval_every_steps = 20_000
    c.checkpoint_every_steps = 5_000
    c.data.eval_examples = 500
    if a.runlocal:
        c = common.runlocal(c)
        c.input.patch_size = 32
        c.data.eval_examples = 2
    return c
