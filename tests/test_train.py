"""End-to-end training: the CLI, exact resume after kill -9, 2-process parity, SIGTERM,
corrupted checkpoints, the workdir loader, evit-eval on a workdir, and the demo's accuracy on
a reduced run.

Runs are real `python -m evit_jax.train.main` (= evit-train) processes of EfficientViT-B0 on
the tiny embedded dataset, 1 process x 4 CPU devices unless a test says otherwise (the
2-process run: 2 x 2). They share one XLA compilation cache and, except for the demo run, one
program (`_cmd`), so only the first run of each device layout pays the compile.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.helpers import rel_l2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 900
DEVICES = 4
DEMO_REDUCED_TOP1 = 0.16


@pytest.fixture(scope="module")
def env(shapes_dir, tmp_path_factory):
    e = dict(os.environ)
    e.update(PYTHONPATH=ROOT, EVIT_DATA_DIR=shapes_dir, JAX_PLATFORMS="cpu",
             EVIT_XLA_CACHE=os.environ.get("EVIT_TEST_XLA_CACHE")
             or str(tmp_path_factory.mktemp("xla")))
    return e


def _cmd(workdir: str, steps: int, *extra: str, demo: bool = False) -> list[str]:
    """The training command. Not `demo`: a well-conditioned variant of the demo recipe for the
    exactness tests (64 px, batch 16, lr 1e-4, Adam eps 1e-3, an EMA), see
    `test_two_processes_match_one_process`."""
    exact = ["--config.batch_size=16", "--config.lr=1e-4", "--config.warmup_steps=5",
             "--config.eps=1e-3", "--config.ema_decay=0.9"]  # the EMA is saved and resumed too
    return [sys.executable, "-m", "evit_jax.train.main", "--config",
            f"configs/demo.py:tiny,steps={steps}" + ("" if demo else ",size=64"),
            "--workdir", str(workdir), "--config.data.num_workers=0",
            "--config.data.eval_examples=32", "--config.eval_batch_size=16",
            "--config.progress_bar=False", "--config.log_every_steps=1",
            *([] if demo else exact), *extra]


def _run(cmd, env, devices=DEVICES, **kw):
    e = dict(env, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return subprocess.run(cmd, cwd=ROOT, env=e, capture_output=True, text=True,
                          timeout=TIMEOUT, **kw)


def _params(workdir, ema=False):
    import jax
    from evit_jax.train.checkpoint import load_inference_variables
    v = load_inference_variables(str(workdir), use_ema=ema)
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(v)])


@pytest.fixture(scope="module")
def reference_run(env, tmp_path_factory):
    """An uninterrupted 20-step run (checkpoints every 5)."""
    wd = tmp_path_factory.mktemp("ref")
    r = _run(_cmd(wd, 20, "--config.checkpoint_every_steps=5"), env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return wd, r


def test_cli_writes_checkpoints_metrics_plot_and_summary(reference_run):
    wd, r = reference_run
    assert "Done: step 20" in r.stdout and "img/s" in r.stdout
    assert "checkpoint:" in r.stdout and "curves.png" in r.stdout
    assert sorted(int(s) for s in os.listdir(wd / "checkpoints")) == [10, 15, 20]  # keep 3
    res = json.load(open(wd / "eval_results.json"))
    assert set(res) == {"step", "top1", "top5"} and res["step"] == 20
    rows = [json.loads(line) for line in open(wd / "metrics.jsonl")]
    train = [m for m in rows if m["split"] == "train"]
    assert [m["step"] for m in train] == list(range(1, 21))
    assert {"loss", "lr", "top1", "img_per_s"} <= set(train[0])
    assert (wd / "curves.png").stat().st_size > 10_000
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(wd / "tb"))


def test_workdir_loads_as_inference_variables(reference_run):
    """`evit_jax.load_variables(workdir)` gives the latest checkpoint's EMA weights, ready for
    `create_model(...).apply`; `import evit_jax` alone is enough (the trainer is not loaded)."""
    import jax
    import jax.numpy as jnp
    from evit_jax.train.checkpoint import load_inference_variables

    import evit_jax
    wd, _ = reference_run
    v = evit_jax.load_variables(wd)
    ema = load_inference_variables(str(wd), use_ema=True)
    raw = load_inference_variables(str(wd), use_ema=False)
    flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)])
    assert np.array_equal(flat(v), flat(ema)), "the EMA weights are the default"
    assert not np.array_equal(flat(v), flat(raw))
    model = evit_jax.create_model("efficientvit-b0", num_classes=10)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
    logits = jax.jit(model.apply)(v, x)
    assert logits.shape == (2, 10) and np.isfinite(np.asarray(logits)).all()
    code = ("import sys, evit_jax; assert 'evit_jax.train' not in sys.modules; "
            f"v = evit_jax.load_variables({str(wd)!r}); print(sorted(v))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu"), timeout=300)
    assert r.returncode == 0 and "['batch_stats', 'params']" in r.stdout, r.stderr[-2000:]


def _processes_with(marker: str) -> list[int]:
    """Pids of the live processes whose environment holds `marker` (children inherit it, and
    keep it when they are reparented to init)."""
    needle = marker.encode() + b"\0"
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in f.read():
                    pids.append(int(pid))
        except OSError:  # gone meanwhile, or not ours
            pass
    return pids


def test_resume_after_kill_9_equals_uninterrupted(reference_run, env, tmp_path):
    """kill -9 mid-run (a preemption), then the same command: the run ends as the uninterrupted
    one, and the killed run's grain worker process does not outlive it. One worker here (the
    other runs read in-process): the data stream does not depend on it."""
    ref, _ = reference_run
    cmd = _cmd(tmp_path, 20, "--config.checkpoint_every_steps=5", "--config.data.num_workers=1")
    marker = f"EVIT_TEST_RUN={tmp_path.name}-{os.getpid()}"
    e = dict(env, XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES}",
             EVIT_TEST_RUN=marker.partition("=")[2])
    proc = subprocess.Popen(cmd, cwd=ROOT, env=e, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + TIMEOUT
    workers: list[int] = []
    try:  # kill -9 once the step-5 checkpoint is final and training has gone on past it
        while time.time() < deadline and proc.poll() is None:
            done = (tmp_path / "checkpoints" / "5" / "_CHECKPOINT_METADATA").exists()
            rows = open(tmp_path / "metrics.jsonl").read() if done else ""
            if done and '"step": 7,' in rows:
                workers = [p for p in _processes_with(marker) if p != proc.pid]
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run was killed mid-way"
    assert workers, "the run had a grain worker process when it was killed"
    gone_by = time.time() + 10  # a worker polls its parent every 0.5 s
    while _processes_with(marker) and time.time() < gone_by:
        time.sleep(0.1)
    left = _processes_with(marker)
    for pid in left:  # don't leave them to the next test either
        os.kill(pid, signal.SIGKILL)
    assert not left, f"worker processes {left} outlived the killed trainer"
    assert "20" not in os.listdir(tmp_path / "checkpoints")
    r = _run(cmd, env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "resumed from" in r.stdout
    for ema in (False, True):
        assert rel_l2(_params(tmp_path, ema), _params(ref, ema)) <= 1e-6
    steps = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")
             if '"train"' in line]
    assert steps == list(range(1, 21)), "metrics.jsonl tells one story after the resume"


def test_evit_eval_on_the_workdir_reproduces_the_training_eval(reference_run, shapes_dir):
    from evit_jax.train.evaluate import run_eval
    wd, _ = reference_run
    res = json.load(open(wd / "eval_results.json"))
    out = run_eval(["--weights", str(wd), "--data", "evit_shapes/tiny", "--data-dir",
                    shapes_dir, "--examples", "32", "--batch-size", "16", "--num-workers", "0"])
    assert out["model"] == "efficientvit-b0" and out["examples"] == 32
    assert out["top1"] == res["top1"] and out["top5"] == res["top5"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(reference_run, env, tmp_path):
    """2 processes x 2 CPU devices (gloo over loopback) = 1 process x 4 devices.

    The two layouts sum gradients and BN statistics in different orders, so they differ by
    float32 rounding (1e-7 at step 1). Two things of the model and optimizer, not of the
    distribution, would grow that: a batch of 8 at 32 px (BN over 8 values at the 1 x 1 last
    stage, an lr that makes the first steps chaotic: 1e-2 after 20 steps), and Adam's
    division by sqrt(v) + eps, which turns the pure-noise gradients of directions the loss
    does not depend on (LiteMLA's normalised attention is invariant to the scale of q and k)
    into full-size steps (1e-4 with eps 1e-8). Hence the recipe of `_cmd`."""
    single, _ = reference_run
    multi = tmp_path / "multi"
    port = _free_port()
    e = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    procs = [subprocess.Popen(
        _cmd(multi, 20, "--config.checkpoint_every_steps=5", "--coordinator-address",
             f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)),
        cwd=ROOT, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=TIMEOUT)[0])
        finally:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    assert rel_l2(_params(multi), _params(single)) <= 1e-5
    a, b = (json.load(open(d / "eval_results.json")) for d in (single, multi))
    assert a["step"] == b["step"] == 20 and abs(a["top1"] - b["top1"]) < 1e-9
    data = multi / "checkpoints" / "20" / "data"  # every host's iterator state
    assert sorted(f for f in os.listdir(data) if f.startswith("process_")) == \
        ["process_0-of-2.json", "process_1-of-2.json"]


# ~1-2 min; resume itself is covered in CI by the kill -9 test above.
@pytest.mark.slow
def test_sigterm_saves_and_exits(env, tmp_path):
    cmd = _cmd(tmp_path, 400, "--config.checkpoint_every_steps=1000")
    e = dict(env, XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES}")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=e, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + TIMEOUT
        while time.time() < deadline and proc.poll() is None:
            m = tmp_path / "metrics.jsonl"
            if m.exists() and '"step": 3,' in m.read_text():
                proc.send_signal(signal.SIGTERM)
                break
            time.sleep(0.05)
        out = proc.communicate(timeout=TIMEOUT)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, out[-3000:]
    steps = [int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()]
    assert len(steps) == 1 and 3 <= steps[0] < 400, "one checkpoint, at the step it stopped"
    assert "rerun the same command to resume" in out


def test_corrupted_checkpoint_is_named_and_nothing_is_lost(reference_run, env, tmp_path):
    import shutil
    ref, _ = reference_run
    shutil.copytree(ref / "checkpoints", tmp_path / "checkpoints")
    latest = tmp_path / "checkpoints" / "20"
    for root, _, files in os.walk(latest / "params"):
        for f in files:
            if "ocdbt" in root or f.startswith("d"):
                with open(os.path.join(root, f), "r+b") as fh:
                    fh.write(b"\0" * 64)
    before = sorted(os.listdir(tmp_path / "checkpoints"))
    r = _run(_cmd(tmp_path, 30), env)
    assert r.returncode != 0
    assert f"cannot restore checkpoint {latest}" in r.stderr
    assert sorted(os.listdir(tmp_path / "checkpoints")) == before
    # Moving the bad one away resumes from the one before.
    shutil.move(latest, tmp_path / "bad20")
    r = _run(_cmd(tmp_path, 20), env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed from {tmp_path / 'checkpoints' / '15'}" in r.stdout


def test_demo_reduced_run_learns(env, tmp_path):
    """The demo recipe (its lr, schedule, augmentation) on the tiny set, 200 steps of 32:
    clearly above chance (10 %; on 320 validation images chance stays below 15 % at 3 sigma;
    this run measured 23.44 % on 2026-12-02, and the full demo learns little in its first
    100 steps)."""
    r = _run(_cmd(tmp_path, 200, "--config.batch_size=32", "--config.data.eval_examples=0",
                  "--config.checkpoint_every_steps=1000", "--config.log_every_steps=25",
                  demo=True), env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.load(open(tmp_path / "eval_results.json"))
    assert res["top1"] >= DEMO_REDUCED_TOP1, res


def test_console_scripts_point_at_the_entry_points():
    """`evit-train` / `evit-eval` in pyproject.toml name importable callables."""
    import importlib
    import re
    text = open(os.path.join(ROOT, "pyproject.toml")).read()
    for name in ("evit-train", "evit-eval"):
        module, func = re.search(rf'^{name} = "([\w.]+):(\w+)"', text, re.M).groups()
        assert callable(getattr(importlib.import_module(module), func)), name
