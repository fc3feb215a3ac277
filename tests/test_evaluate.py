"""Evaluation: converted (synthetic) official weights through `evit-eval`, metrics math."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from evit_jax.train import augment
from evit_jax.train.evaluate import run_eval
from evit_jax.train.evaluator import Evaluator
from PIL import Image

from tests.helpers import needs_shared


def _synthetic_weights(tmp_path, synth, name="efficientvit-b0"):
    from safetensors.numpy import save_file
    sd = synth.synthesize(synth.load_schema(name), seed=3)
    path = str(tmp_path / f"{name}.safetensors")
    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, path)
    return path, sd


@needs_shared
def test_eval_cli_on_converted_weights_matches_direct_computation(tmp_path, synth):
    path, sd = _synthetic_weights(tmp_path, synth)
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    for cls in ("n01", "n02", "n03"):
        os.makedirs(root / "val" / cls)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (70, 90, 3), np.uint8)).save(
                root / "val" / cls / f"{i}.png")
    res = run_eval(["--model", "efficientvit-b0", "--weights", path, "--data", f"folder:{root}",
                    "--split", "val", "--size", "64", "--batch-size", "4", "--num-workers", "0",
                    "--out", str(tmp_path / "r.json"), "--allow-class-mismatch"])
    assert json.load(open(tmp_path / "r.json")) == res and res["examples"] == 9

    # The same numbers by hand: reference preprocessing, the converted model, top-k.
    from evit_jax import create_model
    from evit_jax.convert.keymap import convert_state_dict
    v = convert_state_dict("efficientvit-b0", sd)
    model = create_model("efficientvit-b0")
    files = [(root / "val" / c / f"{i}.png", k) for k, c in enumerate(("n01", "n02", "n03"))
             for i in range(3)]
    x = np.stack([augment.normalize(augment.center_crop_resize(Image.open(f).convert("RGB"),
                                                               64, 1.0),
                                    (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
                  for f, _ in files])
    logits = np.asarray(model.apply(v, jnp.asarray(x)))
    labels = np.array([k for _, k in files])
    top5 = np.argsort(-logits, -1)[:, :5]
    assert res["top1"] == pytest.approx((top5[:, 0] == labels).mean())
    assert res["top5"] == pytest.approx((top5 == labels[:, None]).any(-1).mean())


def test_miou_is_computed_over_the_whole_split():
    class Fixed:  # a "model" whose logits are its input's first channels (stride 1)
        def apply(self, variables, x):
            return x[..., :3]

    ev = Evaluator(Fixed(), "seg", 3, batch_size=2)
    lab1 = np.array([[0, 1], [2, 255]])
    lab2 = np.array([[1, 1], [1, 1]])
    img1 = np.eye(3)[[[0, 1], [1, 0]]].astype(np.float32)  # predicts 0 1 / 1 0
    img2 = np.eye(3)[[[1, 1], [1, 2]]].astype(np.float32)  # predicts 1 1 / 1 2
    res = ev.run({}, [{"image": img1, "label": lab1}, {"image": img2, "label": lab2}])
    # class 0: I 1, U 1; class 1: I 4, U 5 (pred 5 times on valid, label 5 times);
    # class 2: I 0, U 2.
    assert res["miou"] == pytest.approx((1 + 4 / 6 + 0) / 3)


@needs_shared
def test_segmentation_eval_on_converted_weights(shapes_dir, synth):
    """Converted (synthetic) Cityscapes weights on the embedded masks: the Evaluator's mIoU
    equals a direct computation with the reference's full-resolution bicubic resize."""
    from evit_jax.configs import seg_cityscapes
    from evit_jax.train.tasks import get_task

    from evit_jax import create_model
    from evit_jax.convert.keymap import convert_state_dict
    from evit_jax.models.seg import resize_logits
    name = "efficientvit-seg-b0-cityscapes"
    v = convert_state_dict(name, synth.synthesize(synth.load_schema(name), seed=2))
    c = seg_cityscapes.get_config(f"model={name}")
    c.data.name, c.data.data_dir, c.data.eval_examples = "evit_shapes/tiny", shapes_dir, 6
    c.data.num_workers = 0
    c.input.eval_mode, c.input.eval_size = "shorter", 32
    ds, _, _ = get_task("seg").eval_data(c)
    items = list(ds)
    model = create_model(name)
    res = Evaluator(model, "seg", 19, batch_size=4).run(v, items)
    x = jnp.asarray(np.stack([it["image"] for it in items]))
    labels = np.stack([it["label"] for it in items])
    pred = np.asarray(resize_logits(jax.jit(model.apply)(v, x), (64, 64)).argmax(-1))
    inter = np.array([((pred == k) & (labels == k)).sum() for k in range(19)], float)
    union = np.array([((pred == k) | (labels == k)).sum() for k in range(19)], float)
    assert res["miou"] == pytest.approx((inter[union > 0] / union[union > 0]).mean())


def test_a_model_of_other_classes_is_refused(tmp_path, shapes_dir, capsys):
    """issue 25: a 1000-class model on the 10-class embedded set scored 0.0 top-1 with exit
    0; now it is a one-line error naming the fix, unless asked for explicitly."""
    from evit_jax.train.evaluate import main

    import evit_jax
    model = evit_jax.create_model("efficientvit-b0")  # 1000 classes
    weights = evit_jax.save_variables(evit_jax.init_variables(model), tmp_path / "b0",
                                      model="efficientvit-b0")
    args = ["--weights", str(weights), "--data", "evit_shapes/tiny", "--data-dir", shapes_dir,
            "--examples", "4", "--batch-size", "4", "--num-workers", "0", "--size", "32"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("evit-eval: error: efficientvit-b0 predicts "
                                               "1000 classes but evit_shapes/tiny has 10")
    assert "--allow-class-mismatch" in err[0]
    out = run_eval([*args, "--allow-class-mismatch"])
    assert out["examples"] == 4 and 0 <= out["top1"] <= 1
