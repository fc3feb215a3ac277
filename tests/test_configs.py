"""Configs: every recipe builds, overrides are checked, and each runs a smoke train step."""

from __future__ import annotations

import glob
import importlib
import os
import sys

import jax
import numpy as np
import pytest
from absl import flags
from evit_jax.train import input_pipeline
from evit_jax.train.optim import make_optimizer
from evit_jax.train.state import build_model, init_state, make_mesh
from evit_jax.train.trainer import make_train_step
from ml_collections import config_flags

from configs import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(os.path.basename(p)[:-3] for p in glob.glob(f"{ROOT}/configs/*.py")
                      if hasattr(importlib.import_module(
                          f"configs.{os.path.basename(p)[:-3]}"), "get_config"))
REQUIRED = ("seed", "batch_size", "total_steps", "checkpoint_every_steps")


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_every_config_builds_with_required_fields(name):
    mod = importlib.import_module(f"configs.{name}")
    for arg in (None, "runlocal"):
        c = mod.get_config(arg)
        for field in REQUIRED:
            assert field in c, f"{name} lacks {field}"
        assert c.task in ("cls", "seg", "sr", "sam", "sam_distill") and c.total_steps > 0


def test_imagenet_recipes_follow_the_reference():
    from configs import cls_imagenet
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


def _parse(argv, monkeypatch):
    monkeypatch.setattr(sys, "argv", argv)  # config_flags reads the overrides from sys.argv
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True)
    fv(argv)
    return fv.config


def test_arguments_and_overrides_are_checked(monkeypatch):
    with pytest.raises(ValueError, match="unknown config argument 'modle'"):
        common.parse_arg("modle=x", model="a")
    assert common.parse_arg("steps=7,tiny", steps=1, tiny=False).to_dict() == \
        {"steps": 7, "tiny": True}
    c = _parse(["prog", f"--config={ROOT}/configs/demo.py:steps=9", "--config.lr=0.5",
                "--config.data.num_workers=0"], monkeypatch)
    assert c.lr == 0.5 and c.total_steps == 9 and c.data.num_workers == 0
    with pytest.raises(Exception, match="nosuchfield"):
        _parse(["prog", f"--config={ROOT}/configs/demo.py", "--config.nosuchfield=1"],
               monkeypatch)


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
    """The recipe's model, optimizer, augmentation and loss on the tiny embedded set."""
    c = importlib.import_module(f"configs.{name}").get_config(",".join(filter(None, [arg,
                                                                                    "runlocal"])))
    c.data.name, c.data.data_dir = "evit_shapes/tiny", shapes_dir
    c.data.train_split, c.data.eval_split = "train", "validation"
    c.num_classes = 11 if c.task == "seg" else 10
    c.batch_size, c.init_from = 4, ""
    c.input.train_sizes = (32,) if c.task == "cls" else c.input.train_sizes
    c.input.crop_size = (32, 32)
    it, _, _ = input_pipeline.make_train_iterator(c)
    model = build_model(c, c.num_classes)
    tx, schedule = make_optimizer(c)
    state, _ = init_state(c, model, tx, make_mesh())
    step = jax.jit(make_train_step(c, model, tx, schedule, c.num_classes))
    new, out = step(state, next(it))
    assert np.isfinite(float(out["loss"])) and int(new.step) == 1
    before = jax.tree.leaves(state.params)[0]
    assert not np.array_equal(before, jax.tree.leaves(new.params)[0])
