"""Lightweight SR (the paper's BSD100 setting): DIV2K train -> DIV2K validation / BSD100.

`evit-train --config configs/sr_div2k.py:scale=4,width=w0.75 --workdir runs/sr_x4`
Arguments: `scale` (2, 3, 4), `width` ("" base or "w0.75"), `data` (default
`div2k/bicubic_x{scale}`, or `images:/path/DIV2K` with `train/` and `validation/` HR folders),
`runlocal`. LR patches 64x64 (HR 64 * scale), batch 64, 500k steps, AdamW 1e-3 cosine.
Evaluate BSD100 afterwards with `evit-sr-eval --hr /path/BSD100/HR`.
"""

from evit_jax.configs import common, sr_common

from evit_jax.cli import UserError


def get_config(arg: str | None = None):
    a = common.parse_arg(arg, scale=2, width="", data="", runlocal=False)
    if a.scale not in (2, 3, 4):
        raise UserError(f"scale must be 2, 3 or 4, got {a.scale}")
    body = "sr-w0.75" if a.width == "w0.75" else "sr"
    c = sr_common.sr_base(f"efficientvit-{body}-x{a.scale}")
    c.data.name = a.data or f"div2k/bicubic_x{a.scale}"
    c.input.patch_size = 64 * a.scale
    c.batch_size = 64
    c.total_steps = 500_000
    c.warmup_steps = 5_000
    c.lr = 1e-3
    c.min_lr = 1e-6
    c.log_every_steps = 100
    c.eval_every_steps = 25_000
    c.checkpoint_every_steps = 5_000
    c.data.eval_examples = 100  # DIV2K validation (0801-0900)
    if a.runlocal:
        c = common.runlocal(c)
        c.input.patch_size = 16 * a.scale
        c.data.eval_examples = 2
    return c
