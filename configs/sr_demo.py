"""SR on the embedded `evit_sr_demo` images, sized for a 2-core CPU (goal: beat bicubic by
more than 1 dB PSNR-Y on the held-out images within 10 minutes).

`evit-train --config configs/sr_demo.py --workdir runs/sr_demo`
Arguments: `steps=N` (default 1500), `model` (default efficientvit-sr-w0.75-x2), `tiny` (the
12-image variant, for tests), `runlocal`. LR patches 16x16, batch 8, AdamW 2e-3 cosine, L1.
"""

from evit_jax.configs import common, sr_common


def get_config(arg: str | None = None):
    a = common.parse_arg(arg, steps=1500, model="efficientvit-sr-w0.75-x2", tiny=False,
                         runlocal=False)
    c = sr_common.sr_base(a.model)
    c.data.name = "evit_sr_demo/tiny" if a.tiny else "evit_sr_demo"
    c.data.num_workers = 1
    c.input.patch_size = 16 * sr_common.scale_of_model(a.model)
    c.batch_size = 8
    c.total_steps = a.steps
    c.warmup_steps = max(a.steps // 20, 1)
    c.lr = 2e-3
    c.min_lr = 1e-5
    # No EMA: a run this short moves its weights until the end (as configs/demo.py).
    c.ema_decay = 0.0
    c.log_every_steps = 10
    c.eval_every_steps = 0
    c.checkpoint_every_steps = 100
    return common.runlocal(c) if a.runlocal else c
