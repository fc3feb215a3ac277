"""The task layer (train/tasks/): the registry, one update step with an EMA for every task,
and a detection-like task (padded boxes, a resolution per batch, a transform that depends on
the step, twelve metrics) plugged into the unchanged loop."""

from __future__ import annotations

import json
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from evit_jax.train import trainer
from evit_jax.train.input_pipeline import Data, eval_split, step_of, train_stream
from evit_jax.train.tasks import Task, get_task, registered

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Where each task's EMA is checked: trained with `ema_decay > 0`, the EMA follows the
# reference's recurrence and is what the run evaluates. A new task adds its line.
EMA_TESTS = {
    "cls": "tests/test_configs.py::test_recipe_runs_a_smoke_step",
    "seg": "tests/test_configs.py::test_recipe_runs_a_smoke_step",
    "sam": "tests/test_sam_train.py::test_sam_step_reduces_the_loss_and_keeps_an_ema",
    "sam_distill": "tests/test_train_tasks.py::test_distill_trains_only_the_encoder_with_an_ema",
    "sr": "tests/test_sr_train.py::test_sr_demo_reduced_run_beats_bicubic_with_its_ema",
}


def assert_ema_of(config, states) -> None:
    """`states` (host copies after steps 0, 1, 2, ...): each EMA is the previous one moved
    towards the new weights by `1 - d`, d = decay * (1 - exp(-step / warmup)), and the
    state's inference variables are the EMA."""
    for prev, cur in zip(states, states[1:]):
        d = config.ema_decay * (1 - np.exp(-int(cur.step) / config.ema_warmup_steps))
        new = {"params": cur.params, "batch_stats": cur.batch_stats}
        want = jax.tree.map(lambda e, v, d=d: e - (1 - d) * (e - v), prev.ema, new)
        for a, b in zip(jax.tree.leaves(cur.ema), jax.tree.leaves(want)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        assert cur.variables() is cur.ema
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(states[-1].ema),
                                                       jax.tree.leaves(states[0].ema))]
    assert any(moved), "the EMA never moved"


def test_every_task_is_registered_and_has_an_ema_test():
    assert registered() == sorted(EMA_TESTS)
    for name, node in EMA_TESTS.items():
        path, func = node.split("::")
        assert f"def {func}(" in open(os.path.join(ROOT, path)).read(), node
        assert isinstance(get_task(name), Task)
    with pytest.raises(ValueError, match="unknown task 'nope'.*registered tasks: cls, sam"):
        get_task("nope")


def test_the_loop_names_no_task():
    """issue 22: trainer.py, state.py, input_pipeline.py, checkpoint.py choose nothing by
    task; what differs is in train/tasks/."""
    words = re.compile(r"\b(" + "|".join(registered()) + r")\b")
    for name in ("trainer", "state", "input_pipeline", "checkpoint", "step"):
        text = open(os.path.join(ROOT, "train", f"{name}.py")).read()
        assert not words.findall(text), (name, words.findall(text))


class _Encoder(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.BatchNorm(use_running_average=not train)(nn.Conv(4, (3, 3))(x))


class _SamLike(nn.Module):
    """The parts of a SAM module that distillation touches, small: `encode_image` (with a
    BatchNorm) under `image_encoder`, and a prompt encoder and mask decoder it must not
    train. The real L0 runs in the slow distillation test of tests/test_sam_train.py."""

    def setup(self):
        self.image_encoder = _Encoder()
        self.prompt_encoder = nn.Dense(4)
        self.mask_decoder = nn.Dense(4)

    def encode_image(self, x, train: bool = False):
        return self.image_encoder(x, train)

    def __call__(self, x):
        return self.mask_decoder(self.prompt_encoder(self.encode_image(x)))


def test_distill_trains_only_the_encoder_with_an_ema():
    """sam_distill's loss, frozen parts and EMA through the one update step: the image
    encoder learns (and its EMA follows), the prompt encoder and mask decoder do not move,
    not even by weight decay."""
    from evit_jax.configs import sam_distill
    from evit_jax.train import optim
    from evit_jax.train import state as S
    from evit_jax.train.step import make_train_step
    c = sam_distill.get_config("teacher_dir=/unused,runlocal")
    c.lr, c.warmup_steps, c.ema_decay, c.ema_warmup_steps = 1e-2, 1, 0.9, 1
    task, model = get_task("sam_distill"), _SamLike()
    tx, sched = optim.make_optimizer(c)
    st, _ = S.init_state(c, model, tx, S.make_mesh())
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(2, 8, 8, 3)).astype(np.float32),
             "teacher": rng.normal(size=(2, 8, 8, 4)).astype(np.float32)}
    step = jax.jit(make_train_step(task, c, model, tx, sched, 0))
    states = [jax.device_get(st)]
    for _ in range(3):
        st, out = step(st, batch)
        states.append(jax.device_get(st))
    assert set(out) == {"loss", "lr", "grad_norm"} and np.isfinite(float(out["loss"]))
    assert_ema_of(c, states)
    for part in ("prompt_encoder", "mask_decoder"):
        for a, b in zip(jax.tree.leaves(states[0].params[part]),
                        jax.tree.leaves(states[-1].params[part])):
            np.testing.assert_array_equal(a, b)
    enc = zip(jax.tree.leaves(states[0].params["image_encoder"]),
              jax.tree.leaves(states[-1].params["image_encoder"]))
    assert all(not np.array_equal(a, b) for a, b in enc)


# ------------------------------------------------------------------ a detection-like task
MAX_BOXES, NO_AUG_STEPS = 5, 2


class _Boxes(nn.Module):
    """Predicts MAX_BOXES boxes `[B, N, 4]` from an image `[B, H, W, 3]` (any size)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.relu(nn.Conv(8, (3, 3), strides=(2, 2))(x)).mean((1, 2))
        return nn.Dense(MAX_BOXES * 4)(h).reshape(x.shape[0], MAX_BOXES, 4)


class _BoxEvaluator:
    """Twelve numbers, as COCO's summary has: quantiles of the boxes' L1 errors."""

    def __init__(self, model):
        self.fn = jax.jit(model.apply)

    def run(self, variables, dataset):
        errs = []
        for ex in dataset:
            pred = np.asarray(self.fn(variables, ex["image"][None]))[0]
            errs += list(np.abs(pred - ex["boxes"]).mean(-1)[ex["valid"]])
        errs = np.asarray(errs)
        return {**{f"q{i}": float(np.quantile(errs, (i + 0.5) / 12)) for i in range(12)},
                "examples": len(errs)}


class _DetLike(Task):
    """Records with 0-4 boxes padded to MAX_BOXES (`valid` marks the real ones), a
    resolution drawn per global batch, and a "mosaic" augmentation that stops for the last
    NO_AUG_STEPS steps (the transform knows its step from the stream index)."""

    def _records(self, n):
        rng = np.random.default_rng(n)
        return [rng.uniform(0, 1, (int(rng.integers(0, 5)), 4)).astype(np.float32)
                for _ in range(n)]

    def _example(self, boxes, size, mosaic):
        out = np.zeros((MAX_BOXES, 4), np.float32)
        out[:len(boxes)] = boxes
        img = np.full((size, size, 3), boxes.sum() if len(boxes) else 0.0, np.float32)
        return {"image": img, "boxes": out, "valid": np.arange(MAX_BOXES) < len(boxes),
                "mosaic": np.float32(mosaic)}

    def make_data(self, config, process_index=0, process_count=1):
        def transform(index, boxes):
            step = step_of(index, config)
            size = (16, 24)[int(np.random.default_rng([config.seed, step]).integers(2))]
            return self._example(boxes, size, step < config.total_steps - NO_AUG_STEPS)
        train = train_stream(config, self._records(24), transform, process_index,
                             process_count)
        ev, n = eval_split(config, self._records(6), lambda b: self._example(b, 16, False),
                           process_index, process_count)
        return Data(train, 24, ev, n, None)

    def build_model(self, config, num_classes, train=True):
        return _Boxes()

    def loss_fn(self, config, model, state, batch, key, num_classes):
        def fn(params):
            pred = model.apply({"params": params}, batch["image"])
            w = batch["valid"][..., None].astype(jnp.float32)
            loss = (jnp.abs(pred - batch["boxes"]) * w).sum() / jnp.maximum(w.sum(), 1)
            return loss, ({"mosaic": batch["mosaic"].mean(),
                           "size": jnp.float32(batch["image"].shape[1])}, None)
        return fn

    def evaluator(self, config, model, num_classes):
        return _BoxEvaluator(model)


def test_a_detection_like_task_plugs_into_the_loop(tmp_path, monkeypatch):
    from evit_jax.configs.common import base_config
    c = base_config()
    c.task, c.num_classes, c.batch_size, c.total_steps = "det_like", 0, 4, 8
    c.warmup_steps, c.lr, c.ema_decay, c.ema_warmup_steps = 1, 1e-2, 0.5, 1
    c.log_every_steps, c.checkpoint_every_steps, c.eval_every_steps = 1, 4, 4
    c.data.num_workers, c.progress_bar, c.compilation_cache = 0, False, False
    monkeypatch.setattr(trainer, "get_task", lambda name: _DetLike())
    res = trainer.train_and_evaluate(c, str(tmp_path))
    rows = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    train = [r for r in rows if r["split"] == "train"]
    assert [r["mosaic"] for r in train] == [1.0] * 6 + [0.0] * 2
    assert {r["size"] for r in train} == {16.0, 24.0}  # a resolution per batch
    assert [r["step"] for r in rows if r["split"] == "eval"] == [4, 8]
    saved = json.load(open(tmp_path / "eval_results.json"))
    assert len(saved) == 13 and saved["step"] == 8 and saved == {k: res[k] for k in saved}
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4", "8"]
    # The run evaluated its EMA (`ema_decay > 0`), not the raw weights.
    import evit_jax
    task = _DetLike()
    ev, data = _BoxEvaluator(_Boxes()), task.make_data(c)
    ema = ev.run(evit_jax.load_variables(str(tmp_path)), data.eval_dataset)
    raw = ev.run(evit_jax.load_variables(str(tmp_path), use_ema=False), data.eval_dataset)
    assert ema == {**{k: saved[k] for k in saved if k != "step"}, "examples": ema["examples"]}
    assert ema != raw


def test_bn_reset_measures_every_batchnorm():
    """`reset_bn` (the recipe's BN re-estimation) on B0 with the native kernels, whose fused
    inference conv skipped the BatchNorm it measures (a KeyError): with the statistics it
    sets from one batch, the inference model gives that batch the logits of a training-mode
    pass (which normalises by the same batch statistics)."""
    from evit_jax.train.bn_reset import reset_bn

    import evit_jax
    model = evit_jax.create_model("efficientvit-b0", num_classes=10)
    v = evit_jax.init_variables(model, 0)
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
    new = reset_bn(model, v, [{"image": x}])
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(v["batch_stats"]),
                                                         jax.tree.leaves(new["batch_stats"]))]
    assert all(changed), f"{changed.count(False)} BatchNorms not re-estimated"
    train, _ = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
        v, x)
    np.testing.assert_allclose(np.asarray(jax.jit(model.apply)(new, x)), np.asarray(train),
                               rtol=1e-3, atol=1e-4)
