"""Configs: every recipe builds, overrides are checked, and each runs a smoke train step."""

from __future__ import annotations

import glob
import importlib
import os

import jax
import numpy as np
import pytest
from evit_jax.configs import common
from evit_jax.train import config_loader
from evit_jax.train.optim import make_optimizer
from evit_jax.train.state import init_state, make_mesh
from evit_jax.train.step import make_train_step
from evit_jax.train.tasks import get_task, registered

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(os.path.basename(p)[:-3] for p in glob.glob(f"{ROOT}/configs/[!_]*.py")
                      if hasattr(importlib.import_module(
                          f"evit_jax.configs.{os.path.basename(p)[:-3]}"), "get_config"))
REQUIRED = ("seed", "batch_size", "total_steps", "checkpoint_every_steps")


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_every_config_builds_with_required_fields(name):
    mod = importlib.import_module(f"evit_jax.configs.{name}")
    for arg in (None, "runlocal"):
        c = mod.get_config(arg)
        for field in REQUIRED:
            assert field in c, f"{name} lacks {field}"
        assert c.task in registered() and c.total_steps > 0


def test_imagenet_recipes_follow_the_reference():
    from evit_jax.configs import cls_imagenet
    b1 = cls_imagenet.get_config("model=efficientvit-b1")
    assert b1.lr == pytest.approx(2e-3) and b1.input.eval_crop == 0.95
    assert b1.total_steps == 320 * (1_281_167 // 1024) and b1.warmup_steps == 20 * 1251
    assert b1.input.train_sizes == (128, 160, 192, 224) and b1.grad_clip_value == 2.0
    l2 = cls_imagenet.get_config("model=efficientvit-l2-r288")
    assert (l2.mesa_ratio, l2.drop_path_skip, l2.input.erase_p, l2.dtype) == \
        (2.75, 3, 0.2, "bfloat16")
    assert l2.input.train_sizes[-1] == 288 and l2.input.eval_size == 288
    l2.batch_size = 512  # lr and the step counts follow the batch size
    assert l2.lr == pytest.approx(1.5e-4 * 4) and l2.total_steps == 320 * (1_281_167 // 512)
    with pytest.raises(ValueError, match="no ImageNet recipe"):
        cls_imagenet.get_config("model=efficientvit-b7")


def test_arguments_and_overrides_are_checked():
    with pytest.raises(ValueError, match="unknown config argument 'modle'"):
        common.parse_arg("modle=x", model="a")
    assert common.parse_arg("steps=7,tiny", steps=1, tiny=False).to_dict() == \
        {"steps": 7, "tiny": True}
    c = config_loader.load(f"{ROOT}/configs/demo.py:steps=9",
                           ["--config.lr=0.5", "--config.data.num_workers=0"])
    assert c.lr == 0.5 and c.total_steps == 9 and c.data.num_workers == 0
    with pytest.raises(ValueError, match="nosuchfield"):
        config_loader.load(f"{ROOT}/configs/demo.py", ["--config.nosuchfield=1"])


def test_every_config_imports_the_configs_one_way():
    """`evit_jax.configs.*` only: no `configs.` import, no ImportError fallback; a recipe
    given by path is the same module as the package's."""
    for path in glob.glob(f"{ROOT}/configs/*.py"):
        text = open(path).read()
        assert "except ImportError" not in text and "from configs" not in text, path
    demo = importlib.import_module("evit_jax.configs.demo")
    assert config_loader._module(f"{ROOT}/configs/demo.py") is demo


# The demo recipe's steps already run in CI through tests/test_train.py (reference run and the
# reduced demo), so its own smoke step joins the larger recipes under `slow` (~1 min each).
SMOKE = [pytest.param("demo", "", marks=pytest.mark.slow),
         ("cls_imagenet", "model=efficientvit-b1"),
         ("seg_cityscapes", "model=efficientvit-seg-b0-cityscapes"), ("finetune", ""),
         pytest.param("cls_imagenet", "model=efficientvit-b2", marks=pytest.mark.slow),
         pytest.param("cls_imagenet", "model=efficientvit-b3", marks=pytest.mark.slow),
         pytest.param("cls_imagenet", "model=efficientvit-l1", marks=pytest.mark.slow),
         pytest.param("cls_imagenet", "model=efficientvit-l2", marks=pytest.mark.slow),
         pytest.param("cls_imagenet", "model=efficientvit-l3", marks=pytest.mark.slow),
         pytest.param("seg_ade20k", "model=efficientvit-seg-b1-ade20k",
                      marks=pytest.mark.slow)]


@pytest.mark.parametrize("name,arg", SMOKE)
def test_recipe_runs_a_smoke_step(name, arg, shapes_dir):
    """The recipe's model, optimizer, augmentation and loss on the tiny embedded set: two
    steps through the one update step, which keeps the EMA (the segmentation recipe has
    none: it gets one here) that the run would evaluate."""
    from tests.test_train_tasks import assert_ema_of
    c = importlib.import_module(f"evit_jax.configs.{name}").get_config(
        ",".join(filter(None, [arg, "runlocal"])))
    c.data.name, c.data.data_dir = "evit_shapes/tiny", shapes_dir
    c.data.train_split, c.data.eval_split = "train", "validation"
    c.num_classes = 11 if c.task == "seg" else 10
    c.batch_size, c.init_from = 4, ""
    c.input.train_sizes = (32,) if c.task == "cls" else c.input.train_sizes
    c.input.crop_size = (32, 32)
    c.ema_decay = c.ema_decay or 0.5
    task = get_task(c.task)
    it = task.make_data(c).train
    model = task.build_model(c, c.num_classes)
    tx, schedule = make_optimizer(c)
    state, _ = init_state(c, model, tx, make_mesh())
    step = jax.jit(make_train_step(task, c, model, tx, schedule, c.num_classes))
    states = [jax.device_get(state)]
    for _ in range(2):
        state, out = step(state, next(it))
        states.append(jax.device_get(state))
    assert np.isfinite(float(out["loss"])) and int(state.step) == 2
    assert not np.array_equal(jax.tree.leaves(states[0].params)[0],
                              jax.tree.leaves(states[1].params)[0])
    assert_ema_of(c, states)
