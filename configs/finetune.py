"""Fine-tune a classifier from converted official weights (or a training workdir).

`--config configs/finetune.py:model=efficientvit-b1-r224,weights=~/evit/b1-r224,data=folder:/x`
The classifier's last layer is re-initialised when the class count differs; everything
else starts from the weights. Short schedule, small learning rate, light augmentation.
"""

from evit_jax.configs import common

from evit_jax.zoo import model_info


def get_config(arg: str | None = None):
    a = common.parse_arg(arg, model="efficientvit-b1-r224", weights="", data="evit_shapes",
                         data_dir="", classes=0, size=0, batch_size=128, steps=2000,
                         lr=2e-4, runlocal=False)
    spec = model_info(a.model)
    c = common.base_config()
    c.model = a.model
    c.num_classes = a.classes  # 0: the dataset's
    c.init_from = a.weights
    c.init_exclude = ("/head/op_list_3/",)  # a new classifier if the class count differs
    c.drop_path = 0.05
    c.batch_size = a.batch_size
    c.eval_batch_size = 256
    c.total_steps = a.steps
    c.warmup_steps = max(a.steps // 20, 1)
    c.lr = a.lr
    c.weight_decay = 0.05
    c.ema_decay, c.ema_warmup_steps = 0.999, max(a.steps // 10, 1)
    c.label_smoothing, c.loss = 0.1, "ce"
    c.log_every_steps = 25
    c.checkpoint_every_steps = 500
    c.data.name = a.data
    c.data.data_dir = a.data_dir
    size = a.size or spec.resolution[0]
    c.input.train_sizes = (size,)
    c.input.eval_size = size
    c.input.eval_crop = spec.crop_pct
    c.input.rrc_scale = (0.25, 1.0)
    c.input.randaug_n, c.input.randaug_m = 1, 3
    return common.runlocal(c) if a.runlocal else c
