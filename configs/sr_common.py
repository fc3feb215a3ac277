"""What the SR recipes share (`configs/sr_div2k.py`, `sr_ffhq.py`, `sr_demo.py`).

The papers say only "random initialisation, AdamW with cosine decay, L1-style loss"; the
values below are ours, in the range of the lightweight-SR literature (SwinIR-light: LR patches
of 64, batch 64, 500k iterations), see docs/sr.md.
"""

from evit_jax.configs import common


def sr_base(model: str) -> common.mlc.ConfigDict:
    c = common.base_config()
    c.task = "sr"
    c.model = model
    c.num_classes = 0  # unused by SR
    c.zero_init_last = False
    c.loss = "l1"  # or "charbonnier"
    c.label_smoothing = 0.0
    c.weight_decay = 1e-4
    c.no_decay_keys = ("bias",)
    c.grad_clip_value = 0.0
    c.grad_clip_norm = 1.0
    c.b1, c.b2 = 0.9, 0.99
    c.ema_decay = 0.999
    c.ema_warmup_steps = 1000
    c.data.name = "div2k/bicubic_x2"
    c.data.eval_split = "validation"
    c.data.lr_dir = ""  # images:/... sources: a folder of given LR images ("" = make them)
    c.eval_batch_size = 1  # whole images, one at a time (sizes differ)
    c.input.patch_size = 128  # HR patch side (a multiple of the scale); LR = patch / scale
    c.input.sr_augment = True  # random flips / 90-degree rotations
    return c


def scale_of_model(name: str) -> int:
    """2, 3 or 4 from an SR zoo name (`efficientvit-sr-w0.75-x3` -> 3)."""
    from evit_jax.zoo import model_info
    return int(model_info(name).head.scale)
