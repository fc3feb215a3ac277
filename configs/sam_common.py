"""What the SAM configs share (`sam_finetune.py`, `sam_sa1b.py`, `sam_demo.py`,
`sam_distill.py`): the base config plus the `sam`, `distill` and SAM data fields.

The values are the authors' phase-2 recipe (spec section 7.3): AdamW (0.9, 0.999, eps 1e-8),
weight decay 0.1 except on norm / bias, cosine without warmup, gradient clipping by value
2.0, no EMA, no BN reset; 64 masks per image, 50 % box prompts, 50 % multimask steps, loss
20 * BCE + dice on 112^2 uncertainty-sampled points (oversample 3, importance 0.75).
"""

from evit_jax.configs import common

# The authors' learning rate per group of 4 images (their per-GPU batch): global lr =
# base_lr * GPUs, so lr = BASE_LR * batch_size / 4 here.
BASE_LR = {"l": 8e-7, "xl": 4e-7}


def family(model: str) -> str:
    """"l" or "xl" of an EfficientViT-SAM zoo name."""
    return "xl" if "-sam-xl" in model else "l"


def sam_base(model: str = "efficientvit-sam-l0") -> common.mlc.ConfigDict:
    c = common.base_config()
    c.task = "sam"
    c.model = model
    c.num_classes = 0  # unused by SAM
    c.zero_init_last = False
    c.init_exclude = ()
    c.batch_size = 32
    c.eval_batch_size = 64  # prompts per compiled decoder call in the evaluation
    c.warmup_steps = 0
    c.lr = BASE_LR[family(model)] * c.batch_size / 4
    c.weight_decay = 0.1
    c.no_decay_keys = ("norm", "bias")
    c.grad_clip_value = 2.0
    c.ema_decay = 0.0
    c.label_smoothing = 0.0
    c.log_every_steps = 20
    c.checkpoint_every_steps = 1000
    c.input.encoder_size = 0  # 0: the model's (512 L, 1024 XL); prompts stay in the 1024 frame
    c.input.hflip = True
    c.sam = common.mlc.ConfigDict(dict(
        num_masks=64,  # objects per image (fewer: padding with valid = False)
        box_prob=0.5,  # per image: box prompts, else 1-10 clicks per object
        multimask_prob=0.5,  # per step: best of 3 outputs, else the single-mask output
        loss_points=112 * 112,  # uncertainty-sampled points per mask (0: full low-res mask)
        oversample=3.0,
        importance=0.75,
        iou_loss_weight=1.0,  # MSE of the IoU head to the true IoU
        grid=0,  # embedding grid (0: the model's 64; low-res masks are 4x it)
    ))
    c.distill = common.mlc.ConfigDict(dict(
        teacher_dir="",  # a directory of <image_id>.npy [64, 64, 256] embeddings, or
        teacher_model="",  # a zoo SAM model as teacher (+ its weights)
        teacher_weights="",
        teacher_size=0,  # the teacher's encoder input (0: its own)
        teacher_seed=0,  # a teacher without weights is random (tests only)
    ))
    c.data.name = "evit_shapes"
    c.data.annotations = ""  # coco:IMAGE_ROOT: the instances json of the training images
    c.data.eval_annotations = ""  # ... of the held-out images ("" = the last 1 % of them)
    c.data.eval_image_root = ""  # their folder ("" = IMAGE_ROOT)
    c.data.eval_examples = 200  # held-out images scored at each evaluation (0 = all)
    return c


def runlocal(c: common.mlc.ConfigDict) -> common.mlc.ConfigDict:
    """A smoke run: 3 steps of 2 images with 4 masks at a 64 px encoder input."""
    c.batch_size = 2
    c.total_steps = 3
    c.log_every_steps = 1
    c.checkpoint_every_steps = 2
    c.data.eval_examples = 4
    c.data.num_workers = 0
    c.input.encoder_size = 64
    c.sam.num_masks = 4
    c.sam.grid = 16
    c.sam.loss_points = 16 * 16
    c.progress_bar = False
    return c
