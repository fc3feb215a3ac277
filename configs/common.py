"""Shared pieces of the training configs: argument parsing, the base config, `runlocal`.

Every config file has `get_config(arg)`; `arg` is the text after the colon in
`--config configs/x.py:model=efficientvit-b2,runlocal`, a comma-separated list of
`key=value` (or bare `key` = True) pairs. Fields are then overridden with
`--config.lr=1e-3`; overriding a field that does not exist is an error.
"""

from __future__ import annotations

import ast

import ml_collections as mlc

from evit_jax.cli import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def parse_arg(arg: str | None, **defaults) -> mlc.ConfigDict:
    """`"model=efficientvit-b1,runlocal"` -> ConfigDict(model=..., runlocal=True), typed like
    `defaults`; an unknown key is an error that lists the known ones."""
    out = dict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise UserError(f"unknown config argument {key!r}; known: {sorted(defaults)}")
        if not sep:
            out[key] = True
        elif isinstance(defaults[key], bool):
            out[key] = value.lower() in ("1", "true", "yes")
        elif isinstance(defaults[key], (int, float)):
            out[key] = type(defaults[key])(ast.literal_eval(value))
        else:
            out[key] = value
    return mlc.ConfigDict(out)


def base_config() -> mlc.ConfigDict:
    """Fields every training config has (the recipes fill in their values)."""
    c = mlc.ConfigDict()
    c.task = "cls"  # "cls" or "seg"
    c.seed = 0
    c.model = "efficientvit-b1"
    c.num_classes = 1000
    c.dtype = "float32"  # compute dtype: "float32" or "bfloat16" (parameters stay float32)
    c.drop_path = 0.0
    c.drop_path_skip = 0
    c.zero_init_last = True
    c.init_from = ""  # fine-tuning: converted weights dir or training workdir ("" = scratch)
    c.init_exclude = ("/head/op_list_3/",)  # regexes of paths (params/..., batch_stats/...)
    # left fresh when their shapes differ from the loaded ones
    c.init_include = ""  # regex: load only matching paths ("/backbone/"); "" = all

    c.model_parallel = 1  # size of the mesh's "model" axis (big kernels split over it)
    c.batch_size = 128  # global, over all hosts
    c.eval_batch_size = 128
    c.total_steps = 1000
    c.warmup_steps = 100
    c.lr = 1e-3  # peak learning rate
    c.min_lr = 0.0
    c.b1, c.b2, c.eps = 0.9, 0.999, 1e-8
    c.weight_decay = 0.1
    c.no_decay_keys = ("norm", "bias")  # substrings of parameter paths without weight decay
    c.grad_clip_value = 2.0  # element-wise clipping (0 = off), as the reference
    c.grad_clip_norm = 0.0  # global-norm clipping (0 = off)
    c.ema_decay = 0.9998  # 0 = no EMA; decay * (1 - exp(-step / ema_warmup_steps))
    c.ema_warmup_steps = 2000
    c.label_smoothing = 0.1
    c.loss = "bce"  # "bce" (the reference's ImageNet loss) or "ce"
    c.mixup_alpha = 0.0  # each batch: mixup or cutmix with equal chance, lam ~ Beta(a, a)
    c.cutmix_alpha = 0.0
    c.mesa_ratio = 0.0  # MESA (L models): + ratio * BCE(logits, sigmoid(EMA logits))
    c.mesa_start = 0.25  # ... from this fraction of the post-warmup schedule on
    c.reset_bn_examples = 0  # re-estimate BN statistics on this many train images before eval
    c.reset_bn_batch_size = 100

    c.log_every_steps = 50
    c.eval_every_steps = 0  # 0: evaluate once, at the end
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3
    c.progress_bar = True
    c.compilation_cache = True  # reuse XLA executables across runs (~/.cache/evit_jax/xla)

    c.data = mlc.ConfigDict(dict(
        name="evit_shapes",  # a tfds name, "folder:/path/to/tree", or "evit_shapes[/tiny]"
        data_dir="",  # tfds data_dir ("" = tfds default; the embedded set: its cache)
        train_split="train",
        eval_split="validation",
        eval_examples=0,  # 0 = the whole split
        num_workers=2,  # grain worker processes (0 = in the main process)
        image_key="",  # "" = the dataset's usual key
        label_key="",
    ))
    c.input = mlc.ConfigDict(dict(
        train_sizes=(224,),  # per-batch resolution drawn from these (multi-resolution)
        eval_size=224,
        eval_crop=1.0,  # resize shorter side to eval_size / eval_crop, center crop
        rrc_scale=(0.08, 1.0),
        rrc_ratio=(3 / 4, 4 / 3),
        interpolation="random",  # RandomResizedCrop resampling ("random": one per image)
        hflip=True,
        randaug_n=0,  # RandAugment ops per image (0 = off)
        randaug_m=0,
        randaug_mstd=1.0,
        erase_p=0.0,  # RandomErasing probability (after normalisation)
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        # segmentation only
        crop_size=(512, 512),
        scale_range=(0.5, 2.0),
        ignore_index=255,
        eval_mode="shorter",  # "shorter": shorter side -> eval_size, sides to /32;
                              # "fixed": resize to (eval_size, 2 * eval_size) (Cityscapes)
    ))
    return c


def runlocal(c: mlc.ConfigDict) -> mlc.ConfigDict:
    """Shrink a config to a smoke run (a few small steps) without changing its recipe."""
    c.batch_size = 8
    c.eval_batch_size = 8
    c.total_steps = 3
    c.warmup_steps = 1
    c.log_every_steps = 1
    c.checkpoint_every_steps = 2
    c.ema_warmup_steps = 2
    c.reset_bn_examples = min(c.reset_bn_examples, 16)
    c.reset_bn_batch_size = 8
    c.data.eval_examples = 16
    c.data.num_workers = 0
    c.input.train_sizes = (64,)
    c.input.eval_size = 64
    c.input.crop_size = (64, 64)
    c.progress_bar = False
    return c
