"""Segmentation recipe shared by Cityscapes and ADE20K.

No segmentation training recipe is published (spec section 7.2): the papers say "ImageNet-
pretrained backbone, random head, AdamW + cosine", and EfficientViT v1 trained Cityscapes
with batch 16, random scale 0.5-2.0, flip and crop. The numbers below are our choices in
that spirit. Start from converted ImageNet weights with `weights=/path` (only the backbone
is loaded).
"""

from evit_jax.configs import common

from evit_jax.cli import UserError
from evit_jax.zoo import model_info


def seg_config(a, dataset: str):
    """The shared recipe for zoo model `a.model`, a segmenter of `dataset`; the classes and the
    evaluation resize come from its zoo entry."""
    spec = model_info(a.model)
    if spec.task != "seg" or spec.dataset != dataset:
        raise UserError(f"expected a model like efficientvit-seg-b1-{dataset}, got {a.model!r}")
    large = spec.family == "l"
    c = common.base_config()
    c.task = "seg"
    c.model = a.model
    c.num_classes = spec.num_classes
    c.dtype = "bfloat16" if large else "float32"
    c.drop_path = 0.1 if large else 0.05
    c.init_from = a.weights
    c.init_include = "^(params|batch_stats)/backbone/"  # the head starts fresh
    c.init_exclude = ()
    c.batch_size = a.batch_size
    c.eval_batch_size = 8
    c.total_steps = a.steps
    c.warmup_steps = 1500
    c.lr = 6e-4 * a.batch_size / 16
    c.weight_decay = 0.05
    c.grad_clip_value = 2.0
    c.ema_decay = 0.0
    c.label_smoothing = 0.0
    c.log_every_steps = 50
    c.eval_every_steps = 10_000
    c.checkpoint_every_steps = 2_000
    c.data.data_dir = a.data_dir
    c.data.num_workers = 8
    c.input.eval_mode, c.input.eval_size = spec.eval_mode, spec.eval_size
    return c
