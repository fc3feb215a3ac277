"""SAM fine-tuning and distillation through the trainer (train/tasks/sam.py, sam_distill.py)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from evit_jax.train import sam_losses as L

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bilinear_sample_is_grid_sample():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    img = rng.normal(size=(7, 9)).astype(np.float32)
    pts = rng.uniform(-0.05, 1.05, size=(50, 2)).astype(np.float32)  # some outside: zeros
    ref = torch.nn.functional.grid_sample(
        torch.from_numpy(img)[None, None], torch.from_numpy(2 * pts - 1)[None, :, None],
        align_corners=False)[0, 0, :, 0].numpy()
    np.testing.assert_allclose(np.asarray(L.bilinear_sample(jnp.asarray(img),
                                                            jnp.asarray(pts))), ref,
                               atol=1e-6)


def test_losses_hand_checked():
    # BCE of logit 0 is log 2; dice of p = 0.5 on a target of ones (P = 4): 1 - 5 / 7.
    v = float(L.bce_dice(jnp.zeros(4), jnp.ones(4)))
    assert v == pytest.approx(20 * np.log(2) + 1 - 5 / 7, rel=1e-6)
    target = jnp.zeros((32, 32)).at[8:24, 8:24].set(1.0)
    good = jnp.where(target[::2, ::2] > 0, 8.0, -8.0)  # the right mask at low res (16)
    key = jax.random.PRNGKey(0)
    point_loss = jax.jit(L.point_loss, static_argnums=3)
    assert float(point_loss(key, good, target, 256)) < 0.2 * float(
        point_loss(key, -good, target, 256))
    assert float(L.mask_iou(good, L.low_res_target(target, 16))) == 1.0
    # Uncertainty sampling: 3/4 of the points where |logit| is smallest (the boundary).
    ramp = jnp.tile(jnp.linspace(-5, 5, 16), (16, 1))
    pts = jax.jit(L.sample_points, static_argnums=(2, 3, 4))(key, ramp, 400, 3.0, 0.75)
    near = np.abs(np.asarray(pts[:300, 0]) - 0.5)
    assert pts.shape == (400, 2) and near.max() < 0.3 and np.median(near) < 0.15


def _batch(config, n_img=2, m=3):
    from evit_jax.train.datasets.sam import TOKENS
    s = config.input.encoder_size
    rng = np.random.default_rng(0)
    masks = np.zeros((n_img, m, s, s), np.uint8)
    masks[:, :, 10:40, 20:50] = 1
    coords = np.zeros((n_img, m, TOKENS, 2), np.float32)
    labels = np.full((n_img, m, TOKENS), -2, np.int32)
    coords[..., 0, :], coords[..., 1, :] = (320, 160), (800, 640)
    labels[..., :2] = (2, 3)
    return {"image": rng.normal(size=(n_img, s, s, 3)).astype(np.float32), "masks": masks,
            "valid": np.array([[True] * m, [True] + [False] * (m - 1)]),
            "coords": coords, "labels": labels}


@pytest.mark.slow
def test_multimask_step_backprops_only_the_best_output():
    """(~75 s: three eager forward/backward passes of L0.)"""
    from evit_jax.configs import sam_common
    from evit_jax.train.tasks import sam as sam_task
    c = sam_common.runlocal(sam_common.sam_base())
    model = sam_task.TASK.build_model(c)
    import evit_jax
    v = evit_jax.init_variables(model, 0)
    batch = _batch(c)
    key = jax.random.PRNGKey(1)

    def per_output(params, multimask):
        return sam_task.sam_loss(c, model, {"params": params,
                                            "batch_stats": v["batch_stats"]},
                                 batch, key, jnp.asarray(multimask), False)

    single, _ = per_output(v["params"], False)
    multi, (mets, _) = per_output(v["params"], True)
    assert np.isfinite(float(single)) and np.isfinite(float(multi))
    # Gradients reach the hypernetwork MLP of exactly one multimask token per prompt; the
    # single-mask token (0) gets none in a multimask step.
    g = jax.grad(lambda p: per_output(p, True)[0])(v["params"])
    hyper = g["mask_decoder"]["output_hypernetworks_mlps_0"]
    assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(hyper))
    g0 = jax.grad(lambda p: per_output(p, False)[0])(v["params"])
    assert any(float(jnp.abs(x).max()) > 0 for x in jax.tree.leaves(
        g0["mask_decoder"]["output_hypernetworks_mlps_0"]))
    assert 0 <= float(mets["train_iou"]) <= 1


def _train(tmp_path, config, workdir, *extra, timeout=900):
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
               EVIT_XLA_CACHE=os.environ.get("EVIT_TEST_XLA_CACHE") or str(tmp_path / "xla"))
    cmd = [sys.executable, "-m", "evit_jax.train.main", "--config", config, "--workdir",
           str(workdir), "--config.data.num_workers=0", "--config.progress_bar=False", *extra]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def _metrics(workdir):
    rows = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
    return [r for r in rows if r.get("split", r.get("kind")) == "train" or "loss" in r]


def test_sam_step_reduces_the_loss_and_keeps_an_ema():
    """The compiled train step of the recipe (point-sampled loss, multimask steps) on one
    fixed batch at a 32 px encoder input: 12 steps cut the loss (measured: mean of the
    first three 14.49, of the last three 12.45; the run is deterministic). With
    `ema_decay > 0` the step keeps the EMA of the weights (it did not before the one update
    step, train/step.py), and the state evaluates it. Most of its time is compiling L0's
    forward and backward pass (~1 min on an idle 2-core CPU)."""
    from evit_jax.configs import sam_common
    from evit_jax.train import optim
    from evit_jax.train import state as S
    from evit_jax.train.step import make_train_step
    from evit_jax.train.tasks import get_task

    from tests.test_train_tasks import assert_ema_of
    c = sam_common.runlocal(sam_common.sam_base())
    c.input.encoder_size, c.sam.grid, c.sam.loss_points = 32, 8, 64
    c.lr, c.total_steps, c.weight_decay = 1e-3, 12, 0.0
    c.ema_decay, c.ema_warmup_steps = 0.9, 1
    task = get_task("sam")
    model = task.build_model(c, 0)
    tx, sched = optim.make_optimizer(c)
    st, _ = S.init_state(c, model, tx, S.make_mesh())
    step = jax.jit(make_train_step(task, c, model, tx, sched, 0))
    batch = _batch(c)
    losses, states = [], [jax.device_get(st)]
    for _ in range(c.total_steps):
        st, out = step(st, batch)
        losses.append(float(out["loss"]))
        if len(states) < 3:
            states.append(jax.device_get(st))
    assert np.isfinite(losses).all() and int(st.step) == 12
    assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3]), losses
    assert_ema_of(c, states)


def _env(tmp_path, shapes_dir=None):
    e = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
             EVIT_XLA_CACHE=os.environ.get("EVIT_TEST_XLA_CACHE") or str(tmp_path / "xla"))
    if shapes_dir:
        e["EVIT_DATA_DIR"] = shapes_dir
    return e


def run_train(tmp_path, config, workdir, *extra, shapes_dir=None):
    cmd = [sys.executable, "-m", "evit_jax.train.main", "--config", config, "--workdir",
           str(workdir), "--config.data.num_workers=0", "--config.progress_bar=False", *extra]
    r = subprocess.run(cmd, cwd=ROOT, env=_env(tmp_path, shapes_dir), capture_output=True,
                       text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def train_losses(workdir):
    rows = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
    return [r["loss"] for r in rows if r.get("split") == "train"]


def assert_resume_is_exact(tmp_path, config, workdir, *extra, steps=4, shapes_dir=None):
    """Run `steps` (checkpoints every 2), then drop the last checkpoint and rerun: the
    resumed run ends on the same weights."""
    import shutil

    from evit_jax.workdir import load_inference_variables
    again = tmp_path / "resumed"
    shutil.copytree(workdir, again)
    shutil.rmtree(again / "checkpoints" / str(steps))
    run_train(tmp_path, config, again, *extra, shapes_dir=shapes_dir)
    a, b = (load_inference_variables(w, step=steps) for w in (workdir, again))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


DISTILL = ("--config.total_steps=4", "--config.checkpoint_every_steps=2",
           "--config.log_every_steps=1", "--config.batch_size=2", "--config.lr=2e-3",
           "--config.warmup_steps=1", "--config.data.eval_examples=1")


@pytest.mark.slow
@pytest.mark.parametrize("teacher", ["npy", "zoo"])
def test_distill_loss_drops_and_resume_is_exact(tmp_path, teacher):
    """Both teacher forms on 5 + 1 tiny COCO-format images, 4 steps at a 64 px input."""
    from evit_jax.train.datasets.sam_sources import CocoSource

    from tests.test_sam_train_data import write_coco
    ann = write_coco(str(tmp_path / "coco"), n=6)
    arg = f"data=coco:{tmp_path / 'coco'},annotations={ann},size=64"
    if teacher == "npy":
        d = tmp_path / "emb"
        d.mkdir()
        for rec in CocoSource(str(tmp_path / "coco"), ann).items:
            # A learnable target: a per-image constant plus a fixed spatial pattern.
            t = np.full((64, 64, 256), rec[1] % 7 / 7, np.float32)
            t[:, :, :8] += np.linspace(-1, 1, 64)[:, None, None]
            np.save(d / f"{rec[1]}.npy", t.astype(np.float16))
        arg += f",teacher_dir={d}"
    else:
        arg += ",teacher=efficientvit-sam-l0,teacher_size=64"
    wd = tmp_path / "wd"
    run_train(tmp_path, f"configs/sam_distill.py:{arg}", wd, *DISTILL)
    losses = train_losses(wd)
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    res = json.load(open(wd / "eval_results.json"))
    assert set(res) == {"step", "mse"} and res["step"] == 4 and res["mse"] > 0
    assert_resume_is_exact(tmp_path, f"configs/sam_distill.py:{arg}", wd, *DISTILL)


@pytest.mark.slow
def test_sam_demo_reduced_run_learns_and_serves(tmp_path, shapes_dir):
    """`configs/sam_demo.py:tiny`, 40 steps from init_variables weights: the held-out box
    mIoU rises well above the untrained model's; `load_sam(workdir)` + `SamPredictor` and
    `evit-sam-eval --weights WORKDIR` reproduce the trainer's figure; resume is exact."""
    from evit_jax.configs import sam_demo
    from evit_jax.train.datasets.sam_sources import eval_images, open_sam_source
    from evit_jax.train.tasks import sam as sam_task

    import evit_jax
    from evit_jax.sam.eval import cli
    extra = ("--config.data.eval_examples=20", "--config.checkpoint_every_steps=20")
    wd = tmp_path / "wd"
    run_train(tmp_path, "configs/sam_demo.py:tiny,steps=40", wd, *extra,
              shapes_dir=shapes_dir)
    res = json.load(open(wd / "eval_results.json"))
    assert set(res) == {"step", "miou"} and res["step"] == 40
    model, variables = sam_task.load_sam(str(wd))
    assert model.encoder_size == 64 and model.prompt_encoder.grid == 16
    c = sam_demo.get_config("tiny")
    c.data.data_dir = shapes_dir
    ims = eval_images(open_sam_source(c.data, "validation"), 20)
    untrained = sam_task.SamEvaluator(model).run(evit_jax.init_variables(model, 0), ims)
    assert res["miou"] >= untrained["miou"] + 20, (res, untrained)
    out = tmp_path / "m.json"
    assert cli.main(["--model", "efficientvit-sam-l0", "--weights", str(wd), "--dataset",
                     "evit_shapes/tiny", "--data-dir", shapes_dir, "--prompt", "box",
                     "--limit", "20", "--out", str(out), "--no-progress"]) == 0
    assert json.load(open(out))["all"] == pytest.approx(res["miou"], abs=1e-6)
    assert_resume_is_exact(tmp_path, "configs/sam_demo.py:tiny,steps=40", wd, *extra,
                           steps=40, shapes_dir=shapes_dir)


def test_sam_recipes_follow_the_authors():
    from evit_jax.configs import sam_distill, sam_finetune, sam_sa1b
    xl = sam_sa1b.get_config("model=efficientvit-sam-xl1,root=/d,batch_size=128")
    assert xl.lr == pytest.approx(4e-7 * 32) and xl.warmup_steps == 0
    assert xl.total_steps == int(2 * 11_185_362 * 0.99 / 128) and xl.data.name == "sa1b:/d"
    assert (xl.weight_decay, xl.grad_clip_value, xl.ema_decay) == (0.1, 2.0, 0.0)
    assert (xl.sam.num_masks, xl.sam.box_prob, xl.sam.multimask_prob) == (64, 0.5, 0.5)
    assert (xl.sam.loss_points, xl.sam.oversample, xl.sam.importance) == (112 ** 2, 3.0, 0.75)
    ft = sam_finetune.get_config("weights=/w,data=coco:/im,annotations=/a.json,batch_size=8")
    assert ft.init_from == "/w" and ft.lr == pytest.approx(8e-7 * 2)
    d = sam_distill.get_config("teacher_dir=/emb")
    assert d.task == "sam_distill" and not d.input.hflip and d.distill.teacher_dir == "/emb"
