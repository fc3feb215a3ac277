"""The authors' ImageNet-1k recipes for EfficientViT-B1..B3 and L1..L3 (spec section 7.1).

`--config configs/cls_imagenet.py:model=efficientvit-b2` (a `-r256` / `-r288` / `-r320` /
`-r384` suffix trains with resolutions up to it and evaluates at it). Everything is as the
reference's yaml files: 300 cosine + 20 warmup epochs, 128 images per device-batch unit
(lr = base_lr * batch_size / 128), AdamW (wd 0.1, none on norm/bias), clipping by value at
2.0, label smoothing 0.1 + mixup/cutmix with BCE, RandAugment, stochastic depth, EMA
0.9998, BN re-estimated on 16 000 training images before each evaluation, multi-resolution
batches from 128 px up, and for L: RandomErasing 0.2, MESA and bfloat16 compute.
Data: tfds `imagenet2012` (prepared once from the manual download; `data_dir` arg).
"""

from evit_jax.configs import common

from evit_jax.cli import UserError
from evit_jax.zoo import ModelSpec, model_info

IMAGENET_TRAIN = 1_281_167

# variant: (base_lr, randaug n, m, mixup/cutmix alpha, drop_path, skip, erase, MESA, dtype)
RECIPES = {
    "b1": (2.5e-4, 1, 3, 0.1, 0.05, 0, 0.0, 0.0, "float32"),
    "b2": (2.5e-4, 1, 3, 0.1, 0.05, 0, 0.0, 0.0, "float32"),
    "b3": (2.5e-4, 2, 6, 0.3, 0.1, 0, 0.0, 0.0, "float32"),
    "l1": (1.5e-4, 2, 5, 0.2, 0.1, 2, 0.2, 2.0, "bfloat16"),
    "l2": (1.5e-4, 2, 5, 0.4, 0.1, 3, 0.2, 2.75, "bfloat16"),
    "l3": (1.5e-4, 2, 6, 0.6, 0.1, 3, 0.2, 3.5, "bfloat16"),
}


def recipe_entry(name: str) -> ModelSpec:
    """The zoo entry of an authors' classifier with a recipe (`efficientvit-b2-r288`)."""
    try:
        spec = model_info(name)
    except ValueError:
        spec = None
    if spec is None or spec.task != "cls" or spec.key_style != "official" \
            or spec.backbone not in RECIPES:
        raise UserError(f"no ImageNet recipe for {name!r}; known: "
                        f"{['efficientvit-' + v for v in RECIPES]} (+ -r256, -r288, ...)")
    return spec


def get_config(arg: str | None = None):
    a = common.parse_arg(arg, model="efficientvit-b1", data_dir="", batch_size=1024,
                         epochs=300, warmup_epochs=20, runlocal=False)
    spec = recipe_entry(a.model)
    variant, res = spec.backbone, spec.eval_size
    base_lr, n, m, mix, dp, skip, erase, mesa, dtype = RECIPES[variant]
    c = common.base_config()
    c.model = f"efficientvit-{variant}"  # the suffix only names the resolution
    c.num_classes = 1000
    c.dtype = dtype
    c.drop_path, c.drop_path_skip = dp, skip
    c.batch_size = a.batch_size
    c.eval_batch_size = 1024
    steps_per_epoch = IMAGENET_TRAIN // c.get_ref("batch_size")
    c.total_steps = (a.epochs + a.warmup_epochs) * steps_per_epoch
    c.warmup_steps = a.warmup_epochs * steps_per_epoch
    c.base_lr = base_lr
    c.lr = c.get_ref("base_lr") * c.get_ref("batch_size") / 128
    c.weight_decay = 0.1
    c.grad_clip_value = 2.0
    c.ema_decay, c.ema_warmup_steps = 0.9998, 2000
    c.label_smoothing, c.loss = 0.1, "bce"
    c.mixup_alpha = c.cutmix_alpha = mix
    c.mesa_ratio, c.mesa_start = mesa, 0.25
    c.reset_bn_examples, c.reset_bn_batch_size = 16_000, 100
    c.log_every_steps = 100
    c.eval_every_steps = 5 * steps_per_epoch
    c.checkpoint_every_steps = 2 * steps_per_epoch
    c.data.name = "imagenet2012"
    c.data.data_dir = a.data_dir
    c.data.num_workers = 8
    c.input.train_sizes = tuple(range(128, res + 1, 32))
    c.input.eval_size = res
    c.input.eval_crop = spec.crop_pct
    c.input.interpolation = "random"
    c.input.randaug_n, c.input.randaug_m = n, m
    c.input.erase_p = erase
    return common.runlocal(c) if a.runlocal else c
