"""Phase 1: distil a student EfficientViT-SAM image encoder from a teacher's embeddings.

Teacher embeddings precomputed (a directory of `<image_id>.npy` [64, 64, 256], e.g. from
SAM-ViT-H, docs/sam.md) or a zoo model computed on the fly:

  --config configs/sam_distill.py:teacher_dir=/data/vith_emb,data=sa1b:/data/sa1b
  --config configs/sam_distill.py:teacher=efficientvit-sam-xl1,teacher_weights=~/evit/xl1

Loss: MSE of the student's image embeddings [B, 64, 64, 256] to the teacher's; only the
image encoder learns. The authors' phase-1 schedule is unpublished (spec section 10), so the
values here are ours: AdamW 1e-4 peak (x batch / 64), weight decay 0.1 (not on norm / bias),
cosine with 5 % warmup, clip by value 2.0. Images are not flipped (stored embeddings are of
the unflipped image); student and teacher see the same image, each at its encoder size.
"""

from evit_jax.configs import common, sam_common


def get_config(arg: str | None = None):
    a = common.parse_arg(arg, model="efficientvit-sam-l0", weights="", teacher_dir="",
                         teacher="", teacher_weights="", teacher_size=0, data="evit_shapes",
                         data_dir="", annotations="", size=0, batch_size=64, steps=100000,
                         lr=0.0, runlocal=False)
    c = sam_common.sam_base(a.model)
    c.task = "sam_distill"
    c.init_from = a.weights
    c.distill.teacher_dir = a.teacher_dir
    c.distill.teacher_model = a.teacher
    c.distill.teacher_weights = a.teacher_weights
    c.distill.teacher_size = a.teacher_size
    c.data.name = a.data
    c.data.data_dir = a.data_dir
    c.data.annotations = a.annotations
    c.input.encoder_size = a.size
    c.input.hflip = False
    c.batch_size = a.batch_size
    c.total_steps = a.steps
    c.warmup_steps = max(a.steps // 20, 1)
    c.lr = a.lr or 1e-4 * a.batch_size / 64
    c.log_every_steps = 50
    c.checkpoint_every_steps = 2000
    c.data.eval_examples = 100
    if a.runlocal:
        c = sam_common.runlocal(c)
        c.sam.grid = 0  # distillation targets are the teacher's 64 x 64 grid
    return c
